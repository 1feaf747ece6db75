from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import Alert, HotlineEvent, SensorReading, Severity, alert_id_for
from schemas.cli import export
from tests.unit.conftest import reading_dict


def test_reading_round_trips_as_json_in_utc() -> None:
    r = SensorReading.model_validate_json(json.dumps(reading_dict(ts="2025-01-15T16:00:00+08:00")))
    assert r.ts.isoformat() == "2025-01-15T08:00:00+00:00"
    again = SensorReading.model_validate_json(r.to_json())
    assert again == r
    assert json.loads(r.to_json())["schema_version"] == 1


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"ts": "2025-01-15T08:00:00"}, "timezone"),
        ({"value": "42"}, "valid number"),
        ({"value": 5000.0}, "physical range"),
        ({"unit": "mg/m3"}, "unit"),
        ({"sensor_type": "plutonium"}, "sensor_type"),
        ({"sensor_id": "bad id with spaces"}, "sensor_id"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_reading_rejects_bad_input_with_clear_message(override: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        SensorReading.model_validate_json(json.dumps(reading_dict(**override)))
    assert fragment in str(err.value)


def test_reading_rejects_nan_and_missing_location() -> None:
    with pytest.raises(ValidationError):
        SensorReading.model_validate(reading_dict(value=float("nan")))
    d = reading_dict()
    del d["location"]
    with pytest.raises(ValidationError, match="location"):
        SensorReading.model_validate(d)


def test_severity_scale_and_colours() -> None:
    assert [s.colour for s in (Severity.IV, Severity.III, Severity.II, Severity.I)] == [
        "blue",
        "yellow",
        "orange",
        "red",
    ]
    assert Severity.I.rank > Severity.II.rank > Severity.III.rank > Severity.IV.rank
    assert Severity.from_rank(9) is Severity.I and Severity.from_rank(0) is Severity.IV


def test_alert_id_is_deterministic_and_colour_filled() -> None:
    a = alert_id_for("rule", "s1", "2025-01-15T08:00:00+00:00")
    assert a == alert_id_for("rule", "s1", "2025-01-15T08:00:00+00:00")
    assert a != alert_id_for("rule", "s2", "2025-01-15T08:00:00+00:00")
    alert = Alert.model_validate(
        {
            "alert_id": a,
            "rule": "rule",
            "subject": "s1",
            "category": "air",
            "severity": "II",
            "title": "t",
            "location": {"district": "朝阳区", "lat": 39.9, "lon": 116.4},
            "first_seen": "2025-01-15T08:00:00Z",
            "last_seen": "2025-01-15T08:00:00Z",
            "evidence": {
                "detector": "d",
                "detector_version": "1",
                "statistic": "s",
                "value": 1.0,
                "window_start": "2025-01-15T07:00:00Z",
                "window_end": "2025-01-15T08:00:00Z",
            },
        }
    )
    assert alert.colour == "orange"


def test_hotline_event_has_no_clear_pii_fields() -> None:
    fields = set(HotlineEvent.model_fields)
    assert not {"caller_name", "caller_phone", "phone", "name"} & fields


def test_schema_export_writes_every_model(tmp_path: Path) -> None:
    paths = export(tmp_path)
    names = {p.name for p in paths}
    assert "SensorReading.schema.json" in names and "Alert.schema.json" in names
    schema = json.loads((tmp_path / "SensorReading.schema.json").read_text())
    assert "event_id" in schema["required"]
