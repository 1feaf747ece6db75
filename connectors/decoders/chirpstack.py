"""ChirpStack v4 uplink events (MQTT integration, JSON marshaler).

Topic `application/{application_id}/device/{devEui}/event/up`; the body is the
protobuf-JSON form of `integration.UplinkEvent` (field names from
chirpstack's `api/proto/integration/integration.proto`, camelCase in JSON):

    {"deduplicationId": "<uuid>", "time": "<RFC 3339>",
     "deviceInfo": {"tenantId", "tenantName", "applicationId", "applicationName",
                    "deviceProfileId", "deviceProfileName", "deviceName", "devEui", "tags"},
     "devAddr", "adr", "dr", "fCnt", "fPort", "confirmed", "data": "<base64>",
     "object": {...decoded by the device profile's codec...},
     "rxInfo": [{"gatewayId", "uplinkId", "nsTime", "rssi", "snr", ...}], "txInfo": {...}}

`object` is only present when the device profile has a codec: an uplink
without it is `undecodable_uplink` (it goes to the DLQ with its raw bytes, and
can be redriven once a codec exists). The device is looked up by DevEUI in the
registry; each registered sensor of the device takes its value from its field
of `object`. Event time is `time` (set by ChirpStack when it deduplicated the
uplink), else the first gateway's `nsTime`/`gwTime`.

Idempotency: ChirpStack gives every deduplicated uplink a UUID
(`deduplicationId`); the event id is derived from it and the object field, so
a redelivered event keeps its ids and one uplink carrying several readings
gives each its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from citybrain.errors import RejectedPayload
from connectors.base import DecodeContext
from connectors.decoders.common import parse_json
from connectors.registry import normalise_eui, object_values, require_registry
from schemas import SensorReading, stable_id

ROUTE_PATTERN = "application/+/device/+/event/up"
SOURCE = "chirpstack"


def parse_time(value: Any, where: str) -> datetime:
    """An RFC 3339 timestamp with its offset (protobuf JSON gives up to 9
    fractional digits; Python keeps microseconds)."""
    if value is None:
        raise RejectedPayload("missing_field", f"{where} is missing")
    if not isinstance(value, str):
        raise RejectedPayload("wrong_type", f"{where} must be an RFC 3339 string, got {type(value).__name__}")
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise RejectedPayload("bad_timestamp", f"{where} {value[:40]!r} is not an RFC 3339 timestamp") from None
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise RejectedPayload("bad_timestamp", f"{where} {value[:40]!r} has no timezone offset")
    return ts


def required_str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None or value == "":
        raise RejectedPayload("missing_field", f"{where}{key} is missing")
    if not isinstance(value, str):
        raise RejectedPayload("wrong_type", f"{where}{key} must be a string, got {type(value).__name__}")
    return value


def required_obj(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        raise RejectedPayload("missing_field", f"{where}{key} is missing")
    if not isinstance(value, dict):
        raise RejectedPayload("wrong_type", f"{where}{key} must be an object, got {type(value).__name__}")
    return value


def _event_time(event: dict[str, Any]) -> datetime:
    if event.get("time") is not None:
        return parse_time(event["time"], "time")
    rx = event.get("rxInfo")
    if isinstance(rx, list) and rx and isinstance(rx[0], dict):
        for key in ("nsTime", "gwTime"):
            if rx[0].get(key) is not None:
                return parse_time(rx[0][key], f"rxInfo[0].{key}")
    raise RejectedPayload("missing_field", "time is missing (and no rxInfo[0].nsTime/gwTime)")


def _topic_eui(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) == 6 and parts[0] == "application" and parts[2] == "device":
        return parts[3]
    return None


def decode(topic: str, payload: bytes, ctx: DecodeContext) -> list[SensorReading]:
    event = parse_json(payload)
    if not isinstance(event, dict):
        raise RejectedPayload("invalid_field", "a ChirpStack uplink event must be a JSON object")
    dedup = required_str(event, "deduplicationId", "")
    info = required_obj(event, "deviceInfo", "")
    dev_eui = required_str(info, "devEui", "deviceInfo.")
    in_topic = _topic_eui(topic)
    if in_topic is not None and normalise_eui(in_topic) != normalise_eui(dev_eui):
        raise RejectedPayload(
            "invalid_field", f"deviceInfo.devEui {dev_eui!r} differs from the topic's DevEUI {in_topic!r}"
        )
    obj = event.get("object")
    if obj is None:
        raise RejectedPayload(
            "undecodable_uplink",
            f"uplink {dedup} from {dev_eui} has no decoded 'object' (no codec on its device profile?)",
        )
    if not isinstance(obj, dict):
        raise RejectedPayload("wrong_type", f"object must be a JSON object, got {type(obj).__name__}")
    entries = require_registry(ctx.registry).by_dev_eui(dev_eui)
    ts = _event_time(event)
    ctx.check_time(ts)
    return [
        entry.reading(value, ts, stable_id("chirpstack", dedup, key, prefix="cs-"), SOURCE)
        for entry, key, value in object_values(entries, obj)
    ]
