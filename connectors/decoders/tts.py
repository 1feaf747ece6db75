"""The Things Stack v3 uplinks (MQTT integration, JSON).

Topic `v3/{application_id}@{tenant_id}/devices/{device_id}/up`; the body is
an `ApplicationUp` with an `uplink_message` (field names from The Things
Stack's "Data Formats" documentation and its `v3ApplicationUp` API schema):

    {"end_device_ids": {"device_id", "application_ids": {"application_id"},
                        "dev_eui", "join_eui", "dev_addr"},
     "correlation_ids": ["as:up:...", ...],
     "received_at": "<RFC 3339, Application Server>",
     "uplink_message": {"session_key_id", "f_port", "f_cnt", "frm_payload",
                        "decoded_payload": {...}, "rx_metadata": [...],
                        "settings": {"data_rate", "frequency", "time"},
                        "received_at": "<RFC 3339, Network Server>", ...}}

Empty fields are omitted by The Things Stack, so an absent `f_cnt` is 0.
An uplink without `decoded_payload` (no payload formatter, or the formatter
failed) is `undecodable_uplink`. The device is looked up by `device_id`, then
by `dev_eui`. Event time: the Network Server's `uplink_message.received_at`,
else `settings.time` (gateway), else the top-level `received_at`.

Idempotency: (application, device, session, f_cnt, field). The frame counter
alone restarts at 0 when a device rejoins; `session_key_id` changes with every
session, so an uplink of a new session is never mistaken for a duplicate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from citybrain.errors import RejectedPayload
from connectors.base import DecodeContext
from connectors.decoders.chirpstack import parse_time, required_obj, required_str
from connectors.decoders.common import parse_json
from connectors.registry import DeviceEntry, object_values, require_registry
from schemas import SensorReading, stable_id

ROUTE_PATTERN = "v3/+/devices/+/up"
SOURCE = "tts"


def _topic_device(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) == 5 and parts[0] == "v3" and parts[2] == "devices" and parts[4] == "up":
        return parts[3]
    return None


def _event_time(up: dict[str, Any], msg: dict[str, Any]) -> datetime:
    if msg.get("received_at") is not None:
        return parse_time(msg["received_at"], "uplink_message.received_at")
    settings = msg.get("settings")
    if isinstance(settings, dict) and settings.get("time") is not None:
        return parse_time(settings["time"], "uplink_message.settings.time")
    return parse_time(up.get("received_at"), "received_at")


def _entries(ids: dict[str, Any], device_id: str, ctx: DecodeContext) -> tuple[DeviceEntry, ...]:
    registry = require_registry(ctx.registry)
    try:
        return registry.by_device_id(device_id)
    except RejectedPayload:
        dev_eui = ids.get("dev_eui")
        if isinstance(dev_eui, str) and dev_eui:
            return registry.by_dev_eui(dev_eui)
        raise


def decode(topic: str, payload: bytes, ctx: DecodeContext) -> list[SensorReading]:
    up = parse_json(payload)
    if not isinstance(up, dict):
        raise RejectedPayload("invalid_field", "a The Things Stack uplink must be a JSON object")
    ids = required_obj(up, "end_device_ids", "")
    device_id = required_str(ids, "device_id", "end_device_ids.")
    in_topic = _topic_device(topic)
    if in_topic is not None and in_topic != device_id:
        raise RejectedPayload(
            "invalid_field", f"end_device_ids.device_id {device_id!r} differs from the topic's device {in_topic!r}"
        )
    app_ids = ids.get("application_ids")
    app = app_ids.get("application_id", "") if isinstance(app_ids, dict) else ""
    if not isinstance(app, str):
        raise RejectedPayload("wrong_type", "end_device_ids.application_ids.application_id must be a string")
    msg = required_obj(up, "uplink_message", "")
    f_cnt = msg.get("f_cnt", 0)
    if isinstance(f_cnt, bool) or not isinstance(f_cnt, int) or f_cnt < 0:
        raise RejectedPayload("wrong_type", "uplink_message.f_cnt must be a non-negative integer")
    session = msg.get("session_key_id", "")
    if not isinstance(session, str):
        raise RejectedPayload("wrong_type", "uplink_message.session_key_id must be a string")
    decoded = msg.get("decoded_payload")
    if decoded is None:
        raise RejectedPayload(
            "undecodable_uplink",
            f"uplink f_cnt={f_cnt} from {device_id} has no decoded_payload (no payload formatter, or it failed)",
        )
    if not isinstance(decoded, dict):
        raise RejectedPayload("wrong_type", f"decoded_payload must be a JSON object, got {type(decoded).__name__}")
    entries = _entries(ids, device_id, ctx)
    ts = _event_time(up, msg)
    ctx.check_time(ts)
    return [
        entry.reading(value, ts, stable_id("tts", app, device_id, session, f_cnt, key, prefix="tts-"), SOURCE)
        for entry, key, value in object_values(entries, decoded)
    ]
