from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import ActionKind, AlertAction, Evidence, Location, Severity
from streams.alerting import apply_signal
from streams.detectors.base import Signal
from streams.lifecycle import Lifecycle, load_policy
from streams.routing import load_rules

T0 = datetime(2025, 7, 20, 14, 0, tzinfo=UTC)
TABLE = load_rules()
POLICY = load_policy()


def noise_alert(street: str | None = "望京街道") -> Any:
    """A yellow noise alert: uma + the street office; ack within 30 min."""
    loc = Location(district="朝阳区", street=street, lat=39.996, lon=116.47)
    ev = Evidence(detector="noise", detector_version="1", statistic="Leq dB(A)", value=68, threshold=55,
                  window_start=T0, window_end=T0)
    sig = Signal("open", "noise-night", "ns-1", "noise", "noise", Severity.III, T0, T0, loc, "夜间施工噪声", ev)
    return apply_signal(None, sig, TABLE)[1]


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def lifecycle() -> Lifecycle:
    from dataclasses import replace

    return Lifecycle(TABLE, replace(POLICY, escalation=replace(POLICY.escalation, raises=())))


def test_unacknowledged_alert_escalates_at_its_deadline_up_the_ladder() -> None:
    lc = lifecycle()
    st, step = lc.on_alert(None, noise_alert(), at(0))
    assert set(step.alerts[0].departments) == {"uma", "street.chaoyang.wangjing"}
    assert st["timers"]["rung"] == 0
    st, step = lc.tick(st, at(22.4))
    assert step.notices == [] and step.alerts == []
    st, step = lc.tick(st, at(22.5))  # 75 % of 30 min: a reminder to those who have it
    assert [n.kind for n in step.notices] == ["reminder"] and step.alerts == []
    st, step = lc.tick(st, at(23))  # reminded once only
    assert step.notices == []
    st, step = lc.tick(st, at(29.99))
    assert step.notices == []
    st, step = lc.tick(st, at(30))
    (n,) = step.notices
    assert n.kind == "escalated" and n.added_department == "district.chaoyang"
    assert "not acknowledged by" in n.reason and "rung street" in n.reason
    a = step.alerts[0]
    assert "district.chaoyang" in a.departments
    esc = a.evidence.details["lifecycle"]["escalations"]
    assert esc[0]["from"] == "street" and esc[0]["to"] == "district" and esc[0]["at"] == at(30).isoformat()
    assert lc.due_at(st) == at(30 + 22.5)  # a fresh window at the district
    st, step = lc.tick(st, at(60))
    assert [n.kind for n in step.notices] == ["escalated"] and step.notices[0].added_department == "ops"
    st, step = lc.tick(st, at(90))
    assert [n.kind for n in step.notices] == ["overdue"]  # top of the ladder: reported once
    st, step = lc.tick(st, at(120))
    assert step.notices == []
    assert [h["action"] for h in st["history"] if h["actor"] == "system"][-3:] == ["escalate", "escalate", "overdue"]


def test_acknowledgement_stops_the_clock() -> None:
    lc = lifecycle()
    st, _ = lc.on_alert(None, noise_alert(), at(0))
    ack = AlertAction(event_id="a1", alert_id=st["alert"]["alert_id"], action=ActionKind.ACK, actor="li",
                      actor_department="street.chaoyang.wangjing", ts=at(10))
    st, _ = lc.on_action(st, ack)
    for m in (22.5, 30, 45, 60, 120, 600):
        st, step = lc.tick(st, at(m))
        assert not any(n.kind == "escalated" for n in step.notices), m
    assert st["timers"]["rung"] == 0 and "district.chaoyang" not in st["alert"]["departments"]
    # the resolve-by clock (12 h for yellow) still runs
    st, step = lc.tick(st, at(12 * 60))
    assert [n.kind for n in step.notices] == ["escalated"] and step.notices[0].deadline == "resolve"


def test_manual_escalation_and_its_limit() -> None:
    lc = lifecycle()
    st, _ = lc.on_alert(None, noise_alert(), at(0))
    aid = st["alert"]["alert_id"]

    def esc(n: int, dept: str) -> Any:
        return AlertAction(event_id=f"e{n}", alert_id=aid, action=ActionKind.ESCALATE, actor="wang",
                           actor_department=dept, ts=at(n), comment="needs the district")

    st, s1 = lc.on_action(st, esc(1, "street.chaoyang.wangjing"))
    st, s2 = lc.on_action(st, esc(2, "district.chaoyang"))
    _, s3 = lc.on_action(st, esc(3, "ops"))
    assert s1.notices[0].added_department == "district.chaoyang" and s2.notices[0].added_department == "ops"
    assert s3.rejection is not None and "top of the ladder" in s3.rejection.message
    assert "manual by wang" in st["timers"]["escalations"][0]["reason"]


def test_replay_escalates_exactly_as_live() -> None:
    def run() -> list[str]:
        lc = lifecycle()
        st, step = lc.on_alert(None, noise_alert(), at(0))
        out = [a.to_json().decode() for a in step.alerts]
        for m in range(0, 200, 7):
            st, step = lc.tick(st, at(m))
            out += [a.to_json().decode() for a in step.alerts] + [repr(n) for n in step.notices]
        return out

    assert run() == run()


def test_escalations_do_not_depend_on_how_often_or_late_the_timer_ticks() -> None:
    """Live ticks every second, a replay's event clock jumps with the slowest
    partition: the same alert must end with the same escalations and history."""

    def run(tick_minutes: list[float]) -> tuple[Any, ...]:
        lc = lifecycle()
        st, _ = lc.on_alert(None, noise_alert(), at(0))
        for m in tick_minutes:
            st, _ = lc.tick(st, at(m))
        # a reminder is only worth sending before its deadline: whether one went out is the tick's business
        timers = {k: v for k, v in st["timers"].items() if k != "reminded"}
        return (timers, st["history"], sorted(lc.departments(st)))

    often = run([m / 2 for m in range(0, 200)])
    late = run([31, 64, 99.5])  # each tick well past a deadline
    assert often == late
    assert [e["at"] for e in often[0]["escalations"]] == [at(30).isoformat(), at(60).isoformat()]


def test_alert_without_street_starts_at_the_owner_and_goes_to_the_district() -> None:
    lc = lifecycle()
    st, step = lc.on_alert(None, noise_alert(street=None), at(0))
    assert step.alerts[0].departments == ("uma",)
    st, step = lc.tick(st, at(30))
    assert step.notices[0].added_department == "district.chaoyang"
