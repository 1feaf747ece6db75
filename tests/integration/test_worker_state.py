"""The detection worker on the real broker: its per-sensor state survives a
kill -9 (recovered from the changelog), and the same input gives the same
alerts (what replay relies on)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from citybrain.kafka_admin import ensure_topics
from citybrain.supervisor import Supervisor
from citybrain.topics import Topics
from schemas import SensorReading
from tests.services import kafka_bootstrap  # noqa: F401

T0 = datetime(2025, 8, 1, 1, 0, tzinfo=UTC)
LOC = {"district": "朝阳区", "street": "望京街道", "grid": "g-1", "lat": 39.99, "lon": 116.47}


def reading(sid: str, ty: str, unit: str, value: float, minutes: float, run: str) -> SensorReading:
    return SensorReading.model_validate({
        "event_id": f"{run}-{sid}-{minutes}", "sensor_id": sid, "sensor_type": ty, "value": value, "unit": unit,
        "ts": (T0 + timedelta(minutes=minutes)).isoformat(), "location": LOC,
    })  # fmt: skip


class Worker:
    """One worker instance (own app id, prefix, data dir) as a child process."""

    def __init__(self, bootstrap: str, tmp: Path, name: str) -> None:
        self.run = uuid.uuid4().hex[:8]
        self.topics = Topics(prefix=f"w{self.run}.")
        self.bootstrap = bootstrap
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            WORKER_TOPIC_PREFIX=self.topics.prefix,
            WORKER_APP_ID=f"test-worker-{self.run}",
            WORKER_DATA_DIR=str(tmp / f"faust-{name}"),
        )
        self.sup = Supervisor(tmp / f"logs-{name}", base_env=env)

    async def start(self) -> None:
        await ensure_topics(self.bootstrap, {self.topics.readings: 4})
        self.sup.start("worker", ["worker", "--log-level", "info"])

    async def publish(self, readings: list[SensorReading]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            for r in readings:
                await producer.send(self.topics.readings, key=r.sensor_id.encode(), value=r.model_dump_json().encode())
            await producer.flush()
        finally:
            await producer.stop()

    async def alerts(self, until: Any, timeout: float = 120) -> list[dict[str, Any]]:
        consumer = AIOKafkaConsumer(
            self.topics.alerts, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
            group_id=None, metadata_max_age_ms=1000,
        )  # fmt: skip
        await consumer.start()
        got: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not until(got):
                self.sup.check_alive()
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(orjson.loads(m.value) for m in msgs)
        finally:
            await consumer.stop()
        return got

    def tail(self) -> str:
        return "".join(c.log_path.read_text(errors="replace")[-3000:] for c in self.sup.children.values())


@pytest.fixture
def workers(tmp_path: Path, kafka_bootstrap: str) -> Iterator[list[Worker]]:  # noqa: F811
    made: list[Worker] = []
    yield made
    for w in made:
        w.sup.stop_all()
        print(f"--- worker {w.run} log tail ---\n{w.tail()}")


def gas_alerts(got: list[dict[str, Any]], sid: str) -> list[dict[str, Any]]:
    return [a for a in got if a["subject"] == sid and a["rule"] == "manhole_gas:manhole_gas"]


async def test_state_survives_kill_9_and_the_open_alert_continues(
    workers: list[Worker], tmp_path: Path, kafka_bootstrap: str  # noqa: F811
) -> None:
    w = Worker(kafka_bootstrap, tmp_path, "a")
    workers.append(w)
    await w.start()
    sid = f"gas-{w.run}"
    calm = [reading(sid, "manhole_gas", "%LEL", 1.0 + (i % 3) * 0.5, i, w.run) for i in range(20)]
    hot = [reading(sid, "manhole_gas", "%LEL", 30.0, 20 + i, w.run) for i in range(4)]
    await w.publish(calm + hot)
    before = gas_alerts(await w.alerts(lambda got: len(gas_alerts(got, sid)) >= 1), sid)
    assert before, f"no gas alert before the kill:\n{w.tail()}"
    alert_id = before[0]["alert_id"]
    # let the worker commit and write its changelog, then kill it without warning
    await asyncio.sleep(3)
    w.sup.kill("worker", signal.SIGKILL)
    hotter = [reading(sid, "manhole_gas", "%LEL", 60.0, 24 + i, w.run) for i in range(6)]
    await w.publish(hotter)
    w.sup.restart("worker")

    def escalated(got: list[dict[str, Any]]) -> bool:
        return any(a["severity"] == "I" for a in gas_alerts(got, sid))

    after = gas_alerts(await w.alerts(escalated), sid)
    assert escalated(after), f"no alert for the readings after the restart:\n{w.tail()}"
    # the condition continued across the kill: the same alert, its count went on
    assert {a["alert_id"] for a in after} == {alert_id}
    last = max(after, key=lambda a: a["revision"])
    assert last["count"] > max(a["count"] for a in before)
    assert last["peak_severity"] == "I"


def mixed_input(run: str) -> list[SensorReading]:
    """A few sensors over a day: a gas leak, a silent sensor, a flatline and
    a water level surge, interleaved in event-time order."""
    out: list[SensorReading] = []
    for i in range(600):
        m = float(i * 2)
        out.append(reading(f"g-{run}", "manhole_gas", "%LEL", 30.0 if 200 <= i < 230 else 1.0 + (i % 4) * 0.3, m, run))
        if not 300 <= i < 360:
            out.append(reading(f"n-{run}", "noise", "dB(A)", 50.0 + (i * 7 % 11), m + 0.5, run))
        out.append(reading(f"s-{run}", "traffic_flow", "veh/h", 800.0 if i > 400 else 500.0 + (i * 13 % 97), m + 1, run))
    out.sort(key=lambda r: r.ts)
    return out


async def test_the_same_input_gives_the_same_alerts(
    workers: list[Worker], tmp_path: Path, kafka_bootstrap: str  # noqa: F811
) -> None:
    runs = []
    for name in ("first", "second"):
        w = Worker(kafka_bootstrap, tmp_path, name)
        workers.append(w)
        await w.start()
        # identical payloads: only the topics differ (the run id is fixed)
        await w.publish(mixed_input("det"))
        runs.append(w)

    def decided(a: dict[str, Any]) -> tuple[Any, ...]:
        # what detection decided, not transport details
        return (a["alert_id"], a["revision"], a["status"], a["severity"], a["peak_severity"], a["first_seen"],
                a["last_seen"], a["count"], tuple(a["departments"]), a["title"])  # fmt: skip

    consumers = []
    for w in runs:
        c = AIOKafkaConsumer(
            w.topics.alerts, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
            group_id=None, metadata_max_age_ms=1000,
        )  # fmt: skip
        await c.start()
        consumers.append(c)
    results: list[set[tuple[Any, ...]]] = [set(), set()]
    try:
        # both runs converge on the same alerts if the worker is deterministic;
        # wait for that (they progress at different speeds on a loaded machine)
        deadline = time.monotonic() + 180
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            changed = False
            for i, c in enumerate(consumers):
                runs[i].sup.check_alive()
                for msgs in (await c.getmany(timeout_ms=300)).values():
                    before = len(results[i])
                    results[i].update(decided(orjson.loads(m.value)) for m in msgs)
                    changed |= len(results[i]) != before
            if changed or results[0] != results[1] or not results[0]:
                stable_since = time.monotonic()
            elif time.monotonic() - stable_since > 5:
                break
    finally:
        for c in consumers:
            await c.stop()
    first, second = results
    assert len({r[0] for r in first}) >= 3, f"expected gas, silence and traffic alerts, got {first}"
    assert sorted(first) == sorted(second)
