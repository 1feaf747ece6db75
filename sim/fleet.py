"""The sensor fleet: where each sensor is, what it measures, how it behaves.

`build_city(seed, sensors=N)` places N sensors over the chosen districts with
a realistic mix of types, per-site parameters (baseline scale, offset, noise)
and per-site metadata (water-level warning/guarantee levels, gas alarm levels,
road names). Same seed, same city.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from citybrain.errors import ConfigError
from schemas import CATALOGUE, Location, SensorType
from sim.geo import KM_PER_DEG_LAT, Cell, Geography, Street, load_geography
from sim.rhythm import MODEL_OF_TYPE, MODELS, RHYTHMS

# share of each type in a city-wide fleet (sums to 1)
DEFAULT_MIX: dict[SensorType, float] = {
    SensorType.PM25: 0.12, SensorType.PM10: 0.08, SensorType.NO2: 0.06, SensorType.O3: 0.05,
    SensorType.CO: 0.04, SensorType.SO2: 0.03, SensorType.WATER_LEVEL: 0.08, SensorType.RAINFALL: 0.05,
    SensorType.NOISE: 0.12, SensorType.TRAFFIC_FLOW: 0.10, SensorType.TRAFFIC_SPEED: 0.10,
    SensorType.MANHOLE_GAS: 0.12, SensorType.TEMPERATURE: 0.05,
}  # fmt: skip

# short type codes used in sensor ids (ids stay TTS-device-id compatible: [a-z0-9-])
TYPE_CODE: dict[SensorType, str] = {
    SensorType.PM25: "pm25", SensorType.PM10: "pm10", SensorType.NO2: "no2", SensorType.O3: "o3",
    SensorType.CO: "co", SensorType.SO2: "so2", SensorType.WATER_LEVEL: "wl", SensorType.RAINFALL: "rain",
    SensorType.NOISE: "noise", SensorType.TRAFFIC_FLOW: "tflow", SensorType.TRAFFIC_SPEED: "tspeed",
    SensorType.MANHOLE_GAS: "gas", SensorType.TEMPERATURE: "temp",
}  # fmt: skip

# sensors per street are denser in the centre
_DENSITY = {"core": 4.0, "urban": 3.0, "suburban": 1.5, "ecological": 0.7}

UNDERPASS_WARNING_M = 0.15  # water on the road: warn
UNDERPASS_CLOSE_M = 0.27  # Beijing closes an underpass at 27 cm of standing water
GAS_ALARM_LEL = (20.0, 50.0)  # 一级/二级报警 of combustible-gas detectors


@dataclass(frozen=True, slots=True)
class Sensor:
    """One sensor. `loc` is the plain-dict twin of `location` for the fast
    payload path: shared, never mutate it."""

    index: int
    sensor_id: str
    sensor_type: SensorType
    unit: str
    interval_s: int
    phase_s: int  # reports at epoch seconds t with t % interval_s == phase_s
    location: Location
    loc: Mapping[str, Any]
    site: Mapping[str, Any]
    model: int  # index into rhythm.MODELS
    scale: float
    offset: float
    noise_sd: float  # absolute stationary sd of the AR(1) noise
    floor: float
    decimals: int
    json_tail: str  # the constant part of its reading JSON, for `Reading.json()`

    @property
    def district(self) -> str:
        return self.location.district

    @property
    def street(self) -> str:
        return self.location.street or ""


@dataclass(frozen=True, slots=True)
class City:
    seed: int
    geography: Geography
    districts: tuple[str, ...]  # Chinese names of the districts in play
    sensors: tuple[Sensor, ...]

    def by_type(self, sensor_type: SensorType, site_kind: str | None = None) -> list[Sensor]:
        return [
            s for s in self.sensors
            if s.sensor_type is sensor_type and (site_kind is None or s.site.get("kind") == site_kind)
        ]

    def readings_per_second(self) -> float:
        """The fleet's natural event-time rate; publishing at speed k offers k times this."""
        return sum(1 / s.interval_s for s in self.sensors)

    def sensor(self, sensor_id: str) -> Sensor:
        for s in self.sensors:
            if s.sensor_id == sensor_id:
                return s
        raise KeyError(sensor_id)

    def streets(self) -> list[Street]:
        return [s for d in self.districts for s in self.geography.district(d).streets]


def dev_eui(sensor_id: str) -> str:
    """A stable LoRaWAN DevEUI (16 hex digits) for a sensor."""
    return hashlib.blake2b(sensor_id.encode(), digest_size=8).hexdigest().upper()


def device_id(sensor_id: str) -> str:
    """A TTS-style device id ([a-z0-9](-?[a-z0-9])*, at most 36 chars)."""
    clean = "".join(c if c.isalnum() else "-" for c in sensor_id.lower()).strip("-")
    return ("cb-" + clean)[:36].rstrip("-")


def registry(city: City) -> list[dict[str, Any]]:
    """The device registry the ingestion connectors map LoRaWAN uplinks with."""
    return [
        {
            "sensor_id": s.sensor_id,
            "sensor_type": s.sensor_type.value,
            "unit": s.unit,
            "location": dict(s.loc),
            "dev_eui": dev_eui(s.sensor_id),
            "device_id": device_id(s.sensor_id),
            "interval_s": s.interval_s,
            "site": dict(s.site),
        }
        for s in city.sensors
    ]


def _type_counts(n: int, mix: Mapping[SensorType, float]) -> dict[SensorType, int]:
    """Largest-remainder allocation; every type in the mix gets one first when n allows."""
    types = [t for t, share in mix.items() if share > 0]
    total = sum(mix[t] for t in types)
    base = {t: 1 if n >= len(types) else 0 for t in types}
    rest = n - sum(base.values())
    exact = {t: rest * mix[t] / total for t in types}
    counts = {t: base[t] + int(exact[t]) for t in types}
    left = n - sum(counts.values())
    for t in sorted(types, key=lambda t: exact[t] - int(exact[t]), reverse=True)[:left]:
        counts[t] += 1
    return counts


def _point(rng: random.Random, cell: Cell) -> tuple[float, float]:
    dlat = cell.half_km / KM_PER_DEG_LAT
    dlon = dlat / math.cos(math.radians(cell.lat))
    return round(cell.lat + rng.uniform(-dlat, dlat), 6), round(cell.lon + rng.uniform(-dlon, dlon), 6)


def _site(rng: random.Random, t: SensorType, n: int, street: Street, d_rivers: Sequence[str],
          d_under: Sequence[str], d_roads: Sequence[str]) -> tuple[str, dict[str, Any], float]:
    """(model name, site metadata, offset override or nan) for one sensor."""
    short = street.name.removesuffix("街道").removesuffix("地区")
    if t is SensorType.WATER_LEVEL:
        if n % 2 == 0:  # alternate so both kinds exist in any fleet with two gauges
            base = round(rng.uniform(0.8, 3.5), 2)
            warn = round(base + rng.uniform(1.0, 1.8), 2)
            return "water_river", {
                "kind": "river", "name": rng.choice(d_rivers), "section": street.name,
                "base_level": base, "warning_level": warn,
                "guarantee_level": round(warn + rng.uniform(0.8, 1.4), 2),
                "note": "stage in m above the gauge datum; 警戒水位 warning, 保证水位 guarantee",
            }, base
        name = rng.choice(d_under) if rng.random() < 0.6 else f"{short}下穿通道"
        return "water_underpass", {
            "kind": "underpass", "name": name, "warning_level": UNDERPASS_WARNING_M,
            "guarantee_level": UNDERPASS_CLOSE_M,
            "note": "standing water depth in m at the lowest point; guarantee_level = closure depth",
        }, 0.0
    model = MODEL_OF_TYPE[t]
    if t is SensorType.MANHOLE_GAS:
        return model, {"kind": "manhole", "name": f"{rng.choice(d_roads)}燃气阀井{rng.randint(1, 60)}号",
                       "alarm_level_1": GAS_ALARM_LEL[0], "alarm_level_2": GAS_ALARM_LEL[1]}, math.nan
    if t in (SensorType.TRAFFIC_FLOW, SensorType.TRAFFIC_SPEED):
        return model, {"kind": "road", "road": rng.choice(d_roads), "lanes": rng.randint(2, 5)}, math.nan
    if CATALOGUE[t].category == "air":
        return model, {"kind": "air_station", "name": f"{short}空气质量微站"}, math.nan
    if t is SensorType.NOISE:
        return model, {"kind": "noise_station", "zone_class": rng.choice([1, 2, 2, 3, 4])}, math.nan
    if t is SensorType.RAINFALL:
        return model, {"kind": "rain_gauge", "name": f"{short}雨量站"}, math.nan
    return model, {"kind": "weather", "name": f"{short}气象站"}, math.nan


def build_city(
    seed: int = 0,
    sensors: int = 100,
    districts: Sequence[str] | None = None,
    mix: Mapping[SensorType, float] | None = None,
    prefix: str = "",
    geography: Geography | None = None,
) -> City:
    """A city of `sensors` sensors over `districts` (names or codes; default all 16).

    `prefix` is prepended to every sensor id, so two runs against one database
    can keep their readings apart."""
    if sensors < 1:
        raise ConfigError(f"sensors must be at least 1, got {sensors}")
    geo = geography or load_geography()
    chosen = [geo.district(d) for d in districts] if districts else list(geo.districts)
    if len({d.code for d in chosen}) != len(chosen):
        raise ConfigError("a district is listed twice")
    rng = random.Random(f"{seed}/city")
    counts = _type_counts(sensors, mix or DEFAULT_MIX)
    types = [t for t, c in counts.items() for _ in range(c)]
    rng.shuffle(types)
    streets = [(d, s) for d in chosen for s in d.streets]
    cum: list[float] = []
    for d, _ in streets:
        cum.append((cum[-1] if cum else 0.0) + _DENSITY.get(d.kind, 1.0))
    width = max(6, len(str(sensors)))
    model_index = {m: i for i, m in enumerate(MODELS)}
    per_type_seen: dict[SensorType, int] = {}
    out = []
    # the first pass puts one sensor in every street (in a shuffled order) so small fleets spread
    order = list(range(len(streets)))
    rng.shuffle(order)
    for i, t in enumerate(types):
        d, st = streets[order[i]] if i < len(order) else rng.choices(streets, cum_weights=cum)[0]
        cell = rng.choice(st.cells)
        lat, lon = _point(rng, cell)
        n = per_type_seen.get(t, 0)
        per_type_seen[t] = n + 1
        model, site, offset = _site(rng, t, n, st, d.rivers, d.underpasses, d.roads)
        r = RHYTHMS[model]
        spec = CATALOGUE[t]
        scale = rng.uniform(*r.scale)
        if math.isnan(offset):
            offset = rng.uniform(*r.offset)
        sid = f"{prefix}{TYPE_CODE[t]}-{d.code}-{i:0{width}d}"
        loc = {"district": d.name, "street": st.name, "grid": cell.id, "lat": lat, "lon": lon}
        tail = orjson.dumps({"sensor_id": sid, "sensor_type": t.value, "unit": spec.unit, "location": loc,
                             "source": "sim"}).decode()[1:]
        out.append(Sensor(
            index=i, sensor_id=sid, sensor_type=t, unit=spec.unit, interval_s=spec.interval_s,
            phase_s=rng.randrange(spec.interval_s), location=Location(district=d.name, street=st.name, grid=cell.id, lat=lat, lon=lon),
            loc=loc, site=site,
            model=model_index[model], scale=scale, offset=offset,
            noise_sd=r.noise * scale if r.mode == "mul" else r.noise,
            floor=r.floor, decimals=r.decimals, json_tail=tail,
        ))
    return City(seed=seed, geography=geo, districts=tuple(d.name for d in chosen), sensors=tuple(out))
