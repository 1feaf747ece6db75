"""Held actions (replay, the event clock): an action on an alert the
lifecycle has not seen yet waits for it, bounded in event time and count,
instead of being refused; live it is refused at once (streams.lifecycle)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from citybrain.errors import ConfigError
from schemas import ActionKind, Alert, AlertAction, AlertStatus, Evidence, Location, Severity
from streams.lifecycle import HoldPolicy, Lifecycle, expire, hold, parse_policy, release
from streams.lifecycle_agent import LifecycleCore
from streams.routing import load_rules, load_yaml

T0 = datetime(2026, 7, 20, 8, 0, tzinfo=UTC)
POLICY = HoldPolicy(unknown_s=600, max_held=3)


def act(event_id: str, alert_id: str = "a-1", minutes: float = 0, kind: str = "ack") -> AlertAction:
    return AlertAction(event_id=event_id, alert_id=alert_id, action=ActionKind(kind), actor="op",
                       actor_department="water", ts=T0 + timedelta(minutes=minutes))


def entry(a: AlertAction, offset: int = 0) -> dict[str, object]:
    return {"value": a.to_json().decode(), "src": ["replay.r.city.alert.actions", 0, offset]}


def alert(alert_id: str = "a-1", minutes: float = 0) -> bytes:
    t = T0 + timedelta(minutes=minutes)
    return Alert(
        alert_id=alert_id, rule="water_level", subject="wl-1", category="water", sensor_type="water_level",
        severity=Severity.III, status=AlertStatus.DISPATCHED, title="水位预警",
        location=Location(district="朝阳区", street="望京街道", lat=39.99, lon=116.47),
        first_seen=t, last_seen=t, count=1, revision=1,
        evidence=Evidence(detector="water_level", detector_version="1.0.0", statistic="median", value=3.2,
                          threshold=3.0, window_start=t, window_end=t),
    ).to_json()  # fmt: skip


def test_hold_release_in_event_time_order_and_never_mutates() -> None:
    room: dict[str, list[dict[str, object]]] = {}
    late, early = act("e2", minutes=5), act("e1", minutes=2)
    r1, ok1 = hold(room, late, entry(late), POLICY)
    r2, ok2 = hold(r1, early, entry(early), POLICY)
    r3, ok3 = hold(r2, early, entry(early), POLICY)  # redelivered: held once
    assert ok1 and ok2 and ok3 and room == {} and len(r1["a-1"]) == 1
    assert r3 == r2 and [e["event_id"] for e in r2["a-1"]] == ["e2", "e1"]
    rest, out = release(r2, "a-1")
    assert rest == {} and [e["event_id"] for e in out] == ["e1", "e2"], "oldest event time first"
    assert release(r2, "a-other") == (r2, [])
    assert len(r2["a-1"]) == 2, "the input room is unchanged"


def test_full_room_refuses_the_next_action() -> None:
    room: dict[str, list[dict[str, object]]] = {}
    for i in range(3):
        a = act(f"e{i}", alert_id=f"a-{i}")
        room, ok = hold(room, a, entry(a), POLICY)
        assert ok
    extra = act("e9", alert_id="a-9")
    after, ok = hold(room, extra, entry(extra), POLICY)
    assert not ok and after == room


def test_expire_only_past_the_event_time_bound() -> None:
    room: dict[str, list[dict[str, object]]] = {}
    for a in (act("e1", minutes=0), act("e2", "a-2", minutes=8), act("e3", minutes=30)):
        room, _ = hold(room, a, entry(a), POLICY)
    # 10 minutes after e1: exactly at the bound, nothing goes
    same, gone = expire(room, T0 + timedelta(minutes=10), POLICY)
    assert gone == [] and same is room
    rest, gone = expire(room, T0 + timedelta(minutes=18, seconds=1), POLICY)
    assert [(a, e["event_id"]) for a, e in gone] == [("a-1", "e1"), ("a-2", "e2")], "oldest first"
    assert rest == {"a-1": [room["a-1"][1]]}, "the action 30 minutes on still waits (it came early)"


def test_policy_section_parsed_and_checked() -> None:
    def parse(text: str) -> HoldPolicy:
        return parse_policy(load_yaml(text, "policy.yaml"), "policy.yaml").lifecycle

    assert parse("version: 1\nlifecycle: {hold_unknown: 30m, max_held: 50}\n") == HoldPolicy(1800.0, 50)
    assert parse("version: 1\n") == HoldPolicy()
    with pytest.raises(ConfigError, match=r"policy\.yaml:2: lifecycle: max_held"):
        parse("version: 1\nlifecycle: {max_held: -1}\n")
    with pytest.raises(ConfigError, match="hold_unknwn"):
        parse("version: 1\nlifecycle: {hold_unknwn: 1m}\n")


def test_core_holds_until_the_alert_arrives_then_applies() -> None:
    store: dict[bytes, bytes] = {}
    core = LifecycleCore(Lifecycle(load_rules()), store, hold_policy=POLICY)
    ack = act("e1", minutes=3)
    assert core.holds_for(b"a-1")
    out, body = core.apply("action", b"a-1", ack.to_json(), T0, 0, ("t", 0, 7))
    assert out.held and out.rejection is None and body is None and store == {}
    out, body = core.apply("detected", b"a-1", alert(minutes=1), T0 + timedelta(minutes=1), 0)
    assert body is not None and not core.holds_for(b"a-1")
    (held,) = core.release(b"a-1")
    assert held["event_id"] == "e1" and held["src"] == ["t", 0, 7] and core.held == {}
    out, body = core.apply("action", b"a-1", held["value"].encode(), T0 + timedelta(minutes=3), 0)
    assert body is not None and out.alerts[-1].status is AlertStatus.ACKNOWLEDGED
    assert orjson.loads(body)["history"][-1]["event_id"] == "e1"


def test_core_refuses_what_waited_too_long_and_live_refuses_at_once() -> None:
    core = LifecycleCore(Lifecycle(load_rules()), {}, hold_policy=POLICY)
    core.apply("action", b"a-1", act("e1").to_json(), T0, 0, ("t", 0, 1))
    assert core.expire_held(T0 + timedelta(minutes=10)) == []
    ((key, e, rejection),) = core.expire_held(T0 + timedelta(minutes=11))
    assert key == b"a-1" and e["src"] == ["t", 0, 1] and rejection.reason == "unknown_alert"
    assert "ack on a-1" in rejection.message and "660 s" in rejection.message
    assert core.held == {} and core.release(b"a-1") == []

    live = LifecycleCore(Lifecycle(load_rules()), {})
    assert not live.holds_for(b"a-1")
    out, body = live.apply("action", b"a-1", act("e1").to_json(), T0, 0)
    assert not out.held and body is None and out.rejection is not None
    assert out.rejection.reason == "unknown_alert"
    assert live.expire_held(T0 + timedelta(days=1)) == []
