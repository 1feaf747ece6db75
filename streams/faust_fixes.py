"""Fixes to faust-streaming (pinned 0.15.3): three to its offset bookkeeping,
one to its start-up, applied once when the worker app is built, and its
worker without the terminal spinner (`Worker`, at the end).

The stall they cure (bench.faults worker_kill9 failed about one run in
three): after a (re)start, `Recovery._resume_streams` resumes the stream
partitions and only then awaits `perform_seek` (a round trip for the
committed offsets). The fetch flow is already running (it was resumed for the
changelogs), so records read in that window are delivered to the agents and
then read again after the seek resets the position. Measured, per partition:
40-100 offsets delivered twice. Two things then went wrong:

* the doubled offsets reach the consumer's `_acked` list twice, and
  `_new_offset` commits the first run of consecutive offsets: with
  [c, c, c+1, c+1, ...] that run is one offset long, so the worker committed
  ONE offset per commit interval (1 s) while processing hundreds;
* worse, on one partition an offset of the window was never acked at all (its
  first copy was dropped with the flow's buffers, its second skipped as
  already read), a hole that held the committed offset for good.

Fix 1 (the cause): seek first, then resume the stream partitions, so nothing
is read from them before they sit at their committed offsets.
Fix 2 (defence): before Faust picks the run, drop offsets below the committed
one and duplicates.

Fix 4 (start-up): the table manager waited a fixed second before it set up
the tables' changelog channels, and the consumer subscribes only after that:
every worker start (a replay's workers, a restarted live worker) took a
second longer. This app declares every table when it is built (a table
declared later makes Faust raise "Too late to add tables"), so there is
nothing to wait for.

Fix 5 (records lost at a rebalance): aiokafka's `seek_to_committed` seeks
only partitions with a committed offset above 0, and Faust relies on it to
re-read what it dropped. A worker rebalanced while records were arriving
(a replay's second worker joining as the first began to read) had a fetch
of two whole partitions come back while its flow was stopped; Faust dropped
them and sought "back to committed", but nothing had been committed there
yet, so the fetch position stayed past them: the worker never saw those
readings and the run stalled 2,526 readings short (bench.replay --quick with
0.5 s heartbeats, 2 runs of 4). Partitions without a committed offset (or
with 0) are now sought to their beginning, as the worker's
auto_offset_reset="earliest" reads a partition the first time; changelog
partitions are left to Faust's recovery, which places them itself.

Everything else is Faust's own code, unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, cast

import faust
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from streams.faust_drain import drain_messages

_APPLIED = "_citybrain_fixes_applied"
log = logging.getLogger("citybrain.streams.faust_fixes")


def dedup_acked(acked: list[int], committed: int | None) -> list[int]:
    """The acked offsets that can still move the commit: sorted, each once,
    none below the committed offset (Kafka's "next to read")."""
    return sorted({o for o in acked if committed is None or o >= committed})


async def _resume_streams(self: Any, generation_id: int = 0) -> None:
    # Faust 0.15.3's Recovery._resume_streams with one change: perform_seek
    # before resume_partitions (see the module docstring)
    app = self.app
    consumer = app.consumer
    await app.on_rebalance_complete.send()
    assignment = consumer.assignment()
    if app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return
    if assignment:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    else:
        self.log.info("Resuming streams with empty assignment")
    self.completed.set()
    self.log.info("Resuming flow...")
    app.flow_control.resume()
    consumer.resume_flow()
    await app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    self.tables.on_standbys_ready()
    app.on_rebalance_end()
    self.log.info("Worker ready")


async def _seek_all_to_committed(thread: Any) -> Mapping[Any, int | None]:
    """In the consumer thread: aiokafka's seek_to_committed, then the partitions
    it left where they were (fix 5) to their beginning."""
    consumer = thread._ensure_consumer()
    committed: Mapping[Any, int | None] = await consumer.seek_to_committed()
    is_changelog = thread.consumer._is_changelog_tp
    unset = [tp for tp, offset in committed.items() if (offset is None or offset <= 0) and not is_changelog(tp)]
    if unset:
        await consumer.seek_to_beginning(*unset)
    return committed


async def _seek_to_committed(self: Any) -> Mapping[Any, int | None]:
    # Faust 0.15.3's AIOKafkaConsumerThread.seek_to_committed, through fix 5
    return cast(Mapping[Any, int | None], await self.call_thread(_seek_all_to_committed, self))


async def _tables_on_start(self: Any) -> None:
    # Faust 0.15.3's TableManager.on_start without its `await self.sleep(1.0)` (fix 4)
    await asyncio.sleep(0)
    if not self.should_stop:
        await self._update_channels()
        await self.recovery.start()


def apply() -> None:
    if getattr(Consumer, _APPLIED, False):
        return
    original = Consumer._new_offset

    def _new_offset(self: Any, tp: Any) -> int | None:
        acked = self._acked[tp]
        if acked:
            committed = self._committed_offset[tp]
            clean = dedup_acked(acked, committed)
            if len(clean) != len(acked):
                log.info("%s[%d]: %d duplicate or committed offsets dropped from the acked list",
                         tp.topic, tp.partition, len(acked) - len(clean))
                if committed is not None:  # the index must not keep what can no longer be committed
                    self._acked_index[tp].difference_update(range(min(acked), committed))
                acked[:] = clean
        return cast(int | None, original(self, tp))

    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    # fix 3 (cost, not correctness): no four tasks per delivered message (streams/faust_drain.py)
    Consumer._drain_messages = drain_messages  # type: ignore[method-assign]
    Recovery._resume_streams = _resume_streams  # type: ignore[method-assign]
    TableManager.on_start = _tables_on_start  # type: ignore[method-assign]
    AIOKafkaConsumerThread.seek_to_committed = _seek_to_committed  # type: ignore[method-assign,assignment]
    setattr(Consumer, _APPLIED, True)


class Worker(faust.Worker):
    """Faust's worker without its progress spinner, and without mode's fixed
    second at the end of its stop (`_sentinel_task`). At log level WARNING or
    above (`citybrain worker`'s default, every replay worker) Faust keeps the
    spinner and, to spin it on every log record, sets the ROOT logger to DEBUG
    for good (faust/worker.py `_setup_spinner_handler`); once started the
    spinner is stopped, but every debug call of aiokafka and Faust still built
    a LogRecord that no handler wrote (several per fetch, per send and per
    standby changelog record: 3.4 % of a replay worker's samples in py-spy)."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None

    async def _sentinel_task(self) -> None:
        # mode's Worker slept a whole second here, after every service had stopped and
        # every task had finished, before it closed the loop: a second of every worker's
        # stop (a replay waits for its workers' stops). A moment lets closing transports
        # run their last callbacks.
        await asyncio.sleep(0.05)
