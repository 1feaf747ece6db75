"""The project's own JSON: one `SensorReading` object, or `{"readings": [...]}`,
on `city/sensors/...`; one hotline call on `city/hotline/...`.

A hotline call arrives with the caller's `caller_name` / `caller_phone` in
clear; they are replaced by `caller_ref` here and never forwarded.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from citybrain.errors import RejectedPayload
from connectors.base import DecodeContext
from connectors.decoders.common import parse_json, reason_for
from connectors.pii import caller_ref, mask_phone
from schemas import CATALOGUE, HotlineEvent, SensorReading, SensorType, reading_event_id

MAX_BATCH = 10_000


def _reading(obj: Any, ctx: DecodeContext) -> SensorReading:
    if not isinstance(obj, dict):
        raise RejectedPayload("invalid_field", f"a reading must be a JSON object, got {type(obj).__name__}")
    if "event_id" not in obj and isinstance(obj.get("sensor_id"), str) and isinstance(obj.get("ts"), str):
        obj = {**obj, "event_id": reading_event_id(obj["sensor_id"], obj["ts"])}
    if "source" not in obj:
        obj = {**obj, "source": "native"}
    try:
        # validated from JSON text so strict typing applies as on the wire
        reading = SensorReading.model_validate_json(orjson.dumps(obj))
    except ValidationError as exc:
        raise reason_for(exc) from None
    except TypeError:  # orjson writes less depth than it reads: a value nested absurdly deep
        raise RejectedPayload("invalid_field", "a reading field is nested too deep") from None
    except OverflowError:  # e.g. 9999-12-31T23:59:59-05:00: no such UTC time (the schema lets it escape)
        raise RejectedPayload("time_out_of_range", "a timestamp is beyond the representable UTC range") from None
    ctx.check_time(reading.ts)
    return reading


def decode_readings(topic: str, payload: bytes, ctx: DecodeContext) -> list[SensorReading]:
    data = parse_json(payload)
    if isinstance(data, dict) and "readings" in data:
        items = data["readings"]
        if not isinstance(items, list) or not items:
            raise RejectedPayload("invalid_field", "readings must be a non-empty list")
        if len(items) > MAX_BATCH:
            raise RejectedPayload("oversized", f"batch of {len(items)} readings exceeds {MAX_BATCH}")
        return [_reading(item, ctx) for item in items]
    return [_reading(data, ctx)]


def decode_hotline(topic: str, payload: bytes, ctx: DecodeContext) -> list[HotlineEvent]:
    data = parse_json(payload)
    if not isinstance(data, dict):
        raise RejectedPayload("invalid_field", "a hotline call must be a JSON object")
    data = dict(data)
    name = data.pop("caller_name", None)
    phone = data.pop("caller_phone", None)
    if "caller_ref" in data:
        raise RejectedPayload("invalid_field", "caller_ref is set by the intake, not by the sender")
    if name is not None or phone is not None:
        data["caller_ref"] = caller_ref(ctx.pii_key, str(phone or ""), str(name or ""))
    if isinstance(data.get("description"), str):
        data["description"] = mask_phone(data["description"])
    try:
        event = HotlineEvent.model_validate_json(orjson.dumps(data))
    except ValidationError as exc:
        raise reason_for(exc) from None
    except TypeError:  # orjson writes less depth than it reads: a value nested absurdly deep
        raise RejectedPayload("invalid_field", "a hotline call field is nested too deep") from None
    ctx.check_time(event.ts)
    return [event]


# ------------------------------------------------------------------ fast path
# `encode_readings` checks the shape nearly every sender uses against the same
# constraints SensorReading has and writes the JSON pydantic would write
# (orjson and pydantic-core agree byte for byte on strings, floats and UTC
# datetimes), at a fifth of the cost of building the model. Anything off the
# common shape (an int where a float goes, padded strings, unknown or
# misspelt fields, other timestamp spellings, values out of range, time out of
# bounds) returns None and the full decoder above decides: it accepts what
# pydantic accepts and names the reason of a refusal.
# tests/unit/test_decoders_fast.py holds the two paths to agreement.

_FIELDS = frozenset(SensorReading.model_fields)
_LOCATION_FIELDS = frozenset({"district", "street", "grid", "lat", "lon"})
_SENSOR_ID = re.compile(r"[A-Za-z0-9_.:\-]+")
# ISO 8601 as senders write it, with an explicit offset; other spellings pydantic
# may also accept (no seconds, a space, >6 digits of fraction) take the slow path
_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})")
_SPECS = {t.value: (t.value, CATALOGUE[t]) for t in SensorType}


def _text(v: Any, longest: int) -> bool:
    """A string pydantic keeps as is: not empty, unpadded, short enough."""
    return type(v) is str and 0 < len(v) <= longest and v.strip() == v


def _utc_ts(v: Any, memo: dict[str, datetime | None]) -> datetime | None:
    if type(v) is not str:
        return None
    if v in memo:  # a batch's readings mostly share their timestamps
        return memo[v]
    ts: datetime | None = None
    if _TS.fullmatch(v) is not None:
        try:
            ts = datetime.fromisoformat(v)
            if ts.tzinfo is not UTC:
                ts = ts.replace(tzinfo=UTC) if not ts.utcoffset() else ts.astimezone(UTC)
        except (ValueError, OverflowError):
            ts = None
    memo[v] = ts
    return ts


# key orders in which a location dict is already what pydantic writes
_LOCATION_ORDERS = frozenset(
    {
        ("district", "lat", "lon"),
        ("district", "street", "lat", "lon"),
        ("district", "grid", "lat", "lon"),
        ("district", "street", "grid", "lat", "lon"),
    }
)


def _location(v: Any) -> dict[str, Any] | None:
    if type(v) is not dict or not v.keys() <= _LOCATION_FIELDS:
        return None
    lat, lon, district = v.get("lat"), v.get("lon"), v.get("district")
    if type(lat) is not float or type(lon) is not float or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    if not _text(district, 32):
        return None
    if tuple(v) in _LOCATION_ORDERS and all(_text(v[k], 64) for k in ("street", "grid") if k in v):
        return v  # written as it came
    out: dict[str, Any] = {"district": district}
    for key in ("street", "grid"):
        part = v.get(key)
        if part is not None:
            if not _text(part, 64):
                return None
            out[key] = part
    out["lat"] = lat
    out["lon"] = lon
    return out


def _fast_one(obj: Any, lo: datetime, hi: datetime, memo: dict[str, datetime | None]) -> tuple[bytes, bytes] | None:
    if type(obj) is not dict or not obj.keys() <= _FIELDS:
        return None
    sensor_id: Any = obj.get("sensor_id")
    if not _text(sensor_id, 128) or _SENSOR_ID.fullmatch(sensor_id) is None:
        return None
    raw_ts: Any = obj.get("ts")
    ts = _utc_ts(raw_ts, memo)
    if ts is None or not lo <= ts <= hi:
        return None
    event_id = obj.get("event_id")
    if event_id is None and "event_id" not in obj:
        event_id = reading_event_id(sensor_id, raw_ts)
    if not _text(event_id, 128):
        return None
    sensor_type = obj.get("sensor_type")
    kind = _SPECS.get(sensor_type) if type(sensor_type) is str else None
    value = obj.get("value")
    if kind is None or type(value) is not float:
        return None
    sensor_type, spec = kind
    if obj.get("unit") != spec.unit or not spec.low <= value <= spec.high:
        return None
    if "schema_version" in obj and not (type(obj["schema_version"]) is int and obj["schema_version"] == 1):
        return None
    location = _location(obj.get("location"))
    if location is None:
        return None
    out: dict[str, Any] = {
        "schema_version": 1,
        "event_id": event_id,
        "sensor_id": sensor_id,
        "sensor_type": sensor_type,
        "value": value,
        "unit": spec.unit,
        "ts": ts,
        "location": location,
    }
    sent = obj.get("sent_at")
    if sent is not None:
        sent_ts = _utc_ts(sent, memo)
        if sent_ts is None:
            return None
        out["sent_at"] = sent_ts
    source = obj.get("source", "native")
    if source is not None:
        if not _text(source, 64):
            return None
        out["source"] = source
    return sensor_id.encode(), orjson.dumps(out, option=orjson.OPT_UTC_Z)


def encode_readings(topic: str, payload: bytes, ctx: DecodeContext) -> list[tuple[bytes, bytes]] | None:
    """`decode_readings`' hot path: (key, SensorReading JSON) of every reading, or
    None when any reading of the payload is off the common shape."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if type(data) is dict and "readings" in data:
        items = data["readings"]
        if type(items) is not list or not items or len(items) > MAX_BATCH:
            return None
    else:
        items = [data]
    lo, hi = ctx.now - ctx.max_past, ctx.now + ctx.max_future
    memo: dict[str, datetime | None] = {}
    out = []
    for item in items:
        one = _fast_one(item, lo, hi, memo)
        if one is None:
            return None
        out.append(one)
    return out
