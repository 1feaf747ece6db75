from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from citybrain.errors import ConfigError
from schemas import AlertStatus, SensorReading, Severity
from streams.pipeline import ReadingProcessor
from streams.routing import load_rules


def run(values: list[float], make_reading: Callable[..., SensorReading]) -> list:
    proc = ReadingProcessor(load_rules())
    state = None
    out = []
    for i, v in enumerate(values):
        state, alerts = proc.step(state, make_reading(minutes=5 * i, value=v))
        out.extend(alerts)
    return out


def test_one_alert_per_episode_with_revisions(make_reading: Callable[..., SensorReading]) -> None:
    alerts = run([30, 40, 200, 220, 260, 30, *[10] * 20], make_reading)
    assert len({a.alert_id for a in alerts}) == 1
    assert [a.revision for a in alerts] == list(range(1, len(alerts) + 1))
    assert alerts[0].severity is Severity.III and alerts[0].status is AlertStatus.DISPATCHED
    assert alerts[-1].status is AlertStatus.CLEARED
    assert max(a.peak_severity.rank for a in alerts if a.peak_severity) >= Severity.III.rank
    assert alerts[0].departments == ("eeb",)
    assert alerts[0].evidence.detector == "aqi_threshold"


def test_clean_air_raises_nothing(make_reading: Callable[..., SensorReading]) -> None:
    assert run([20, 35, 50, 74, 60, 30], make_reading) == []


def test_light_pollution_alone_opens_no_alert(make_reading: Callable[..., SensorReading]) -> None:
    # PM2.5 around 95 ug/m3: IAQI about 125, 轻度污染 (IV); the shipped thresholds
    # open alerts from 中度污染 (III): light pollution belongs to the daily report
    assert run([90, 95, 100, 95, 98, 92], make_reading) == []


def test_red_air_also_goes_to_the_district(make_reading: Callable[..., SensorReading]) -> None:
    alerts = run([400], make_reading)
    assert alerts[0].severity is Severity.I
    assert set(alerts[0].departments) == {"eeb", "district.chaoyang"}


def test_a_new_episode_gets_a_new_id(make_reading: Callable[..., SensorReading]) -> None:
    alerts = run([200, *[5] * 24, *[300] * 6], make_reading)
    opened = [a for a in alerts if a.revision == 1]
    assert len(opened) == 2 and opened[0].alert_id != opened[1].alert_id


def test_same_input_gives_identical_alerts(make_reading: Callable[..., SensorReading]) -> None:
    values = [30, 140, 180, 260, 90, 20, 10, 10, 400]
    a = [x.to_json() for x in run(values, make_reading)]
    b = [x.to_json() for x in run(values, make_reading)]
    assert a == b and a


def test_rules_file_errors_name_the_rule(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("departments: {eeb: {name: x}}\nrules:\n  - name: r1\n    departments: [nobody]\n")
    with pytest.raises(ConfigError, match=r"rule 1 \(r1\): unknown department"):
        load_rules(bad)
    bad.write_text("rules:\n  - name: r1\n    match: {min_severity: purple}\n")
    with pytest.raises(ConfigError, match="min_severity"):
        load_rules(bad)


def test_emergency_mode_lowers_the_water_warning_level() -> None:
    """平急转换: in emergency the profile's threshold_scale (water_level 0.9) applies,
    so 1.6 m at a site approaching at 1.7 m (85 % of a 2.0 m warning level) alerts;
    in normal mode it does not."""
    from datetime import UTC, datetime, timedelta

    from streams.detectors.config import load_config
    from streams.detectors.engine import DetectionEngine
    from streams.emergency import NORMAL, EmergencyPolicy, ModeInfo

    def water(i: int) -> SensorReading:
        return SensorReading.model_validate({
            "event_id": f"w-{i}", "sensor_id": "w-1", "sensor_type": "water_level", "value": 1.6, "unit": "m",
            "ts": (datetime(2025, 7, 1, tzinfo=UTC) + timedelta(minutes=5 * i)).isoformat(),
            "location": {"district": "朝阳区", "street": "望京街道", "grid": "g-1", "lat": 39.99, "lon": 116.47},
        })  # fmt: skip

    def alerts_in(mode: ModeInfo) -> list:
        engine = DetectionEngine(load_config(sites={"w-1": {"warning_level": 2.0, "guarantee_level": 3.0}}))
        proc = ReadingProcessor(load_rules(), engine, mode_of=lambda _d: mode, emergency=EmergencyPolicy())
        state, out = None, []
        for i in range(4):
            state, alerts = proc.step(state, water(i))
            out.extend(alerts)
        return out

    assert alerts_in(NORMAL) == []
    emergency = alerts_in(ModeInfo("emergency", "city", "2025-07-01T00:00:00+00:00"))
    assert emergency and emergency[0].category == "water"
    ev = emergency[0].evidence
    assert ev.details["threshold_scale"] == 0.9 and ev.threshold == pytest.approx(1.7 * 0.9)
    assert emergency[0].evidence.details["mode"]["mode"] == "emergency"
