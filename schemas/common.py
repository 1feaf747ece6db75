"""Types every topic shares: schema version, event time, location, severity.

Event time is always timezone-aware UTC; a naive timestamp is a validation
error, never silently taken as local time.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


def _utc(value: datetime) -> datetime:
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("timestamp must carry a timezone (e.g. 2025-07-01T08:00:00+08:00 or ...Z)")
    if not offset:  # "...Z" (nearly every payload): relabel, cheaper than astimezone's conversion
        return value if value.tzinfo is UTC else value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


class WireModel(BaseModel):
    """Base of every wire model: immutable, no unknown fields. Numbers are
    strict (no "80" for 80); enums and datetimes accept their wire strings."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Any:
        return cls.model_validate_json(data)


class Location(WireModel):
    """Where: administrative area (district/street/grid) and coordinates (WGS-84)."""

    district: str = Field(min_length=1, max_length=32, description="区, e.g. 朝阳区")
    street: str | None = Field(default=None, max_length=64, description="街道/乡镇")
    grid: str | None = Field(default=None, max_length=64, description="网格 id")
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False, strict=True)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False, strict=True)


class Severity(StrEnum):
    """China's four-level early-warning scale; I is the most severe."""

    IV = "IV"
    III = "III"
    II = "II"
    I = "I"  # noqa: E741

    @property
    def colour(self) -> str:
        return _COLOURS[self]

    @property
    def rank(self) -> int:
        """1 (blue, IV) .. 4 (red, I): larger is more severe."""
        return _RANKS[self]

    @classmethod
    def from_rank(cls, rank: int) -> Severity:
        return _BY_RANK[max(1, min(4, rank))]


_COLOURS = {Severity.IV: "blue", Severity.III: "yellow", Severity.II: "orange", Severity.I: "red"}
_RANKS = {Severity.IV: 1, Severity.III: 2, Severity.II: 3, Severity.I: 4}
_BY_RANK = {v: k for k, v in _RANKS.items()}
COLOUR_ZH = {"blue": "蓝", "yellow": "黄", "orange": "橙", "red": "红"}


def stable_id(*parts: object, prefix: str = "") -> str:
    """A deterministic id from its parts: the same inputs always give the same id."""
    text = "\x1f".join(p.isoformat() if isinstance(p, datetime) else str(p) for p in parts)
    return prefix + hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def now_utc() -> datetime:
    """The wall clock, for places that really need it (ingest time); inject it elsewhere."""
    return datetime.now(UTC)
