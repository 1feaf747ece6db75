"""ChangelogBatcher: a table's changelog records as one producer batch per
partition (a fake producer: the batching is the logic under test; the
worker's integration tests run it on the real broker)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from streams.changelog import ChangelogBatcher


class FakeBuilder:
    def __init__(self, room: int) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.room = room

    def append(self, *, key: bytes, value: bytes, timestamp: Any) -> object | None:
        if len(self.records) >= self.room:
            return None
        self.records.append((key, value))
        return object()


@dataclass
class FakeAioProducer:
    room: int = 100
    sent: list[tuple[str, int, list[tuple[bytes, bytes]]]] = field(default_factory=list)

    def create_batch(self) -> FakeBuilder:
        return FakeBuilder(self.room)

    async def send_batch(self, builder: FakeBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        self.sent.append((topic, partition, builder.records))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class FakeFaustProducer:
    def __init__(self, inner: FakeAioProducer) -> None:
        self.inner = inner

    def _ensure_producer(self) -> FakeAioProducer:
        return self.inner


class FakeApp:
    def __init__(self, producer: FakeFaustProducer) -> None:
        self.producer = producer

    async def maybe_start_producer(self) -> FakeFaustProducer:
        return self.producer


class FakeTable:
    class changelog_topic:  # Faust's attribute name
        @staticmethod
        def get_topic_name() -> str:
            return "app-sensor-state-changelog"


RECORDS = [(0, b"a", b"1"), (1, b"b", b"2"), (0, b"c", b"3")]


async def test_records_go_as_one_batch_per_partition_on_fausts_producer() -> None:
    faust_inner = FakeAioProducer()
    batcher = ChangelogBatcher(FakeApp(FakeFaustProducer(faust_inner)), FakeTable())
    assert await batcher.send(RECORDS) == 2
    assert faust_inner.sent == [("app-sensor-state-changelog", 0, [(b"a", b"1"), (b"c", b"3")]),
                                ("app-sensor-state-changelog", 1, [(b"b", b"2")])]


async def test_a_full_batch_is_sent_and_a_new_one_started() -> None:
    faust_inner = FakeAioProducer(room=1)
    batcher = ChangelogBatcher(FakeApp(FakeFaustProducer(faust_inner)), FakeTable())
    assert await batcher.send(RECORDS) == 3
    assert [(p, len(r)) for _, p, r in faust_inner.sent] == [(0, 1), (0, 1), (1, 1)]
