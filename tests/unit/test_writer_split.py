"""The writer's split of a batch into parts merged concurrently (pure logic)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from storage.writer import _all_or_first_error, split_by_partition


def _keys(sizes: dict[int, int], topic: str = "t") -> list[tuple[str, int]]:
    """Records of the partitions interleaved (round robin), as a batch of several getmany calls holds them."""
    left = dict(sizes)
    out: list[tuple[str, int]] = []
    while any(left.values()):
        for p in left:
            if left[p]:
                out.append((topic, p))
                left[p] -= 1
    return out


def test_small_batches_and_one_connection_stay_one_part() -> None:
    keys = _keys({0: 500, 1: 500})
    assert split_by_partition(keys, 4, min_rows=2000) == [list(range(1000))]
    assert split_by_partition(_keys({0: 5000, 1: 5000}), 1, min_rows=10) == [list(range(10_000))]
    assert split_by_partition([], 4, min_rows=1) == []


def test_a_partition_never_spans_two_parts_and_parts_are_balanced() -> None:
    sizes = {0: 4000, 1: 3000, 2: 2000, 3: 1000}
    keys = _keys(sizes)
    parts = split_by_partition(keys, 2, min_rows=100)
    assert len(parts) == 2
    assert sorted(i for p in parts for i in p) == list(range(len(keys)))  # every item exactly once
    for p in parts:
        assert p == sorted(p)  # a partition's records keep their order
    owners = {tp: {n for n, p in enumerate(parts) for i in p if keys[i] == tp} for tp in set(keys)}
    assert all(len(o) == 1 for o in owners.values())
    assert sorted(len(p) for p in parts) == [5000, 5000]


def test_no_more_parts_than_partitions() -> None:
    keys = _keys({3: 3000}) + [("other", 3)] * 10
    parts = split_by_partition(keys, 8, min_rows=100)
    assert len(parts) == 2
    assert Counter(len(p) for p in parts) == Counter({3000: 1, 10: 1})


async def test_first_failure_cancels_the_other_parts() -> None:
    finished: list[str] = []

    async def slow() -> int:
        await asyncio.sleep(30)
        finished.append("slow")
        return 1

    async def bad() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("part failed")

    with pytest.raises(ValueError, match="part failed"):
        await asyncio.wait_for(_all_or_first_error([slow(), bad()]), 10)
    assert finished == []
    assert await _all_or_first_error([asyncio.sleep(0, 1), asyncio.sleep(0.01, 2)]) == [1, 2]
