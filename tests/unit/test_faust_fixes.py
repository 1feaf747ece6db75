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
