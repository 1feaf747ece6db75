"""The project's own JSON: one `SensorReading` object, or `{"readings": [...]}`,
on `city/sensors/...`; one hotline call on `city/hotline/...`.

A hotline call arrives with the caller's `caller_name` / `caller_phone` in
clear; they are replaced by `caller_ref` here and never forwarded.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from citybrain.errors import RejectedPayload
from connectors.base import DecodeContext
from connectors.decoders.common import parse_json, reason_for
from connectors.pii import caller_ref, mask_phone
from schemas import HotlineEvent, SensorReading, reading_event_id

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
