"""The connector loses nothing: crashes, a Kafka outage and poison input,
against real Mosquitto and real Kafka. The oracle is what the MQTT broker
acknowledged to the publisher."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from aiokafka import AIOKafkaConsumer

from citybrain.dlq import H_REASON, H_SOURCE, decode_headers
from citybrain.kafka_admin import ensure_topics, pipeline_topics
from citybrain.supervisor import Supervisor
from citybrain.topics import Topics
from tests.e2e.conftest import MqttPublisher, wait_until_subscribed
from tests.integration.conftest import noise_reading as reading

ROOT = Path(__file__).resolve().parents[2]


class Stream:
    """Publishes numbered readings in a thread until stopped; keeps the acked ids."""

    def __init__(self, url: str, run: str, per_message: int = 10, interval: float = 0.005) -> None:
        self.pub = MqttPublisher(url, f"pub-{run}")
        self.run = run
        self.per_message = per_message
        self.interval = interval
        self.acked: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.i = 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            items = [reading(self.run, self.i + k) for k in range(self.per_message)]
            self.i += self.per_message
            self.pub.publish(f"city/sensors/batch/{self.run}", json.dumps({"readings": items}).encode(), timeout=120)
            self.acked.update(d["event_id"] for d in items)
            time.sleep(self.interval)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=150)
        self.pub.close()


async def event_ids_in(bootstrap: str, topic: str, expected: set[str], timeout: float = 90) -> dict[str, int]:
    """Read the topic from the start until every expected id is there (or timeout)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    seen: dict[str, int] = {}
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not expected <= seen.keys():
            for msgs in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for m in msgs:
                    eid = json.loads(m.value)["event_id"]
                    seen[eid] = seen.get(eid, 0) + 1
    finally:
        await consumer.stop()
    return seen


def connector_env(bootstrap: str, run: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        CONNECTOR_TOPIC_PREFIX=f"c{run}.",
        CONNECTOR_CLIENT_ID=f"conn-{run}",
        CONNECTOR_PII_KEY="test",
        CONNECTOR_SUBSCRIPTIONS=json.dumps([f"city/sensors/batch/{run}", f"city/sensors/{run}/#"]),
        CONNECTOR_MAX_PAYLOAD_BYTES="65536",
    )
    return env


@pytest.fixture
def stopped_after() -> Iterator[list[Supervisor]]:
    """Supervisors whose children are stopped when the test ends, passed or not."""
    sups: list[Supervisor] = []
    yield sups
    for sup in sups:
        sup.stop_all()


async def test_kill_9_mid_stream_loses_nothing(
    kafka_bootstrap: str, mqtt_publish_url: str, tmp_path: Path, stopped_after: list[Supervisor]
) -> None:
    run = uuid.uuid4().hex[:8]
    env = connector_env(kafka_bootstrap, run)
    topics = Topics(f"c{run}.")
    await ensure_topics(kafka_bootstrap, pipeline_topics(topics, 4))
    sup = Supervisor(tmp_path, base_env=env)
    stopped_after.append(sup)
    sup.start("connector", ["connector", "--log-level", "info"])
    # the persistent session exists once the connector subscribed; before that the broker queues nothing
    await asyncio.to_thread(wait_until_subscribed, sup, 120)
    stream = Stream(mqtt_publish_url, run).start()
    try:
        for _ in range(2):  # two crashes mid-stream
            await asyncio.sleep(3)
            sup.kill("connector", signal.SIGKILL)
            await asyncio.sleep(1.5)  # the broker queues for the persistent session meanwhile
            sup.restart("connector")
        await asyncio.sleep(3)
    finally:
        stream.stop()
    assert len(stream.acked) > 500
    seen = await event_ids_in(kafka_bootstrap, topics.readings, stream.acked)
    sup.stop_all()
    missing = stream.acked - seen.keys()
    assert not missing, f"{len(missing)} acknowledged readings never reached Kafka"


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A broker of this test's own (so stopping it disturbs nobody)."""
    run_dir = tmp_path / "stack"
    port = 19092 + os.getpid() % 500 * 2
    env = dict(os.environ)
    env.update(CITYBRAIN_RUN_DIR=str(run_dir), CITYBRAIN_KAFKA_PORT=str(port))
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    libs = ROOT / ".run" / "kafka"
    if (libs / "libs").is_dir():  # reuse the resolved jars instead of asking Maven again
        (run_dir / "kafka").mkdir(parents=True)
        shutil.copytree(libs / "libs", run_dir / "kafka" / "libs")
        shutil.copy(libs / "libs.stamp", run_dir / "kafka" / "libs.stamp")
    up = subprocess.run(["bash", str(ROOT / "deploy/local/stack.sh"), "up", "kafka"], env=env, capture_output=True, text=True)
    assert up.returncode == 0, f"private Kafka did not start: {up.stderr[-2000:]}"
    try:
        yield f"127.0.0.1:{port}", run_dir
    finally:
        subprocess.run(["bash", str(ROOT / "deploy/local/stack.sh"), "down"], env=env, capture_output=True)


async def test_kafka_down_30s_loses_nothing_memory_bounded(
    private_kafka: tuple[str, Path], mqtt_publish_url: str, tmp_path: Path, stopped_after: list[Supervisor]
) -> None:
    bootstrap, run_dir = private_kafka
    run = uuid.uuid4().hex[:8]
    env = connector_env(bootstrap, run)
    topics = Topics(f"c{run}.")
    await ensure_topics(bootstrap, pipeline_topics(topics, 4))
    sup = Supervisor(tmp_path / "logs", base_env=env)
    stopped_after.append(sup)
    child = sup.start("connector", ["connector", "--log-level", "info"])
    # the outage must hit a running connector, not one still starting (a loaded machine starts slowly)
    await asyncio.to_thread(wait_until_subscribed, sup, 120)
    proc = psutil.Process(child.pid)
    stream = Stream(mqtt_publish_url, run).start()
    stack_env = {**os.environ, "CITYBRAIN_RUN_DIR": str(run_dir), "CITYBRAIN_KAFKA_PORT": bootstrap.rsplit(":", 1)[1]}
    stack_env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    peak_rss = 0
    try:
        await asyncio.sleep(3)
        pid = int((run_dir / "kafka" / "kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        t_down = time.monotonic()
        while time.monotonic() - t_down < 30:
            peak_rss = max(peak_rss, proc.memory_info().rss)
            assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE, "connector died while Kafka was down"
            await asyncio.sleep(1)
        up = subprocess.run(
            ["bash", str(ROOT / "deploy/local/stack.sh"), "up", "kafka"], env=stack_env, capture_output=True, text=True
        )
        assert up.returncode == 0, up.stderr[-2000:]
        await asyncio.sleep(10)
    finally:
        stream.stop()
    seen = await event_ids_in(bootstrap, topics.readings, stream.acked, timeout=120)
    sup.check_alive()
    sup.stop_all()
    missing = stream.acked - seen.keys()
    assert not missing, f"{len(missing)} of {len(stream.acked)} acknowledged readings lost across the outage"
    assert peak_rss < 400 * 2**20, f"connector grew to {peak_rss / 2**20:.0f} MB while Kafka was down"


POISON = {
    "malformed_json": b'{"sensor_id": ',
    "bad_encoding": b"\xff\xfe\xfd",
    "non_finite": b'{"value": NaN}',
    "wrong_type": None,  # filled per run below
    "out_of_range": None,
    "time_out_of_range": None,
    "oversized": None,
    "missing_field": None,
}


async def test_every_bad_input_class_is_dead_lettered_and_good_input_flows(
    kafka_bootstrap: str, mqtt_publish_url: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    env = connector_env(kafka_bootstrap, run)
    topics = Topics(f"c{run}.")
    await ensure_topics(kafka_bootstrap, pipeline_topics(topics, 4))
    sup = Supervisor(tmp_path, base_env=env)
    sup.start("connector", ["connector"])
    try:
        await asyncio.sleep(4)
        poison = dict(POISON)
        poison["wrong_type"] = json.dumps(reading(run, 0, value="55")).encode()
        poison["out_of_range"] = json.dumps(reading(run, 0, value=500.0)).encode()
        poison["time_out_of_range"] = json.dumps(reading(run, 0, ts="2031-01-01T00:00:00+00:00")).encode()
        poison["oversized"] = json.dumps(reading(run, 0, pad="x" * 70000)).encode()
        bad = reading(run, 0)
        del bad["sensor_type"]
        poison["missing_field"] = json.dumps(bad).encode()
        pub = MqttPublisher(mqtt_publish_url, f"pub-{run}")
        good: set[str] = set()
        try:
            for i, (reason, payload) in enumerate(poison.items()):
                assert payload is not None
                pub.publish(f"city/sensors/{run}/{reason}", payload)
                ok = reading(run, 1000 + i)
                pub.publish(f"city/sensors/{run}/ok", json.dumps(ok).encode())
                good.add(ok["event_id"])
        finally:
            pub.close()
        seen = await event_ids_in(kafka_bootstrap, topics.readings, good)
        assert good <= seen.keys(), "good readings between poison messages all arrive"
        consumer = AIOKafkaConsumer(topics.dlq, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        reasons: dict[str, str] = {}
        try:
            deadline = time.monotonic() + 30
            while len(reasons) < len(poison) and time.monotonic() < deadline:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    for m in msgs:
                        h = decode_headers(m.headers)
                        reasons[h[H_SOURCE].rsplit("/", 1)[1]] = h[H_REASON]
        finally:
            await consumer.stop()
        sup.check_alive()
        assert reasons == {k: k for k in poison}, f"DLQ reasons by topic: {reasons}"
    finally:
        sup.stop_all()  # also when an assertion failed: no connector left running
