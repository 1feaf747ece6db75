"""What happens in a run: incidents and sensor faults, resolved from loose
specs ("a rainstorm somewhere") into concrete, labelled ground truth.

`plan()` is pure: from the city, the time range, the specs and a seed it
decides where and when everything happens and returns a `Scenario` holding

- `labels`: one `Label` per incident and per fault (kind, where, which sensors,
  start, end, which tickets it caused): what a detector is scored against;
- `effects`: per sensor, the envelopes that move its signal during an incident;
- `faults`: per sensor, the device faults that corrupt its readings;
- `calls`: the hotline calls the incidents cause.

Faults are placed only on sensors no incident touches, so a fault is never
mistaken for part of an incident in the labels (detectors still may confuse
them: that is what the labels are for).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from citybrain.errors import ConfigError
from schemas import CATALOGUE, HotlineCategory, SensorType
from sim.fleet import City, Sensor
from sim.geo import Street, distance_km
from sim.hotline import Call, in_heating_season, iso, make_call, ticket_id

INCIDENT_KINDS = ("rainstorm", "pollution", "gas_leak", "night_construction", "traffic_jam", "heating_outage")
FAULT_KINDS = ("dropout", "stuck", "spike", "drift", "out_of_range")
OUT_OF_RANGE_VALUES = (-9999.0, 65535.0)  # sentinels real loggers emit; outside every physical range
H = 3600
M = 60


@dataclass(frozen=True, slots=True)
class IncidentSpec:
    """What to inject; anything left None/empty is chosen by the seed."""

    kind: str
    start: timedelta | datetime | None = None  # offset from the run start, or absolute
    duration: timedelta | None = None  # the plateau (full strength), ramps excluded
    ramp: timedelta | None = None  # time to build up to full strength
    districts: tuple[str, ...] = ()
    streets: tuple[str, ...] = ()
    intensity: float = 1.0


@dataclass(frozen=True, slots=True)
class FaultSpec:
    kind: str
    sensor_id: str | None = None
    start: timedelta | datetime | None = None
    duration: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Effect:
    """A trapezoid envelope: 0 before t0, rising over `up`, 1 until t1, falling over `down`.
    `mul`: value *= 1 + amp * env; else value += amp * env. `wobble` adds a
    +-fraction sinusoid of `period` s (convective rain cells come and go)."""

    t0: int
    up: int
    t1: int
    down: int
    amp: float
    mul: bool = False
    wobble: float = 0.0
    period: int = 1200

    @property
    def end(self) -> int:
        return self.t1 + self.down

    def env(self, t: int) -> float:
        if t < self.t0 or t >= self.t1 + self.down:
            return 0.0
        if t < self.t0 + self.up:
            return (t - self.t0) / self.up
        if t <= self.t1:
            return 1.0
        return 1.0 - (t - self.t1) / self.down


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    t0: int
    t1: int
    param: float
    label_id: str


@dataclass(frozen=True, slots=True)
class Label:
    label_id: str
    kind: str
    category: str  # "incident" | "fault"
    start: int
    end: int
    districts: tuple[str, ...]
    streets: tuple[str, ...]
    sensor_ids: tuple[str, ...]
    signals: tuple[str, ...] = ()  # sensor types it moves
    ticket_ids: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label_id": self.label_id, "kind": self.kind, "category": self.category,
            "start": iso(self.start), "end": iso(self.end), "districts": list(self.districts),
            "streets": list(self.streets), "sensor_ids": list(self.sensor_ids), "signals": list(self.signals),
            "ticket_ids": list(self.ticket_ids), "details": dict(self.details),
        }


@dataclass(frozen=True, slots=True)
class Scenario:
    seed: int
    start: int  # epoch seconds, inclusive
    end: int  # exclusive
    labels: tuple[Label, ...]
    effects: Mapping[int, tuple[Effect, ...]]  # sensor index -> envelopes
    faults: Mapping[int, tuple[Fault, ...]]
    calls: tuple[Call, ...]  # incident-driven, time-ordered
    calls_per_hour: float  # background hotline rate
    ticket_updates: bool = False  # also emit each ticket's status changes and feedback

    def label(self, kind: str) -> Label:
        return next(lb for lb in self.labels if lb.kind == kind)


class _Planner:
    """Mutable scratchpad of `plan()`; never escapes it."""

    def __init__(self, city: City, start: int, end: int, seed: int) -> None:
        self.city, self.start, self.end, self.seed = city, start, end, seed
        self.rng = random.Random(f"{seed}/plan")
        self.effects: dict[int, list[Effect]] = {}
        self.faults: dict[int, list[Fault]] = {}
        self.labels: list[Label] = []
        self.calls: list[Call] = []
        self.touched: set[int] = set()

    # ---------------------------------------------------------------- helpers
    def when(self, spec_start: timedelta | datetime | None, lead: int, total: int) -> int:
        """Start time: as given, else random so that `lead` + `total` fits (clipped to the run)."""
        if isinstance(spec_start, datetime):
            if spec_start.tzinfo is None:
                raise ConfigError("incident start must carry a timezone")
            return int(spec_start.timestamp())
        if isinstance(spec_start, timedelta):
            return self.start + int(spec_start.total_seconds())
        span = self.end - self.start
        latest = max(self.start, self.end - lead - total)
        earliest = min(self.start + min(span // 20, 30 * M), latest)
        return self.rng.randint(earliest, latest)

    def districts(self, names: Sequence[str], pick: int, need: SensorType | None = None,
                  site: str | None = None) -> list[str]:
        geo = self.city.geography
        if names:
            return [geo.district(n).name for n in names]
        pool = list(self.city.districts)
        if need is not None:
            having = {s.district for s in self.city.by_type(need, site)}
            pool = [d for d in pool if d in having] or pool
        centre = geo.district(self.rng.choice(pool))
        near = sorted(self.city.districts, key=lambda n: distance_km(
            centre.lat, centre.lon, geo.district(n).lat, geo.district(n).lon))
        return near[:pick]

    def street_obj(self, district: str, street: str) -> Street:
        return self.city.geography.street(district, street)

    def add(self, sensors: Sequence[Sensor], effect: Effect, jitter: float = 0.0) -> None:
        for s in sensors:
            e = effect
            if jitter:
                e = Effect(effect.t0, effect.up, effect.t1, effect.down,
                           effect.amp * self.rng.uniform(1 - jitter, 1.0), effect.mul, effect.wobble, effect.period)
            self.effects.setdefault(s.index, []).append(e)
            self.touched.add(s.index)

    def incident_calls(self, lid: str, n: int, cat: HotlineCategory, streets: Sequence[Street], t0: int,
                       t1: int, urgent: float = 0.2, roads: Sequence[str] = ()) -> list[Call]:
        out = []
        for i in range(n):
            t = self.rng.randint(t0, max(t0, t1 - 1))
            if not self.start <= t < self.end:
                continue
            st = self.rng.choice(list(streets))
            road = self.rng.choice(list(roads)) if roads else None
            out.append(make_call(self.rng, t, cat, st, ticket_id(self.seed, lid, i, t), cause=lid,
                                 urgent=urgent, road=road))
        self.calls.extend(out)
        return out

    def label(self, lid: str, kind: str, t0: int, t1: int, sensors: Sequence[Sensor], streets: Sequence[Street],
              calls: Sequence[Call], districts: Sequence[str] = (), **details: Any) -> None:
        dists = sorted(set(districts) | {s.district for s in sensors} | {c.loc["district"] for c in calls})
        strs = sorted({s.street for s in sensors} | {st.name for st in streets} | {c.loc["street"] for c in calls})
        self.labels.append(Label(
            label_id=lid, kind=kind, category="incident", start=max(t0, self.start), end=min(t1, self.end),
            districts=tuple(dists), streets=tuple(strs), sensor_ids=tuple(s.sensor_id for s in sensors),
            signals=tuple(sorted({s.sensor_type.value for s in sensors})),
            ticket_ids=tuple(c.ticket_id for c in calls), details=details,
        ))

    def need(self, kind: str, sensors: Sequence[Sensor], what: str) -> None:
        if not sensors:
            raise ConfigError(f"{kind} needs {what} in the city; add sensors or districts")

    def streets_of(self, sensors: Sequence[Sensor]) -> list[Street]:
        seen = {(s.district, s.street) for s in sensors}
        return [self.street_obj(d, st) for d, st in sorted(seen)]


def _td(value: timedelta | None, default: int) -> int:
    return int(value.total_seconds()) if value is not None else default


# ------------------------------------------------------------------ incidents
def _rainstorm(p: _Planner, spec: IncidentSpec, lid: str) -> None:
    area = p.districts(spec.districts, 2, SensorType.WATER_LEVEL, "underpass")
    up, plateau = _td(spec.ramp, 20 * M), _td(spec.duration, 90 * M)
    t0 = p.when(spec.start, 0, up + plateau + 40 * M)
    t1 = t0 + up + plateau
    inside = [s for s in p.city.sensors if s.district in area]
    rain = [s for s in inside if s.sensor_type is SensorType.RAINFALL]
    under = [s for s in inside if s.site.get("kind") == "underpass"]
    river = [s for s in inside if s.site.get("kind") == "river"]
    speed = [s for s in inside if s.sensor_type is SensorType.TRAFFIC_SPEED]
    flow = [s for s in inside if s.sensor_type is SensorType.TRAFFIC_FLOW]
    p.need("rainstorm", rain, "a rainfall sensor")
    p.need("rainstorm", under, "an underpass water-level sensor")
    peak = p.rng.uniform(45, 80) * spec.intensity  # mm/h: 暴雨 is > 16 mm/h
    p.add(rain, Effect(t0, up, t1, 40 * M, peak, wobble=0.3, period=p.rng.randint(900, 1800)), jitter=0.35)
    # underpasses fill ~10 min behind the rain and drain over an hour
    p.add(under, Effect(t0 + 10 * M, up + 15 * M, t1 + 10 * M, 60 * M, 0.55 * spec.intensity), jitter=0.3)
    p.add(river, Effect(t0 + 45 * M, 2 * H, t1 + 2 * H, 6 * H, 1.4 * spec.intensity), jitter=0.4)
    p.add(speed, Effect(t0 + 5 * M, up, t1 + 20 * M, 40 * M, -0.5, mul=True), jitter=0.3)
    p.add(flow, Effect(t0 + 5 * M, up, t1 + 20 * M, 40 * M, -0.25, mul=True), jitter=0.3)
    wet = p.streets_of(under)
    d_roads = [r for d in area for r in p.city.geography.district(d).underpasses]
    calls = p.incident_calls(lid, max(4, round(p.rng.randint(8, 16) * spec.intensity)), HotlineCategory.FLOODING,
                             wet, t0 + 15 * M, t1 + 20 * M, urgent=0.5, roads=d_roads)
    calls += p.incident_calls(lid + "-t", p.rng.randint(1, 3), HotlineCategory.TRAFFIC, wet, t0 + 20 * M, t1,
                              roads=d_roads)
    sensors = rain + under + river + speed + flow
    end = max(e.end for s in sensors for e in p.effects[s.index])
    p.label(lid, "rainstorm", t0, end, sensors, wet, calls, area, peak_rain_mm_h=round(peak, 1),
            underpass_sensors=[s.sensor_id for s in under])


def _pollution(p: _Planner, spec: IncidentSpec, lid: str) -> None:
    area = p.districts(spec.districts, 3, SensorType.PM25)
    up, plateau = _td(spec.ramp, 2 * H), _td(spec.duration, 10 * H)
    t0 = p.when(spec.start, 0, up + plateau)
    t1 = t0 + up + plateau
    inside = [s for s in p.city.sensors if s.district in area]
    pm25 = [s for s in inside if s.sensor_type is SensorType.PM25]
    p.need("pollution", pm25, "a PM2.5 sensor")
    peak = p.rng.uniform(160, 230) * spec.intensity  # added ug/m3: heavy pollution (重度污染) at the peak
    extra = {SensorType.PM10: 1.4 * peak, SensorType.CO: 0.006 * peak, SensorType.NO2: 0.2 * peak,
             SensorType.SO2: 0.05 * peak}
    p.add(pm25, Effect(t0, up, t1, 3 * H, peak), jitter=0.2)
    moved = list(pm25)
    for t, amp in extra.items():
        group = [s for s in inside if s.sensor_type is t]
        p.add(group, Effect(t0, up, t1, 3 * H, amp), jitter=0.2)
        moved += group
    streets = [st for d in area for st in p.city.geography.district(d).streets]
    calls = p.incident_calls(lid, p.rng.randint(2, 6), HotlineCategory.AIR_POLLUTION, streets, t0 + up, t1)
    p.label(lid, "pollution", t0, t1 + 3 * H, moved, [], calls, area, peak_added_pm25=round(peak, 1))


def _gas_leak(p: _Planner, spec: IncidentSpec, lid: str) -> None:
    pool = [s for s in p.city.by_type(SensorType.MANHOLE_GAS)
            if (not spec.districts or s.district in {p.city.geography.district(d).name for d in spec.districts})]
    p.need("gas_leak", pool, "a manhole gas sensor")
    manhole = p.rng.choice(pool)
    up, plateau = _td(spec.ramp, 20 * M), _td(spec.duration, 60 * M)
    t0 = p.when(spec.start, 0, up + plateau + 15 * M)
    t1 = t0 + up + plateau
    peak = min(95.0, p.rng.uniform(30, 60) * spec.intensity)  # %LEL: past alarm level 1 (20) at least
    p.add([manhole], Effect(t0, up, t1, 15 * M, peak))
    street = p.street_obj(manhole.district, manhole.street)
    road = str(manhole.site["name"]).split("燃气")[0]
    calls = p.incident_calls(lid, p.rng.randint(3, 7), HotlineCategory.GAS_SMELL, [street], t0 + 10 * M, t1,
                             urgent=0.8, roads=[road])
    calls += p.incident_calls(lid + "-o", p.rng.randint(1, 2), HotlineCategory.ODOUR, [street], t0 + 10 * M, t1)
    p.label(lid, "gas_leak", t0, t1 + 15 * M, [manhole], [street], calls, peak_lel=round(peak, 1))


def _night_construction(p: _Planner, spec: IncidentSpec, lid: str) -> None:
    noise = p.city.by_type(SensorType.NOISE)
    if spec.districts:
        wanted = {p.city.geography.district(d).name for d in spec.districts}
        noise = [s for s in noise if s.district in wanted]
    p.need("night_construction", noise, "a noise sensor")
    anchor = p.rng.choice(noise)
    near = [s for s in noise if (s.district, s.street) == (anchor.district, anchor.street)]
    plateau = _td(spec.duration, 4 * H)
    if spec.start is None:  # next 22:00-23:00 local after the run starts, if it fits
        local = p.start + 8 * H
        t0 = local - local % (24 * H) + 22 * H - 8 * H + p.rng.randint(0, 60) * M
        if t0 < p.start:
            t0 += 24 * H
        if t0 + plateau > p.end:
            t0 = p.when(None, 0, plateau)
    else:
        t0 = p.when(spec.start, 0, plateau)
    t1 = t0 + 5 * M + plateau
    p.add(near, Effect(t0, 5 * M, t1, 5 * M, p.rng.uniform(15, 22) * spec.intensity), jitter=0.2)
    street = p.street_obj(anchor.district, anchor.street)
    calls = p.incident_calls(lid, p.rng.randint(4, 10), HotlineCategory.NOISE, [street], t0 + 15 * M, t1)
    p.label(lid, "night_construction", t0, t1 + 5 * M, near, [street], calls)


def _traffic_jam(p: _Planner, spec: IncidentSpec, lid: str) -> None:
    speed = p.city.by_type(SensorType.TRAFFIC_SPEED)
    if spec.districts:
        wanted = {p.city.geography.district(d).name for d in spec.districts}
        speed = [s for s in speed if s.district in wanted]
    p.need("traffic_jam", speed, "a traffic speed sensor")
    anchor = p.rng.choice(speed)
    streets = {(anchor.district, anchor.street)}
    jammed = [s for s in p.city.sensors if (s.district, s.street) in streets
              and s.sensor_type in (SensorType.TRAFFIC_SPEED, SensorType.TRAFFIC_FLOW)]
    up, plateau = _td(spec.ramp, 10 * M), _td(spec.duration, p.rng.randint(45, 120) * M)
    t0 = p.when(spec.start, 0, up + plateau + 20 * M)
    t1 = t0 + up + plateau
    for s in jammed:
        amp = -0.7 if s.sensor_type is SensorType.TRAFFIC_SPEED else -0.35
        p.add([s], Effect(t0, up, t1, 20 * M, amp * min(1.0, spec.intensity), mul=True), jitter=0.15)
    street = p.street_obj(anchor.district, anchor.street)
    calls = p.incident_calls(lid, p.rng.randint(1, 4), HotlineCategory.TRAFFIC, [street], t0 + up, t1,
                             roads=[str(anchor.site["road"])])
    p.label(lid, "traffic_jam", t0, t1 + 20 * M, jammed, [street], calls, road=anchor.site["road"])


def _heating_outage(p: _Planner, spec: IncidentSpec, lid: str) -> None:
    plateau = _td(spec.duration, 6 * H)
    t0 = p.when(spec.start, 0, plateau)
    if not in_heating_season(t0):
        raise ConfigError("heating_outage needs a run in the heating season (15 Nov - 15 Mar)")
    names = p.districts(spec.districts, 1)
    street = p.rng.choice(p.city.geography.district(names[0]).streets)
    calls = p.incident_calls(lid, max(3, round(p.rng.randint(10, 25) * spec.intensity)), HotlineCategory.HEATING,
                             [street], t0, t0 + plateau, urgent=0.3)
    p.label(lid, "heating_outage", t0, t0 + plateau, [], [street], calls)


_INCIDENTS = {
    "rainstorm": _rainstorm, "pollution": _pollution, "gas_leak": _gas_leak,
    "night_construction": _night_construction, "traffic_jam": _traffic_jam, "heating_outage": _heating_outage,
}


# --------------------------------------------------------------------- faults
def _fault(p: _Planner, spec: FaultSpec, lid: str) -> None:
    if spec.sensor_id is not None:
        try:
            s = p.city.sensor(spec.sensor_id)
        except KeyError:
            raise ConfigError(f"fault on unknown sensor {spec.sensor_id!r}") from None
    else:
        free = [s for s in p.city.sensors if s.index not in p.touched and s.index not in p.faults]
        if spec.kind == "spike":  # a spike on a dry rain gauge would read as rain: keep them clear of it
            free = [s for s in free if s.sensor_type is not SensorType.RAINFALL] or free
        if not free:
            raise ConfigError("no sensor left for a fault: more sensors or fewer faults")
        s = p.rng.choice(free)
    spec_range = CATALOGUE[s.sensor_type]
    span = spec_range.high - spec_range.low
    k = spec.kind
    default = {"dropout": p.rng.randint(15, 60) * M, "stuck": p.rng.randint(40, 120) * M,
               "spike": s.interval_s * p.rng.randint(1, 3), "drift": p.rng.randint(2, 6) * H,
               "out_of_range": p.rng.randint(5, 20) * M}[k]
    dur = _td(spec.duration, default)
    # at least a few readings inside, so the fault is visible in the data it labels
    dur = max(dur, s.interval_s * (1 if k == "spike" else 3))
    t0 = p.when(spec.start, 0, dur)
    t1 = min(t0 + dur, p.end)
    if k == "spike":
        param = span * p.rng.uniform(0.05, 0.15)
    elif k == "drift":
        size = 0.5 * s.scale if s.noise_sd and s.scale > 1 else span * 0.04
        param = size * p.rng.choice((-1, 1))
    elif k == "out_of_range":
        param = p.rng.choice(OUT_OF_RANGE_VALUES)
    else:
        param = 0.0
    p.faults.setdefault(s.index, []).append(Fault(k, t0, t1, param, lid))
    p.labels.append(Label(
        label_id=lid, kind=k, category="fault", start=t0, end=t1, districts=(s.district,),
        streets=(s.street,), sensor_ids=(s.sensor_id,), signals=(s.sensor_type.value,),
        details={"param": round(param, 3)} if param else {},
    ))


def _in_season(kind: str, t: int) -> bool:
    """For "all": no heating outage in summer, no rainstorm outside May-September
    (Beijing's flood season proper is June to mid-September)."""
    if kind == "heating_outage":
        return in_heating_season(t)
    if kind == "rainstorm":
        return 5 <= datetime.fromtimestamp(t + 8 * H, UTC).month <= 9
    return True


def plan(
    city: City,
    start: datetime,
    duration: timedelta,
    incidents: Sequence[str | IncidentSpec] = (),
    faults: int | Sequence[str | FaultSpec] = 0,
    seed: int = 0,
    calls_per_hour: float = 30.0,
    ticket_updates: bool = False,
) -> Scenario:
    """Decide everything that happens in [start, start + duration).

    `incidents`: kinds (see INCIDENT_KINDS) or specs; "all" = every kind that
    fits the season (an explicitly named kind is injected in any season but
    heating_outage, which needs the heating season). `faults`: a count (kinds taken in turn, so 5 gives one of
    each) or kinds/specs. `ticket_updates`: each call is followed by its
    ticket's in_progress, resolved and (mostly) feedback events."""
    if start.tzinfo is None:
        raise ConfigError("start must carry a timezone")
    if duration <= timedelta(0):
        raise ConfigError("duration must be positive")
    t_start = int(start.timestamp())
    p = _Planner(city, t_start, t_start + int(duration.total_seconds()), seed)
    wanted: list[tuple[str | IncidentSpec, bool]] = []  # (what, required)
    for item in incidents:
        if item == "all":
            wanted += [(k, False) for k in INCIDENT_KINDS if _in_season(k, t_start)]
        else:
            wanted.append((item, True))
    for n, (item, required) in enumerate(wanted):
        spec = item if isinstance(item, IncidentSpec) else IncidentSpec(kind=item)
        if spec.kind not in _INCIDENTS:
            raise ConfigError(f"unknown incident {spec.kind!r}; known: {', '.join(INCIDENT_KINDS)}")
        try:
            _INCIDENTS[spec.kind](p, spec, f"inc-{seed}-{n}-{spec.kind}")
        except ConfigError:
            # "all" means all that this city can show: a fleet without manholes has no gas leak
            if required:
                raise
    fault_items = [FAULT_KINDS[i % len(FAULT_KINDS)] for i in range(faults)] if isinstance(faults, int) else faults
    for n, f in enumerate(fault_items):
        fspec = f if isinstance(f, FaultSpec) else FaultSpec(kind=f)
        if fspec.kind not in FAULT_KINDS:
            raise ConfigError(f"unknown fault {fspec.kind!r}; known: {', '.join(FAULT_KINDS)}")
        _fault(p, fspec, f"flt-{seed}-{n}-{fspec.kind}")
    return Scenario(
        seed=seed, start=p.start, end=p.end, labels=tuple(p.labels),
        effects={k: tuple(v) for k, v in p.effects.items()},
        faults={k: tuple(sorted(v, key=lambda f: f.t0)) for k, v in p.faults.items()},
        calls=tuple(sorted(p.calls, key=lambda c: (c.t, c.ticket_id))), calls_per_hour=calls_per_hour,
        ticket_updates=ticket_updates,
    )
