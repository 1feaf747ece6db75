"""`city.hotline.tickets` / `city.hotline.dept.<code>` (TicketRecord, key
ticket_id) and `city.kpi` (KpiRecord, key scope): what the hotline workflow
(接诉即办) publishes for the operations center and the departments.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.common import Location, UtcDatetime, WireModel

ChangeKind = Literal["dispatched", "updated", "feedback", "overdue"]


class TicketRecord(WireModel):
    """A ticket's current state after a change: what departments act on.
    `revision` grows with every change, so a consumer keeps the highest."""

    schema_version: Literal[1] = 1
    ticket_id: str
    revision: int = Field(ge=1)
    change: ChangeKind
    event_id: str | None = Field(default=None, description="the hotline event that caused the change")
    category: str
    urgency: str
    status: str
    location: Location
    departments: tuple[str, ...]
    created: UtcDatetime
    first_contact_by: UtcDatetime
    resolve_by: UtcDatetime
    responded_at: UtcDatetime | None = None
    resolved_at: UtcDatetime | None = None
    overdue: tuple[str, ...] = Field(default=(), description="deadlines missed and still unmet: response, resolution")
    satisfaction: int | None = None
    mode: str = "normal"
    updated: UtcDatetime
    description: str = Field(default="", description="the caller's text, phone numbers masked")
    caller_ref: str | None = None


class KpiRecord(WireModel):
    """三率 of one scope (a department code or "district:<code>") for the
    tickets created in one month (Beijing time). A rate is None while its
    denominator is empty. `revision` grows with every fact the scope counts."""

    schema_version: Literal[1] = 1
    scope: str
    period: str = Field(pattern=r"^\d{4}-\d{2}$")
    revision: int = Field(ge=1)
    response_rate: float | None = Field(default=None, ge=0, le=1)
    resolution_rate: float | None = Field(default=None, ge=0, le=1)
    satisfaction_rate: float | None = Field(default=None, ge=0, le=1)
    counts: dict[str, tuple[int, int]] = Field(description="kind -> (ok, decided)")
