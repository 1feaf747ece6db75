"""Standards-based thresholds: HJ 633-2012, GB 3096-2008, water level, gas %LEL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from citybrain.errors import ConfigError
from schemas import SensorReading, Severity
from streams.detectors.aqi import AirQualityThreshold, aqi, category, iaqi, severity_for_aqi
from streams.detectors.config import load_config
from streams.detectors.engine import DetectionEngine
from streams.detectors.thresholds import GasThreshold, NoiseThreshold, WaterLevelThreshold, push_median

T0 = datetime(2025, 7, 1, 0, 0, tzinfo=UTC)  # 08:00 Asia/Shanghai
LOC = {"district": "朝阳区", "street": "望京街道", "grid": "g-1", "lat": 39.99, "lon": 116.47}
UNITS = {"pm25": "ug/m3", "o3": "ug/m3", "so2": "ug/m3", "noise": "dB(A)", "water_level": "m", "manhole_gas": "%LEL"}


def rd(ty: str, value: float, minutes: float = 0, sensor_id: str = "s-1") -> SensorReading:
    return SensorReading.model_validate({
        "event_id": f"e-{minutes}", "sensor_id": sensor_id, "sensor_type": ty, "value": value,
        "unit": UNITS[ty], "ts": (T0 + timedelta(minutes=minutes)).isoformat(), "location": LOC,
    })  # fmt: skip


@pytest.mark.parametrize(
    ("table", "conc", "expected"),
    [
        ("pm25_24h", 0, 0), ("pm25_24h", 35, 50), ("pm25_24h", 75, 100), ("pm25_24h", 75.1, 101),
        ("pm25_24h", 115, 150), ("pm25_24h", 150, 200), ("pm25_24h", 250, 300), ("pm25_24h", 500, 500),
        ("pm25_24h", 900, 500), ("pm10_24h", 150, 100), ("pm10_24h", 600, 500), ("co_1h", 10, 100),
        ("co_24h", 4, 100), ("no2_1h", 200, 100), ("no2_24h", 80, 100), ("o3_1h", 200, 100),
        ("o3_8h", 160, 100), ("so2_1h", 500, 100), ("so2_24h", 150, 100),
    ],
)  # fmt: skip
def test_hj633_breakpoints_and_boundaries(table: str, conc: float, expected: int) -> None:
    assert iaqi(table, conc) == expected


def test_hj633_fallbacks_above_the_tables() -> None:
    # SO2 1-hour above 800 has no IAQI: reported with the 24-hour table
    assert iaqi("so2_1h", 801) == iaqi("so2_24h", 801) == 201
    # O3 8-hour above 800: the 1-hour table
    assert iaqi("o3_8h", 900) == iaqi("o3_1h", 900) == 350
    with pytest.raises(ValueError, match="finite"):
        iaqi("pm25_24h", -1)


def test_overall_aqi_categories_and_severity() -> None:
    assert aqi({"pm25": 160, "o3": 120, "no2": 40}) == (160, ["pm25"])
    assert aqi({"pm25": 40, "pm10": 30}) == (40, [])  # no primary pollutant at or below 50
    assert [category(v)[0] for v in (50, 100, 150, 200, 300, 301)] == ["优", "良", "轻度污染", "中度污染", "重度污染", "严重污染"]
    assert [severity_for_aqi(v) for v in (100, 101, 151, 201, 301)] == [None, Severity.IV, Severity.III, Severity.II, Severity.I]


def test_aqi_detector_hovering_at_the_boundary_does_not_flap() -> None:
    det = AirQualityThreshold()
    st: dict[str, Any] | None = None
    kinds = []
    for i in range(60):  # PM2.5 hovering around 75/76 ug/m3 (IAQI 100/102)
        st, sig = det.step(st, rd("pm25", 76.0 if i % 2 else 74.0, minutes=5 * i))
        kinds += [s.kind for s in sig]
    assert kinds.count("open") <= 1 and "clear" not in kinds


def test_o3_eight_hour_mean_counts() -> None:
    det = AirQualityThreshold(config=load_config(overrides={"air": {"open_from": "IV"}}))
    st = None
    sig_all = []
    for i in range(12 * 9):  # 9 hours at 190 ug/m3: 1 h IAQI 88, 8 h IAQI 146
        st, sig = det.step(st, rd("o3", 190.0, minutes=5 * i))
        sig_all += sig
    assert sig_all and sig_all[0].severity is Severity.IV
    assert "o3_8h" in sig_all[0].evidence.statistic


def test_noise_day_and_night_limits_by_zone_local_time() -> None:
    cfg = load_config(sites={"n-1": {"zone_class": 1}, "n-4": {"zone_class": "4b"}})
    det = NoiseThreshold(cfg)
    # 57 dB(A) at 08:00 Beijing: zone 1 day limit 55 -> +2 dB, below the first level (3 dB)
    _, sig = det.step(None, rd("noise", 57.0, 0, "n-1"))
    assert sig == []
    # 50 dB(A) at 23:00 Beijing (15:00 UTC): zone 1 night limit 45 -> +5 dB: IV
    _, sig = det.step(None, rd("noise", 50.0, 15 * 60, "n-1"))
    assert [s.kind for s in sig] == ["open"] and sig[0].severity is Severity.IV
    assert sig[0].evidence.threshold == 45 and sig[0].evidence.details["period"] == "night"
    # 4b night limit is 60: 62 dB(A) is fine
    _, sig = det.step(None, rd("noise", 62.0, 15 * 60, "n-4"))
    assert sig == []


def test_water_level_per_site_levels() -> None:
    cfg = load_config(sites={"w-1": {"warning_level": 2.0, "guarantee_level": 3.0}})
    det = WaterLevelThreshold(cfg)
    st = None
    sev = []
    for i, v in enumerate([1.0, 1.0, 2.05, 2.1, 2.1, 2.6, 2.6, 3.1, 3.1, 1.0, 1.0, 1.0, 1.0]):
        st, sig = det.step(st, rd("water_level", v, i, "w-1"))
        sev += [(s.kind, s.severity.value) for s in sig]
    assert sev[0] == ("open", "III")  # median of 3 reached the warning level
    assert ("update", "II") in sev and ("update", "I") in sev and sev[-1][0] == "clear"


def test_a_single_water_spike_is_not_a_flood() -> None:
    det = WaterLevelThreshold(load_config(sites={"w-1": {"warning_level": 2.0, "guarantee_level": 3.0}}))
    st = None
    for i, v in enumerate([1.0, 1.0, 5.0, 1.0, 1.0]):
        st, sig = det.step(st, rd("water_level", v, i, "w-1"))
        assert sig == []


def test_gas_levels_and_site_alarm_levels() -> None:
    det = GasThreshold(load_config(sites={"g-1": {"alarm_level_1": 20.0, "alarm_level_2": 50.0}}))
    assert det.levels({}) == [(10.0, Severity.IV), (20.0, Severity.III), (25.0, Severity.II), (50.0, Severity.I)]
    assert det.levels({"alarm_level_1": 20.0, "alarm_level_2": 50.0}) == [
        (10.0, Severity.IV), (20.0, Severity.II), (50.0, Severity.I)]  # fmt: skip
    st = None
    out = []
    for i, v in enumerate([0.5, 0.5, 30.0, 30.0, 60.0, 60.0]):
        st, sig = det.step(st, rd("manhole_gas", v, i, "g-1"))
        out += [(s.kind, s.severity.value) for s in sig]
    assert out[0][0] == "open" and out[-1] == ("update", "I")


def test_thresholds_file_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"noise\.limits"):
        load_config(overrides={"noise": {"limits": {"2": {"day": "loud", "night": 50}}}})
    with pytest.raises(ConfigError, match="hysteresis"):
        load_config(overrides={"statistical": {"clear_score": 0.99999}})
    with pytest.raises(ConfigError, match="must ascend"):
        load_config(overrides={"manhole_gas": {"levels": [[25, "II"], [10, "IV"]]}})
    with pytest.raises(ConfigError, match=r"traffic\.levels"):
        load_config(overrides={"traffic": {"levels": [[1.5, "IV"]]}})
    bad = tmp_path / "t.yaml"
    bad.write_text("version: 1\nair: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_engine_states_are_json_and_signals_deterministic() -> None:
    def run() -> list[str]:
        eng = DetectionEngine(sites={"w-1": {"warning_level": 2.0, "guarantee_level": 3.0}})
        states: dict[str, Any] = {}
        out = []
        for i in range(400):
            for sid, ty, v in (("s-1", "pm25", 40.0 + (300 if 200 <= i < 230 else 0) + i % 3),
                               ("w-1", "water_level", 1.0 + (1.5 if i > 300 else 0) + 0.01 * (i % 5))):  # fmt: skip
                st, sig = eng.step_reading(states.get(sid), rd(ty, v, i, sid))
                states[sid] = json.loads(json.dumps(st))  # a round trip through the table
                out += [json.dumps([s.kind, s.rule, s.episode_start.isoformat(), s.severity.value,
                                    s.evidence.model_dump_json()]) for s in sig]  # fmt: skip
        return out

    a, b = run(), run()
    assert a == b
    assert any("aqi_threshold:pm25" in s for s in a) and any("water_level" in s for s in a)


def test_aqi_open_from_setting_keeps_light_pollution_a_notice() -> None:
    det = AirQualityThreshold(config=load_config(overrides={"air": {"open_from": "III"}}))
    st = None
    kinds = []
    for i in range(24):  # 1-h mean ~100 ug/m3: IAQI ~132, light pollution (IV)
        st, sig = det.step(st, rd("pm25", 100.0, minutes=5 * i))
        kinds += sig
    assert kinds == []
    for i in range(24, 48):  # ~170 ug/m3: IAQI ~220 (II) opens
        st, sig = det.step(st, rd("pm25", 170.0, minutes=5 * i))
        kinds += sig
    assert kinds and kinds[0].kind == "open" and kinds[0].severity.rank >= Severity.III.rank
    with pytest.raises(ConfigError, match="open_from"):
        load_config(overrides={"air": {"open_from": "purple"}})


def _speeds(days: float, jam_at: int | None = None, jam_len: int = 90, seed: int = 3) -> list[SensorReading]:
    """Minute speeds with a rush-hour rhythm (local time), optionally a jam that
    builds over 10 minutes to 30 % of the usual speed."""
    import random

    rhythm = (1.0, 1.0, 1.0, 1.0, 1.0, 0.97, 0.8, 0.55, 0.5, 0.65, 0.75, 0.78,
              0.8, 0.78, 0.75, 0.72, 0.62, 0.5, 0.52, 0.7, 0.85, 0.92, 0.97, 1.0)  # fmt: skip
    rng = random.Random(seed)
    out = []
    for i in range(int(days * 1440)):
        t = T0 + timedelta(minutes=i)
        v = 60 * rhythm[(t.hour + 8) % 24] * (1 + rng.gauss(0, 0.05))
        if jam_at is not None and jam_at <= i < jam_at + jam_len:
            v *= 1 - 0.7 * min(1.0, (i - jam_at) / 10)
        out.append(SensorReading.model_validate({
            "event_id": f"t-{i}", "sensor_id": "ts-1", "sensor_type": "traffic_speed", "value": round(v, 1),
            "unit": "km/h", "ts": t.isoformat(), "location": LOC}))  # fmt: skip
    return out


def test_a_ramped_jam_at_rush_hour_is_congestion_and_the_rush_hour_is_not() -> None:
    from streams.detectors.traffic import TrafficCongestion

    jam = 2 * 1440 + 9 * 60  # day 3, 17:00 Beijing time: the evening rush (usual speed halved)
    det = TrafficCongestion()
    st = None
    sig = []
    for i, r in enumerate(_speeds(3, jam_at=jam)):
        st, out = det.step(st, r)
        sig += [(i - jam, s.kind, s.severity.value) for s in out]
    assert [k for _, k, _ in sig] == ["open", "update", "clear"], sig  # no flapping between IV and III
    assert 0 < sig[0][0] <= 12 and sig[0][2] == "IV", "opens while the jam builds, not after it"
    assert sig[1][2] == "III" and 90 <= sig[2][0] <= 110
    assert len(json.dumps(st)) < 700


def test_two_clean_days_of_rush_hours_raise_no_congestion() -> None:
    from streams.detectors.traffic import TrafficCongestion

    det = TrafficCongestion()
    st = None
    for r in _speeds(4, seed=9):
        st, out = det.step(st, r)
        assert out == [], out[0].title


def test_a_long_jam_is_not_learned_as_usual() -> None:
    from streams.detectors.traffic import TrafficCongestion

    jam = 2 * 1440 + 2 * 60  # 10:00 local, six hours long
    det = TrafficCongestion()
    st = None
    kinds = []
    for r in _speeds(3, jam_at=jam, jam_len=360):
        st, out = det.step(st, r)
        kinds += [s.kind for s in out]
    assert kinds[0] == "open" and kinds.count("clear") == 1 and kinds[-1] == "clear"


def test_push_median_keeps_the_last_k_and_takes_their_median() -> None:
    window: list[float] = []
    assert [push_median(window, x, 3) for x in (5.0, 1.0, 3.0, 10.0)] == [5.0, 3.0, 3.0, 3.0]
    assert window == [1.0, 3.0, 10.0], "only the last k stay, in arrival order"
    even: list[float] = []
    assert [push_median(even, x, 4) for x in (2.0, 4.0)] == [2.0, 3.0]


def test_per_sensor_values_are_worked_out_once_per_sensor_and_bounded() -> None:
    from streams.detectors.base import PerSensor

    calls: list[str] = []

    def make(sid: str) -> str:
        calls.append(sid)
        return sid.upper()

    per = PerSensor(make, most=2)
    assert [per("a"), per("a"), per("b"), per("a")] == ["A", "A", "B", "A"]
    assert calls == ["a", "b"]
    assert per("c") == "C" and per("a") == "A"  # past `most` it starts again: "a" is worked out anew
    assert calls == ["a", "b", "c", "a"]
