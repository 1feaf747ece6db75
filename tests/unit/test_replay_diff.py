"""Replay's pure part: argument parsing, scope, latest revision, the diff."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from citybrain.errors import ConfigError
from storage.replay import run_of_topic, run_topic_prefixes
from storage.replay_diff import (
    AlertView,
    Scope,
    check_run,
    diff_alerts,
    keep_latest,
    new_run_id,
    parse_range,
    parse_speed,
    parse_time,
    render_table,
)

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
SCOPE = Scope(T0, T0 + timedelta(hours=2))


def alert(n: int, **kw: object) -> AlertView:
    base = AlertView(
        alert_id=f"a-{n}", revision=1, rule="water_level:water_level", subject=f"wl-{n}", district="朝阳区",
        street="望京街道", severity="III", peak_severity="III", departments=("water",),
        first_seen=T0 + timedelta(minutes=n), last_seen=T0 + timedelta(minutes=n + 5), status="dispatched",
        count=3,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_same_alerts_give_an_empty_diff() -> None:
    rec = [alert(1), alert(2)]
    d = diff_alerts(rec, [alert(2), alert(1)], SCOPE)
    assert d.empty
    assert d.identical == ("a-1", "a-2")
    assert d.summary() == {"recorded": 2, "replayed": 2, "identical": 2, "missing": 0, "new": 0, "changed": 0}
    assert "no differences" in render_table(d)


def test_missing_new_and_changed_fields_are_reported() -> None:
    rec = [alert(1), alert(2), alert(3)]
    rep = [
        alert(1, severity="II", peak_severity="II"),
        alert(2, departments=("ema", "water"), last_seen=T0 + timedelta(minutes=30)),
        alert(4),
    ]
    d = diff_alerts(rec, rep, SCOPE)
    assert not d.empty
    assert [a.alert_id for a in d.missing] == ["a-3"]
    assert [a.alert_id for a in d.new] == ["a-4"]
    changes = {c.alert.alert_id: c.fields for c in d.changed}
    assert changes["a-1"] == {"severity": ("III", "II"), "peak_severity": ("III", "II")}
    assert changes["a-2"]["departments"] == (["water"], ["ema", "water"])
    assert changes["a-2"]["last_seen"] == (T0 + timedelta(minutes=7), T0 + timedelta(minutes=30))
    j = d.to_json()
    assert j["summary"]["changed"] == 2 and j["empty"] is False
    assert j["changed"][1]["changes"]["last_seen"] == [(T0 + timedelta(minutes=7)).isoformat(),
                                                        (T0 + timedelta(minutes=30)).isoformat()]
    table = render_table(d)
    assert "missing" in table and "new" in table and "departments" in table and "ema,water" in table


def test_department_order_is_not_a_difference() -> None:
    d = diff_alerts([alert(1, departments=("water", "ema"))], [alert(1, departments=("ema", "water"))], SCOPE)
    assert d.empty


def test_status_and_first_seen_count_as_changes() -> None:
    d = diff_alerts([alert(1)], [alert(1, status="new", first_seen=T0 + timedelta(minutes=2))], SCOPE)
    assert set(d.changed[0].fields) == {"status", "first_seen"}


def test_latest_revision_wins_in_any_order() -> None:
    latest: dict[str, AlertView] = {}
    for rev in (2, 5, 1, 5, 3):
        keep_latest(latest, alert(1, revision=rev, severity=f"s{rev}"))
    assert latest["a-1"].revision == 5 and latest["a-1"].severity == "s5"
    # the diff folds repeated revisions on both sides too
    d = diff_alerts([alert(1, revision=1, severity="IV"), alert(1, revision=2)],
                    [alert(1, revision=2), alert(1, revision=1, severity="IV")], SCOPE)
    assert d.empty and d.recorded == 1


def test_scope_cuts_both_sides_alike() -> None:
    outside = alert(1, first_seen=T0 - timedelta(seconds=1))
    at_end = alert(2, first_seen=SCOPE.end)
    other_area = alert(3, district="海淀区", street="中关村街道")
    d = diff_alerts([outside, at_end], [], SCOPE)
    assert d.recorded == 0 and d.empty
    area = Scope(SCOPE.start, SCOPE.end, area="望京街道")
    assert area.covers(alert(4)) and not area.covers(other_area)
    assert Scope(SCOPE.start, SCOPE.end, area="海淀区").covers(other_area)
    sensors = Scope(SCOPE.start, SCOPE.end, sensors=("wl-5",))
    assert sensors.covers(alert(5)) and not sensors.covers(alert(6))
    d = diff_alerts([alert(5), alert(6)], [alert(5)], sensors)
    assert d.empty and d.identical == ("a-5",)


def test_ignored_rules_are_left_out_on_both_sides() -> None:
    scope = Scope(SCOPE.start, SCOPE.end, ignore_rules=("health:silence",))
    rec = [alert(1), alert(2, rule="health:silence")]
    rep = [alert(1), alert(3, rule="health:silence")]
    d = diff_alerts(rec, rep, scope)
    assert d.empty and d.recorded == 1 and d.replayed == 1
    assert scope.to_dict()["ignore_rules"] == ["health:silence"]
    assert not diff_alerts(rec, rep, SCOPE).empty


def test_alert_view_from_wire_json() -> None:
    a = AlertView.from_alert_json({
        "alert_id": "a-x", "revision": 4, "rule": "r", "subject": "s", "severity": "II", "peak_severity": "I",
        "departments": ["water"], "first_seen": "2026-07-01T08:00:00+00:00", "last_seen": "2026-07-01T08:05:00Z",
        "status": "escalated", "count": 9, "location": {"district": "朝阳区", "lat": 39.9, "lon": 116.4},
    })
    assert a.first_seen == T0 and a.last_seen == T0 + timedelta(minutes=5)
    assert a.street is None and a.departments == ("water",) and a.revision == 4
    with pytest.raises(ValueError):
        AlertView.from_alert_json({"alert_id": "a", "rule": "r", "subject": "s", "severity": "I",
                                   "first_seen": "2026-07-01T08:00:00", "last_seen": "2026-07-01T08:00:00"})


@pytest.mark.parametrize("text", ["2026-07-01 08:00", "yesterday", "", "2026-13-01T00:00:00Z"])
def test_bad_times_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_time(text, "--from")


def test_range_must_be_ordered() -> None:
    start, end = parse_range("2026-07-01T08:00:00+08:00", "2026-07-01T01:00:00Z")
    assert start == T0 - timedelta(hours=8) and end == T0 - timedelta(hours=7)
    with pytest.raises(ConfigError, match="not before"):
        parse_range("2026-07-01T09:00:00Z", "2026-07-01T08:00:00Z")
    with pytest.raises(ConfigError):
        parse_range("2026-07-01T08:00:00Z", "2026-07-01T08:00:00Z")


def test_speed() -> None:
    assert parse_speed("max") is None and parse_speed("MAX") is None
    assert parse_speed("60x") == 60.0 and parse_speed("2.5") == 2.5
    for bad in ("0x", "fast", "-2x", "x", "1e3x"):
        with pytest.raises(ConfigError):
            parse_speed(bad)


def test_run_ids_name_their_topics_unambiguously() -> None:
    run = new_run_id(T0, "abc123")
    assert run == "20260701t080000_abc123" and check_run(run) == run
    for bad in ("a.b", "ab", "x-y-z", "UPPER", "../etc"):
        with pytest.raises(ConfigError):
            check_run(bad)
    live, internal = run_topic_prefixes("foo")
    assert run_of_topic(f"{live}city.alerts.dept.street.chaoyang.wangjing") == "foo"
    assert run_of_topic(f"{internal}sensor-state-changelog") == "foo"
    assert run_of_topic("citybrain-replay-foo_bar-__assignor-__leader") == "foo_bar"
    assert run_of_topic("city.sensor.readings") is None
    assert not "citybrain-replay-foo_bar-x".startswith(internal)
