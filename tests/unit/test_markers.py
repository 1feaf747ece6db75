"""Progress markers (streams.markers): the record, and the safe time a stage
derives from the markers of every source it expects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams import markers

T0 = datetime(2026, 7, 20, 8, 0, tzinfo=UTC)


def test_a_marker_round_trips_and_is_told_from_a_record() -> None:
    body = markers.encode("detect:3", T0)
    assert markers.is_marker(body)
    assert markers.decode(body) == ("detect:3", T0, False)
    assert markers.decode(markers.encode("engine", T0, final=True)) == ("engine", T0, True)
    assert not markers.is_marker(b'{"sensor_id":"wl-1","marker":"x"}')
    assert not markers.is_marker(None)


@pytest.mark.parametrize("body", [b'{"marker":"yesterday","source":"engine"}', b'{"marker":"2026-07-20T08:00:00"}',
                                  b'{"marker":"2026-07-20T08:00:00","source":"engine"}', b'{"marker":'])
def test_a_malformed_marker_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError, match="malformed progress marker"):
        markers.decode(body)


def test_the_safe_time_waits_for_every_expected_source_and_takes_the_earliest() -> None:
    p = markers.Progress(["detect:0", "detect:1", "area:0"])
    assert p.safe([0]) is None
    assert p.observe(0, "detect:0", T0 + timedelta(minutes=5))
    assert p.observe(0, "detect:1", T0 + timedelta(minutes=9))
    assert p.safe([0]) is None, "area:0 has not reported on partition 0"
    p.observe(0, "area:0", T0 + timedelta(minutes=7))
    assert p.safe([0]) == T0 + timedelta(minutes=5)
    assert not p.observe(0, "detect:0", T0), "a redelivered older marker moves nothing back"
    assert p.safe([0]) == T0 + timedelta(minutes=5)
    assert p.safe([0, 1]) is None, "partition 1 has heard from nobody"
    assert p.safe([]) is None, "no partition: nothing is safe"


def test_a_windowed_stage_forwards_its_lateness_earlier_except_at_the_end() -> None:
    late = timedelta(minutes=10)
    assert markers.forwarded(T0, False, late) == T0 - late
    assert markers.forwarded(T0, True, late) == T0


def test_final_markers_are_counted_per_partition_and_source() -> None:
    p = markers.Progress(["hotline:0", "hotline:1"])
    p.observe(2, "hotline:0", T0, final=True)
    assert not p.all_final(2), "hotline:1 may still send"
    assert p.observe(2, "hotline:1", T0 + timedelta(seconds=1))
    assert not p.observe(2, "hotline:1", T0 + timedelta(seconds=1), final=True), "final at a time already seen"
    assert p.all_final(2) and not p.all_final(3)


def test_marker_times_sit_on_a_fixed_grid() -> None:
    five = timedelta(minutes=5)
    assert markers.boundary(T0 + timedelta(minutes=7, seconds=3), five) == T0 + five
    assert markers.boundary(T0, five) == T0
    assert markers.boundary(T0 - timedelta(seconds=1), five) == T0 - five
