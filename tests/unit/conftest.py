"""Unit tier: pure logic, no services. Fixture factories with defaults."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import SensorReading

T0 = datetime(2025, 1, 15, 8, 0, tzinfo=UTC)


def reading_dict(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e-1",
        "sensor_id": "aq-chaoyang-001",
        "sensor_type": "pm25",
        "value": 42.0,
        "unit": "ug/m3",
        "ts": T0.isoformat(),
        "location": {"district": "朝阳区", "street": "望京街道", "grid": "g-1", "lat": 39.99, "lon": 116.47},
    }
    base.update(over)
    return base


@pytest.fixture
def make_reading() -> Callable[..., SensorReading]:
    def make(minutes: float = 0, value: float = 42.0, **over: Any) -> SensorReading:
        ts = T0 + timedelta(minutes=minutes)
        d = reading_dict(value=value, ts=ts.isoformat(), event_id=f"e-{minutes}", **over)
        return SensorReading.model_validate(d)

    return make
