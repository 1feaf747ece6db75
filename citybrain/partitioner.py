"""Kafka's default key partitioning (murmur2, as the Java client and every
other producer of ours), memoised per key.

aiokafka computes murmur2 in pure Python for every record (~20 µs on this
machine, more than validating the reading); sensor ids repeat all day, so a
bounded cache turns that into a dict lookup while keeping the partition each
key gets identical to aiokafka's, Faust's and the Java client's.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.partitioner import DefaultPartitioner

_default = DefaultPartitioner()


class CachedKeyPartitioner:
    def __init__(self, max_keys: int = 200_000) -> None:
        self.max_keys = max_keys
        self._cache: dict[tuple[bytes, int], int] = {}

    def __call__(self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
        if key is None:  # no key: spread (aiokafka's random choice), nothing to remember
            return int(_default(key, all_partitions, available))
        n = len(all_partitions)
        hit = self._cache.get((key, n))
        if hit is not None:
            return hit
        part = int(_default(key, all_partitions, available))
        if len(self._cache) >= self.max_keys:
            self._cache.clear()  # bounded memory; a cold cache only costs the hash again
        self._cache[(key, n)] = part
        return part
