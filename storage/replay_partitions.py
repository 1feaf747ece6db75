"""Which partition of a replay's readings topic each sensor's readings take.

Live, a sensor's partition is Kafka's default for its key (murmur2), which
spreads sensors, not readings: sensors report at different rates (a noise
meter every 10 s, a PM2.5 station every minute), so the partitions of a
recorded range carry unequal loads. In a replay that ends the run unevenly:
each worker owns whole partitions, and the one with more readings goes on
alone while the other core idles (bench.replay, 1,000 sensors over 4
partitions and 2 workers: 516,531 against 483,462 readings, a tail of ~4 s
on one core).

A replay's topics are its own and every stage keys its state by sensor
within a partition, whichever it is (the replay tests replay a recording of
one partition over four with an empty diff), so the engine places the
sensors itself: heaviest first, each onto the partition with the fewest
readings so far (LPT). Partitions then differ by at most one sensor's
readings, and any even split of them over the workers is even too.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping


def spread_sensors(readings_per_sensor: Mapping[str, int], partitions: int) -> dict[bytes, int]:
    """sensor_id (as the record key) -> partition. Deterministic: ties go by
    sensor_id, then to the lowest partition."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    loads = [(0, p) for p in range(partitions)]
    placed: dict[bytes, int] = {}
    for sensor, n in sorted(readings_per_sensor.items(), key=lambda kv: (-kv[1], kv[0])):
        load, p = heapq.heappop(loads)
        placed[sensor.encode()] = p
        heapq.heappush(loads, (load + n, p))
    return placed
