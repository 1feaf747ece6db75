"""The replay's placement of sensors on partitions (storage.replay_partitions)."""

from __future__ import annotations

import random

import pytest

from storage.replay_partitions import spread_sensors


def test_unequal_sensors_give_partitions_within_one_sensor_of_each_other() -> None:
    rng = random.Random(5)
    loads = {f"s-{i:04d}": rng.choice((114, 570, 3421)) for i in range(1000)}  # minute, 10 s and 1 s sensors
    placed = spread_sensors(loads, 4)
    per_partition = [0] * 4
    for sensor, n in loads.items():
        per_partition[placed[sensor.encode()]] += n
    assert sum(per_partition) == sum(loads.values())
    assert max(per_partition) - min(per_partition) <= max(loads.values())
    # and so any two partitions against the other two (two workers) are as even
    halves = sorted((per_partition[0] + per_partition[1], per_partition[2] + per_partition[3]))
    assert halves[1] - halves[0] <= 2 * max(loads.values())


def test_every_sensor_placed_once_and_the_same_way_every_time() -> None:
    loads = {"b": 5, "a": 5, "c": 9, "d": 1}
    assert spread_sensors(loads, 2) == spread_sensors(dict(reversed(list(loads.items()))), 2)
    # heaviest first onto the emptiest partition; ties by sensor id, then the lowest partition
    assert spread_sensors(loads, 2) == {b"c": 0, b"a": 1, b"b": 1, b"d": 0}
    assert set(spread_sensors(loads, 3).values()) == {0, 1, 2}


def test_one_partition_and_no_sensors() -> None:
    assert spread_sensors({"x": 3, "y": 2}, 1) == {b"x": 0, b"y": 0}
    assert spread_sensors({}, 4) == {}
    with pytest.raises(ValueError, match="at least 1"):
        spread_sensors({"x": 1}, 0)
