from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import HotlineEvent, Location
from streams.emergency import ModeInfo
from streams.hotline_workflow import HotlineWorkflow, KpiFact
from streams.lifecycle import load_policy
from streams.routing import load_rules

T0 = datetime(2025, 7, 10, 9, 0, tzinfo=UTC)
WANGJING = Location(district="朝阳区", street="望京街道", lat=39.996, lon=116.47)
ZGC = Location(district="海淀区", street="中关村街道", lat=39.98, lon=116.31)
H = timedelta(hours=1)
D = timedelta(days=1)
_n = 0


def ev(tid: str, at: timedelta, kind: str = "status", status: str = "in_progress", sat: int | None = None,
       loc: Location = WANGJING, urgency: str = "normal", category: str = "flooding") -> HotlineEvent:
    global _n
    _n += 1
    return HotlineEvent(event_id=f"e{_n}", ticket_id=tid, kind=kind, category=category, status=status,  # type: ignore[arg-type]
                        ts=T0 + at, location=loc, urgency=urgency, satisfaction=sat, caller_ref="c")  # type: ignore[arg-type]


def created(tid: str, loc: Location = WANGJING, at: timedelta = timedelta(0), urgency: str = "normal") -> HotlineEvent:
    return ev(tid, at, "created", "open", loc=loc, urgency=urgency)


def run_known_tickets() -> list[KpiFact]:
    """Five 积水 tickets in 望京 and one in 中关村; see test_kpi for the hand-computed rates."""
    wf = HotlineWorkflow(load_rules(), load_policy().hotline)
    events: list[tuple[str, Any]] = [
        ("ev", created("t1")), ("ev", created("t2")), ("ev", created("t3")), ("ev", created("t4")),
        ("ev", created("t5", at=2 * D)), ("ev", created("t6", loc=ZGC)),
        ("ev", ev("t1", 1 * H)),                             # contact on time
        ("ev", ev("t4", 0.5 * H)),                           # contact on time
        ("ev", ev("t6", 1.5 * H, loc=ZGC)),                  # contact on time
        ("tick", T0 + 2 * H + timedelta(minutes=1)),         # t2, t3: first contact missed
        ("ev", ev("t2", 3 * H)),                             # late contact: already counted as missed
        ("ev", ev("t3", 1 * D, status="resolved")),          # resolved on time
        ("ev", ev("t1", 2 * D, status="resolved")),          # resolved on time
        ("ev", ev("t1", 2 * D + H, "feedback", sat=5)),
        ("ev", ev("t3", 1 * D + H, "feedback", sat=4)),
        ("ev", ev("t3", 1 * D + 2 * H, "feedback", sat=3)),  # replaces 4: now unsatisfied
        ("tick", T0 + 3 * D),                                # t5 (created at 2 d): first contact missed
        ("ev", ev("t2", 8 * D, status="resolved")),          # resolved late (7 d)
        ("ev", ev("t2", 8 * D + H, "feedback", sat=2)),
    ]
    states: dict[str, Any] = {}
    facts: list[KpiFact] = []
    for kind, x in events:
        if kind == "ev":
            states[x.ticket_id], out = wf.step(states.get(x.ticket_id), x)
            assert out.rejection is None, out.rejection
            facts += out.facts
        else:
            for tid in sorted(states):
                due = wf.due_at(states[tid])
                if due is not None and x > due:
                    states[tid], out = wf.tick(states[tid], x)
                    facts += out.facts
    return facts


def test_tickets_are_dispatched_through_the_routing_with_deadlines() -> None:
    wf = HotlineWorkflow(load_rules(), load_policy().hotline, load_policy().emergency)
    _, out = wf.step(None, created("t1"))
    assert out.dispatch is not None
    assert out.dispatch.departments == ("street.chaoyang.wangjing", "water")
    assert out.dispatch.first_contact_by == T0 + 2 * H and out.dispatch.resolve_by == T0 + 7 * D
    _, out = wf.step(None, created("t2", urgency="urgent"), mode=ModeInfo("emergency", "city"))
    assert out.dispatch is not None and set(out.dispatch.departments) == {
        "street.chaoyang.wangjing", "water", "district.chaoyang", "ema"}
    assert out.dispatch.first_contact_by == T0 + timedelta(minutes=15)  # urgent 30 min, halved in emergency


def test_each_ticket_counts_once_per_rate() -> None:
    facts = run_known_tickets()
    per = {(f.ticket_id, f.kind) for f in facts if f.prev_ok is None}
    assert len(per) == len([f for f in facts if f.prev_ok is None])
    assert ("t5", "response") in per  # t5's first contact was missed at the 3 d tick (created at 2 d)
    late = next(f for f in facts if f.ticket_id == "t2" and f.kind == "response")
    assert late.ok is False


def test_feedback_before_resolution_and_duplicates() -> None:
    wf = HotlineWorkflow(load_rules())
    st, _ = wf.step(None, created("t1"))
    _, out = wf.step(st, ev("t1", H, "feedback", sat=5))
    assert out.rejection is not None and out.rejection.reason == "illegal_transition"
    e = ev("t1", H)
    st1, o1 = wf.step(st, e)
    st2, o2 = wf.step(st1, e)
    assert o1.facts and o2.duplicate and not o2.facts and st2 == st1
    _, out = wf.step(None, ev("tx", H, "feedback", sat=3))
    assert out.rejection is not None and out.rejection.reason == "unknown_ticket"


def test_rates_depend_on_event_times_not_on_when_the_deadline_timer_ran() -> None:
    """A worker behind its input ticks a deadline before the on-time contact
    arrives: the miss is corrected, so the rates equal those of an in-order run."""
    from streams import kpi

    wf = HotlineWorkflow(load_rules(), load_policy().hotline)
    evs = [created("a"), created("b"), created("c"),
           ev("a", 1 * H), ev("a", 2 * D, status="resolved"),  # on time, both
           ev("b", 3 * H), ev("b", 9 * D, status="resolved"),  # late, both
           ev("c", timedelta(minutes=30))]                   # contact on time, never resolved
    late_tick = T0 + 30 * D

    def run(tick_first: bool) -> dict[tuple[str, str], kpi.KpiSnapshot]:
        states: dict[str, Any] = {}
        facts: list[KpiFact] = []
        for e in evs:
            states[e.ticket_id], out = wf.step(states.get(e.ticket_id), e)
            facts += out.facts
            if tick_first and e.kind == "created":  # the timer runs before any status event arrives
                states[e.ticket_id], out = wf.tick(states[e.ticket_id], late_tick)
                facts += out.facts
        for tid in sorted(states):
            states[tid], out = wf.tick(states[tid], late_tick)
            facts += out.facts
        return kpi.compute(facts)

    in_order, behind = run(False), run(True)
    assert behind == in_order
    assert in_order[("district:chaoyang", "2025-07")].counts == {
        "response": (2, 3), "resolution": (1, 3), "satisfaction": (0, 0)}


def test_ticket_core_due_index_records_and_department_views() -> None:
    import orjson
    import pytest

    from streams.hotline_agents import InvalidRecord, TicketCore
    from streams.hotline_workflow import ticket_view

    table = load_rules()
    store: dict[bytes, bytes] = {}
    core = TicketCore(HotlineWorkflow(table, load_policy().hotline), store)
    e1 = created("k1")
    out, body = core.apply(e1, 2, ModeInfo())
    assert body is not None and orjson.loads(body)["p"] == 2
    (rec,) = out.records
    assert rec.change == "dispatched" and rec.departments == ("street.chaoyang.wangjing", "water")
    assert rec.caller_ref == "c" and ticket_view(rec, "water", table.registry).caller_ref is None
    assert ticket_view(rec, "street.chaoyang.wangjing", table.registry).caller_ref == "c"
    with pytest.raises(ValueError):
        ticket_view(rec, "eeb", table.registry)
    assert core.apply(e1, 2, ModeInfo())[1] is None  # redelivered: no change
    assert core.tick(T0 + H) == []  # nothing due yet
    ((key, p, res, _),) = core.tick(T0 + 3 * H)
    assert key == b"k1" and p == 2 and [f.kind for f in res.facts] == ["response"]
    assert res.records[0].change == "overdue" and res.records[0].overdue == ("response",)
    assert core.tick(T0 + 3 * H) == []  # once
    core2 = TicketCore(core.wf, store)
    assert core2.rebuild_index() == 1  # after a recovery: the resolution deadline is still pending
    with pytest.raises(InvalidRecord, match="not the ticket_id"):
        TicketCore.parse(b"other", e1.to_json())
    with pytest.raises(InvalidRecord) as exc:
        TicketCore.parse(b"k1", b'{"ticket_id": "k1"}')
    assert exc.value.reason == "invalid_hotline_event"


def test_settled_tickets_are_forgotten_after_retention_open_ones_never() -> None:
    from streams.hotline_agents import TicketCore

    store: dict[bytes, bytes] = {}
    core = TicketCore(HotlineWorkflow(load_rules(), load_policy().hotline), store)
    for e in (created("s1"), created("s2"), ev("s1", H, status="resolved")):
        core.apply(e, 1, ModeInfo())
    assert core.expire(T0 + 30 * D) == []
    assert core.expire(T0 + H + 36 * D) == [(b"s1", 1)]  # resolved on time, both rates decided: gone after 35 d
    assert list(store) == [b"s2"]  # still open: kept (its resolution deadline is pending)
    # old events replayed now: kept 35 d after the worker last touched the ticket, not after their event time
    core.apply(created("s3"), 1, ModeInfo(), now=T0 + 100 * D)
    core.apply(ev("s3", H, status="resolved"), 1, ModeInfo(), now=T0 + 100 * D)
    assert core.expire(T0 + 120 * D) == [] and b"s3" in store
    assert core.expire(T0 + 136 * D) == [(b"s3", 1)]
    core.tick(T0 + 8 * D)  # s2 misses both deadlines but is not resolved: never forgotten
    assert core.expire(T0 + 400 * D) == [] and b"s2" in store
