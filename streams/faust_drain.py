"""Faust's fetcher hands each message to the conductor without four tasks.

Why: faust-streaming 0.15.3's `Consumer._drain_messages` delivers every
message with `await self.wait_first(callback(message), self.suspend_flow.wait())`.
mode's `wait_first` wraps the callback, the suspend-flow event and the
service's stopped and crashed events in four tasks, waits for the first with
`asyncio.wait` and cancels the rest: about sixteen loop callbacks and four
task creations per message, the largest single cost of the worker's
per-event machinery in bench.worker's profile (more than the detection
engine). Almost always the callback (the conductor putting the event into
a stream's buffer) finishes without ever suspending.

Here the callback's coroutine is first stepped directly. If it finishes in
that step, which is the usual case, nothing else is needed. If it suspends
(a full stream buffer, a lock held), the half-run coroutine is handed to
the original `wait_first` as a task that resumes it, so a rebalance
(`suspend_flow`) or a stop still cuts a blocked delivery short exactly as
before.

**Records fetched while the flow is suspended** (a rebalance), or the
consumer stopping or crashed, are skipped without moving the partition's
read offset. Faust's own loop moved it past them: the recovery's seek puts
the fetch position back at the committed offset, but records of a fetch
still being drained after that seek (and before the flow resumes) moved the
read offset on again, so the re-read records below it were dropped as
already read, never acked, and the partition's committed offset stayed
where it was for good (replay runs whose workers rebalanced at start: a
few partitions stuck 20-60 records short of their end).

**Batch handlers** (`register_batch_handler`): the records of a topic that
has one never reach the conductor, nor become Faust `Message`s: the lane
gets aiokafka's records as fetched (topic, partition, offset, key, value,
headers), a partition's run at a time. Faust's per-record work for them
(a `Message` each, `track_message` with the sensors' bookkeeping, `ack`
under its lock) cost about a tenth of a detect worker's CPU (bench.worker);
`FaustBatchAcks` does the same bookkeeping once per batch: a pending token
in the consumer's unacked set while the batch is queued or handled (so a
rebalance's `wait_empty` waits for it), then the batch's offsets into
Faust's acked index, as `Consumer.ack` puts them, for its commit. Batches
are queued, in lists of at most `batch_max`, for the topic's `Lane` task
once every other record of that fetch has been delivered to its stream;
the lane hands each list to the handler and acks it once the handler
returns, in order. The handler must not raise (it dead-letters what it
cannot process); if it does, its records stay unacked and the consumer
crashes as it would on a failed delivery, so they are read again after the
restart.

Everything else is Faust's code, unchanged (copied from 0.15.3, BSD-3-Clause).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping
from typing import Any, Protocol, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

log = logging.getLogger("citybrain.streams.drain")

BatchHandler = Callable[[list[Any]], Awaitable[None]]


def register_batch_handler(app: Any, topic: str, handler: BatchHandler, batch_max: int = 1000) -> None:
    """Every record of `topic` this app's consumer fetches goes to `handler` in
    lists of at most `batch_max`, instead of through the conductor."""
    handlers: dict[str, tuple[BatchHandler, int]] = app.__dict__.setdefault("_citybrain_batch_handlers", {})
    handlers[topic] = (handler, max(1, batch_max))


def batch_handlers(app: Any) -> dict[str, tuple[BatchHandler, int]]:
    return cast(dict[str, tuple[BatchHandler, int]], app.__dict__.get("_citybrain_batch_handlers", {}))


# A topic's lane queues at most this many batches before the fetcher stops
# fetching the topic (Faust's own back-pressure, `Consumer.on_buffer_full`, as a
# stream's full buffer does): the fetcher itself never waits on the lane, so the
# records of the other topics (detections for the lifecycle, actions) keep coming
# while readings back up; before, the fetcher waited for room in the lane and a
# detection fetched behind a backlog waited with it (bench.e2e at 7,000/s:
# detection -> department p50 958 ms). Fetching resumes once at most one batch is left.
LANE_HIGH = 2
# A hard bound the fetcher does wait at (partitions cannot be paused during
# Faust's recovery; a fetch may still bring a pause's worth of records)
LANE_CAP = 8
PAUSED_POLL_S = 0.01  # getmany timeout while a lane is paused: resume within ~10 ms of its draining
IDLE_WAIT_S = 1.0  # Faust's own pause when no partition is active (its getmany sleeps this long)


class BatchAcks(Protocol):
    def track(self, batch: list[Any]) -> Any:
        """Called as a batch is queued; returns what `ack` gets back."""

    def ack(self, batch: list[Any], token: Any) -> None:
        """Called once the handler has handled the batch."""


class _Pending:
    """A queued batch in Faust's unacked set (a weak set of messages): its
    `wait_empty` waits while one is there, and reads `acked` and `refcount`."""

    __slots__ = ("__weakref__", "acked", "refcount")

    def __init__(self) -> None:
        self.acked = False
        self.refcount = 0


class FaustBatchAcks:
    """Faust's `Consumer.track_message` and `Consumer.ack` (0.15.3) for a whole
    batch of raw records: the same acked index, acked offsets and count, so
    its commit takes them as it takes acked messages. The sensors' per-message
    bookkeeping is left out (nothing here reads Faust's message counts)."""

    __slots__ = ("consumer",)

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer

    def track(self, batch: list[Any]) -> _Pending:
        token = _Pending()
        self.consumer._unacked_messages.add(token)
        return token

    def ack(self, batch: list[Any], token: _Pending) -> None:
        c = self.consumer
        enabled_for = c.app.topics.acks_enabled_for
        with ack_lock:
            n = 0
            topic, partition = None, -1
            on, committed = False, None
            index: set[int] = set()
            acked: list[int] = []
            for record in batch:
                if record.partition != partition or record.topic != topic:
                    topic, partition = record.topic, record.partition
                    tp = TP(topic, partition)
                    on = enabled_for(topic)
                    if on:
                        committed, index, acked = c._committed_offset[tp], c._acked_index[tp], c._acked[tp]
                offset = record.offset
                if on and (committed is None or offset >= committed) and offset not in index:
                    index.add(offset)
                    acked.append(offset)
                    n += 1
            c._n_acked += n
            token.acked = True
            c._unacked_messages.discard(token)
            notify(c._waiting_for_ack)


class Lane:
    """One topic's batches, handled by their own task in arrival order and
    acked once handled (Faust's commit takes only contiguous acked offsets, so
    acking in order after the handler keeps at-least-once). The fetcher only
    queues: it goes on delivering the other topics' records (the lifecycle's)
    while a batch is handled, as it does for a stream's buffer; a backlog of
    LANE_HIGH batches pauses this topic's partitions instead of the fetcher."""

    __slots__ = ("acks", "backlog", "consumer", "handler", "most", "paused", "queue", "resumed", "room", "task",
                 "topic")

    def __init__(self, consumer: Any, handler: BatchHandler, most: int, topic: str = "",
                 resumed: asyncio.Event | None = None, acks: BatchAcks | None = None) -> None:  # fmt: skip
        self.consumer, self.handler, self.most, self.topic = consumer, handler, most, topic
        self.acks: BatchAcks = acks if acks is not None else FaustBatchAcks(consumer)
        self.resumed = resumed if resumed is not None else asyncio.Event()  # set when it gives partitions back
        # bounded by pausing, and by LANE_CAP
        self.queue: asyncio.Queue[tuple[list[Any], Any] | None] = asyncio.Queue()
        self.backlog = 0  # records queued or being handled
        self.paused: set[Any] = set()  # this topic's partitions the lane took out of fetching
        self.room = asyncio.Event()
        self.room.set()
        self.task: asyncio.Future[None] | None = None

    async def put(self, batch: list[Any]) -> None:
        task = self.task
        if task is None:
            self.task = asyncio.ensure_future(self._run())
        elif task.done():
            task.result()  # the handler's error, raised in the fetcher: the consumer crashes as on a failed delivery
            raise RuntimeError("batch lane stopped")
        track = self.acks.track
        for i in range(0, len(batch), self.most):
            chunk = batch[i:i + self.most]
            self.backlog += len(chunk)
            self.queue.put_nowait((chunk, track(chunk)))
        if self.backlog >= LANE_HIGH * self.most:
            self._pause()
            if self.backlog >= LANE_CAP * self.most:
                self.room.clear()
                await self.room.wait()

    def _pause(self) -> None:
        # every time the backlog is high, not once: a rebalance makes the assigned partitions active again
        for tp in self.consumer.assignment():
            if tp.topic == self.topic:
                self.consumer.on_buffer_full(tp)
                self.paused.add(tp)

    def _resume(self) -> None:
        assigned = self.consumer.assignment()
        for tp in self.paused:
            if tp in assigned:  # a revoked partition must not come back into the fetch
                self.consumer.on_buffer_drop(tp)
        self.paused.clear()
        self.resumed.set()

    async def _run(self) -> None:
        ack = self.acks.ack
        while (item := await self.queue.get()) is not None:
            batch, token = item
            try:
                await self.handler(batch)
            except BaseException:
                log.exception("batch handler failed; its records stay unacked")
                self.room.set()  # a fetcher waiting at the cap goes on, and its next put raises this
                raise
            ack(batch, token)
            self.backlog -= len(batch)
            if self.paused and self.backlog <= self.most:
                self._resume()
            if not self.room.is_set() and self.backlog < LANE_CAP * self.most:
                self.room.set()

    def close(self) -> None:
        """After the batches already queued (a stopping worker's `wait_empty` waits for their acks)."""
        if self.task is not None and not self.task.done():
            self.queue.put_nowait(None)
        self.room.set()  # a fetcher waiting at the cap is stopping anyway


async def wait_while_all_paused(consumer: Any, lanes: Iterable[Lane], resumed: asyncio.Event,
                                timeout: float = IDLE_WAIT_S) -> bool:  # fmt: skip
    """When the lanes have paused every partition the consumer would fetch, wait
    for one to resume them (at most `timeout`); True if it waited.

    Why: Faust's getmany, finding no active partition, sleeps a whole second
    (`Consumer._wait_next_records`). A worker whose only stream topic is the
    readings (WORKER_ROLE=detect) had all of them paused at every backlog, so it
    stalled a second each time while its lane drained in ~0.1 s (bench.e2e at
    5,000/s: ~1.4 s behind at half a core of CPU)."""
    if not any(lane.paused for lane in lanes) or consumer._get_active_partitions():
        return False
    resumed.clear()  # nothing runs between this and the wait: a resumption cannot slip in
    try:
        await asyncio.wait_for(resumed.wait(), timeout)
    except TimeoutError:
        pass
    return True


class _Resumed:
    """Awaitable that continues a coroutine which already yielded `first`
    (the future it waits on) to whoever drives this awaitable."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation and the like go into the coroutine
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _finish(coro: Coroutine[Any, Any, Any], first: Any) -> Any:
    return await _Resumed(coro, first)


async def deliver(coro: Coroutine[Any, Any, Any],
                  slow: Callable[[Awaitable[Any]], Awaitable[Any]]) -> None:
    """Run `coro` to its end: in place when it never suspends, else through
    `slow(awaitable)` (the consumer's `wait_first` with the suspend-flow event)."""
    try:
        first = coro.send(None)
    except StopIteration:
        return
    except BaseException:
        coro.close()
        raise
    await slow(_finish(coro, first))


async def fetch(self: Any, timeout: float) -> tuple[Mapping[Any, list[Any]], set[Any] | None, int] | None:
    """Faust's `Consumer.getmany` (0.15.3) up to its per-record loop: the fetched
    records per partition, the partitions active then, and the generation."""
    records, active = await self._wait_next_records(timeout)
    generation = self.app.consumer_generation_id
    if records is None or self.should_stop:
        return None
    if not self.flow_active:
        self.log.dev("getmany called while flow not active. Seek back to committed offsets.")
        try:
            await self.perform_seek()
        except Exception as ex:
            self.log.warning(f"exception performing seek when flow not active {ex}")
        return None
    return records, active, generation


def _flowing(self: Any, generation: int) -> bool:
    """Faust's getmany stops yielding once the flow stops or the generation changes."""
    return bool(self.flow_active) and self.app.consumer_generation_id == generation


def _fetched(self: Any, active: set[Any] | None, tp: Any) -> bool:
    """Faust's getmany yields only the partitions active when it fetched."""
    return active is None or tp in active or tp in self._buffered_partitions


async def drain_messages(self: Any, fetcher: Any) -> None:
    callback = self.callback
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    suspended = self.suspend_flow.is_set
    crashed = self._crashed.is_set

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for

    def slow(aw: Awaitable[Any]) -> Awaitable[Any]:
        return cast(Awaitable[Any], self.wait_first(aw, self.suspend_flow.wait()))

    # Faust awaited the commit here, in the fetcher: its producer flush and the
    # offset commit (p50 20 ms, up to 145 ms at 7,000/s in bench.e2e) held every
    # topic's records, the detections for the lifecycle among them. One at a time
    # in its own task instead (Faust's commit() also lets only one run); a
    # failure crashes the consumer as it did when raised here.
    committing: list[asyncio.Future[Any] | None] = [None]
    crashing: set[asyncio.Future[Any]] = set()

    def commit_done(task: asyncio.Future[Any]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.error("commit failed: %r", exc)
            crash = asyncio.ensure_future(self.crash(exc))
            crashing.add(crash)
            crash.add_done_callback(crashing.discard)

    def commit_if_due() -> None:
        """Faust's inline commit every `commit_every` acks, in the background."""
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            commit_in_background()

    def commit_in_background() -> None:
        running = committing[0]
        if running is not None and not running.done():
            return  # the next one starts after a later record, or on Faust's commit timer
        task = asyncio.ensure_future(self.commit())
        task.add_done_callback(commit_done)
        committing[0] = task

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep
    resumed = asyncio.Event()
    lanes = {topic: Lane(self, handler, most, topic, resumed)
             for topic, (handler, most) in batch_handlers(self.app).items()}
    to_message = self._to_message
    pending: dict[str, list[Any]] = {}

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            if await wait_while_all_paused(self, lanes.values(), resumed):
                continue
            set_flag(flag_consumer_fetching)
            # while a lane is paused, come back soon: its resumption takes effect at the next getmany
            got = await fetch(self, PAUSED_POLL_S if any(lane.paused for lane in lanes.values()) else 1.0)
            await self.sleep(0)
            if got is not None and not self.should_stop:
                records, active, generation = got
                rest: Mapping[Any, list[Any]] = records
                laned: list[tuple[Any, list[Any]]] = []
                if lanes:
                    rest = {}
                    for tp, recs in records.items():
                        if tp.topic in lanes:
                            laned.append((tp, recs))
                        else:
                            rest[tp] = recs

                # the stream topics' records, one at a time as Faust's getmany yields them
                for tp, record in self.scheduler.iterate(rest) if rest else ():
                    if not _flowing(self, generation):
                        break
                    if not _fetched(self, active, tp):
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    message = to_message(tp, record)
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    if suspended() or consumer_should_stop() or crashed():
                        # not delivered, and the read offset must not pass it: the rebalance's seek
                        # (to the committed offset) reads it again, and with the read offset past it
                        # it was then dropped as read, a hole that held the commit for good (fix 4)
                        continue
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset:
                            if acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                        commit_if_due()
                        await deliver(callback(message), slow)
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)

                # the batch handlers' records, a partition's run at a time, after every
                # other record of the fetch has reached its stream; the same tests and
                # read-offset rules as above, record by record
                for tp, recs in laned:
                    if not _flowing(self, generation):
                        break
                    if not _fetched(self, active, tp):
                        continue
                    if suspended() or consumer_should_stop() or crashed():
                        break  # not queued, read offset unmoved: read again after the seek
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and recs and recs[0].offset < r_offset:
                        recs = [r for r in recs if r.offset >= r_offset]
                    if not recs:
                        continue
                    if acks_enabled_for(tp.topic):
                        prev = r_offset
                        for r in recs:
                            if prev and r.offset - prev > 1:
                                await self._add_gap(tp, prev + 1, r.offset)
                            prev = r.offset
                    commit_if_due()
                    pending.setdefault(tp.topic, []).extend(recs)
                    set_read_offset(tp, recs[-1].offset)
                while pending:
                    topic, batch = pending.popitem()
                    await lanes[topic].put(batch)
                unset_flag(flag_consumer_fetching)

    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)
        for lane in lanes.values():
            lane.close()
