"""The decoders' hot paths (`native.encode_readings`, `senml.encode`) against
the decoders they shortcut: whatever a payload is, the hot path either steps
aside (None) or yields exactly the keys and JSON bytes of the readings the
decoder builds; it never accepts what the decoder refuses. And on the usual
shapes it does not step aside, or it would be no shortcut."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citybrain.errors import RejectedPayload
from connectors.base import DecodeContext
from connectors.decoders import native, senml
from connectors.registry import DeviceRegistry
from schemas import stable_id
from tests.unit.conftest import T0, reading_dict

NOW = T0 + timedelta(seconds=5)
CTX = DecodeContext(now=NOW, pii_key=b"k")
REGISTRY = DeviceRegistry.sample()
SCTX = DecodeContext(now=NOW, registry=REGISTRY)
_NAMES_FOR_IDS = ["urn:dev:mac:70b3d57ed005a1c1:pm25", "bj-cy-noise-0007", "a", "名"]
SENML_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "payloads" / "senml"


def slow(decoder: Any, payload: bytes, ctx: DecodeContext) -> list[tuple[bytes, bytes]] | str:
    try:
        return [(r.sensor_id.encode(), r.to_json()) for r in decoder("city/x", payload, ctx)]
    except RejectedPayload as exc:
        return exc.reason


def agree(fast: Any, decoder: Any, payload: bytes, ctx: DecodeContext) -> bool:
    """True when the hot path took the payload (and then it matched the decoder)."""
    got = fast("city/x", payload, ctx)
    want = slow(decoder, payload, ctx)
    if got is None:
        return False
    assert not isinstance(want, str), f"hot path accepted what the decoder refuses ({want}): {payload!r}"
    assert got == want
    return True


# ---- native ------------------------------------------------------------------


def test_native_usual_shapes_take_the_hot_path_and_match() -> None:
    one = reading_dict(sent_at=T0.isoformat())
    no_id = {k: v for k, v in reading_dict().items() if k != "event_id"}
    plain_loc = reading_dict(location={"district": "海淀区", "lat": 39.96, "lon": 116.3})
    items = [reading_dict(event_id=f"e{i}", value=float(i), sensor_id=f"s-{i % 3}") for i in range(50)]
    offset = reading_dict(ts="2025-01-15T16:00:03.250+08:00")
    for payload in (one, no_id, plain_loc, {"readings": items}, offset, reading_dict(source="gateway-7")):
        assert agree(native.encode_readings, native.decode_readings, orjson.dumps(payload), CTX), payload


@pytest.mark.parametrize(
    "over",
    [
        {"value": 42},  # a JSON int: strict float, the decoder decides
        {"value": -3.0},
        {"value": "42"},
        {"unit": "mg/m3"},
        {"sensor_type": "pm2.5"},
        {"sensor_id": " padded"},
        {"sensor_id": "bad id"},
        {"event_id": ""},
        {"event_id": None},
        {"ts": "2025-01-15T08:00:00"},  # naive
        {"ts": "2025-01-15 08:00:00Z"},
        {"ts": "2025-01-16T08:00:00Z"},  # too far ahead
        {"ts": 1736928000},
        {"sent_at": "yesterday"},
        {"schema_version": 2},
        {"schema_version": True},
        {"extra": 1},
        {"location": {"district": "朝阳区", "lat": 40, "lon": 116.4}},
        {"location": {"district": "", "lat": 39.9, "lon": 116.4}},
        {"location": {"district": "朝阳区", "lat": 91.0, "lon": 116.4}},
        {"location": {"district": "朝阳区", "lat": 39.9, "lon": 116.4, "alt": 3.0}},
        {"sensor_type": ["pm25"]},
    ],
)
def test_native_off_shape_steps_aside(over: dict[str, Any]) -> None:
    payload = orjson.dumps(reading_dict(**over))
    assert native.encode_readings("city/x", payload, CTX) is None
    agree(native.encode_readings, native.decode_readings, payload, CTX)


def test_native_one_bad_reading_in_a_batch_steps_aside_for_all() -> None:
    items = [reading_dict(event_id=f"e{i}") for i in range(5)]
    items[3]["value"] = 1e9
    payload = orjson.dumps({"readings": items})
    assert native.encode_readings("city/x", payload, CTX) is None
    assert slow(native.decode_readings, payload, CTX) == "out_of_range"


_text = st.one_of(
    st.sampled_from(["a", "s-1", "朝阳区", " x", "x ", "x\n", "\u3000x", "a b", "", "x" * 129, "ok.id:1-2_3"]),
    st.text(max_size=12),
)
_float = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 20.0, 140.0, 139.99999999999997, 19.999999999999996, 1e-7, 1e16]),
)
_ts = st.one_of(
    st.sampled_from(
        [
            "2025-01-15T08:00:00Z",
            "2025-01-15T08:00:00.5Z",
            "2025-01-15T08:00:00.123456+00:00",
            "2025-01-15T16:00:00+08:00",
            "2025-01-15T08:00:00-00:00",
            "2025-01-14T08:00:00+23:59",
            "2025-01-15T08:00:00.1234567Z",
            "2025-01-15T08:00Z",
            "2025-01-15t08:00:00z",
            "2025-01-15T08:00:60Z",
            "2025-02-29T08:00:00Z",
            "2025-01-15T24:00:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59-05:00",
            "2025-01-15T08:00:00+24:00",
        ]
    ),
    st.integers(-8 * 86400 * 10**6, 3600 * 10**6).map(lambda us: (NOW + timedelta(microseconds=us)).isoformat()),
)
_int = st.integers(-(2**63), 2**63 - 1)  # what orjson writes
_any = st.one_of(st.none(), st.booleans(), _int, _float, _text, st.lists(_int, max_size=2))


@st.composite
def native_readings(draw: st.DrawFn) -> dict[str, Any]:
    d = reading_dict(sent_at="2025-01-15T08:00:01Z")
    d["sensor_type"], d["unit"], low, high = draw(
        st.sampled_from(
            [("noise", "dB(A)", 20, 140), ("pm25", "ug/m3", 0, 2000), ("water_level", "m", -5, 60), ("co", "mg/m3", 0, 200)]
        )
    )
    d["value"] = draw(st.one_of(st.floats(low, high), _float))
    d["ts"] = draw(_ts)
    for key, strategy in (
        ("event_id", _text),
        ("sensor_id", _text),
        ("sent_at", _ts),
        ("source", _text),
        ("unit", _text),
        ("sensor_type", _text),
        ("schema_version", _any),
        ("value", _any),
    ):
        if draw(st.integers(0, 12)) == 0:
            d[key] = draw(strategy)
    loc = copy.deepcopy(d["location"])
    for key, strategy in (("district", _text), ("street", _text), ("lat", _float), ("lon", _any)):
        if draw(st.integers(0, 12)) == 0:
            loc[key] = draw(st.one_of(st.none(), strategy))
    d["location"] = loc
    for key in list(d):
        if draw(st.integers(0, 30)) == 0:
            del d[key]
    return d


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(native_readings(), min_size=1, max_size=3), st.booleans())
def test_native_hot_path_never_disagrees(items: list[dict[str, Any]], batch: bool) -> None:
    payload = orjson.dumps({"readings": items} if batch or len(items) > 1 else items[0])
    agree(native.encode_readings, native.decode_readings, payload, CTX)


# ---- SenML -------------------------------------------------------------------


def test_senml_fixture_packs_take_the_hot_path_and_match() -> None:
    ctx = DecodeContext(now=datetime(2025, 1, 15, 8, 0, 5, tzinfo=UTC), registry=REGISTRY)
    took = {
        path.name: agree(senml.encode, senml.decode, path.read_bytes(), ctx) for path in sorted(SENML_DIR.glob("*.json"))
    }
    assert took == {"air-pack.json": True, "mixed-units.json": True, "relative-now.json": True, "string-value.json": False}


@given(st.sampled_from(_NAMES_FOR_IDS), st.integers(0, 2**40))
def test_senml_event_id_is_the_stable_id_of_name_and_time(name: str, us: int) -> None:
    ts = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    assert senml.event_id(name, ts.isoformat()) == stable_id("senml", name, ts, prefix="sm-")


def test_senml_out_of_range_value_steps_aside() -> None:
    pack = [{"bn": "urn:dev:mac:70b3d57ed005a1c1:", "bt": NOW.timestamp(), "n": "pm25", "u": "ug/m3", "v": 5000.0}]
    payload = orjson.dumps(pack)
    assert senml.encode("city/x", payload, SCTX) is None
    assert slow(senml.decode, payload, SCTX) == "out_of_range"


_NAMES = sorted(REGISTRY._by_name)


@st.composite
def senml_packs(draw: st.DrawFn) -> list[dict[str, Any]]:
    recs = []
    for i in range(draw(st.integers(1, 4))):
        rec: dict[str, Any] = {
            "n": draw(st.sampled_from([*_NAMES, "nope", ""])),
            "v": draw(st.one_of(st.floats(0, 60), _float)),
        }
        if i == 0 or draw(st.booleans()):
            rec["bt"] = draw(st.sampled_from([NOW.timestamp(), NOW.timestamp() - 60.5, 0, -30, 1e12, 2**28 - 1]))
        if draw(st.integers(0, 3)) == 0:
            rec["t"] = draw(st.one_of(_float, st.sampled_from([1.5, -10, 600])))
        if draw(st.integers(0, 3)) == 0:
            rec["u"] = draw(st.sampled_from(["Cel", "K", "dB", "Bspl", "m", "cm", "kg/m3", "ug/m3", "%", "xyz"]))
        if draw(st.integers(0, 4)) == 0:
            rec["bv"] = draw(_float)
        if draw(st.integers(0, 8)) == 0:
            rec[draw(st.sampled_from(["vs", "s", "x_", "bver"]))] = draw(_any)
        recs.append(rec)
    return recs


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(senml_packs())
def test_senml_hot_path_never_disagrees(pack: list[dict[str, Any]]) -> None:
    agree(senml.encode, senml.decode, orjson.dumps(pack), SCTX)


_senml_value = st.one_of(_any, st.sampled_from([float("inf"), float("nan"), 10**400, -(10**400), 1e308]))


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from([*senml._KNOWN, "x", "x_", "bver"]), _senml_value, max_size=5))
def test_senml_plain_record_check_agrees_with_the_full_check(rec: dict[str, Any]) -> None:
    if senml._plainly_valid(rec):
        senml._check_types_fully(rec, "record 0")  # must not raise
