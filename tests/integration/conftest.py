"""Integration tier: one component at a time against the real services."""

from datetime import UTC, datetime

from tests.services import database_url, kafka_bootstrap, mqtt_publish_url, mqtt_url, unique  # noqa: F401


def noise_reading(run: str, i: int, **over: object) -> dict:
    """A native reading of one of 20 noise sensors of a test run (fields overridable)."""
    d = {
        "event_id": f"{run}-{i}",
        "sensor_id": f"{run}-s{i % 20}",
        "sensor_type": "noise",
        "value": 55.0,
        "unit": "dB(A)",
        "ts": datetime.now(UTC).isoformat(),
        "location": {"district": "海淀区", "lat": 39.96, "lon": 116.30},
    }
    d.update(over)
    return d
