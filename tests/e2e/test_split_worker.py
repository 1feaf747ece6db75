"""The worker as the demo runs it: two processes, the detect half (readings ->
detections) and the alerts half (lifecycle, fan-out, hotline, incidents),
each its own Faust app. A rainstorm's alert still reaches exactly its
departments, each half consumes only its own topics, and each recovers its
own state from its own changelog when it is killed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from citybrain.supervisor import WORKER_READY
from tests.e2e.conftest import MqttPublisher, Pipeline
from tests.e2e.test_lifecycle_flow import (
    acknowledged_culvert_alert,
    assert_culvert_alert_continues_acknowledged,
    assert_timers_rebuilt,
    rainstorm_routed,
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
    await rainstorm_routed(pipeline, publisher, timeout=90)  # the alerts half routed the detect half's alert
    app_id = pipeline.env["WORKER_APP_ID"]
    t = pipeline.topics
    detect = await committed_topics(pipeline, f"{app_id}-detect", t.readings)
    assert t.readings in detect and t.alerts_detected not in detect, detect
    alerts_group = await committed_topics(pipeline, f"{app_id}-alerts", t.alerts_detected)
    assert t.alerts_detected in alerts_group and t.readings not in alerts_group, alerts_group
    pipeline.sup.check_alive()


async def test_each_half_killed_recovers_its_own_state(pipeline: Pipeline, publisher: MqttPublisher) -> None:
    acked = await acknowledged_culvert_alert(pipeline, publisher, timeout=90)
    for half in ("alerts", "worker"):  # SIGKILL, no clean shutdown: the lifecycle's state, then the sensors'
        pipeline.sup.kill(half)
        pipeline.sup.restart(half)
        await asyncio.to_thread(pipeline.sup.wait_for_log, half, WORKER_READY, 120)
    assert_timers_rebuilt(pipeline.sup.children["alerts"].log_path.read_text(errors="replace"))
    # the same alert id: the detect half kept the open episode; acknowledged: the alerts half kept the ack
    await assert_culvert_alert_continues_acknowledged(pipeline, publisher, acked)
    pipeline.sup.check_alive()
