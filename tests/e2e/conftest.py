"""End-to-end tier: the real processes (connector, worker, writer) started as
children on the real local stack, each test with its own topic prefix, Faust
app id, consumer groups and MQTT client ids."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaConsumer
from paho.mqtt.enums import CallbackAPIVersion

from citybrain.supervisor import CONNECTOR_SUBSCRIBED, Supervisor
from citybrain.topics import Topics
from connectors.mqtt_kafka import parse_mqtt_url
from tests.services import database_url, kafka_bootstrap, mqtt_publish_url, mqtt_url, unique  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


class MqttPublisher:
    """paho-mqtt publisher that waits for the broker's PUBACK of every message."""

    def __init__(self, url: str, client_id: str) -> None:
        host, port, user, password, _ = parse_mqtt_url(url)
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)
        if user:
            self.client.username_pw_set(user, password)
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, timeout: float = 10) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout)
        assert info.is_published(), f"broker did not acknowledge a message on {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Pipeline:
    env: dict[str, str]
    topics: Topics
    sup: Supervisor
    run: str

    async def consume(
        self, topic: str, until: Callable[[list[Any]], bool], timeout: float = 60
    ) -> list[Any]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.env["KAFKA_BOOTSTRAP_SERVERS"],
            auto_offset_reset="earliest",
            group_id=None,
            metadata_max_age_ms=1000,  # the topic may appear only once the first alert is routed to it
        )
        await consumer.start()
        got: list[Any] = []
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not until(got):
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(msgs)
        finally:
            await consumer.stop()
        return got

    async def db(self, sql: str, *args: Any) -> list[Any]:
        conn = await asyncpg.connect(self.env["DATABASE_URL"])
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def wait_db(self, sql: str, *args: Any, until: Callable[[list[Any]], bool], timeout: float = 60) -> list[Any]:
        deadline = time.monotonic() + timeout
        rows = await self.db(sql, *args)
        while not until(rows) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            rows = await self.db(sql, *args)
        return rows


def wait_until_subscribed(sup: Supervisor, timeout: float = 30) -> None:
    """Messages published before the connector's first subscription have no
    session to be queued in; wait for it (it logs once subscribed)."""
    sup.wait_for_log("connector", CONNECTOR_SUBSCRIBED, timeout)


@pytest.fixture
def pipeline_env() -> dict[str, str]:
    """Extra environment for the pipeline's processes; a test module overrides
    this fixture (e.g. WORKER_POLICY_FILE with SLAs of seconds)."""
    return {}


@pytest.fixture
def worker_roles() -> dict[str, str]:
    """The worker processes (supervisor name -> WORKER_ROLE); a test module
    overrides this to run the detect and alerts halves apart, as the demo does."""
    return {"worker": "all"}


@pytest.fixture
def pipeline(
    kafka_bootstrap: str, mqtt_url: str, mqtt_publish_url: str, database_url: str, tmp_path: Path,  # noqa: F811
    pipeline_env: dict[str, str], worker_roles: dict[str, str],
) -> Iterator[Pipeline]:
    run = uuid.uuid4().hex[:8]
    prefix = f"t{run}."
    env = dict(os.environ)
    env.update(
        CONNECTOR_TOPIC_PREFIX=prefix,
        CONNECTOR_CLIENT_ID=f"test-connector-{run}",
        CONNECTOR_PII_KEY=env.get("CONNECTOR_PII_KEY") or "test-pii-key",
        WORKER_TOPIC_PREFIX=prefix,
        WORKER_APP_ID=f"test-worker-{run}",
        WORKER_DATA_DIR=str(tmp_path / "faust"),
        WRITER_TOPIC_PREFIX=prefix,
        WRITER_GROUP_ID=f"test-writer-{run}",
    )
    env.update(pipeline_env)
    subprocess.run([sys.executable, "-m", "citybrain.cli", "db", "migrate"], env=env, check=True)
    sup = Supervisor(tmp_path / "logs", base_env=env)
    sup.start("connector", ["connector", "--log-level", "info"])
    for name, role in worker_roles.items():
        sup.start(name, ["worker", "--log-level", "info"], env={"WORKER_ROLE": role})
    sup.start("writer", ["writer"])
    p = Pipeline(env, Topics(prefix), sup, run)
    wait_until_subscribed(sup)
    try:
        yield p
    finally:
        sup.stop_all()
        for child in sup.children.values():
            print(f"--- {child.name} log tail ---\n{child.log_path.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def publisher(mqtt_publish_url: str) -> Iterator[MqttPublisher]:  # noqa: F811
    pub = MqttPublisher(mqtt_publish_url, f"test-pub-{uuid.uuid4().hex[:8]}")
    yield pub
    pub.close()
