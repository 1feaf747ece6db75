"""What the fault matrix drives and measures: a publisher of sequenced
readings over MQTT QoS 1 that keeps what the broker acknowledged (the
oracle), the consumer-group lag of the worker and the writer, and the
database counts (stored, duplicated, alert ids per episode)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from paho.mqtt.enums import CallbackAPIVersion

from citybrain.topics import Topics
from connectors.mqtt_kafka import parse_mqtt_url

DISTRICT = {"district": "海淀区", "lat": 39.96, "lon": 116.30}


def reading(event_id: str, sensor_id: str, value: float, ts: datetime | None = None) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "sensor_id": sensor_id,
        "sensor_type": "pm25",
        "value": value,
        "unit": "ug/m3",
        "ts": (ts or datetime.now(UTC)).isoformat(),
        "location": DISTRICT,
    }


@dataclass
class Load:
    """Publishes a burst of readings every `period` seconds in a thread.

    Bursts, not a smooth stream: between bursts a healthy pipeline has
    consumer lag exactly 0, so "lag back to 0" is observable literally.
    Every burst also carries one reading of the hot sensor (PM2.5 far above
    the 严重 level), which keeps one alert open for the whole case."""

    url: str
    run: str
    rate: float  # readings per second
    sensors: int = 40
    batch: int = 20
    period: float = 2.0
    acked: set[str] = field(default_factory=set)
    published: int = 0
    seq: int = 0
    _pending: dict[int, list[str]] = field(default_factory=dict)
    _early: dict[int, bool] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        host, port, user, password, _ = parse_mqtt_url(self.url)
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"faults-pub-{self.run}",
            protocol=mqtt.MQTTv311,
        )  # fmt: skip
        if user:
            self.client.username_pw_set(user, password)
        self.client.max_inflight_messages_set(1000)
        self.client.on_publish = self._on_publish
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._loop, name=f"load-{self.run}", daemon=True)

    @property
    def hot_sensor(self) -> str:
        return f"{self.run}-hot"

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._lock:
            ids = self._pending.pop(mid, None)
            if ids is None:  # PUBACK before publish() returned and we recorded the mid
                self._early[mid] = not rc.is_failure
                return
        if not rc.is_failure:
            self.acked.update(ids)

    def publish(self, topic: str, payload: bytes, ids: list[str]) -> None:
        # never call paho while holding our lock: paho holds its own mutex in on_publish
        info = self.client.publish(topic, payload, qos=1)
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = ids
        if early:
            self.acked.update(ids)
        self.published += len(ids)

    def next_id(self) -> str:
        self.seq += 1
        return f"{self.run}-{self.seq}"

    def burst(self, n: int) -> None:
        now = datetime.now(UTC)
        items = [
            reading(self.next_id(), f"{self.run}-s{(self.seq + k) % self.sensors}", 12.0 + (self.seq + k) % 17, now)
            for k in range(n)
        ]
        items.append(reading(self.next_id(), self.hot_sensor, 400.0 + self.seq % 7, now))
        for i in range(0, len(items), self.batch):
            chunk = items[i : i + self.batch]
            self.publish(f"city/sensors/batch/{self.run}", orjson.dumps({"readings": chunk}),
                         [d["event_id"] for d in chunk])

    def _loop(self) -> None:
        carry = 0.0
        next_at = time.monotonic()
        while not self._stop.is_set():
            carry += self.rate * self.period
            n = int(carry)
            carry -= n
            self.burst(n)
            next_at += self.period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def wait_acks(self, timeout: float) -> int:
        """Wait for outstanding PUBACKs; returns how many messages are still unacknowledged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return 0
            time.sleep(0.1)
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class LagProbe:
    """Committed offsets vs log-end offsets of a consumer group, per topic set."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self.detail: dict[str, dict[str, int]] = {}  # group -> the last lag per partition (where not 0)

    async def _open(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, request_timeout_ms=5000)
            try:
                await asyncio.wait_for(admin.start(), 10)
                await asyncio.wait_for(consumer.start(), 10)
            except BaseException:
                await self._close(admin, consumer)
                raise
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    @staticmethod
    async def _close(admin: AIOKafkaAdminClient | None, consumer: AIOKafkaConsumer | None) -> None:
        for c in (consumer, admin):
            if c is None:
                continue
            try:
                await asyncio.wait_for(c.stop() if isinstance(c, AIOKafkaConsumer) else c.close(), 5)
            except Exception:
                pass

    async def close(self) -> None:
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        await self._close(admin, consumer)

    async def lag(self, group: str, tps: list[TopicPartition]) -> int | None:
        """Records not yet committed by `group`; None while Kafka cannot say."""
        try:
            admin, consumer = await self._open()
            committed = await asyncio.wait_for(admin.list_consumer_group_offsets(group, partitions=tps), 8)
            end = await asyncio.wait_for(consumer.end_offsets(tps), 8)
            start = await asyncio.wait_for(consumer.beginning_offsets(tps), 8)
        except Exception:
            await self.close()  # a fresh client next time: the broker may have restarted
            return None
        total = 0
        detail: dict[str, int] = {}
        for tp in tps:
            c = committed.get(tp)
            done = c.offset if c is not None and c.offset >= 0 else start[tp]
            total += max(0, end[tp] - done)
            if end[tp] > done:
                detail[f"{tp.topic.rsplit('.', 1)[-1]}[{tp.partition}]"] = end[tp] - done
        self.detail[group] = detail
        return total


def readings_tps(topics: Topics, partitions: int = 4) -> list[TopicPartition]:
    return [TopicPartition(topics.readings, p) for p in range(partitions)]


def writer_tps(topics: Topics, partitions: int = 4) -> list[TopicPartition]:
    many = (topics.readings, topics.hotline, topics.alerts, topics.actions, topics.incidents)
    return [TopicPartition(t, p) for t in many for p in range(partitions)] + [TopicPartition(topics.dlq, 0)]


class Db:
    """One connection, re-opened after a failure (the database may have been stopped)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: asyncpg.Connection | None = None

    async def fetch(self, sql: str, *args: Any, timeout: float = 10) -> list[Any]:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.url, timeout=timeout)
        try:
            return list(await self._conn.fetch(sql, *args, timeout=timeout))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def try_fetch(self, sql: str, *args: Any) -> list[Any] | None:
        try:
            return await self.fetch(sql, *args, timeout=5)
        except Exception:
            return None

    async def stored(self, run: str) -> tuple[set[str], int]:
        """(distinct event ids, rows) of this run's readings."""
        rows = await self.fetch("SELECT event_id FROM readings WHERE event_id LIKE $1", f"{run}-%", timeout=60)
        ids = [r["event_id"] for r in rows]
        return set(ids), len(ids)

    async def fresh(self, run: str, since: datetime) -> bool | None:
        """A reading of event time after `since` is stored (None: the database cannot say)."""
        rows = await self.try_fetch(
            "SELECT EXISTS (SELECT 1 FROM readings WHERE ts > $2 AND event_id LIKE $1) AS r", f"{run}-%", since
        )
        return None if rows is None else bool(rows[0]["r"])

    async def has_alert(self, subject: str) -> bool:
        rows = await self.try_fetch("SELECT EXISTS (SELECT 1 FROM alerts WHERE subject = $1) AS a", subject)
        return bool(rows and rows[0]["a"])

    async def alert_duplicates(self, run: str) -> list[tuple[str, str, int]]:
        """(rule, subject, alert ids) with more than one alert id: within a case every
        condition is one episode (a re-open inside the flap window keeps its id)."""
        rows = await self.fetch(
            "SELECT rule, subject, count(DISTINCT alert_id) AS n FROM alerts WHERE subject LIKE $1"
            " GROUP BY rule, subject HAVING count(DISTINCT alert_id) > 1",
            f"{run}-%",
        )
        return [(r["rule"], r["subject"], int(r["n"])) for r in rows]

    async def hot_alert_ids(self, hot: str) -> int:
        rows = await self.fetch("SELECT count(DISTINCT alert_id) AS n FROM alerts WHERE subject = $1", hot)
        return int(rows[0]["n"])

    async def dlq(self, dlq_topic: str) -> list[tuple[str, str, str]]:
        rows = await self.fetch("SELECT source, reason, stage FROM dlq_index WHERE dlq_topic = $1", dlq_topic)
        return [(r["source"], r["reason"], r["stage"]) for r in rows]
