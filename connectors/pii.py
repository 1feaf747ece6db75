"""Citizen PII (caller name, phone) never leaves the intake in clear.

`caller_ref` is a keyed HMAC-SHA256 of the normalised phone number (or the
name when no phone is given): the same caller gets the same ref, so repeat
calls can be linked, but the ref cannot be reversed without the key.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_DIGITS = re.compile(r"\D+")
PHONE_RE = re.compile(r"(?<!\d)(?:\+?86[- ]?)?1[3-9]\d[- ]?\d{4}[- ]?\d{4}(?!\d)")


def caller_ref(key: bytes, phone: str | None, name: str | None) -> str | None:
    if not key:
        raise ValueError("a PII key is required to pseudonymise callers")
    basis = _DIGITS.sub("", phone or "")[-11:] or (name or "").strip()
    if not basis:
        return None
    return "c-" + hmac.new(key, basis.encode(), hashlib.sha256).hexdigest()[:24]


def mask_phone(text: str) -> str:
    """Mask mobile numbers inside free text (descriptions dictated by callers)."""
    return PHONE_RE.sub(lambda m: m.group(0)[:3] + "****" + m.group(0)[-4:], text)
