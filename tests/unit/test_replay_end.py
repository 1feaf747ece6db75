"""The replay's end, pure parts: the alert collector has read its topic to
given end offsets, and a collector that stopped reading fails the run
instead of leaving it waiting (storage.replay._catch_up)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiokafka import TopicPartition

from citybrain.errors import ServiceError
from storage.replay import _AlertCollector

TOPIC = "replay.r1.city.alerts"


def ends(*offsets: int) -> dict[TopicPartition, int]:
    return {TopicPartition(TOPIC, p): o for p, o in enumerate(offsets)}


async def test_the_collector_has_read_to_the_ends_only_on_every_partition() -> None:
    c = _AlertCollector("127.0.0.1:1", TOPIC)
    assert c.has_read(ends(0, 0))  # nothing published, nothing to read
    assert not c.has_read(ends(3, 0))
    c.read_to.update({0: 3})
    assert c.has_read(ends(3, 0))
    assert not c.has_read(ends(3, 1))  # partition 1 not read yet
    c.read_to.update({1: 1})
    assert c.has_read(ends(3, 1))
    assert not c.has_read(ends(4, 1))  # an alert came after


async def test_a_collector_that_stopped_reading_fails_the_wait() -> None:
    c = _AlertCollector("127.0.0.1:1", TOPIC)

    async def broken() -> None:
        raise ConnectionError("broker gone")

    c._task = asyncio.ensure_future(broken())
    with contextlib.suppress(ConnectionError):
        await c._task
    with pytest.raises(ServiceError, match=r"alert collector stopped.*broker gone"):
        c.has_read(ends(0))
