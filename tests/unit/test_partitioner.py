"""The memoised partitioner must place every key exactly where Kafka's default
(murmur2) partitioner does, whatever the cache holds."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from citybrain.partitioner import CachedKeyPartitioner


def test_same_partition_as_the_default_for_every_key_and_count() -> None:
    cached = CachedKeyPartitioner(max_keys=50)  # small: the cache is cleared many times
    default = DefaultPartitioner()
    for n in (1, 3, 4, 12):
        parts = list(range(n))
        for i in range(500):
            key = f"sensor-{i % 120}".encode()
            assert cached(key, parts, parts) == default(key, parts, parts)
    assert len(cached._cache) <= 50


def test_keyless_records_spread_over_available_partitions() -> None:
    cached = CachedKeyPartitioner()
    seen = {cached(None, [0, 1, 2, 3], [1, 2]) for _ in range(200)}
    assert seen == {1, 2}
