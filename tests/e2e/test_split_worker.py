"""The worker as the demo runs it: two processes, the detect half (readings ->
detections) and the alerts half (lifecycle, fan-out, hotline, incidents),
each its own Faust app. A rainstorm's alert still reaches exactly its
departments, each half consumes only its own topics, and each recovers its
own state from its own changelog when it is killed."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from citybrain.supervisor import WORKER_READY
from tests.e2e.conftest import MqttPublisher, Pipeline
from tests.e2e.test_lifecycle_flow import (
    DISTRICT,
    EMA,
    STREET,
    WATER,
    action,
    alerts_of,
    all_dept_topics,
    send_actions,
    send_levels,
    water,
)


@pytest.fixture
def worker_roles() -> dict[str, str]:
    return {"worker": "detect", "alerts": "alerts"}


async def committed_topics(p: Pipeline, group: str, want: str, timeout: float = 30) -> set[str]:
    """The topics on which `group` has committed offsets, once `want` is among them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=p.env["KAFKA_BOOTSTRAP_SERVERS"])
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            offsets: dict[Any, Any] = await admin.list_consumer_group_offsets(group)
            topics = {tp.topic for tp, meta in offsets.items() if meta.offset > 0}
            if want in topics or time.monotonic() > deadline:
                return topics
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


async def test_split_halves_route_a_rainstorm_alert_and_keep_to_their_topics(
    pipeline: Pipeline, publisher: MqttPublisher
) -> None:
    run = pipeline.run
    subject = f"lc-{run}-underpass"
    send_levels(publisher, run, "underpass", [3.8, 3.9, 3.85, 3.9])  # orange in 朝阳区

    expected = {WATER, EMA, DISTRICT, STREET}
    msgs = await pipeline.consume(pipeline.topics.alerts, lambda got: any(
        set(a["departments"]) >= expected for a in alerts_of(got, subject)), timeout=90)
    alerts = alerts_of(msgs, subject)
    assert alerts, "the alerts half published the detect half's alert to city.alerts"
    last = alerts[-1]
    assert last["severity"] == "II" and last["status"] == "dispatched"
    assert set(last["departments"]) == expected
    for code in sorted(expected):
        got = await pipeline.consume(pipeline.topics.dept(code), lambda g: len(g) >= 1, timeout=30)
        assert got and all(m.key.decode() == last["alert_id"] for m in got), code
    assert await all_dept_topics(pipeline, expected) == expected, "no other department's topic got anything"

    app_id = pipeline.env["WORKER_APP_ID"]
    t = pipeline.topics
    detect = await committed_topics(pipeline, f"{app_id}-detect", t.readings)
    assert t.readings in detect and t.alerts_detected not in detect, detect
    alerts_group = await committed_topics(pipeline, f"{app_id}-alerts", t.alerts_detected)
    assert t.alerts_detected in alerts_group and t.readings not in alerts_group, alerts_group
    pipeline.sup.check_alive()


async def test_each_half_killed_recovers_its_own_state(pipeline: Pipeline, publisher: MqttPublisher) -> None:
    run = pipeline.run
    subject = f"lc-{run}-culvert"
    send_levels(publisher, run, "culvert", [3.8, 3.8, 3.8])  # orange: a long SLA, nothing due during the test
    msgs = await pipeline.consume(pipeline.topics.alerts, lambda got: bool(alerts_of(got, subject)), timeout=90)
    aid = alerts_of(msgs, subject)[0]["alert_id"]
    await send_actions(pipeline, [action(aid, "ack", WATER)])
    msgs = await pipeline.consume(pipeline.topics.alerts, lambda got: any(
        a["status"] == "acknowledged" for a in alerts_of(got, subject)), timeout=30)
    acked = next(a for a in alerts_of(msgs, subject) if a["status"] == "acknowledged")
    await asyncio.sleep(4)  # the changelog records and the offsets are on the broker

    for half in ("alerts", "worker"):  # SIGKILL, no clean shutdown: the lifecycle's state, then the sensors'
        pipeline.sup.kill(half)
        pipeline.sup.restart(half)
        await asyncio.to_thread(pipeline.sup.wait_for_log, half, WORKER_READY, 120)
    alerts_log = pipeline.sup.children["alerts"].log_path.read_text(errors="replace")
    recovered = re.search(r"lifecycle: (\d+) alerts with a pending timer after recovery",
                          alerts_log.split(WORKER_READY, 1)[1])
    assert recovered and int(recovered.group(1)) >= 1, "the alerts half rebuilt its timers from its changelog"

    more = [water(run, "culvert", 10 + i, 4.3) for i in range(3)]  # red now: a new detection revision
    for r in more:
        r["ts"] = datetime.now(UTC).isoformat()
        publisher.publish(f"city/sensors/{r['sensor_id']}", json.dumps(r).encode())
    msgs = await pipeline.consume(pipeline.topics.alerts, lambda got: any(
        a["revision"] > acked["revision"] for a in alerts_of(got, subject)), timeout=90)
    later = [a for a in alerts_of(msgs, subject) if a["revision"] > acked["revision"]]
    assert later, "the condition continues after both restarts"
    assert {a["alert_id"] for a in later} == {aid}, "the detect half kept the open episode: the same alert"
    assert all(a["status"] == "acknowledged" for a in later), "the alerts half kept the acknowledgement"
    assert later[0]["revision"] == acked["revision"] + 1
    pipeline.sup.check_alive()
