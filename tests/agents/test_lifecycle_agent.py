"""The lifecycle agents under Faust's test_context: detection revisions and
actions in, current alerts and dead letters out, timers from the index."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from schemas import Alert, AlertStatus, Evidence, Location, Severity
from tests.agents.conftest import Worker, make_worker


def water_alert(w: Worker, level: float = 3.8, revision: int = 1, severity: Severity = Severity.II) -> Alert:
    t = w.clock.now
    return Alert(
        alert_id="a-agent-1", rule="water_level", subject="wl-1", category="water", sensor_type="water_level",
        severity=severity, status=AlertStatus.DISPATCHED, title="水位预警",
        location=Location(district="朝阳区", street="望京街道", lat=39.99, lon=116.47),
        first_seen=t, last_seen=t, count=revision, revision=revision,
        evidence=Evidence(detector="water_level", detector_version="1.0.0", statistic="median", value=level,
                          threshold=3.5, window_start=t, window_end=t, details={"mode": {"mode": "normal"}}),
    )  # fmt: skip


def action(kind: str, dept: str, event_id: str, w: Worker) -> bytes:
    return (
        f'{{"event_id": "{event_id}", "alert_id": "a-agent-1", "action": "{kind}", "actor": "t", '
        f'"actor_department": "{dept}", "ts": "{w.clock.now.isoformat()}"}}'
    ).encode()


async def test_detection_routed_actions_applied_rejections_dead_lettered(worker: Worker) -> None:
    h = worker.ctx.extras["lifecycle"]
    async with h.detected_agent.test_context() as agent:
        await agent.put(value=water_alert(worker).to_json(), key=b"a-agent-1")
        await agent.put(value=water_alert(worker).to_json(), key=b"a-agent-1")  # redelivered: no second publish
        await agent.put(value=b'{"alert_id": "x"}', key=b"x")  # not an Alert
    first = worker.rec.published
    assert len(first) == 1
    assert set(first[0].departments) == {"water", "ema", "district.chaoyang", "street.chaoyang.wangjing"}
    assert first[0].status is AlertStatus.DISPATCHED
    assert [d[1] for d in worker.rec.dead] == ["invalid_alert"]

    async with h.actions_agent.test_context() as agent:
        await agent.put(value=action("resolve", "water", "e1", worker), key=b"a-agent-1")  # not acked yet
        await agent.put(value=action("ack", "eeb", "e2", worker), key=b"a-agent-1")  # not its alert
        await agent.put(value=action("ack", "water", "e3", worker), key=b"a-agent-1")
        await agent.put(value=action("ack", "water", "e3", worker), key=b"a-agent-1")  # duplicate event id
    assert [d[1] for d in worker.rec.dead[1:]] == ["illegal_transition", "unauthorised"]
    assert worker.rec.applied == [b"e3"], "only the accepted action, once, reaches the applied topic (storage)"
    assert [a.status for a in worker.rec.published] == [AlertStatus.DISPATCHED, AlertStatus.ACKNOWLEDGED]
    assert worker.rec.published[1].revision == first[0].revision + 1
    # acknowledged: the 15 min ack clock stopped; next due is the persistence
    # raise of an orange water alert (II held 60 min -> I)
    assert h.core.next_due() == worker.clock.now + timedelta(hours=1)


async def test_unacknowledged_alert_escalates_when_due(worker: Worker) -> None:
    h = worker.ctx.extras["lifecycle"]
    async with h.detected_agent.test_context() as agent:
        await agent.put(value=water_alert(worker, 3.2, severity=Severity.III).to_json(), key=b"a-agent-1")
    (alert,) = worker.rec.published
    assert alert.departments == ("water",)
    worker.clock.now += timedelta(minutes=23)  # 75 % of the 30 min acknowledge window of a yellow alert
    await h.run_due(lambda partition: True)  # test_context assigns no partitions
    assert len(worker.rec.published) == 1, "a reminder is not a new revision"
    (reminder,) = worker.rec.notices
    assert reminder["kind"] == "reminder" and reminder["alert_id"] == "a-agent-1"
    assert reminder["departments"] == ["water"] and reminder["notice_id"].startswith("a-agent-1:reminder:")
    worker.clock.now += timedelta(minutes=12)  # past the 30 min acknowledge window
    await h.run_due(lambda partition: True)  # test_context assigns no partitions
    assert len(worker.rec.published) == 2
    up = worker.rec.published[1]
    assert "district.chaoyang" in up.departments
    assert up.evidence.details["lifecycle"]["rung"] == "district"
    # also due by then: the persistence raise (yellow held 30 min -> orange)
    assert sorted(n["kind"] for n in worker.rec.notices) == ["escalated", "raised", "reminder"]
    (esc,) = [n for n in worker.rec.notices if n["kind"] == "escalated"]
    assert esc["added_department"] == "district.chaoyang"


@pytest.fixture
def replay_worker(tmp_path: Path) -> Iterator[Worker]:
    """The worker as a replay runs it: the event clock, held actions waiting at most 10 event minutes."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nlifecycle: {hold_unknown: 10m}\n", encoding="utf-8")
    yield from make_worker(tmp_path, clock="event", policy_file=str(policy))


async def test_event_clock_holds_an_action_until_its_alert_arrives(replay_worker: Worker) -> None:
    w = replay_worker
    h = w.ctx.extras["lifecycle"]
    t0 = w.clock.now
    w.clock.now = t0 + timedelta(minutes=2)
    early_ack = action("ack", "water", "e-ack", w)  # at t0 + 2 min, before its alert reached the lifecycle
    w.clock.now = t0 + timedelta(minutes=1)
    orphan = action("ack", "water", "e-orphan", w).replace(b"a-agent-1", b"a-never")
    async with h.actions_agent.test_context() as agent:
        await agent.put(value=early_ack, key=b"a-agent-1")
        await agent.put(value=orphan, key=b"a-never")
    assert w.rec.dead == [] and w.rec.applied == [] and w.rec.published == [], "held, not refused"
    assert w.ctx.clock.now() < t0 + timedelta(minutes=1), "a held action moves no clock"

    w.clock.now = t0
    async with h.detected_agent.test_context() as agent:
        await agent.put(value=water_alert(w).to_json(), key=b"a-agent-1")
    assert w.rec.applied == [b"e-ack"], "applied once its alert came"
    assert [a.status for a in w.rec.published] == [AlertStatus.DISPATCHED, AlertStatus.ACKNOWLEDGED]
    assert w.rec.published[-1].evidence.details["lifecycle"]["last"]["at"] == (t0 + timedelta(minutes=2)).isoformat()
    assert w.rec.dead == []

    # the event clock moves 10 min past the orphan's time (t0 + 1 min): refused as live would
    w.clock.now = t0 + timedelta(minutes=11, seconds=1)
    async with h.detected_agent.test_context() as agent:
        await agent.put(value=water_alert(w, revision=2).to_json(), key=b"a-agent-1")
    assert [(k, reason) for k, reason, _ in w.rec.dead] == [(b"a-never", "unknown_alert")]
    assert "held 601 s of event time" in w.rec.dead[0][2]
