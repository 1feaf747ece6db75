"""Kafka side of the operations center.

`LiveHub` consumes city.alerts, city.incidents, city.alert.actions and the
mode topic (no consumer group: every opscenter instance sees everything,
starting at the end) and fans every record out to the connected live-feed
clients, each through a bounded queue (a slow client loses its oldest events
and is told so, never slows the others). It also keeps the emergency mode
state, folded with `streams.emergency.switch` from the mode topic.

`Publisher` writes actions and mode switches: idempotent producer, acks=all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from citybrain.topics import Topics

log = logging.getLogger("citybrain.opscenter.feed")


@dataclass(slots=True)
class FeedEvent:
    kind: str  # alert | incident | action | mode
    data: dict[str, Any]
    departments: tuple[str, ...] | None  # None: not known from the record itself
    received: float = field(default_factory=time.time)

    def sse(self) -> bytes:
        return b"event: " + self.kind.encode() + b"\ndata: " + orjson.dumps(self.data) + b"\n\n"


class Subscriber:
    def __init__(self, accepts: Callable[[FeedEvent], Awaitable[bool]], size: int) -> None:
        self.accepts = accepts
        self.queue: asyncio.Queue[FeedEvent] = asyncio.Queue(size)
        self.dropped = 0

    def offer(self, ev: FeedEvent) -> None:
        while True:
            try:
                self.queue.put_nowait(ev)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.queue.get_nowait()
                    self.dropped += 1


class LiveHub:
    def __init__(self, bootstrap: str, topics: Topics, mode_topic: str, client_id: str, queue_size: int = 1000,
                 client_kwargs: dict[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.kw = client_kwargs or {}  # SASL / TLS: citybrain.kafka_security
        self.topics = topics
        self.mode_topic = mode_topic
        self.client_id = client_id
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self.mode_state: dict[str, Any] | None = None
        self.alert_departments: dict[str, tuple[str, ...]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.events = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="opscenter-live-hub")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def subscribe(self, accepts: Callable[[FeedEvent], Awaitable[bool]]) -> Subscriber:
        s = Subscriber(accepts, self.queue_size)
        self.subscribers.add(s)
        return s

    def unsubscribe(self, s: Subscriber) -> None:
        self.subscribers.discard(s)

    async def _ensure_mode_topic(self) -> None:
        """One partition, compacted (key = scope): the latest switch per scope is the state."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=self.client_id, **self.kw)
        await admin.start()
        try:
            if self.mode_topic not in set(await admin.list_topics()):
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([NewTopic(self.mode_topic, 1, 1,
                                                        topic_configs={"cleanup.policy": "compact"})])
        finally:
            await admin.close()

    async def _replay_mode(self) -> None:
        """Fold the whole mode topic (small, compacted) into the current state."""
        from streams.emergency import ModeSwitch, switch

        c = AIOKafkaConsumer(self.mode_topic, bootstrap_servers=self.bootstrap, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False, client_id=self.client_id,
                             **self.kw)
        await c.start()
        try:
            parts = c.assignment()
            if not parts:
                return
            ends = await c.end_offsets(list(parts))
            if all(v == 0 for v in ends.values()):
                return
            done = False
            while not done:
                for msgs in (await c.getmany(timeout_ms=500)).values():
                    for m in msgs:
                        with contextlib.suppress(ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                            self.mode_state, _ = switch(self.mode_state, ModeSwitch.from_dict(orjson.loads(m.value)))
                done = True
                for tp, end in ends.items():
                    if await c.position(tp) < end:
                        done = False
        finally:
            await c.stop()

    async def _run(self) -> None:
        from streams.emergency import ModeSwitch, switch

        backoff = 0.5
        while True:
            try:
                await self._ensure_mode_topic()
                await self._replay_mode()
                self._consumer = AIOKafkaConsumer(
                    self.topics.alerts, self.topics.incidents, self.topics.actions, self.mode_topic,
                    bootstrap_servers=self.bootstrap, group_id=None, auto_offset_reset="latest",
                    enable_auto_commit=False, client_id=self.client_id, fetch_max_wait_ms=100, **self.kw,
                )
                await self._consumer.start()
                # make sure partitions are assigned and positioned at the end before saying ready
                for tp in self._consumer.assignment():
                    await self._consumer.position(tp)
                self.ready.set()
                backoff = 0.5
                while True:
                    batch = await self._consumer.getmany(timeout_ms=1000)
                    for tp, msgs in batch.items():
                        for m in msgs:
                            ev = self._event(tp.topic, m.value)
                            if ev is None:
                                continue
                            if ev.kind == "mode":
                                with contextlib.suppress(ValueError, KeyError, TypeError):
                                    self.mode_state, _ = switch(self.mode_state, ModeSwitch.from_dict(ev.data))
                                ev.data = {"switch": ev.data, "state": self.public_mode()}
                            await self._dispatch(ev)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as exc:
                log.warning("live feed consumer failed (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 15)
            finally:
                if self._consumer is not None:
                    with contextlib.suppress(Exception):
                        await self._consumer.stop()
                    self._consumer = None

    def _event(self, topic: str, value: bytes | None) -> FeedEvent | None:
        if not value:
            return None
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        self.events += 1
        if topic == self.topics.alerts:
            depts = tuple(data.get("departments") or ())
            aid = data.get("alert_id")
            if isinstance(aid, str):
                if len(self.alert_departments) > 200_000:
                    self.alert_departments.clear()
                self.alert_departments[aid] = depts
            return FeedEvent("alert", data, depts)
        if topic == self.topics.incidents:
            return FeedEvent("incident", data, None)
        if topic == self.topics.actions:
            depts2 = self.alert_departments.get(str(data.get("alert_id")))
            return FeedEvent("action", data, depts2)
        return FeedEvent("mode", data, ())

    async def _dispatch(self, ev: FeedEvent) -> None:
        for s in list(self.subscribers):
            try:
                ok = await s.accepts(ev)
            except Exception:  # a filter must never stop the feed
                log.exception("live feed filter failed")
                ok = False
            if ok:
                s.offer(ev)

    def public_mode(self) -> dict[str, Any]:
        st = self.mode_state or {"city": {"mode": "normal", "since": None, "by": None}, "districts": {}}
        return {"city": st.get("city"), "districts": st.get("districts") or {}}


class Publisher:
    def __init__(self, bootstrap: str, client_id: str, client_kwargs: dict[str, Any] | None = None) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, client_id=client_id, acks="all",
                                         enable_idempotence=True, linger_ms=0, **(client_kwargs or {}))

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(self, topic: str, key: str, value: bytes) -> tuple[int, int]:
        """Returns (partition, offset) once every in-sync replica has the record."""
        md = await self.producer.send_and_wait(topic, value, key=key.encode())
        return md.partition, md.offset
