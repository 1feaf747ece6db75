"""SenML JSON (RFC 8428) packs on `city/senml/...`.

A pack is a JSON array of records. Base fields (`bn`, `bt`, `bu`, `bv`,
`bver`) apply to the record that carries them and to every later record
until replaced (RFC 8428 section 4.6, "resolved records"):

    name  = bn + n          -> a sensor id or a registered SenML name (registry)
    time  = bt + t          -> seconds since the epoch, or, when below 2**28,
                               seconds relative to now (0 = now, -60 = a minute ago)
    unit  = u or bu         -> converted to the catalogue unit of the sensor type
    value = bv + v

Only numeric values (`v`) make readings: a record with `vs`, `vb` or `vd`
(string, boolean, data) is refused as `wrong_type`, a record with only a sum
(`s`) or nothing as `missing_field`. Fields ending in `_` are must-understand
extensions (RFC 8428 section 4.4) and are refused (`unsupported_field`); other
unknown fields are ignored, as the RFC allows.

The idempotency key is the format's own: (resolved name, resolved time), so a
redelivered pack keeps its event ids. Packs with relative times carry no
absolute time, so their ids follow the ingest clock (ctx.now) and a
redelivery after the clock moved is a new event: devices that want
deduplication send absolute times.

A pack is decoded whole or refused whole (with the failing record's index),
so nothing in it is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from hashlib import blake2b
from typing import Any

import orjson

from citybrain.errors import RejectedPayload
from connectors.base import DecodeContext
from connectors.decoders.common import parse_json
from connectors.registry import DeviceEntry, number, require_registry
from schemas import CATALOGUE, SensorReading

ROUTE_PATTERN = "city/senml/#"
SOURCE = "senml"
MAX_RECORDS = 10_000
SENML_VERSION = 10  # RFC 8428 default bver
RELATIVE_LIMIT = 2**28  # RFC 8428 section 4.5.3

# RFC 8428 section 4.5.1: names start with a letter or digit, then A-Z a-z 0-9 - : . / _
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-:./_]*$")

_KNOWN = frozenset({"bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut"})
_NUMERIC = ("bt", "bv", "bs", "t", "v", "s", "ut")
_STRINGS = ("bn", "bu", "n", "u", "vs", "vd")

# (SenML unit, catalogue unit) -> (scale, offset): value_ours = value * scale + offset.
# SenML names from RFC 8428 (primary) and RFC 8798 (new primary and secondary units).
# Units with no SenML name (mg/m3, veh/h, %LEL, dB(A)) are also accepted spelled as in
# our catalogue; identical units always convert 1:1.
UNIT_CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("Cel", "degC"): (1.0, 0.0),
    ("K", "degC"): (1.0, -273.15),
    ("ug/m3", "ug/m3"): (1.0, 0.0),  # RFC 8798 secondary unit
    ("kg/m3", "ug/m3"): (1e9, 0.0),  # RFC 8798 primary unit
    ("ug/m3", "mg/m3"): (1e-3, 0.0),
    ("kg/m3", "mg/m3"): (1e6, 0.0),
    ("m", "m"): (1.0, 0.0),
    ("cm", "m"): (0.01, 0.0),  # RFC 8798 secondary
    ("mm", "m"): (0.001, 0.0),  # RFC 8798 secondary
    ("mm/h", "mm/h"): (1.0, 0.0),  # RFC 8798 secondary
    ("m/h", "mm/h"): (1000.0, 0.0),  # RFC 8798 secondary
    ("m/s", "mm/h"): (3_600_000.0, 0.0),
    ("km/h", "km/h"): (1.0, 0.0),  # RFC 8798 secondary
    ("m/s", "km/h"): (3.6, 0.0),
    # A sound level meter's "dB" is its (A-weighted) sound pressure level; Bspl is bels.
    ("dB", "dB(A)"): (1.0, 0.0),
    ("Bspl", "dB(A)"): (10.0, 0.0),
    ("1/s", "veh/h"): (3600.0, 0.0),  # event rate: vehicles per second
    ("1/min", "veh/h"): (60.0, 0.0),
    ("/", "%LEL"): (100.0, 0.0),  # ratio of the lower explosive limit
    ("/100", "%LEL"): (1.0, 0.0),  # RFC 8798 secondary: percent
}
_SENML_UNITS = frozenset(u for u, _ in UNIT_CONVERSIONS)


def _convert(value: float, unit: str | None, target: str, where: str) -> float:
    if unit is None or unit == target:
        return value
    conv = UNIT_CONVERSIONS.get((unit, target))
    if conv is None:
        if unit in _SENML_UNITS:
            raise RejectedPayload("unit_mismatch", f"{where}: unit {unit!r} cannot be converted to {target!r}")
        raise RejectedPayload("unknown_unit", f"{where}: unit {unit!r} is not a known SenML unit for {target!r}")
    scale, offset = conv
    return value * scale + offset


def _time(seconds: float, now: datetime, where: str) -> datetime:
    try:
        if seconds < RELATIVE_LIMIT:
            return now + timedelta(seconds=seconds)
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, ValueError, OSError):
        raise RejectedPayload("time_out_of_range", f"{where}: time {seconds!r} is not a representable date") from None


_NUMERIC_KEYS = frozenset(_NUMERIC)
_STRING_KEYS = frozenset(_STRINGS)


def _plainly_valid(rec: dict[str, Any]) -> bool:
    """One pass over a record that the full checks below would pass: plain
    numbers and strings, no vb, bver or must-understand fields."""
    for key, val in rec.items():
        if key in _NUMERIC_KEYS:
            t = type(val)
            if not ((t is int and -1e300 < val < 1e300) or (t is float and val - val == 0.0)):  # finite
                return False
        elif key in _STRING_KEYS:
            if type(val) is not str:
                return False
        elif key in ("vb", "bver") or type(key) is not str or key.endswith("_"):
            return False
    return True


def _check_types_fully(rec: dict[str, Any], where: str) -> None:
    for key in rec:
        if isinstance(key, str) and key.endswith("_"):
            raise RejectedPayload("unsupported_field", f"{where}: must-understand field {key!r} is not supported")
    for key in _NUMERIC:
        if key in rec:
            number(rec[key], f"{where}.{key}")
    for key in _STRINGS:
        if key in rec and not isinstance(rec[key], str):
            raise RejectedPayload("wrong_type", f"{where}.{key} must be a string")
    if "vb" in rec and not isinstance(rec["vb"], bool):
        raise RejectedPayload("wrong_type", f"{where}.vb must be a boolean")
    if "bver" in rec:
        bver = rec["bver"]
        if isinstance(bver, bool) or not isinstance(bver, int):
            raise RejectedPayload("wrong_type", f"{where}.bver must be an integer")
        if bver > SENML_VERSION:
            raise RejectedPayload("unsupported_version", f"{where}: SenML version {bver} is newer than {SENML_VERSION}")


def _resolved(data: Any, ctx: DecodeContext) -> Iterator[tuple[DeviceEntry, float, datetime, str]]:
    """(registry entry, value in its unit, event time, event id) of every record
    of a pack, in order; raises `RejectedPayload` on the first bad record."""
    if not isinstance(data, list) or not data:
        raise RejectedPayload("invalid_field", "a SenML pack must be a non-empty JSON array of records")
    if len(data) > MAX_RECORDS:
        raise RejectedPayload("oversized", f"SenML pack of {len(data)} records exceeds {MAX_RECORDS}")
    registry = require_registry(ctx.registry)

    bn, bu = "", None
    bt = bv = 0.0
    times: dict[float, tuple[datetime, str]] = {}
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise RejectedPayload("invalid_field", f"record {i} must be a JSON object, got {type(rec).__name__}")
        if not _plainly_valid(rec):
            _check_types_fully(rec, f"record {i}")
        if "bn" in rec:
            bn = rec["bn"]
        if "bt" in rec:
            bt = float(rec["bt"])
        if "bu" in rec:
            bu = rec["bu"]
        if "bv" in rec:
            bv = float(rec["bv"])

        name = bn + rec.get("n", "")
        if not name:
            raise RejectedPayload("missing_field", f"record {i}: no name (bn + n is empty)")
        if not _NAME.match(name):
            raise RejectedPayload("invalid_field", f"record {i}: {name[:80]!r} is not a valid SenML name")
        for kind in ("vs", "vb", "vd"):
            if kind in rec:
                raise RejectedPayload(
                    "wrong_type", f"record {i} ({name}): a {kind} value is not a number; numeric sensors need 'v'"
                )
        if "v" not in rec:
            has = "only a sum 's'" if "s" in rec else "no value"
            raise RejectedPayload("missing_field", f"record {i} ({name}) has {has}; a reading needs 'v'")

        entry = registry.by_name(name)
        raw = bv + float(rec["v"])
        unit = rec.get("u", bu)
        value = raw if unit is None or unit == entry.unit else _convert(raw, unit, entry.unit, f"record {i} ({name})")
        seconds = bt + float(rec.get("t", 0.0))
        known = times.get(seconds)
        if known is None:  # records of a pack mostly share their time: resolve and check it once
            ts = _time(seconds, ctx.now, f"record {i}")
            ctx.check_time(ts)
            known = times[seconds] = (ts, ts.isoformat())
        yield entry, value, known[0], event_id(name, known[1])


def event_id(name: str, iso_time: str) -> str:
    """`stable_id("senml", name, time, prefix="sm-")`, spelt out: it runs per record."""
    return "sm-" + blake2b(f"senml\x1f{name}\x1f{iso_time}".encode(), digest_size=12).hexdigest()


def decode(topic: str, payload: bytes, ctx: DecodeContext) -> list[SensorReading]:
    return [entry.reading(value, ts, eid, SOURCE) for entry, value, ts, eid in _resolved(parse_json(payload), ctx)]


# The hot path: the same resolution, and for a record whose value is finite and
# in its sensor's physical range (all SensorReading checks that are left: the
# registry entry already satisfies the rest) the reading's JSON written
# directly, as pydantic would write it. Anything refused returns None and
# `decode` names the reason. tests/unit/test_decoders_fast.py holds the two
# paths to agreement.
# per registry entry: what its readings' JSON repeats (keyed by identity, the
# entry held so its id stays its own; a reloaded registry brings new entries)
_Info = tuple[DeviceEntry, bytes, str, str, str, dict[str, Any], float, float]
_INFO: dict[int, _Info] = {}


def _info(entry: DeviceEntry) -> _Info:
    hit = _INFO.get(id(entry))
    if hit is not None and hit[0] is entry:
        return hit
    if len(_INFO) > 100_000:  # registries reloaded many times: start again
        _INFO.clear()
    spec = CATALOGUE[entry.sensor_type]
    info = (
        entry,
        entry.sensor_id.encode(),
        entry.sensor_id,
        entry.sensor_type.value,
        entry.unit,
        entry.location.model_dump(exclude_none=True),
        float(spec.low),
        float(spec.high),
    )
    _INFO[id(entry)] = info
    return info


def encode(topic: str, payload: bytes, ctx: DecodeContext) -> list[tuple[bytes, bytes]] | None:
    """`decode`'s hot path: (key, SensorReading JSON) of every record, or None."""
    try:
        data = orjson.loads(payload)
        out = []
        for entry, value, ts, eid in _resolved(data, ctx):
            _, key, sensor_id, sensor_type, unit, location, low, high = _info(entry)
            if not low <= value <= high or ts.tzinfo is not UTC:  # NaN fails the range too
                return None
            reading = {
                "schema_version": 1,
                "event_id": eid,
                "sensor_id": sensor_id,
                "sensor_type": sensor_type,
                "value": value,
                "unit": unit,
                "ts": ts,
                "location": location,
                "source": SOURCE,
            }
            out.append((key, orjson.dumps(reading, option=orjson.OPT_UTC_Z)))
    except (RejectedPayload, orjson.JSONDecodeError):
        return None
    return out
