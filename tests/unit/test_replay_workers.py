"""How many worker processes a replay run starts: as asked, else one per
CPU core and never more than the run has partitions."""

from __future__ import annotations

import pytest

from storage.replay import worker_count


@pytest.mark.parametrize(
    ("asked", "partitions", "cpus", "expected"),
    [
        (0, 4, 2, 2),  # this machine: both cores
        (0, 4, 16, 4),  # a worker beyond the partitions would get none
        (0, 1, 8, 1),
        (0, 4, 1, 1),
        (3, 4, 2, 3),  # asked for: as asked, whatever the cores
        (6, 4, 16, 6),
    ],
)
def test_worker_count(asked: int, partitions: int, cpus: int, expected: int) -> None:
    assert worker_count(asked, partitions, cpus) == expected


def test_unknown_cpu_count_means_one_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert worker_count(0, 4) == 1
