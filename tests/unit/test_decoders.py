"""SenML, ChirpStack v4 and The Things Stack v3 decoders, from the sample payloads
in tests/fixtures/payloads (written from each format's documentation)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citybrain.errors import RejectedPayload
from connectors.base import DecodeContext, topic_matches
from connectors.decoders import chirpstack, senml, tts
from connectors.registry import DeviceRegistry

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
NOW = datetime(2025, 1, 15, 8, 0, 5, tzinfo=UTC)
REGISTRY = DeviceRegistry.sample()
CTX = DecodeContext(now=NOW, registry=REGISTRY)

CS_TOPIC = "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/{eui}/event/up"
TTS_TOPIC = "v3/chaoyang-noise@citybrain/devices/{dev}/up"
SENML_TOPIC = "city/senml/chaoyang"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return json.loads(fixture(name))


def reason(fn: Callable[[], object]) -> str:
    with pytest.raises(RejectedPayload) as err:
        fn()
    assert err.value.message
    return err.value.reason


# ---- routes ------------------------------------------------------------------


def test_route_patterns_match_the_formats_topics() -> None:
    assert topic_matches(senml.ROUTE_PATTERN, "city/senml/chaoyang/aq-1")
    assert topic_matches(chirpstack.ROUTE_PATTERN, CS_TOPIC.format(eui="70b3d57ed005a1c1"))
    assert not topic_matches(chirpstack.ROUTE_PATTERN, "application/a/device/b/event/join")
    assert topic_matches(tts.ROUTE_PATTERN, TTS_TOPIC.format(dev="cb-cy-noise-0007"))
    assert not topic_matches(tts.ROUTE_PATTERN, "v3/app@t/devices/d/join")


# ---- SenML -------------------------------------------------------------------


def test_senml_pack_with_base_fields() -> None:
    rs = senml.decode(SENML_TOPIC, fixture("senml/air-pack.json"), CTX)
    assert [(r.sensor_id, r.value) for r in rs] == [
        ("bj-cy-aq-0001-pm25", 38.0),
        ("bj-cy-aq-0001-pm10", 71.5),
        ("bj-cy-aq-0001-pm25", 41.2),
        ("bj-cy-aq-0001-pm10", 74.0),
    ]
    t0 = datetime.fromtimestamp(1736927880, tz=UTC)
    assert [r.ts for r in rs] == [t0, t0, t0 + timedelta(seconds=60), t0 + timedelta(seconds=60)]
    assert all(r.unit == "ug/m3" and r.source == "senml" for r in rs)
    assert rs[0].location.district == "朝阳区"
    assert len({r.event_id for r in rs}) == 4


def test_senml_redelivery_keeps_event_ids() -> None:
    a = senml.decode(SENML_TOPIC, fixture("senml/air-pack.json"), CTX)
    later = DecodeContext(now=NOW + timedelta(minutes=3), registry=REGISTRY)
    b = senml.decode(SENML_TOPIC, fixture("senml/air-pack.json"), later)
    assert [r.event_id for r in a] == [r.event_id for r in b]


def test_senml_relative_times_are_relative_to_the_ingest_clock() -> None:
    rs = senml.decode(SENML_TOPIC, fixture("senml/relative-now.json"), CTX)
    assert [r.ts for r in rs] == [NOW - timedelta(seconds=120), NOW - timedelta(seconds=60), NOW]
    assert [r.value for r in rs] == [-3.5, -3.4, -3.2]
    assert {r.sensor_id for r in rs} == {"bj-hd-temp-0002"}


def test_senml_units_are_converted_to_catalogue_units() -> None:
    rs = {r.sensor_id: r for r in senml.decode(SENML_TOPIC, fixture("senml/mixed-units.json"), CTX)}
    assert rs["bj-hd-temp-0002"].value == pytest.approx(-3.0) and rs["bj-hd-temp-0002"].unit == "degC"
    assert rs["bj-hd-tspeed-0004"].value == pytest.approx(45.0)
    assert rs["bj-cy-wl-0003"].value == pytest.approx(0.18)
    assert rs["bj-cy-noise-0007"].value == pytest.approx(64.2)
    assert rs["bj-cy-gas-0012"].value == pytest.approx(4.0)


def test_senml_base_value_and_base_name_concatenation() -> None:
    pack = [{"bn": "bj-cy-wl-", "bv": 0.1, "bt": 1736928000, "n": "0003", "u": "m", "v": 0.05}]
    (r,) = senml.decode(SENML_TOPIC, json.dumps(pack).encode(), CTX)
    assert r.sensor_id == "bj-cy-wl-0003" and r.value == pytest.approx(0.15)


def _pack(**rec: Any) -> bytes:
    base = {"bn": "bj-cy-wl-0003", "bt": 1736928000, "u": "m", "v": 0.12}
    base.update(rec)
    return json.dumps([{k: v for k, v in base.items() if v is not None}]).encode()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (fixture("senml/string-value.json"), "wrong_type"),
        (_pack(v=None, vb=True), "wrong_type"),
        (_pack(v=None, vd="AQI="), "wrong_type"),
        (_pack(v=None, s=12.0), "missing_field"),
        (_pack(v=None), "missing_field"),
        (_pack(v="0.12"), "wrong_type"),
        (_pack(v=True), "wrong_type"),
        (_pack(bt="1736928000"), "wrong_type"),
        (_pack(u="furlong"), "unknown_unit"),
        (_pack(u="Cel"), "unit_mismatch"),
        (_pack(v=61.0), "out_of_range"),
        (_pack(bn="bj-cy-wl-9999"), "unknown_device"),
        (_pack(bn=""), "missing_field"),
        (_pack(bn="-bad name"), "invalid_field"),
        (_pack(bt=1736928000 + 86400), "time_out_of_range"),
        (_pack(bt=1736928000 - 30 * 86400), "time_out_of_range"),
        (_pack(bt=1e300), "time_out_of_range"),
        (_pack(t=-1e20, bt=None), "time_out_of_range"),
        (_pack(bver=11), "unsupported_version"),
        (_pack(rfu_="x"), "unsupported_field"),
        (b"[]", "invalid_field"),
        (b'{"n": "bj-cy-wl-0003", "v": 0.1}', "invalid_field"),
        (b"[1, 2]", "invalid_field"),
        (b"[{\"n\": \"x\", \"v\": NaN}]", "non_finite"),
        (b"[{\"n\": ", "malformed_json"),
        (b"\xff\xfe[]", "bad_encoding"),
    ],
)
def test_senml_wrong_variants_are_rejected_with_reason(payload: bytes, expected: str) -> None:
    assert reason(lambda: senml.decode(SENML_TOPIC, payload, CTX)) == expected


def test_senml_unknown_fields_without_underscore_are_ignored() -> None:
    (r,) = senml.decode(SENML_TOPIC, _pack(vendor_note="calibrated", ut=30), CTX)
    assert r.value == 0.12


def test_decoders_without_registry_reject_as_unknown_device() -> None:
    bare = DecodeContext(now=NOW)
    assert reason(lambda: senml.decode(SENML_TOPIC, _pack(), bare)) == "unknown_device"
    cs = fixture("chirpstack/up-water-level.json")
    assert reason(lambda: chirpstack.decode(CS_TOPIC.format(eui="24e124126c210455"), cs, bare)) == "unknown_device"


# ---- ChirpStack v4 -----------------------------------------------------------


def test_chirpstack_uplink_with_two_readings() -> None:
    topic = CS_TOPIC.format(eui="70b3d57ed005a1c1")
    rs = chirpstack.decode(topic, fixture("chirpstack/up-air-quality.json"), CTX)
    assert [(r.sensor_id, r.sensor_type.value, r.value) for r in rs] == [
        ("bj-cy-aq-0001-pm25", "pm25", 38.0),
        ("bj-cy-aq-0001-pm10", "pm10", 71.0),
    ]
    assert rs[0].ts == datetime(2025, 1, 15, 7, 59, 58, 103417, tzinfo=UTC)
    assert rs[0].source == "chirpstack"
    assert rs[0].event_id != rs[1].event_id
    again = chirpstack.decode(topic, fixture("chirpstack/up-air-quality.json"), CTX)
    assert [r.event_id for r in again] == [r.event_id for r in rs]


def test_chirpstack_event_id_comes_from_deduplication_id() -> None:
    topic = CS_TOPIC.format(eui="24e124126c210455")
    ev = fixture_json("chirpstack/up-water-level.json")
    a = chirpstack.decode(topic, json.dumps(ev).encode(), CTX)[0]
    ev2 = copy.deepcopy(ev)
    ev2["rxInfo"][0]["rssi"] = -80  # same uplink heard differently: same id
    assert chirpstack.decode(topic, json.dumps(ev2).encode(), CTX)[0].event_id == a.event_id
    ev2["deduplicationId"] = "00000000-0000-4000-8000-000000000000"
    assert chirpstack.decode(topic, json.dumps(ev2).encode(), CTX)[0].event_id != a.event_id


def test_chirpstack_time_falls_back_to_ns_time() -> None:
    ev = fixture_json("chirpstack/up-water-level.json")
    del ev["time"]
    (r,) = chirpstack.decode(CS_TOPIC.format(eui="24e124126c210455"), json.dumps(ev).encode(), CTX)
    assert r.ts == datetime(2025, 1, 15, 7, 59, 30, 548113, tzinfo=UTC)


def _cs(mutate: Callable[[dict[str, Any]], None], name: str = "chirpstack/up-water-level.json") -> bytes:
    ev = fixture_json(name)
    mutate(ev)
    return json.dumps(ev).encode()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        if value is _DELETE:
            del d[last]
        else:
            d[last] = value

    return mutate


_DELETE = object()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (fixture("chirpstack/up-no-object.json"), "undecodable_uplink"),
        (fixture("chirpstack/up-unknown-device.json"), "unknown_device"),
        (_cs(_set("object", None)), "undecodable_uplink"),
        (_cs(_set("object", [0.07])), "wrong_type"),
        (_cs(_set("object", {"battery": 92})), "missing_field"),
        (_cs(_set("object.water_level", "0.07")), "wrong_type"),
        (_cs(_set("object.water_level", 99.0)), "out_of_range"),
        (_cs(_set("deduplicationId", _DELETE)), "missing_field"),
        (_cs(_set("deduplicationId", 17)), "wrong_type"),
        (_cs(_set("deviceInfo", _DELETE)), "missing_field"),
        (_cs(_set("deviceInfo.devEui", _DELETE)), "missing_field"),
        (_cs(_set("deviceInfo.devEui", "a84041000181c7d2")), "invalid_field"),  # topic says otherwise
        (_cs(_set("time", "2025-01-15 07:59:30")), "bad_timestamp"),
        (_cs(_set("time", "yesterday")), "bad_timestamp"),
        (_cs(_set("time", 1736927970)), "wrong_type"),
        (_cs(_set("time", "2025-01-17T07:59:30Z")), "time_out_of_range"),
        (b"[]", "invalid_field"),
        (b"{\"deduplicationId\": ", "malformed_json"),
    ],
)
def test_chirpstack_wrong_variants_are_rejected_with_reason(payload: bytes, expected: str) -> None:
    eui = "70b3d57ed005b7e4" if b"70b3d57ed005b7e4" in payload else "24e124126c210455"
    if b"0102030405060708" in payload:
        eui = "0102030405060708"
    assert reason(lambda: chirpstack.decode(CS_TOPIC.format(eui=eui), payload, CTX)) == expected


def test_chirpstack_without_rx_time_is_missing_field() -> None:
    def strip(ev: dict[str, Any]) -> None:
        del ev["time"]
        ev["rxInfo"] = [{"gatewayId": "24e124fffef4a9b1"}]

    assert reason(lambda: chirpstack.decode(CS_TOPIC.format(eui="24e124126c210455"), _cs(strip), CTX)) == (
        "missing_field"
    )


# ---- The Things Stack v3 -----------------------------------------------------


def test_tts_uplink() -> None:
    (r,) = tts.decode(TTS_TOPIC.format(dev="cb-cy-noise-0007"), fixture("tts/up-noise.json"), CTX)
    assert (r.sensor_id, r.sensor_type.value, r.value, r.unit) == ("bj-cy-noise-0007", "noise", 62.4, "dB(A)")
    assert r.ts == datetime(2025, 1, 15, 7, 59, 55, 206418, tzinfo=UTC)
    assert r.source == "tts" and r.location.street == "三里屯街道"


def test_tts_f_cnt_omitted_means_zero_and_time_fallbacks() -> None:
    (r,) = tts.decode("v3/chaoyang-manholes@citybrain/devices/cb-cy-gas-0012/up", fixture("tts/up-gas.json"), CTX)
    assert r.value == 0.0 and r.unit == "%LEL"
    up = fixture_json("tts/up-gas.json")
    up["uplink_message"]["f_cnt"] = 0
    (same,) = tts.decode("v3/x@y/devices/cb-cy-gas-0012/up", json.dumps(up).encode(), CTX)
    assert same.event_id == r.event_id
    del up["uplink_message"]["received_at"]
    (top,) = tts.decode("v3/x@y/devices/cb-cy-gas-0012/up", json.dumps(up).encode(), CTX)
    assert top.ts == datetime(2025, 1, 15, 7, 59, 20, 118306, tzinfo=UTC)


def test_tts_event_id_is_device_session_and_f_cnt() -> None:
    topic = TTS_TOPIC.format(dev="cb-cy-noise-0007")
    up = fixture_json("tts/up-noise.json")
    a = tts.decode(topic, json.dumps(up).encode(), CTX)[0].event_id
    up["received_at"] = "2025-01-15T07:59:59Z"  # a redelivery, seen later by the AS
    up["correlation_ids"] = ["as:up:other"]
    assert tts.decode(topic, json.dumps(up).encode(), CTX)[0].event_id == a
    up["uplink_message"]["f_cnt"] += 1
    assert tts.decode(topic, json.dumps(up).encode(), CTX)[0].event_id != a
    up["uplink_message"]["f_cnt"] -= 1
    up["uplink_message"]["session_key_id"] = "new-session"  # rejoined: f_cnt restarted
    assert tts.decode(topic, json.dumps(up).encode(), CTX)[0].event_id != a


def test_tts_falls_back_to_dev_eui_lookup() -> None:
    up = fixture_json("tts/up-noise.json")
    up["end_device_ids"]["device_id"] = "renamed-in-console"
    (r,) = tts.decode("v3/x@y/devices/renamed-in-console/up", json.dumps(up).encode(), CTX)
    assert r.sensor_id == "bj-cy-noise-0007"


def _tts(mutate: Callable[[dict[str, Any]], None]) -> bytes:
    up = fixture_json("tts/up-noise.json")
    mutate(up)
    return json.dumps(up).encode()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (fixture("tts/up-no-decoded-payload.json"), "undecodable_uplink"),
        (_tts(_set("uplink_message.decoded_payload", _DELETE)), "undecodable_uplink"),
        (_tts(_set("uplink_message.decoded_payload", "62.4")), "wrong_type"),
        (_tts(_set("uplink_message.decoded_payload", {"battery": 3.6})), "missing_field"),
        (_tts(_set("uplink_message.decoded_payload.laeq", None)), "missing_field"),
        (_tts(_set("uplink_message.decoded_payload.laeq", 5.0)), "out_of_range"),
        (_tts(_set("uplink_message.decoded_payload.laeq", [62.4])), "wrong_type"),
        (_tts(_set("uplink_message.f_cnt", "24817")), "wrong_type"),
        (_tts(_set("uplink_message.f_cnt", -1)), "wrong_type"),
        (_tts(_set("uplink_message", _DELETE)), "missing_field"),
        (_tts(_set("end_device_ids", _DELETE)), "missing_field"),
        (_tts(_set("end_device_ids.device_id", 7)), "wrong_type"),
        (_tts(_set("end_device_ids.device_id", "cb-other")), "invalid_field"),
        (_tts(_set("uplink_message.received_at", "2025-01-15T07:59:55")), "bad_timestamp"),
        (_tts(_set("uplink_message.received_at", "2024-12-01T00:00:00Z")), "time_out_of_range"),
        (b"\"up\"", "invalid_field"),
        (b"{\"end_device_ids\": {\"device_id\": \"x\"", "malformed_json"),
    ],
)
def test_tts_wrong_variants_are_rejected_with_reason(payload: bytes, expected: str) -> None:
    topic = TTS_TOPIC.format(dev="cb-hd-rain-0001" if b"cb-hd-rain-0001" in payload else "cb-cy-noise-0007")
    assert reason(lambda: tts.decode(topic, payload, CTX)) == expected


def test_tts_unknown_device() -> None:
    up = fixture_json("tts/up-noise.json")
    up["end_device_ids"].update(device_id="stranger", dev_eui="FFFFFFFFFFFFFFFF")
    assert reason(lambda: tts.decode("v3/a@t/devices/stranger/up", json.dumps(up).encode(), CTX)) == "unknown_device"


# ---- properties: nothing but RejectedPayload, whatever arrives ----------------

DECODERS = [
    (senml.decode, SENML_TOPIC),
    (chirpstack.decode, CS_TOPIC.format(eui="24e124126c210455")),
    (tts.decode, TTS_TOPIC.format(dev="cb-cy-noise-0007")),
]

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
_keys = st.sampled_from(
    ["bn", "bt", "bu", "bv", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut", "x_",
     "deduplicationId", "time", "deviceInfo", "devEui", "object", "rxInfo", "nsTime", "pm25", "water_level",
     "end_device_ids", "device_id", "dev_eui", "uplink_message", "decoded_payload", "f_cnt", "received_at",
     "session_key_id", "settings", "laeq"]
) | st.text(max_size=8)  # fmt: skip
_json = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=6), max_leaves=12
)


def _only_rejections(decode: Callable[[str, bytes, DecodeContext], object], topic: str, payload: bytes) -> None:
    try:
        decode(topic, payload, CTX)
    except RejectedPayload as exc:
        assert exc.reason and exc.message


@pytest.mark.parametrize(("decode", "topic"), DECODERS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=512))
def test_arbitrary_bytes_only_ever_rejected(decode: Any, topic: str, payload: bytes) -> None:
    _only_rejections(decode, topic, payload)


@pytest.mark.parametrize(("decode", "topic"), DECODERS)
@settings(max_examples=150, deadline=None)
@given(doc=_json)
def test_arbitrary_json_only_ever_rejected(decode: Any, topic: str, doc: Any) -> None:
    _only_rejections(decode, topic, json.dumps(doc).encode())


@settings(max_examples=150, deadline=None)
@given(
    recs=st.lists(st.dictionaries(_keys, _scalars, max_size=6), min_size=1, max_size=4),
    name=st.sampled_from(["bj-cy-wl-0003", "bj-hd-temp-0002", "urn:dev:mac:70b3d57ed005a1c1:pm25", ""]),
)
def test_senml_like_packs_only_ever_rejected(recs: list[dict[str, Any]], name: str) -> None:
    recs[0].setdefault("bn", name)
    _only_rejections(senml.decode, SENML_TOPIC, json.dumps(recs).encode())


@settings(max_examples=120, deadline=None)
@given(obj=st.dictionaries(_keys, _json, max_size=4), time=_scalars, dedup=_scalars)
def test_chirpstack_like_events_only_ever_rejected(obj: dict[str, Any], time: Any, dedup: Any) -> None:
    ev = fixture_json("chirpstack/up-water-level.json")
    ev.update(object=obj, time=time, deduplicationId=dedup)
    _only_rejections(chirpstack.decode, CS_TOPIC.format(eui="24e124126c210455"), json.dumps(ev).encode())


@settings(max_examples=120, deadline=None)
@given(decoded=st.dictionaries(_keys, _json, max_size=4), f_cnt=_scalars, received=_scalars)
def test_tts_like_uplinks_only_ever_rejected(decoded: dict[str, Any], f_cnt: Any, received: Any) -> None:
    up = fixture_json("tts/up-noise.json")
    up["uplink_message"].update(decoded_payload=decoded, f_cnt=f_cnt, received_at=received)
    _only_rejections(tts.decode, TTS_TOPIC.format(dev="cb-cy-noise-0007"), json.dumps(up).encode())
