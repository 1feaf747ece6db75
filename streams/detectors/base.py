"""What every detector is: a pure, synchronous step over per-subject state.

    step(state, reading) -> (state, [Signal, ...])

No event loop, no Kafka, no wall clock: the same code runs in the Faust
agent, in replay and in the offline CLI, and the same input always gives the
same signals. State is plain data (JSON-serialisable dicts and lists) so it
fits a changelog-backed Faust table.

A Signal says that a condition on a subject opened, changed severity, or
cleared. `episode_start` is the event time the condition began; together with
rule and subject it fixes the alert id, so a redelivered reading or a replay
yields the same alert, not a second one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, Protocol, TypeVar

from citybrain.errors import RejectedPayload
from schemas import Evidence, Location, SensorReading, Severity

SignalKind = Literal["open", "update", "clear"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class PerSensor(Generic[K, V]):
    """What a detector derives from its configuration for one sensor (a site's
    levels, zone, plausible range), worked out on the sensor's first reading
    instead of on every one: the configuration never changes under a detector.
    Bounded: past `most` sensors it starts again."""

    __slots__ = ("_got", "_make", "_most")

    def __init__(self, make: Callable[[K], V], most: int = 200_000) -> None:
        self._make, self._most = make, most
        self._got: dict[K, V] = {}

    def __call__(self, key: K) -> V:
        got = self._got.get(key)
        if got is None:
            if len(self._got) >= self._most:
                self._got.clear()
            got = self._got[key] = self._make(key)
        return got


@dataclass(frozen=True, slots=True)
class Signal:
    kind: SignalKind
    rule: str
    subject: str
    category: str
    sensor_type: str | None
    severity: Severity
    episode_start: datetime
    ts: datetime  # event time of the observation that produced the signal
    location: Location
    title: str
    evidence: Evidence
    sent_at: datetime | None = None  # wall-clock send time of the triggering reading


State = dict[str, Any]

# category of every sensor-health signal (stuck, out of range, silent): a
# faulty sensor is never an incident of the city
SENSOR_HEALTH = "sensor_health"


class LateEvent(RejectedPayload):
    """An event older than the subject's latest event time minus the allowed
    lateness. The agent dead-letters it with reason 'late' and counts it."""

    def __init__(self, subject: str, ts: datetime, latest: datetime, lateness_s: float) -> None:
        super().__init__(
            "late",
            f"event of {subject} at {ts.isoformat()} is {(latest - ts).total_seconds():.0f} s behind "
            f"its latest event {latest.isoformat()} (allowed lateness {lateness_s:.0f} s)",
        )
        self.subject = subject
        self.ts = ts
        self.latest = latest


class Detector(Protocol):
    name: str
    version: str

    def applies_to(self, reading: SensorReading) -> bool: ...

    def step(self, state: State | None, reading: SensorReading) -> tuple[State, list[Signal]]: ...
