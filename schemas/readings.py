"""`city.sensor.readings`: one measurement of one sensor at one event time."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.common import Location, UtcDatetime, WireModel, stable_id
from schemas.sensors import CATALOGUE, SensorType


def reading_event_id(sensor_id: str, ts_iso: str) -> str:
    """The id of a reading that arrived without one: stable across retries."""
    return stable_id("reading", sensor_id, ts_iso, prefix="r-")


class SensorReading(WireModel):
    schema_version: Literal[1] = 1
    event_id: str = Field(min_length=1, max_length=128)
    sensor_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")
    sensor_type: SensorType
    value: float = Field(allow_inf_nan=False, strict=True)
    unit: str = Field(min_length=1, max_length=16)
    ts: UtcDatetime = Field(description="event time: when the sensor measured")
    location: Location
    # Wall-clock time the device/publisher sent it; carried for latency measurement.
    sent_at: UtcDatetime | None = None
    source: str | None = Field(default=None, max_length=64, description="payload format it came in")

    @model_validator(mode="after")
    def _physical(self) -> SensorReading:
        spec = CATALOGUE[self.sensor_type]
        if self.unit != spec.unit:
            raise ValueError(f"unit {self.unit!r} is not {spec.unit!r} for {self.sensor_type.value}")
        if not spec.low <= self.value <= spec.high:
            raise ValueError(
                f"value {self.value} outside the physical range [{spec.low}, {spec.high}] "
                f"{spec.unit} of {self.sensor_type.value}"
            )
        return self
