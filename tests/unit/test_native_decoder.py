from __future__ import annotations

import json
from datetime import timedelta

import pytest

from citybrain.errors import RejectedPayload
from connectors.base import DecodeContext, Route, pick_decoder, topic_matches
from connectors.decoders.native import decode_hotline, decode_readings
from tests.unit.conftest import T0, reading_dict

CTX = DecodeContext(now=T0 + timedelta(seconds=5), pii_key=b"test-key")


def test_single_and_batch_readings() -> None:
    one = decode_readings("city/sensors/x", json.dumps(reading_dict()).encode(), CTX)
    assert len(one) == 1 and one[0].value == 42.0 and one[0].source == "native"
    items = [reading_dict(event_id=f"e{i}", value=float(i)) for i in range(5)]
    batch = decode_readings("city/sensors/batch/p", json.dumps({"readings": items}).encode(), CTX)
    assert [r.value for r in batch] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_missing_event_id_is_derived_stably() -> None:
    d = reading_dict()
    del d["event_id"]
    a = decode_readings("t", json.dumps(d).encode(), CTX)[0].event_id
    b = decode_readings("t", json.dumps(d).encode(), CTX)[0].event_id
    assert a == b and a.startswith("r-")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe\x00", "bad_encoding"),
        (json.dumps(reading_dict()).replace("42.0", "NaN").encode(), "non_finite"),
        (json.dumps(reading_dict(value="42")).encode(), "wrong_type"),
        (json.dumps(reading_dict(value=-3.0)).encode(), "out_of_range"),
        (json.dumps(reading_dict(ts=(T0 + timedelta(days=1)).isoformat())).encode(), "time_out_of_range"),
        (json.dumps(reading_dict(ts=(T0 - timedelta(days=30)).isoformat())).encode(), "time_out_of_range"),
        (json.dumps(reading_dict(ts="2025-01-15T08:00:00")).encode(), "bad_timestamp"),
        (json.dumps({"readings": []}).encode(), "invalid_field"),
        (json.dumps([1, 2]).encode(), "invalid_field"),
    ],
)
def test_bad_readings_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(RejectedPayload) as err:
        decode_readings("city/sensors/x", payload, CTX)
    assert err.value.reason == reason
    assert err.value.message


def test_hotline_call_pseudonymises_the_caller() -> None:
    call = {
        "event_id": "h-1",
        "ticket_id": "T20250115001",
        "kind": "created",
        "category": "flooding",
        "ts": T0.isoformat(),
        "location": {"district": "朝阳区", "street": "望京街道", "lat": 39.99, "lon": 116.47},
        "description": "望京西路积水严重，请回电13812345678",
        "caller_name": "张伟",
        "caller_phone": "13812345678",
    }
    ev = decode_hotline("city/hotline/T20250115001", json.dumps(call, ensure_ascii=False).encode(), CTX)[0]
    wire = ev.to_json().decode()
    assert "13812345678" not in wire and "张伟" not in wire
    assert ev.caller_ref and ev.caller_ref.startswith("c-")
    assert "138****5678" in ev.description
    again = decode_hotline("t", json.dumps(call, ensure_ascii=False).encode(), CTX)[0]
    assert again.caller_ref == ev.caller_ref


def test_topic_routing() -> None:
    assert topic_matches("city/sensors/#", "city/sensors/a/b")
    assert topic_matches("application/+/device/+/event/up", "application/1/device/ab/event/up")
    assert not topic_matches("application/+/device/+/event/up", "application/1/device/ab/event/join")
    routes = [Route("city/sensors/#", decode_readings)]
    assert pick_decoder(routes, "city/sensors/x") is decode_readings
    with pytest.raises(RejectedPayload) as err:
        pick_decoder(routes, "elsewhere/x")
    assert err.value.reason == "unknown_topic"
