"""The event stream: sensor readings and hotline calls in event-time order.

    for ev in generate(city, scenario):
        if isinstance(ev, Reading): ev.payload()  # fast: a plain dict, no validation
        else: ev.payload()                        # a Call, caller in clear (MQTT wire form)

Time advances one event second at a time; in each second the sensors whose
schedule falls on it (t % interval == phase) report. Rhythm levels are
recomputed once per event minute, not per reading, and every per-sensor
constant is unpacked once into a tuple, which keeps the inner loop at a few
microseconds per reading (see `sim.cli bench` figures in the docs). Nothing
reads the wall clock; the readings' randomness comes from one seeded rng
consumed in a fixed order, so a run is reproducible bit for bit.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from schemas import CATALOGUE, HotlineEvent, SensorReading
from sim.fleet import City, Sensor
from sim.hotline import Call, TicketUpdate, background_calls, follow_ups, iso
from sim.scenario import FaultSpec, IncidentSpec, Scenario, plan

NOISE_TAU_S = 600.0  # correlation time of sensor noise


class Reading:
    """One reading; `payload()` is the wire JSON object (the fast path),
    `model()` the validated `SensorReading` (raises for out-of-range values,
    as the ingestion would reject them)."""

    __slots__ = ("sensor", "t", "ts", "value")

    def __init__(self, sensor: Sensor, t: int, ts: str, value: float) -> None:
        self.sensor = sensor
        self.t = t
        self.ts = ts
        self.value = value

    @property
    def event_id(self) -> str:
        return f"r-{self.sensor.sensor_id}-{self.t}"

    def payload(self, sent_at: str | None = None) -> dict[str, Any]:
        s = self.sensor
        d = {
            "event_id": f"r-{s.sensor_id}-{self.t}", "sensor_id": s.sensor_id, "sensor_type": s.sensor_type.value,
            "value": self.value, "unit": s.unit, "ts": self.ts, "location": s.loc, "source": "sim",
        }
        if sent_at is not None:
            d["sent_at"] = sent_at
        return d

    def json(self, sent_at: str | None = None) -> str:
        """The same object as `payload()`, as JSON text, built from the sensor's
        pre-encoded constant part: several times cheaper than encoding a dict."""
        s = self.sensor
        sent = f',"sent_at":"{sent_at}"' if sent_at is not None else ""
        return f'{{"event_id":"r-{s.sensor_id}-{self.t}","value":{self.value!r},"ts":"{self.ts}"{sent},{s.json_tail}'

    def model(self) -> SensorReading:
        return SensorReading.model_validate(self.payload())

    def __repr__(self) -> str:
        return f"Reading({self.sensor.sensor_id}, {self.ts}, {self.value})"


Event = Reading | Call | TicketUpdate


def _schedule(city: City) -> list[tuple[int, list[list[tuple[Any, ...]]]]]:
    """interval -> per phase, the sensors due, each as a tuple of its constants."""
    by_interval: dict[int, list[list[tuple[Any, ...]]]] = {}
    for s in city.sensors:
        phi = math.exp(-s.interval_s / NOISE_TAU_S)
        innov = s.noise_sd * math.sqrt(1 - phi * phi)
        row = (s.index, s, s.model, s.scale, s.offset, s.floor, CATALOGUE[s.sensor_type].high, s.decimals,
               phi, innov)
        by_interval.setdefault(s.interval_s, [[] for _ in range(s.interval_s)])[s.phase_s].append(row)
    return sorted(by_interval.items())


def _apply_fault(kind: str, f: Any, t: int, v: float, low: float, high: float, stuck: dict[str, float]) -> float:
    if kind == "stuck":
        return stuck.setdefault(f.label_id, v)
    if kind == "spike":
        return min(high, v + f.param)
    if kind == "drift":
        return max(low, min(high, v + f.param * (t - f.t0) / max(1, f.t1 - f.t0)))
    return float(f.param)  # out_of_range


def generate(city: City, scenario: Scenario) -> Iterator[Event]:
    """Readings, calls and (with `scenario.ticket_updates`) ticket updates of the
    scenario's time range, in event-time order (within one second: calls,
    then ticket updates, then readings by interval and phase)."""
    from sim.rhythm import levels  # local: keeps the module import cheap for the CLI

    rng = random.Random(f"{scenario.seed}/readings")
    gauss = rng.gauss
    noise = [rng.gauss(0.0, 1.0) * s.noise_sd for s in city.sensors]  # start in the stationary state
    sched = _schedule(city)
    effects, faults = scenario.effects, scenario.faults
    stuck: dict[str, float] = {}
    calls = heapq.merge(
        scenario.calls,
        background_calls(scenario.seed, city.streets(), scenario.start, scenario.end, scenario.calls_per_hour),
        key=lambda c: c.t,
    )
    nxt = next(calls, None)
    later: list[tuple[int, str, TicketUpdate]] = []  # ticket updates not yet due (a heap)
    minute = -1
    lv: list[float] = []
    for t in range(scenario.start, scenario.end):
        while nxt is not None and nxt.t <= t:
            yield nxt
            if scenario.ticket_updates:
                for u in follow_ups(scenario.seed, nxt):
                    if u.t < scenario.end:
                        heapq.heappush(later, (u.t, u.event_id, u))
            nxt = next(calls, None)
        while later and later[0][0] <= t:
            yield heapq.heappop(later)[2]
        if t // 60 != minute:
            minute = t // 60
            lv = levels(t)
        ts = ""
        for interval, phases in sched:
            due = phases[t % interval]
            if not due:
                continue
            if not ts:
                ts = iso(t)
            for idx, s, model, scale, offset, floor, high, dec, phi, innov in due:
                n = noise[idx] = phi * noise[idx] + innov * gauss(0.0, 1.0)
                v = scale * lv[model] + offset + n
                eff = effects.get(idx)
                if eff is not None:
                    add, mul = 0.0, 1.0
                    for e in eff:
                        env = e.env(t)
                        if env:
                            if e.wobble:
                                env *= 1 + e.wobble * math.sin(6.283185307 * t / e.period)
                            if e.mul:
                                mul *= 1 + e.amp * env
                            else:
                                add += e.amp * env
                    v = v * mul + add
                if v < floor:
                    v = floor
                elif v > high:
                    v = high
                v = round(v, dec)
                flt = faults.get(idx)
                if flt is not None:
                    dropped = False
                    for f in flt:
                        if f.t0 <= t < f.t1:
                            if f.kind == "dropout":
                                dropped = True
                                break
                            v = round(_apply_fault(f.kind, f, t, v, CATALOGUE[s.sensor_type].low, high, stuck), dec)
                    if dropped:
                        continue
                yield Reading(s, t, ts, float(v))


def simulate(
    city: City,
    start: datetime,
    duration: timedelta,
    incidents: Sequence[str | IncidentSpec] = (),
    faults: int | Sequence[str | FaultSpec] = 0,
    seed: int = 0,
    calls_per_hour: float = 30.0,
    ticket_updates: bool = False,
) -> tuple[Scenario, Iterator[Event]]:
    """`plan` + `generate` in one call: the labels (scenario.labels) and the events."""
    scenario = plan(city, start, duration, incidents=incidents, faults=faults, seed=seed,
                    calls_per_hour=calls_per_hour, ticket_updates=ticket_updates)
    return scenario, generate(city, scenario)


def validated(events: Iterable[Event], skip_invalid: bool = False) -> Iterator[SensorReading | HotlineEvent]:
    """The validated path: wire models instead of payloads. An out-of-range
    fault reading fails validation (as at ingestion): it raises, or is
    skipped with `skip_invalid`. Calls come without the caller (no PII key here)."""
    for ev in events:
        try:
            yield ev.model()
        except ValidationError:
            if not skip_invalid:
                raise
