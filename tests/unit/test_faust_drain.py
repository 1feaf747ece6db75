"""The fetcher's delivery without a task per message (streams.faust_drain):
a callback that never suspends runs in place; one that suspends is resumed
through the slow path (the consumer's wait_first), which can still cut it
short; errors and cancellation reach the callback as they would in a task."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable
from types import SimpleNamespace
from typing import Any
from weakref import WeakSet

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP

from streams.faust_drain import (
    LANE_CAP,
    FaustBatchAcks,
    Lane,
    deliver,
    drain_messages,
    register_batch_handler,
    wait_while_all_paused,
)


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
    """Stands for the Faust consumer: records what was acked, in order, and which
    partitions were taken out of fetching (`on_buffer_full`) and put back."""

    def __init__(self, assigned: tuple[TP, ...] = ()) -> None:
        self.acked: list[int] = []
        self.assigned = set(assigned)
        self.fetching = set(assigned)
        self.events: list[tuple[str, int]] = []

    def track(self, batch: list[int]) -> tuple[int, ...]:
        return tuple(batch)

    def ack(self, batch: list[int], token: tuple[int, ...]) -> None:
        assert token == tuple(batch), "the token track gave for this very batch"
        self.acked.extend(batch)

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def on_buffer_full(self, tp: TP) -> None:
        if tp in self.fetching:
            self.events.append(("pause", len(self.acked)))
        self.fetching.discard(tp)

    def on_buffer_drop(self, tp: TP) -> None:
        if tp not in self.fetching:
            self.events.append(("resume", len(self.acked)))
        self.fetching.add(tp)

    def _get_active_partitions(self) -> set[TP]:
        return set(self.fetching)


async def test_a_lane_hands_batches_in_order_in_lists_of_at_most_most_and_acks_after_each() -> None:
    consumer, seen = Acks(), []
    acked_when_handled: list[list[int]] = []

    async def handler(batch: list[Any]) -> None:
        acked_when_handled.append(list(consumer.acked))
        await asyncio.sleep(0)
        seen.append(list(batch))

    lane = Lane(consumer, handler, most=3, acks=consumer)
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

    lane = Lane(consumer, handler, most=1, acks=consumer)
    await lane.put([1, 2, 3])
    assert lane.task is not None
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(lane.task, 2)
    assert consumer.acked == [1]
    with pytest.raises(ConnectionError, match="producer gone"):  # the drain loop's next put crashes the consumer
        await lane.put([4])


READINGS = (TP("r", 0), TP("r", 1))
HOTLINE = TP("city.hotline.events", 2)


async def test_a_backlog_pauses_the_topics_partitions_not_the_fetcher_and_one_batch_left_resumes_them() -> None:
    consumer = Acks(assigned=(*READINGS, TP("other", 0)))
    gate = asyncio.Event()

    async def handler(batch: list[Any]) -> None:
        await gate.wait()

    lane = Lane(consumer, handler, most=2, topic="r", acks=consumer)
    await asyncio.wait_for(lane.put([1, 2, 3]), 1)  # below LANE_HIGH batches: still fetching
    assert consumer.fetching == {*READINGS, TP("other", 0)} and not lane.paused
    await asyncio.wait_for(lane.put([4, 5, 6]), 1)  # 6 records = 3 batches queued: paused, and put did not wait
    assert consumer.fetching == {TP("other", 0)}, "only this topic's partitions stop; the others keep coming"
    assert lane.paused == set(READINGS)
    gate.set()
    lane.close()
    assert lane.task is not None
    await asyncio.wait_for(lane.task, 2)
    assert consumer.acked == [1, 2, 3, 4, 5, 6]
    assert consumer.fetching == {*READINGS, TP("other", 0)} and not lane.paused
    # resumed once at most one batch was left (5 of 6 handled), not before
    assert [e for e in consumer.events if e[0] == "resume"] == [("resume", 5), ("resume", 5)]


async def test_a_lane_at_its_cap_makes_the_fetcher_wait_and_a_revoked_partition_is_not_resumed() -> None:
    consumer = Acks(assigned=READINGS)
    gate = asyncio.Event()

    async def handler(batch: list[Any]) -> None:
        await gate.wait()

    lane = Lane(consumer, handler, most=1, topic="r", acks=consumer)
    put = asyncio.ensure_future(lane.put(list(range(LANE_CAP))))
    await asyncio.sleep(0.05)
    assert not put.done(), "at LANE_CAP batches the fetcher waits (memory stays bounded)"
    consumer.assigned = {READINGS[0]}  # a rebalance took partition 1 away
    gate.set()
    await asyncio.wait_for(put, 2)
    lane.close()
    assert lane.task is not None
    await asyncio.wait_for(lane.task, 2)
    assert consumer.acked == list(range(LANE_CAP))
    assert READINGS[0] in consumer.fetching and READINGS[1] not in consumer.fetching


async def test_a_handler_failing_while_the_fetcher_waits_at_the_cap_releases_it_with_the_error() -> None:
    consumer = Acks(assigned=READINGS)

    async def handler(batch: list[Any]) -> None:
        await asyncio.sleep(0.01)
        raise ConnectionError("producer gone")

    lane = Lane(consumer, handler, most=1, topic="r", acks=consumer)
    await asyncio.wait_for(lane.put(list(range(LANE_CAP))), 2)  # released, not stuck
    with pytest.raises(ConnectionError, match="producer gone"):
        await lane.put([99])
    assert consumer.acked == []


async def test_with_every_partition_paused_the_fetcher_waits_for_the_lane_not_a_fixed_second() -> None:
    # a worker whose only stream topic is the readings (WORKER_ROLE=detect): Faust's getmany
    # would sleep a whole second with nothing active; the fetcher waits for the lane instead
    consumer = Acks(assigned=READINGS)
    gate = asyncio.Event()

    async def handler(batch: list[Any]) -> None:
        await gate.wait()

    resumed = asyncio.Event()
    lane = Lane(consumer, handler, most=1, topic="r", resumed=resumed, acks=consumer)
    await lane.put([1, 2, 3])
    assert consumer.fetching == set() and lane.paused
    waiting = asyncio.ensure_future(wait_while_all_paused(consumer, [lane], resumed, timeout=60))
    await asyncio.sleep(0.01)
    assert not waiting.done(), "nothing to fetch until the lane gives its partitions back"
    gate.set()  # the lane drains to one batch and resumes: the wait ends then, not at its 60 s timeout
    assert await asyncio.wait_for(waiting, 5) is True
    assert consumer.fetching == set(READINGS)
    lane.close()


async def test_the_fetcher_does_not_wait_while_other_partitions_are_active_or_nothing_is_paused() -> None:
    consumer = Acks(assigned=(*READINGS, TP("other", 0)))
    gate = asyncio.Event()

    async def handler(batch: list[Any]) -> None:
        await gate.wait()

    resumed = asyncio.Event()
    lane = Lane(consumer, handler, most=1, topic="r", resumed=resumed, acks=consumer)
    assert await wait_while_all_paused(consumer, [lane], resumed, timeout=60) is False  # nothing paused
    await lane.put([1, 2, 3])
    assert lane.paused and consumer.fetching == {TP("other", 0)}
    assert await wait_while_all_paused(consumer, [lane], resumed, timeout=60) is False  # "other" still fetches
    gate.set()
    lane.close()
    assert lane.task is not None
    await asyncio.wait_for(lane.task, 2)


class FakeConsumer:
    """What `drain_messages` reads of Faust's consumer, around scripted fetches.
    A fetch is a list of offsets of `tp`, or of (tp, offset) pairs."""

    consumer_stopped_errors = (RuntimeError,)

    def __init__(self, fetches: list[list[Any]], on_offset: dict[int, Any], tp: TP = HOTLINE) -> None:
        self.fetches, self.on_offset = fetches, on_offset
        self.delivered: list[int] = []
        self.gaps: list[tuple[int, int]] = []
        self._stopped, self._crashed, self.suspend_flow = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._read_offset: defaultdict[Any, int | None] = defaultdict(lambda: None)
        self._commit_every = None
        self._n_acked = 0
        self._buffered_partitions: set[Any] = set()
        self.flow_active = True
        self.should_stop = False
        self.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
                                   consumer_generation_id=1,
                                   monitor=SimpleNamespace(track_tp_end_offset=lambda tp, offset: None))
        self.log = SimpleNamespace(dev=lambda *a: None, info=lambda *a: None, exception=lambda *a: None)
        self.transport = SimpleNamespace(app=SimpleNamespace(should_stop=False))
        self.tp = tp
        self.scheduler = SimpleNamespace(iterate=self._iterate)
        # Faust's acking state, for the lanes' FaustBatchAcks
        self._unacked_messages: WeakSet[Any] = WeakSet()
        self._waiting_for_ack = None
        self._acked: defaultdict[Any, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[Any, set[int]] = defaultdict(set)
        self._committed_offset: defaultdict[Any, int | None] = defaultdict(lambda: None)

    async def callback(self, message: Any) -> None:
        self.delivered.append(message.offset)

    async def _wait_next_records(self, timeout: float) -> tuple[dict[Any, list[Any]], set[Any]]:
        if not self.fetches:
            self._stopped.set()
        records: dict[Any, list[Any]] = {}
        for item in self.fetches.pop(0) if self.fetches else []:
            tp, offset = item if isinstance(item, tuple) else (self.tp, item)
            records.setdefault(tp, []).append(
                SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=offset, key=b"k", value=b"v"))
        return records, set(records)

    def _iterate(self, records: dict[Any, list[Any]]) -> Any:
        for tp, recs in records.items():
            for record in recs:
                if record.offset in self.on_offset:
                    self.on_offset.pop(record.offset)(self)  # the rebalance's steps, as they interleave
                yield tp, record

    def _to_message(self, tp: Any, record: Any) -> Any:
        return record

    def highwater(self, tp: Any) -> int:
        return 0

    async def wait_first(self, *aws: Any) -> None:
        await asyncio.wait([asyncio.ensure_future(a) for a in aws], return_when=asyncio.FIRST_COMPLETED)

    async def sleep(self, s: float) -> None:
        await asyncio.sleep(0)

    async def _add_gap(self, tp: Any, start: int, end: int) -> None:
        self.gaps.append((start, end))  # Faust counts a gap's offsets as acked

    def _get_active_partitions(self) -> set[Any]:
        return {self.tp}

    async def commit(self) -> None:
        pass

    def assignment(self) -> set[Any]:
        return set()


async def test_records_skipped_while_the_flow_is_suspended_are_read_again_after_the_seek() -> None:
    """A fetch of offsets 1..4 is being drained when a rebalance suspends the
    flow (at 2) and its recovery seeks back to the committed offset 1 (at 3);
    the flow resumes after the fetch, and the next fetch reads 1..4 again.
    Faust's loop moved the read offset to 4 over the skipped records, so 1..3
    were dropped as read: never acked, the commit stuck at 1 for good."""
    def suspend(c: FakeConsumer) -> None:
        c.suspend_flow.set()

    def seek_to_committed(c: FakeConsumer) -> None:
        c._read_offset[c.tp] = 1

    consumer = FakeConsumer([[0], [1, 2, 3, 4], [1, 2, 3, 4, 5]], {2: suspend, 3: seek_to_committed})
    real_fetch = consumer._wait_next_records

    async def fetch(timeout: float) -> Any:
        if len(consumer.fetches) == 1:  # the fetch after the drained one: the flow has resumed
            consumer.suspend_flow.clear()
        return await real_fetch(timeout)

    consumer._wait_next_records = fetch  # type: ignore[method-assign]
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    await asyncio.wait_for(drain_messages(consumer, fetcher), 5)
    assert consumer.delivered == [0, 1, 1, 2, 3, 4, 5], "1 went before the suspension; every offset after the seek"
    assert consumer.gaps == [], "no offset counted as acked without its record"


async def test_a_batch_handlers_records_reach_its_lane_per_fetch_after_the_stream_records_and_are_acked() -> None:
    """Readings (a lane's topic) and hotline records (a stream's) in one fetch:
    the stream's are delivered one by one first, then the readings go to the
    handler as one batch of raw records; offsets below the read offset are
    dropped, a hole inside the batch is a gap, and the batch is acked into
    Faust's acked index once handled, its pending token gone."""
    r0, r1 = TP("r", 0), TP("r", 1)
    consumer = FakeConsumer([[(r0, 5), (r0, 6), (r0, 8), (r1, 3), 1, 2]], {})
    consumer._read_offset[r0] = 6  # 5 was read before; Faust re-reads the read offset itself (>=)
    handled: list[list[tuple[int, int]]] = []
    order: list[str] = []

    async def callback(message: Any) -> None:
        order.append("stream")
        consumer.delivered.append(message.offset)

    async def handler(batch: list[Any]) -> None:
        order.append("lane")
        handled.append([(r.partition, r.offset) for r in batch])

    consumer.callback = callback  # type: ignore[method-assign]
    register_batch_handler(consumer.app, "r", handler, batch_max=100)
    await asyncio.wait_for(drain_messages(consumer, SimpleNamespace(_stopped=asyncio.Event())), 5)
    for _ in range(100):
        if not consumer._unacked_messages:
            break
        await asyncio.sleep(0.01)
    assert consumer.delivered == [1, 2] and order == ["stream", "stream", "lane"]
    assert handled == [[(0, 6), (0, 8), (1, 3)]]
    assert consumer.gaps == [(7, 8)], "offset 7 is missing from the log: Faust counts it acked"
    assert consumer._read_offset[r0] == 8 and consumer._read_offset[r1] == 3
    assert dict(consumer._acked) == {r0: [6, 8], r1: [3]} and consumer._n_acked == 3
    assert not consumer._unacked_messages, "the batch's pending token is gone once acked"


async def test_a_lanes_records_are_not_queued_nor_read_while_the_flow_is_suspended() -> None:
    consumer = FakeConsumer([[(TP("r", 0), 4), (TP("r", 0), 5)]], {})
    consumer.suspend_flow.set()
    handled: list[Any] = []

    async def handler(batch: list[Any]) -> None:
        handled.append(batch)

    register_batch_handler(consumer.app, "r", handler)
    await asyncio.wait_for(drain_messages(consumer, SimpleNamespace(_stopped=asyncio.Event())), 5)
    await asyncio.sleep(0.05)
    assert handled == [] and consumer._read_offset[TP("r", 0)] is None


class _Message:
    """What Faust's Consumer.ack reads of a Message (weak-referenceable, as a Message is)."""

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset, self.tp, self.acked = topic, partition, offset, TP(topic, partition), False


def _faust_consumer_state(enabled: set[str]) -> SimpleNamespace:
    return SimpleNamespace(
        app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: topic in enabled)),
        _committed_offset=defaultdict(lambda: None, {TP("r", 1): 10}), _acked_index=defaultdict(set),
        _acked=defaultdict(list), _unacked_messages=WeakSet(), _n_acked=0, _waiting_for_ack=None,
    )  # fmt: skip


def test_batch_acks_leave_faust_in_the_state_its_own_ack_of_each_message_does() -> None:
    """Two partitions (one with offsets below its committed offset), a duplicate,
    a topic whose acks are disabled: FaustBatchAcks over the raw records and
    Faust's Consumer.ack over one Message each end in the same bookkeeping."""
    offsets = [("r", 0, 0), ("r", 0, 1), ("r", 1, 9), ("r", 1, 10), ("r", 1, 11), ("r", 0, 1), ("noack", 0, 7)]
    theirs, ours = _faust_consumer_state({"r"}), _faust_consumer_state({"r"})
    messages = [_Message(t, p, o) for t, p, o in offsets]
    for m in messages:
        theirs._unacked_messages.add(m)  # as track_message does
        Consumer.ack(theirs, m)  # type: ignore[arg-type]
    records = [SimpleNamespace(topic=t, partition=p, offset=o) for t, p, o in offsets]
    acks = FaustBatchAcks(ours)
    token = acks.track(records)
    assert set(ours._unacked_messages) == {token}, "a queued batch holds Faust's wait_empty"
    acks.ack(records, token)
    assert dict(ours._acked) == dict(theirs._acked) == {TP("r", 0): [0, 1], TP("r", 1): [10, 11]}
    assert dict(ours._acked_index) == dict(theirs._acked_index)
    assert ours._n_acked == theirs._n_acked == 4
    assert not ours._unacked_messages and token.acked
