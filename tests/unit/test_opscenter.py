"""Pure parts of the operations center: cursors, report periods, masking,
token hashing, the map geometry."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from opscenter.app import mask_value
from opscenter.auth import TOKEN_PREFIX, hash_token, new_token
from opscenter.geo import _clip, load_map
from opscenter.queries import BadCursor, decode_cursor, encode_cursor
from opscenter.reports import period_range

TZ = ZoneInfo("Asia/Shanghai")


def test_cursor_round_trip_and_garbage() -> None:
    t = datetime(2026, 3, 1, 8, tzinfo=UTC)
    assert decode_cursor(encode_cursor(t, "a-1"), 2) == [t.isoformat(), "a-1"]
    for bad in ("x", encode_cursor("a"), "!!!!"):
        with pytest.raises(BadCursor):
            decode_cursor(bad, 2)


def test_period_ranges_are_local_and_contiguous() -> None:
    prev, start, end = period_range("daily", date(2026, 3, 1), TZ)
    assert start == datetime(2026, 3, 1, tzinfo=TZ) and end == datetime(2026, 3, 2, tzinfo=TZ)
    assert prev == datetime(2026, 2, 28, tzinfo=TZ)
    prev, start, end = period_range("weekly", date(2026, 3, 4), TZ)  # a Wednesday
    assert start.weekday() == 0 and (end - start).days == 7 and (start - prev).days == 7
    prev, start, end = period_range("monthly", date(2026, 3, 31), TZ)
    assert (prev.day, prev.month, start.month, end.month) == (1, 2, 3, 4)
    with pytest.raises(ValueError):
        period_range("hourly", date(2026, 3, 1), TZ)


def test_masking_never_lets_a_phone_number_through() -> None:
    d = {"caller_ref": "h1", "phone": "13812345678", "note": "call 13812345678", "n": [{"name": "张三"}]}
    ops = mask_value(d, pseudonymous=True)
    assert ops == {"caller_ref": "h1", "note": "call *******5678", "n": [{}]}
    assert mask_value(d, pseudonymous=False) == {"note": "call *******5678", "n": [{}]}


def test_tokens_are_random_and_only_hashes_are_kept() -> None:
    a, b = new_token(), new_token()
    assert a != b and a.startswith(TOKEN_PREFIX) and len(a) > 40
    assert hash_token(a) != a and len(hash_token(a)) == 64 and hash_token(a) == hash_token(a)


def test_clip_keeps_the_near_half_and_labels_the_cut() -> None:
    square = [((0.0, 0.0), -1), ((2.0, 0.0), -1), ((2.0, 2.0), -1), ((0.0, 2.0), -1)]
    out = _clip(square, (0.5, 1.0), (1.5, 1.0), 7)
    xs = sorted({round(p[0], 6) for p, _ in out})
    assert xs == [0.0, 1.0] and 7 in {lab for _, lab in out}


def test_map_covers_every_district_and_street() -> None:
    m = load_map()
    if not m["districts"]:
        pytest.skip("no geography file")
    assert len(m["districts"]) == 16 and len(m["streets"]) > 100
    assert all(0 <= s["x"] <= m["width"] and 0 <= s["y"] <= m["height"] for s in m["streets"])
    assert all(len(s["cell"].split()) >= 3 for s in m["streets"]) and m["borders"]
