"""Helpers every decoder uses: bytes -> JSON, pydantic errors -> reasons."""

from __future__ import annotations

import math
from typing import Any

import orjson
from pydantic import ValidationError

from citybrain.errors import RejectedPayload


def parse_json(payload: bytes) -> Any:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedPayload("bad_encoding", f"payload is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        # orjson rejects NaN/Infinity literals, which JSON does not allow either
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        low = text.lower()
        if "nan" in low or "infinity" in low:
            raise RejectedPayload("non_finite", "NaN/Infinity is not a number in JSON") from None
        raise RejectedPayload("malformed_json", str(exc)) from None


def reason_for(exc: ValidationError) -> RejectedPayload:
    """Classify a validation failure into a DLQ reason with a readable message."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "payload"
    msg = f"{loc}: {first['msg']}"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more)"
    kind = first["type"]
    text = first["msg"]
    if "physical range" in text or kind in ("greater_than_equal", "less_than_equal"):
        reason = "out_of_range"
    elif kind == "finite_number" or (isinstance(first.get("input"), float) and not math.isfinite(first["input"])):
        reason = "non_finite"
    elif kind.endswith("_type") or kind.endswith("_parsing"):
        reason = "wrong_type"
    elif kind == "missing":
        reason = "missing_field"
    elif kind == "extra_forbidden":
        reason = "unknown_field"
    elif "timezone" in text:
        reason = "bad_timestamp"
    else:
        reason = "invalid_field"
    return RejectedPayload(reason, msg)
