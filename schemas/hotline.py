"""`city.hotline.events`: 12345 tickets (接诉即办) and their status changes.

The caller's name and phone never travel in clear: `caller_ref` is a keyed
hash made at intake (see `connectors.pii`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from schemas.common import Location, UtcDatetime, WireModel


class HotlineCategory(StrEnum):
    NOISE = "noise"
    GARBAGE = "garbage"
    ROAD_DAMAGE = "road_damage"
    HEATING = "heating"
    WATER_OUTAGE = "water_outage"
    FLOODING = "flooding"  # 积水
    ODOUR = "odour"
    ILLEGAL_PARKING = "illegal_parking"
    AIR_POLLUTION = "air_pollution"
    TRAFFIC = "traffic"
    GAS_SMELL = "gas_smell"
    OTHER = "other"


class TicketStatus(StrEnum):
    OPEN = "open"
    DISPATCHED = "dispatched"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"
    CLOSED = "closed"


class HotlineEvent(WireModel):
    schema_version: Literal[1] = 1
    event_id: str = Field(min_length=1, max_length=128)
    ticket_id: str = Field(min_length=1, max_length=64)
    kind: Literal["created", "status", "feedback"]
    category: HotlineCategory
    status: TicketStatus = TicketStatus.OPEN
    ts: UtcDatetime
    location: Location
    description: str = Field(default="", max_length=2000)
    urgency: Literal["normal", "urgent"] = "normal"
    channel: Literal["phone", "app", "web", "open311"] = "phone"
    caller_ref: str | None = Field(default=None, max_length=64, description="keyed hash of the caller")
    satisfaction: int | None = Field(default=None, ge=1, le=5)
    department: str | None = Field(default=None, max_length=64)
