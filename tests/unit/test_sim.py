"""The simulator: geography, fleet, rhythms, faults, incident coupling, hotline,
reproducibility, labels consistent with the data."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from statistics import mean

import orjson
import pytest
from pydantic import ValidationError

from citybrain.errors import ConfigError
from schemas import CATALOGUE, HotlineCategory, SensorReading, SensorType
from sim import (
    FAULT_KINDS,
    Call,
    City,
    IncidentSpec,
    Reading,
    Scenario,
    build_city,
    generate,
    load_geography,
    plan,
    registry,
)
from sim.geo import distance_km
from sim.rhythm import level
from sim.scenarios import demo

JULY = datetime(2025, 7, 2, 0, 0, tzinfo=UTC)  # 08:00 Beijing, a Wednesday
JANUARY = datetime(2025, 1, 15, 0, 0, tzinfo=UTC)
LOCAL = 8 * 3600
DISTRICTS = ["东城区", "西城区", "朝阳区", "海淀区", "丰台区", "石景山区", "门头沟区", "房山区", "通州区", "顺义区",
             "昌平区", "大兴区", "怀柔区", "平谷区", "密云区", "延庆区"]  # fmt: skip


def readings(events: list) -> list[Reading]:
    return [e for e in events if isinstance(e, Reading)]


def calls(events: list) -> list[Call]:
    return [e for e in events if isinstance(e, Call)]


def by_sensor(events: list) -> dict[str, list[Reading]]:
    out: dict[str, list[Reading]] = defaultdict(list)
    for r in readings(events):
        out[r.sensor.sensor_id].append(r)
    return out


# ------------------------------------------------------------------ geography
def test_geography_has_the_16_districts_with_streets_and_cells() -> None:
    geo = load_geography()
    assert [d.name for d in geo.districts] == DISTRICTS
    assert len({d.code for d in geo.districts}) == 16
    assert geo.district("chaoyang").name == "朝阳区"
    assert geo.district_codes()["海淀区"] == "haidian"
    for d in geo.districts:
        assert len(d.streets) >= 8, d.name
        assert d.rivers and d.underpasses and d.roads
        assert re.fullmatch(r"1101\d\d", d.adcode)
        for s in d.streets:
            assert s.name.endswith(("街道", "镇", "乡", "地区")), s.name
            assert 39.4 < s.lat < 41.1 and 115.4 < s.lon < 117.6, s.name
            assert distance_km(s.lat, s.lon, d.lat, d.lon) < 70, s.name
            assert len(s.cells) == 9
    cells = geo.cells()
    assert len({c.id for c in cells}) == len(cells)
    assert geo.street("朝阳区", "望京街道").cells[0].id == "chaoyang.wangjing.1"
    with pytest.raises(ConfigError, match="unknown district"):
        geo.district("gotham")


# ---------------------------------------------------------------------- fleet
def test_fleet_has_every_type_with_site_metadata_and_registry() -> None:
    city = build_city(seed=3, sensors=200)
    types = {s.sensor_type for s in city.sensors}
    assert types == set(SensorType)
    assert len({s.sensor_id for s in city.sensors}) == 200
    for s in city.sensors:
        assert s.unit == CATALOGUE[s.sensor_type].unit
        assert s.interval_s == CATALOGUE[s.sensor_type].interval_s
        assert 0 <= s.phase_s < s.interval_s
        assert s.location.district in DISTRICTS and s.location.grid
    kinds = {s.site["kind"] for s in city.by_type(SensorType.WATER_LEVEL)}
    assert kinds == {"river", "underpass"}
    for s in city.by_type(SensorType.WATER_LEVEL):
        assert s.site["warning_level"] < s.site["guarantee_level"]
    assert all(s.unit == "%LEL" and s.site["alarm_level_1"] == 20 for s in city.by_type(SensorType.MANHOLE_GAS))
    reg = registry(city)
    assert len(reg) == 200 and len({d["dev_eui"] for d in reg}) == 200
    for d in reg:
        assert re.fullmatch(r"[0-9A-F]{16}", d["dev_eui"])
        assert re.fullmatch(r"[a-z0-9](?:-?[a-z0-9]){2,35}", d["device_id"]), d["device_id"]
        assert set(d) >= {"sensor_id", "sensor_type", "unit", "location", "dev_eui", "device_id", "site"}
    orjson.dumps(reg)
    assert build_city(seed=3, sensors=200) == city
    assert build_city(seed=4, sensors=200) != city


def test_fleet_rejects_nonsense() -> None:
    with pytest.raises(ConfigError):
        build_city(sensors=0)
    with pytest.raises(ConfigError, match="twice"):
        build_city(sensors=5, districts=["chaoyang", "朝阳区"])


# -------------------------------------------------------------------- rhythms
def test_rhythm_shapes() -> None:
    # traffic: rush hour >> night; weekend quieter than a weekday
    assert level("traffic_flow", 8 * 60, 2, 180) > 3 * level("traffic_flow", 3 * 60, 2, 180)
    assert level("traffic_flow", 8 * 60, 6, 180) < level("traffic_flow", 8 * 60, 2, 180)
    # O3 peaks in the afternoon; PM2.5 is worse in winter
    assert level("o3", 15 * 60, 2, 180) > 3 * level("o3", 3 * 60, 2, 180)
    assert level("pm25", 12 * 60, 2, 15) > 1.5 * level("pm25", 12 * 60, 2, 180)
    assert level("temperature", 15 * 60, 2, 200) - level("temperature", 15 * 60, 2, 15) > 20


def test_daily_cycle_is_visible_in_generated_readings() -> None:
    mix = {SensorType.NOISE: 1.0, SensorType.TRAFFIC_FLOW: 1.0, SensorType.TEMPERATURE: 1.0}
    city = build_city(seed=5, sensors=24, districts=["chaoyang"], mix=mix)
    sc = plan(city, JULY, timedelta(days=1), seed=5, calls_per_hour=10)
    hourly: dict[tuple[str, int], list[float]] = defaultdict(list)
    events = list(generate(city, sc))
    for r in readings(events):
        hourly[(r.sensor.sensor_type.value, ((r.t + LOCAL) // 3600) % 24)].append(r.value)
    h = {k: mean(v) for k, v in hourly.items()}
    assert h[("noise", 10)] - h[("noise", 3)] > 10  # ~62 vs ~45 dB(A)
    assert h[("traffic_flow", 8)] > 4 * h[("traffic_flow", 3)]
    assert h[("temperature", 15)] - h[("temperature", 4)] > 6
    # the hotline follows the working day too
    per_hour: dict[int, int] = defaultdict(int)
    for c in calls(events):
        per_hour[((c.t + LOCAL) // 3600) % 24] += 1
    assert sum(per_hour[x] for x in range(9, 12)) > 3 * sum(per_hour[x] for x in range(2, 5))


# --------------------------------------------------------------------- faults
@pytest.fixture(scope="module")
def faulty() -> tuple[City, Scenario, list, list]:
    city = build_city(seed=7, sensors=60, districts=["haidian", "fengtai"])
    dur = timedelta(hours=8)
    sc = plan(city, JULY, dur, faults=10, seed=7, calls_per_hour=5)
    clean = plan(city, JULY, dur, faults=0, seed=7, calls_per_hour=5)
    return city, sc, list(generate(city, sc)), list(generate(city, clean))


def test_every_fault_kind_appears_labelled_and_moves_its_sensor(faulty: tuple) -> None:
    city, sc, events, clean_events = faulty
    labels = [lb for lb in sc.labels if lb.category == "fault"]
    assert sorted({lb.kind for lb in labels}) == sorted(FAULT_KINDS)
    got, ref = by_sensor(events), by_sensor(clean_events)
    for lb in labels:
        (sid,) = lb.sensor_ids
        spec = CATALOGUE[SensorType(lb.signals[0])]
        inside = [r for r in got[sid] if lb.start <= r.t < lb.end]
        ref_inside = [r for r in ref[sid] if lb.start <= r.t < lb.end]
        assert ref_inside, lb
        if lb.kind == "dropout":
            assert inside == []
            assert any(r.t < lb.start for r in got[sid]) or any(r.t >= lb.end for r in got[sid])
        elif lb.kind == "stuck":
            assert len(inside) >= 2 and len({r.value for r in inside}) == 1
        elif lb.kind == "spike":
            assert all(r.value > c.value for r, c in zip(inside, ref_inside, strict=True))
        elif lb.kind == "drift":
            first, last = (abs(r.value - c.value) for r, c in (
                (inside[0], ref_inside[0]), (inside[-1], ref_inside[-1])))
            assert last > first and last > 3 * city.sensor(sid).noise_sd
        elif lb.kind == "out_of_range":
            assert all(not spec.low <= r.value <= spec.high for r in inside)
            with pytest.raises(ValidationError, match="physical range"):
                inside[0].model()


def test_faults_change_nothing_outside_their_labels(faulty: tuple) -> None:
    _, sc, events, clean_events = faulty
    windows = defaultdict(list)
    for lb in sc.labels:
        windows[lb.sensor_ids[0]].append((lb.start, lb.end))
    got = {(r.sensor.sensor_id, r.t): r.value for r in readings(events)}
    ref = {(r.sensor.sensor_id, r.t): r.value for r in readings(clean_events)}
    for key in ref.keys() | got.keys():
        if got.get(key) != ref.get(key):
            sid, t = key
            assert any(a <= t < b for a, b in windows[sid]), key
    faulty_sensors = {lb.sensor_ids[0] for lb in sc.labels}
    assert not faulty_sensors & {sid for lb in sc.labels if lb.category == "incident" for sid in lb.sensor_ids}


# ---------------------------------------------------------- incident coupling
@pytest.fixture(scope="module")
def storm() -> tuple[City, Scenario, list, list]:
    city = build_city(seed=11, sensors=150, districts=["fengtai"])
    spec = IncidentSpec("rainstorm", start=timedelta(hours=1), duration=timedelta(minutes=90))
    sc = plan(city, JULY, timedelta(hours=5), incidents=[spec], seed=11, calls_per_hour=20)
    clean = plan(city, JULY, timedelta(hours=5), seed=11, calls_per_hour=20)
    return city, sc, list(generate(city, sc)), list(generate(city, clean))


def test_rainstorm_moves_rain_underpasses_traffic_and_the_hotline(storm: tuple) -> None:
    city, sc, events, clean_events = storm
    lb = sc.label("rainstorm")
    t0 = sc.start + 3600
    peak = (t0 + 30 * 60, t0 + 110 * 60)  # after the ramp, before the rain eases
    rs = readings(events)

    def values(kind: SensorType, window: tuple[int, int], site: str | None = None, src: list = rs) -> list[float]:
        return [r.value for r in src if r.sensor.sensor_type is kind and window[0] <= r.t < window[1]
                and (site is None or r.sensor.site.get("kind") == site)]

    before = (sc.start, t0)
    assert max(values(SensorType.RAINFALL, before)) == 0
    assert mean(values(SensorType.RAINFALL, peak)) > 25  # mm/h: a rainstorm (暴雨 > 16)
    under = values(SensorType.WATER_LEVEL, peak, "underpass")
    assert max(values(SensorType.WATER_LEVEL, before, "underpass")) < 0.05
    assert max(under) > 0.27  # above the closure depth of the site metadata
    slow = mean(values(SensorType.TRAFFIC_SPEED, peak))
    normal = mean(values(SensorType.TRAFFIC_SPEED, peak, src=readings(clean_events)))
    assert slow < 0.75 * normal
    flooding = [c for c in calls(events) if c.category is HotlineCategory.FLOODING]
    assert len(flooding) >= 4 and all(c.cause == lb.label_id for c in flooding)
    for c in flooding:
        assert c.loc["street"] in lb.streets and lb.start <= c.t <= lb.end
        assert c.ticket_id in lb.ticket_ids
        assert "积水" in c.description or "进水" in c.description or "冒水" in c.description
    underpass_streets = {s.street for s in city.by_type(SensorType.WATER_LEVEL, "underpass")
                         if s.sensor_id in lb.sensor_ids}
    assert {c.loc["street"] for c in flooding} <= underpass_streets
    # the label names every sensor whose data the storm changed, and only those
    diff = {r.sensor.sensor_id for r, c in zip(rs, readings(clean_events), strict=True) if r.value != c.value}
    assert diff <= set(lb.sensor_ids) and len(diff) >= 0.8 * len(lb.sensor_ids)


def test_other_incidents_move_their_signals_and_calls() -> None:
    city = build_city(seed=13, sensors=120, districts=["chaoyang", "dongcheng", "xicheng"])
    sc = plan(city, JULY, timedelta(hours=24), seed=13, calls_per_hour=5,
              incidents=["pollution", "gas_leak", "night_construction", "traffic_jam"])
    events = list(generate(city, sc))
    got = by_sensor(events)
    cs = calls(events)

    def during(lb, sid: str) -> list[float]:  # type: ignore[no-untyped-def]
        return [r.value for r in got[sid] if lb.start + (lb.end - lb.start) // 4 <= r.t < lb.end - 3 * 3600]

    pol = sc.label("pollution")
    pm = [sid for sid in pol.sensor_ids if sid.startswith("pm25")]
    assert pm and all(mean(during(pol, sid)) > 115 for sid in pm)
    gas = sc.label("gas_leak")
    assert max(r.value for r in got[gas.sensor_ids[0]] if gas.start <= r.t < gas.end) > 20
    gas_calls = [c for c in cs if c.cause and c.cause.startswith(gas.label_id)]
    assert {c.category for c in gas_calls} <= {HotlineCategory.GAS_SMELL, HotlineCategory.ODOUR}
    assert any(c.category is HotlineCategory.GAS_SMELL for c in gas_calls)
    assert {c.loc["street"] for c in gas_calls} == {city.sensor(gas.sensor_ids[0]).street}
    night = sc.label("night_construction")
    hour = ((night.start + LOCAL) // 3600) % 24
    assert hour in (22, 23)
    assert all(any(r.value > 70 for r in got[sid] if night.start <= r.t < night.end) for sid in night.sensor_ids)
    assert any(c.category is HotlineCategory.NOISE and c.cause == night.label_id for c in cs)
    jam = sc.label("traffic_jam")
    speeds = [sid for sid in jam.sensor_ids if sid.startswith("tspeed")]
    mid = (jam.start + jam.end) // 2
    assert all(min(r.value for r in got[sid] if abs(r.t - mid) < 600) < 25 for sid in speeds)


def test_heating_outage_is_hotline_only_and_only_in_winter() -> None:
    city = build_city(seed=17, sensors=30, districts=["xicheng"])
    sc = plan(city, JANUARY, timedelta(hours=12), incidents=["heating_outage"], seed=17, calls_per_hour=0)
    lb = sc.label("heating_outage")
    assert lb.sensor_ids == () and sc.effects == {}
    cs = calls(list(generate(city, sc)))
    assert len(cs) >= 3 and all(c.category is HotlineCategory.HEATING and c.cause == lb.label_id for c in cs)
    with pytest.raises(ConfigError, match="heating season"):
        plan(city, JULY, timedelta(hours=12), incidents=["heating_outage"], seed=17)
    assert "heating_outage" not in {lb.kind for lb in plan(city, JULY, timedelta(hours=12), incidents=["all"],
                                                           seed=17).labels}
    winter = {lb.kind for lb in plan(city, JANUARY, timedelta(hours=12), incidents=["all"], seed=17).labels}
    assert "heating_outage" in winter and "rainstorm" not in winter


def test_incidents_need_their_sensors() -> None:
    city = build_city(seed=1, sensors=10, mix={SensorType.NOISE: 1.0})
    with pytest.raises(ConfigError, match="rainfall"):
        plan(city, JULY, timedelta(hours=3), incidents=["rainstorm"])
    with pytest.raises(ConfigError, match="unknown incident"):
        plan(city, JULY, timedelta(hours=3), incidents=["meteor"])
    # "all" is all this city can show: noise sensors only, so night works and nothing else
    assert [lb.kind for lb in plan(city, JULY, timedelta(hours=24), incidents=["all"]).labels] == [
        "night_construction"]


# --------------------------------------------------- wire forms, order, seeds
def test_stream_is_ordered_and_matches_the_wire_contract(storm: tuple) -> None:
    _, sc, events, _ = storm
    ts = [e.t for e in events]
    assert ts == sorted(ts) and sc.start <= ts[0] and ts[-1] < sc.end
    for r in readings(events)[:500]:
        m = r.model()
        assert isinstance(m, SensorReading) and m.location.model_dump() == dict(r.sensor.loc)
        assert orjson.loads(r.json("2025-07-02T00:00:01+00:00")) == {**r.payload(), "sent_at":
                                                                    "2025-07-02T00:00:01+00:00"}
        assert m.ts.timestamp() == r.t
    assert len({r.event_id for r in readings(events)}) == len(readings(events))
    for c in calls(events):
        p = c.payload()
        assert "caller_ref" not in p and re.fullmatch(r"1[3-9]\d{9}", p["caller_phone"]) and p["caller_name"]
        assert c.model().category is c.category


def test_same_seed_same_run_other_seed_other_run() -> None:
    def run(seed: int) -> tuple[list[str], list[dict]]:
        city = build_city(seed=seed, sensors=40, districts=["haidian"])
        sc = plan(city, JULY, timedelta(hours=2), incidents=["traffic_jam"], faults=3, seed=seed)
        out = [e.json() if isinstance(e, Reading) else orjson.dumps(e.payload()).decode()
               for e in generate(city, sc)]
        return out, [lb.to_dict() for lb in sc.labels]

    a, b, c = run(21), run(21), run(22)
    assert a == b
    assert a[0] != c[0] and a[1] != c[1]


def test_demo_pollution_passes_iaqi_150_within_the_first_wall_minute() -> None:
    city, sc = demo(JULY, duration=timedelta(hours=1))
    # at speed 60 the first wall minute is the first event hour
    pm: dict[str, list[float]] = defaultdict(list)
    for r in readings(list(generate(city, sc))):
        if r.sensor.sensor_type is SensorType.PM25:
            pm[r.sensor.sensor_id].append(r.value)
    assert len(pm) >= 3 and len(city.sensors) == 36 and len(set(city.districts)) == 5
    for values in pm.values():
        assert max(values[:2]) < 75  # clean air before the episode (it starts at minute 2)
        running = [mean(values[: i + 1]) for i in range(len(values))]
        first = next(i for i, m in enumerate(running) if m > 115)
        assert first < 30  # event minutes, i.e. half a wall minute at speed 60
