"""Pure parts of the operations center: cursors, report periods, masking,
token hashing, the map geometry, list items serialised once, replay request
checks, KPI months, query models in the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from opscenter.app import AlertListQuery, mask_value
from opscenter.auth import TOKEN_PREFIX, hash_token, new_token
from opscenter.fastquery import openapi_query
from opscenter.geo import _clip, load_map
from opscenter.queries import BadCursor, SlaPolicy, alert_record, decode_cursor, encode_cursor, months
from opscenter.replays import Invalid, ReplayIn, plan
from opscenter.reports import period_range
from opscenter.shaping import AlertShaper

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


# ------------------------------------------------------------------ list items serialised once (shaping)
def _alert_row(alert_id: str = "a-1", revision: int = 1, status: str = "new", title: str = "call 13812345678",
               details: dict[str, Any] | None = None) -> dict[str, Any]:
    first = datetime(2026, 3, 1, 8, tzinfo=UTC)
    ev = {"detector": "aqi", "threshold": 150.0, "window_start": "2026-03-01T07:00:00Z",
          "window_end": "2026-03-01T08:00:00Z",
          "details": details if details is not None else {"caller_ref": "h1", "phone": "13812345678",
                                                          "mode": {"mode": "emergency"}}}
    return {"alert_id": alert_id, "revision": revision, "rule": "r", "subject": "s", "category": "air",
            "sensor_type": "pm25", "severity": "II", "colour": "orange", "status": status, "title": title,
            "district": "朝阳区", "street": None, "grid": None, "lat": 39.9, "lon": 116.4, "departments": ["eeb"],
            "first_seen": first, "last_seen": first + timedelta(minutes=5), "count": 1, "peak_severity": None,
            "evidence": orjson.dumps(ev).decode()}


@pytest.mark.parametrize("pseudonymous", [True, False])
def test_a_cached_list_item_is_the_shaped_alert_with_a_fresh_sla_clock(pseudonymous: bool) -> None:
    shaper = AlertShaper(SlaPolicy({"II": 30}, {"II": 480}, 0.5))
    t1 = datetime(2026, 3, 1, 8, 5, tzinfo=UTC)
    t2 = t1 + timedelta(minutes=3)
    for now in (t1, t2):  # a miss, then a hit
        got = orjson.loads(shaper.item_json(_alert_row(), pseudonymous, now))
        want = orjson.loads(orjson.dumps(shaper.shape(alert_record(_alert_row()), pseudonymous, now)))
        assert got == want and list(got) == list(want)
    assert (shaper.misses, shaper.hits) == (1, 1)
    assert got["sla"]["remaining_s"] == 15 * 60 - 8 * 60  # emergency: 30 min x 0.5, 8 min gone
    assert "13812345678" not in orjson.dumps(got).decode() and "phone" not in got["evidence"]["details"]
    assert ("caller_ref" in got["evidence"]["details"]) is pseudonymous


def test_a_new_revision_is_not_served_from_the_cache_and_the_cache_is_bounded() -> None:
    shaper = AlertShaper(SlaPolicy(), max_items=2)
    now = datetime(2026, 3, 1, 9, tzinfo=UTC)
    assert orjson.loads(shaper.item_json(_alert_row(status="new"), True, now))["status"] == "new"
    assert orjson.loads(shaper.item_json(_alert_row(revision=2, status="resolved"), True, now))["status"] == "resolved"
    shaper.item_json(_alert_row("a-2"), True, now)
    assert len(shaper._items) == 2 and ("a-1", 1, True) not in shaper._items
    page = orjson.loads(shaper.page_json([_alert_row("a-2"), _alert_row("a-3")], False, now, {"next_cursor": None}))
    assert [i["alert_id"] for i in page["items"]] == ["a-2", "a-3"] and page["next_cursor"] is None
    assert orjson.loads(shaper.page_json([], False, now, {})) == {"items": []}


# ------------------------------------------------------------------ replay requests (pure checks)
def _plan(**over: Any) -> Any:
    body = ReplayIn.model_validate({"from": "2026-03-01T08:00:00+08:00", "to": "2026-03-01T10:00:00+08:00", **over})
    return plan(body, datetime(2026, 3, 2, tzinfo=UTC), max_range=timedelta(days=31),
                area_name=lambda a: {"chaoyang": "朝阳区", "朝阳区": "朝阳区", "望京街道": "望京街道"}.get(a))


def test_a_replay_plan_normalises_area_and_speed() -> None:
    p = _plan(area="chaoyang", speed="60x", warmup_minutes=30, sensors=["aq-1"])
    assert p.scope.area == "朝阳区" and p.speed == 60.0 and p.warmup == timedelta(minutes=30)
    assert p.scope.sensors == ("aq-1",) and p.run.startswith("20260302t000000_")
    assert _plan().speed is None and _plan(run="my_run").run == "my_run"


@pytest.mark.parametrize("over,needle", [
    ({"to": "2026-03-01T07:00:00+08:00"}, "before"), ({"area": "nowhere"}, "area"), ({"speed": "-2x"}, "speed"),
    ({"to": "2026-05-01T00:00:00+08:00"}, "longer than 31 days"), ({"run": "x-y"}, "run"),
    ({"from": "2026-03-03T00:00:00+08:00", "to": "2026-03-04T00:00:00+08:00"}, "future"),
    ({"sensors": [" "]}, "sensor"),
])
def test_bad_replay_plans_say_why(over: dict[str, Any], needle: str) -> None:
    with pytest.raises(Invalid, match=needle):
        _plan(**over)


def test_months_a_range_touches_are_local() -> None:
    assert months(datetime(2026, 1, 31, 16, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC), TZ) == [
        "2026-02", "2026-03"]  # 16:00 UTC on Jan 31 is Feb 1 in Beijing
    assert months(datetime(2025, 12, 5, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC), TZ) == ["2025-12", "2026-01"]
    assert months(datetime(2026, 3, 1, tzinfo=TZ), datetime(2026, 4, 1, tzinfo=TZ), TZ) == ["2026-03"]


def test_openapi_lists_a_query_model_as_parameters() -> None:
    params = {p["name"]: p for p in openapi_query(AlertListQuery)["parameters"]}
    assert {"status", "severity", "limit", "cursor", "since", "total"} <= set(params)
    assert params["limit"]["schema"]["maximum"] == 500 and params["limit"]["in"] == "query"
    assert not any(p["required"] for p in params.values())
