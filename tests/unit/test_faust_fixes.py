"""The commit-creep fix: duplicated or stale acked offsets must not hold the
commit to one offset per interval (bench.faults worker_kill9)."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

from streams import faust_fixes

TPX = TP("city.sensor.readings", 0)


def consumer_with(acked: list[int], committed: int | None) -> Any:
    return SimpleNamespace(
        _acked=defaultdict(list, {TPX: list(acked)}),
        _acked_index=defaultdict(set, {TPX: set(acked)}),
        _committed_offset=defaultdict(lambda: None, {TPX: committed}),
        _gap=defaultdict(IntervalTree),
    )


def new_offset(c: Any) -> int | None:
    faust_fixes.apply()
    result: int | None = Consumer._new_offset(c, TPX)
    return result


def test_doubled_offsets_commit_the_whole_run() -> None:
    doubled = sorted(list(range(200, 300)) * 2)
    c = consumer_with(doubled, committed=200)
    assert new_offset(c) == 300
    assert c._acked[TPX] == []


def test_offsets_below_the_committed_one_are_dropped() -> None:
    c = consumer_with([195, 196, 197, 198, 199, 200, 201], committed=198)
    assert new_offset(c) == 202
    assert not c._acked_index[TPX] & {195, 196, 197}


def test_a_real_hole_still_holds_the_commit() -> None:
    c = consumer_with([100, 101, 102, 105, 106], committed=100)
    assert new_offset(c) == 103
    assert c._acked[TPX] == [105, 106]  # waiting for 103 and 104


def test_dedup_acked_is_sorted_unique_and_not_below_committed() -> None:
    assert faust_fixes.dedup_acked([5, 3, 3, 4, 1], committed=3) == [3, 4, 5]
    assert faust_fixes.dedup_acked([2, 2, 1], committed=None) == [1, 2]


def test_apply_is_idempotent() -> None:
    faust_fixes.apply()
    first = Consumer._new_offset
    faust_fixes.apply()
    assert Consumer._new_offset is first


class _Recorder:
    """Just enough of a Faust app, consumer and Recovery to run _resume_streams."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        rec = self

        class Signal:
            async def send(self) -> None:
                rec.calls.append("rebalance_complete")

        class FakeConsumer:
            def assignment(self) -> set[TP]:
                return {TPX, TP("app-sensor-state-changelog", 0)}

            async def perform_seek(self) -> None:
                rec.calls.append("seek")

            def resume_partitions(self, tps: set[TP]) -> None:
                rec.calls.append(f"resume:{sorted(t.topic for t in tps)}")

            def resume_flow(self) -> None:
                rec.calls.append("resume_flow")

        class Fetcher:
            async def maybe_start(self) -> None:
                rec.calls.append("fetcher")

        class Tables:
            def on_actives_ready(self) -> None: ...
            def on_standbys_ready(self) -> None: ...

        async def wait(coro: Any, timeout: float | None = None) -> None:
            await coro

        self.app = SimpleNamespace(
            consumer=FakeConsumer(), on_rebalance_complete=Signal(), consumer_generation_id=3,
            conf=SimpleNamespace(broker_request_timeout=10.0), _fetcher=Fetcher(),
            flow_control=SimpleNamespace(resume=lambda: rec.calls.append("flow_control")),
            on_rebalance_end=lambda: rec.calls.append("rebalance_end"),
        )
        self.log = SimpleNamespace(info=lambda *a: None, warning=lambda *a: None)
        self._wait = wait
        self._is_changelog_tp = lambda tp: tp.topic.endswith("-changelog")
        self.completed = SimpleNamespace(set=lambda: rec.calls.append("completed"))
        self.tables = Tables()


async def test_stream_partitions_are_resumed_only_after_the_seek() -> None:
    from faust.tables.recovery import Recovery

    faust_fixes.apply()
    r = _Recorder()
    await Recovery._resume_streams(r, generation_id=3)  # type: ignore[arg-type]
    assert r.calls.index("seek") < r.calls.index("resume:['city.sensor.readings']")
    assert "resume:['app-sensor-state-changelog']" not in " ".join(r.calls)  # changelogs stay paused
    assert r.calls[-1] == "rebalance_end"


async def test_the_table_manager_starts_without_its_fixed_second() -> None:
    from faust.tables.manager import TableManager

    calls: list[Any] = []

    async def sleep(seconds: float) -> None:
        calls.append(("sleep", seconds))

    async def update_channels() -> None:
        calls.append("channels")

    async def recovery_start() -> None:
        calls.append("recovery")

    manager = SimpleNamespace(should_stop=False, sleep=sleep, _update_channels=update_channels,
                              recovery=SimpleNamespace(start=recovery_start))
    faust_fixes.apply()
    await TableManager.on_start(manager)  # type: ignore[arg-type]
    assert calls == ["channels", "recovery"]  # Faust's own waited `self.sleep(1.0)` first
    calls.clear()
    manager.should_stop = True
    await TableManager.on_start(manager)  # type: ignore[arg-type]
    assert calls == []


def test_the_fixes_are_written_for_the_pinned_faust() -> None:
    import faust

    # both fixes replace faust-streaming internals: an upgrade must re-check
    # streams/faust_fixes.py against the new code before changing this pin
    assert faust.__version__ == "0.15.3"


def _root_level_after_setup(worker_class: Any) -> int:
    import logging

    import faust

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    app = faust.App("fixes-logging-test", broker="kafka://127.0.0.1:1", store="memory://")
    worker = worker_class(app, loglevel="warning", quiet=True)
    try:
        worker._setup_logging()
        return root.level
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def test_the_worker_leaves_the_root_logger_at_its_level() -> None:
    """Faust's own worker, at WARNING, sets the root logger to DEBUG for its
    spinner (every debug call then builds a record); ours keeps WARNING."""
    import logging

    import faust

    assert _root_level_after_setup(faust.Worker) == logging.DEBUG
    assert _root_level_after_setup(faust_fixes.Worker) == logging.WARNING


async def test_the_worker_does_not_sleep_a_second_before_closing_its_loop() -> None:
    import asyncio
    from unittest import mock

    import faust

    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(0)

    with mock.patch("asyncio.sleep", sleep):
        await faust.Worker._sentinel_task(None)  # type: ignore[arg-type]
        assert slept == [1.0]  # mode's own: a second on every stop
        slept.clear()
        await faust_fixes.Worker._sentinel_task(None)  # type: ignore[arg-type]
    assert slept and max(slept) <= 0.1


class _SeekConsumer:
    """aiokafka's consumer as fix 5 sees it: committed offsets per partition."""

    def __init__(self, committed: dict[Any, int | None]) -> None:
        self.committed = committed
        self.to_beginning: list[Any] = []

    async def seek_to_committed(self) -> dict[Any, int | None]:
        return dict(self.committed)  # aiokafka seeks only those above 0 itself

    async def seek_to_beginning(self, *tps: Any) -> bool:
        self.to_beginning.extend(tps)
        return True


async def test_partitions_never_committed_are_read_again_from_their_beginning() -> None:
    """A fetch Faust drops while its flow is stopped is read again only if the seek
    moves the position back: with nothing committed, aiokafka left it past them."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    faust_fixes.apply()
    readings = [TP("city.sensor.readings", p) for p in range(4)]
    changelog = TP("app-sensor-state-changelog", 0)
    consumer = _SeekConsumer({readings[0]: 120, readings[1]: None, readings[2]: 0, readings[3]: -1001,
                              changelog: None})

    async def call_thread(fun: Any, *args: Any) -> Any:
        return await fun(*args)

    thread = SimpleNamespace(
        _ensure_consumer=lambda: consumer, call_thread=call_thread,
        consumer=SimpleNamespace(_is_changelog_tp=lambda tp: tp.topic.endswith("-changelog")),
    )
    got = await AIOKafkaConsumerThread.seek_to_committed(thread)  # type: ignore[arg-type]
    assert got == consumer.committed  # Faust's read offsets still come from what was committed
    assert sorted(consumer.to_beginning) == readings[1:]  # the changelog is the recovery's to place
