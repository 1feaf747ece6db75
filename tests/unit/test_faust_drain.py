"""The fetcher's delivery without a task per message (streams.faust_drain):
a callback that never suspends runs in place; one that suspends is resumed
through the slow path (the consumer's wait_first), which can still cut it
short; errors and cancellation reach the callback as they would in a task."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from streams.faust_drain import Lane, deliver


class Slow:
    """Stands for wait_first(aw, suspend_flow.wait()): runs `aw` as a task."""

    def __init__(self) -> None:
        self.calls = 0
        self.task: asyncio.Task[Any] | None = None

    async def __call__(self, aw: Awaitable[Any]) -> Any:
        self.calls += 1
        self.task = asyncio.ensure_future(aw)
        return await self.task


async def test_a_callback_that_never_suspends_runs_in_place() -> None:
    seen: list[int] = []
    lock = asyncio.Lock()

    async def callback(n: int) -> None:
        async with lock:  # an uncontended lock does not suspend
            seen.append(n)

    slow = Slow()
    for n in range(3):
        await deliver(callback(n), slow)
    assert seen == [0, 1, 2] and slow.calls == 0


async def test_a_callback_that_suspends_is_resumed_through_the_slow_path() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    await queue.put(0)  # full: the next put waits
    done: list[str] = []

    async def callback() -> str:
        await queue.put(1)
        done.append("put")
        return "ok"

    slow = Slow()
    delivery = asyncio.ensure_future(deliver(callback(), slow))
    await asyncio.sleep(0.01)
    assert slow.calls == 1 and done == [] and not delivery.done()
    assert await queue.get() == 0  # room again: the half-run callback goes on
    await asyncio.wait_for(delivery, 1)
    assert done == ["put"] and await queue.get() == 1
    assert slow.task is not None and slow.task.result() == "ok"


async def test_errors_before_and_after_suspending_propagate() -> None:
    async def early() -> None:
        raise ValueError("early")

    slow = Slow()
    with pytest.raises(ValueError, match="early"):
        await deliver(early(), slow)
    assert slow.calls == 0

    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def late() -> None:
        await fut
        raise KeyError("late")

    delivery = asyncio.ensure_future(deliver(late(), slow))
    await asyncio.sleep(0)
    fut.set_result(None)
    with pytest.raises(KeyError, match="late"):
        await delivery
    assert slow.calls == 1


async def test_a_suspended_callback_cut_short_is_cancelled_inside() -> None:
    cleaned: list[str] = []
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def blocked() -> None:
        try:
            await never
        finally:
            cleaned.append("finally")

    async def suspend_flow_wins(aw: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(aw)
        await asyncio.sleep(0.01)  # the rebalance's suspend_flow event fires first
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    await deliver(blocked(), suspend_flow_wins)
    assert cleaned == ["finally"]


class Acks:
    """Stands for the Faust consumer: records what was acked, in order."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: int) -> bool:
        self.acked.append(message)
        return True


async def test_a_lane_hands_batches_in_order_in_lists_of_at_most_most_and_acks_after_each() -> None:
    consumer, seen = Acks(), []
    acked_when_handled: list[list[int]] = []

    async def handler(batch: list[Any]) -> None:
        acked_when_handled.append(list(consumer.acked))
        await asyncio.sleep(0)
        seen.append(list(batch))

    lane = Lane(consumer, handler, most=3)
    await lane.put([1, 2, 3, 4, 5, 6, 7])
    await lane.put([8])
    lane.close()
    assert lane.task is not None
    await asyncio.wait_for(lane.task, 2)
    assert seen == [[1, 2, 3], [4, 5, 6], [7], [8]]
    assert consumer.acked == [1, 2, 3, 4, 5, 6, 7, 8]
    # a batch's records are acked only once it is handled: never ahead of the handler
    assert acked_when_handled == [[], [1, 2, 3], [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7]]


async def test_a_failed_handler_leaves_its_records_unacked_and_stops_the_fetcher() -> None:
    consumer = Acks()

    async def handler(batch: list[Any]) -> None:
        if 2 in batch:
            raise ConnectionError("producer gone")

    lane = Lane(consumer, handler, most=1)
    await lane.put([1, 2, 3])
    assert lane.task is not None
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(lane.task, 2)
    assert consumer.acked == [1]
    with pytest.raises(ConnectionError, match="producer gone"):  # the drain loop's next put crashes the consumer
        await lane.put([4])
