from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import ActionKind, Alert, AlertAction, AlertStatus, Evidence, Location, Severity
from streams.alerting import apply_signal
from streams.detectors.base import Signal
from streams.emergency import ModeInfo
from streams.lifecycle import Lifecycle, Policy, load_policy
from streams.routing import load_rules

T0 = datetime(2025, 7, 20, 14, 0, tzinfo=UTC)
LOC = Location(district="朝阳区", street="望京街道", lat=39.996, lon=116.47)
TABLE = load_rules()


def signal(kind: str = "open", severity: Severity = Severity.II, minutes: float = 0, episode: float = 0,
           category: str = "water", sensor_type: str = "water_level") -> Signal:
    ts = T0 + timedelta(minutes=minutes)
    ev = Evidence(detector="level", detector_version="1", statistic="level m", value=1.2, threshold=1.0,
                  window_start=ts, window_end=ts)
    return Signal(kind, "water-level-warning", "wl-001", category, sensor_type, severity,  # type: ignore[arg-type]
                  T0 + timedelta(minutes=episode), ts, LOC, "望京桥积水", ev)


def detected(severity: Severity = Severity.II, mode: ModeInfo | None = None, **kw: Any) -> Alert:
    _, a = apply_signal(None, signal(severity=severity, **kw), TABLE, **({"mode": mode} if mode else {}))
    return a


def action(kind: ActionKind, dept: str | None, n: int = 1, minutes: float = 1, **kw: Any) -> AlertAction:
    return AlertAction(event_id=f"act-{n}", alert_id=ALERT_ID, action=kind, actor=f"user-{dept}", actor_department=dept,
                       ts=T0 + timedelta(minutes=minutes), **kw)


ALERT_ID = detected().alert_id


def opened() -> tuple[Lifecycle, dict[str, Any]]:
    lc = Lifecycle(TABLE, Policy())
    st, step = lc.on_alert(None, detected(), T0)
    assert step.alerts[0].status is AlertStatus.DISPATCHED
    return lc, st


def test_a_new_alert_is_dispatched_to_its_departments_with_deadlines() -> None:
    _, st = opened()
    assert st["status"] == "dispatched"
    assert set(st["routed"]) == {"water", "ema", "district.chaoyang", "street.chaoyang.wangjing"}
    assert st["timers"]["ack_by"] == (T0 + timedelta(minutes=15)).isoformat()  # II orange: 15 min
    assert st["timers"]["rung"] == 1  # the district is already involved


def test_the_full_lifecycle_with_history() -> None:
    lc, st = opened()
    st, s1 = lc.on_action(st, action(ActionKind.ACK, "water", 1))
    st, s2 = lc.on_action(st, action(ActionKind.COMMENT, "street.chaoyang.wangjing", 2, comment="pumps on site"))
    st, s3 = lc.on_action(st, action(ActionKind.RESOLVE, "water", 3, minutes=40))
    st, s4 = lc.on_action(st, action(ActionKind.FEEDBACK, "citizen", 4, minutes=50, satisfaction=5))
    st, s5 = lc.on_action(st, action(ActionKind.CLOSE, "ops", 5, minutes=60))
    assert [s.alerts[0].status for s in (s1, s2, s3, s4, s5)] == [
        AlertStatus.ACKNOWLEDGED, AlertStatus.ACKNOWLEDGED, AlertStatus.RESOLVED, AlertStatus.RESOLVED,
        AlertStatus.CLOSED]
    revisions = [s.alerts[0].revision for s in (s1, s2, s3, s4, s5)]
    assert revisions == sorted(revisions) and len(set(revisions)) == 5
    hist = [(h["action"], h["actor"], h["from"], h["to"]) for h in st["history"] if h["actor"] != "system"]
    assert hist[0] == ("ack", "user-water", "dispatched", "acknowledged")
    assert hist[-1] == ("close", "user-ops", "resolved", "closed")
    assert st["history"][-1]["at"] == (T0 + timedelta(minutes=60)).isoformat()
    assert st["satisfaction"] == 5
    assert st["timers"]["ack_by"] is None and st["timers"]["resolve_by"] is None
    assert Lifecycle.finished(st, T0 + timedelta(days=8)) and not Lifecycle.finished(st, T0 + timedelta(days=1))


@pytest.mark.parametrize(
    ("first", "act", "dept", "reason", "text"),
    [
        ([], ActionKind.RESOLVE, "water", "illegal_transition", "acknowledge it first"),
        ([], ActionKind.CLOSE, "ops", "illegal_transition", "from dispatched"),
        ([], ActionKind.REOPEN, "water", "illegal_transition", "still open"),
        ([], ActionKind.FEEDBACK, "citizen", "illegal_transition", "from dispatched"),
        ([], ActionKind.ACK, "eeb", "unauthorised", "eeb"),
        ([], ActionKind.ACK, None, "unauthorised", "no department"),
        ([ActionKind.ACK], ActionKind.ACK, "water", "illegal_transition", "from acknowledged"),
        ([], ActionKind.COMMENT, "water", "invalid_action", "needs text"),
        ([], ActionKind.REASSIGN, "water", "invalid_action", "target_department"),
    ],
)
def test_illegal_or_unauthorised_actions_are_rejected_with_a_reason_and_state_untouched(
    first: list[ActionKind], act: ActionKind, dept: str | None, reason: str, text: str
) -> None:
    lc, st = opened()
    for i, k in enumerate(first):
        st, _ = lc.on_action(st, action(k, "water", 100 + i))
    before = copy.deepcopy(st)
    frozen = json.dumps(st, sort_keys=True)
    new, step = lc.on_action(st, action(act, dept, 7))
    assert step.rejection is not None and not step.accepted
    assert step.rejection.reason == reason and text in step.rejection.message
    assert step.alerts == []
    assert new == before and json.dumps(st, sort_keys=True) == frozen


def test_action_on_an_unknown_alert_is_rejected() -> None:
    lc = Lifecycle(TABLE)
    st, step = lc.on_action(None, action(ActionKind.ACK, "water"))
    assert st is None and step.rejection is not None and step.rejection.reason == "unknown_alert"


def test_actions_are_idempotent_by_event_id() -> None:
    lc, st = opened()
    st1, s1 = lc.on_action(st, action(ActionKind.COMMENT, "water", 1, comment="on our way"))
    st2, s2 = lc.on_action(st1, action(ActionKind.COMMENT, "water", 1, comment="on our way"))
    assert s1.alerts and not s2.alerts and s2.duplicate and s2.accepted
    assert st2 == st1
    assert sum(1 for h in st2["history"] if h["action"] == "comment") == 1
    st3, s3 = lc.on_action(st2, action(ActionKind.ACK, "water", 2))
    st4, s4 = lc.on_action(st3, action(ActionKind.ACK, "water", 2))
    assert s3.alerts[0].status is AlertStatus.ACKNOWLEDGED and s4.duplicate and st4 == st3


def test_redelivered_detection_revisions_are_ignored() -> None:
    lc, st = opened()
    again, step = lc.on_alert(st, detected(), T0 + timedelta(minutes=1))
    assert step.duplicate and again == st


def test_reassign_hands_over_and_needs_a_fresh_ack() -> None:
    lc, st = opened()
    st, _ = lc.on_action(st, action(ActionKind.ACK, "street.chaoyang.wangjing", 1))
    st, step = lc.on_action(st, action(ActionKind.REASSIGN, "street.chaoyang.wangjing", 2,
                                       target_department="street.chaoyang.jiuxianqiao", comment="wrong street"))
    a = step.alerts[0]
    assert a.status is AlertStatus.DISPATCHED
    assert "street.chaoyang.jiuxianqiao" in a.departments and "street.chaoyang.wangjing" not in a.departments
    _, rej = lc.on_action(st, action(ActionKind.COMMENT, "street.chaoyang.wangjing", 3, comment="x"))
    assert rej.rejection is not None and rej.rejection.reason == "unauthorised"


def test_detection_clear_then_return_reopens_the_same_alert() -> None:
    lc, st = opened()
    table = TABLE
    s0, a0 = apply_signal(None, signal(), table)
    s1, a1 = apply_signal(s0, signal("clear", minutes=20), table)
    st, step = lc.on_alert(st, a1, T0 + timedelta(minutes=20))
    assert step.alerts[0].status is AlertStatus.CLEARED and st["timers"]["ack_by"] is None
    s2, a2 = apply_signal(s1, signal(minutes=25, episode=25), table)  # back within the flap window
    assert a2.alert_id == a0.alert_id and a2.status is AlertStatus.REOPENED
    st, step = lc.on_alert(st, a2, T0 + timedelta(minutes=25))
    assert step.alerts[0].status is AlertStatus.REOPENED and st["timers"]["ack_by"] is not None
    # after a longer quiet period it is a new alert
    s3, _ = apply_signal(s2, signal("clear", minutes=30), table)
    _, a4 = apply_signal(s3, signal(minutes=120, episode=120), table)
    assert a4.alert_id != a0.alert_id and a4.revision == 1


def test_flooding_one_sensor_with_many_signals_yields_one_open_alert() -> None:
    lc = Lifecycle(TABLE)
    sst: dict[str, Any] | None = None
    lst: dict[str, Any] | None = None
    ids, published = set(), 0
    for i in range(500):
        sev = (Severity.III, Severity.II, Severity.I)[i % 3]
        # a misbehaving detector: "open" every time, each with a new episode start
        sst, alert = apply_signal(sst, signal("open", sev, minutes=i * 0.1, episode=i * 0.1), TABLE)
        ids.add(alert.alert_id)
        lst, step = lc.on_alert(lst, alert, alert.last_seen)
        published += len(step.alerts)
    assert len(ids) == 1
    assert lst is not None and lst["alert"]["count"] == 500 and lst["alert"]["peak_severity"] == "I"
    assert published == 500 and lst["status"] == "dispatched"


def test_a_persisting_yellow_condition_becomes_orange_and_is_rerouted() -> None:
    lc = Lifecycle(TABLE, load_policy())
    st, step = lc.on_alert(None, detected(Severity.III), T0)
    assert step.alerts[0].departments == ("water",)
    assert lc.due_at(st) is not None and lc.due_at(st) <= T0 + timedelta(minutes=30)
    st, step = lc.tick(st, T0 + timedelta(minutes=29))
    assert not any(n.kind == "raised" for n in step.notices)
    st, step = lc.tick(st, T0 + timedelta(minutes=30))
    raised = [n for n in step.notices if n.kind == "raised"]
    assert raised and "III (yellow) raised to II (orange)" in raised[0].reason
    a = step.alerts[-1]
    assert a.severity is Severity.II and a.evidence.details["lifecycle"]["detected_severity"] == "III"
    assert set(a.departments) == {"water", "ema", "district.chaoyang", "street.chaoyang.wangjing"}


def test_emergency_mode_shortens_slas() -> None:
    lc = Lifecycle(TABLE, load_policy())
    st, _ = lc.on_alert(None, detected(mode=ModeInfo("emergency", "city", T0.isoformat())), T0)
    assert st["timers"]["ack_by"] == (T0 + timedelta(minutes=7.5)).isoformat()
    assert st["alert"]["evidence"]["details"]["mode"]["mode"] == "emergency"


def test_policy_errors_name_the_line(tmp_path: Any) -> None:
    from citybrain.errors import ConfigError

    f = tmp_path / "policy.yaml"
    f.write_text("version: 1\nescalation:\n  sla:\n    II: {acknowledge: soon, resolve: 4h}\n")
    with pytest.raises(ConfigError, match=r"policy.yaml:4: .*acknowledge.*positive duration"):
        load_policy(f)
