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
    assert alerts[0].severity is Severity.IV and alerts[0].status is AlertStatus.DISPATCHED
    assert alerts[-1].status is AlertStatus.CLEARED
    assert max(a.peak_severity.rank for a in alerts if a.peak_severity) >= Severity.III.rank
    assert alerts[0].departments == ("eeb",)
    assert alerts[0].evidence.detector == "aqi_threshold"


def test_clean_air_raises_nothing(make_reading: Callable[..., SensorReading]) -> None:
    assert run([20, 35, 50, 74, 60, 30], make_reading) == []


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
