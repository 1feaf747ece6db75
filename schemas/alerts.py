"""`city.alerts`, `city.alerts.dept.<code>`, `city.alert.actions`, `city.incidents`."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, model_validator

from schemas.common import Location, Severity, UtcDatetime, WireModel, stable_id


def alert_id_for(rule: str, subject: str, window_start_iso: str) -> str:
    """Deterministic: the same (rule, subject, window start) is the same alert."""
    return stable_id("alert", rule, subject, window_start_iso, prefix="a-")


class AlertStatus(StrEnum):
    NEW = "new"
    DISPATCHED = "dispatched"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    CLOSED = "closed"
    CLEARED = "cleared"
    REOPENED = "reopened"


class Evidence(WireModel):
    """Why it fired (算法审计): enough to recompute the decision by hand."""

    detector: str
    detector_version: str
    statistic: str = Field(description="what was compared, e.g. 'pm25 24h IAQI' or 'robust z'")
    value: float = Field(allow_inf_nan=False)
    threshold: float | None = Field(default=None, allow_inf_nan=False)
    window_start: UtcDatetime
    window_end: UtcDatetime
    score: float | None = Field(default=None, ge=0, le=1)
    details: dict[str, Any] = Field(default_factory=dict)


class Alert(WireModel):
    schema_version: Literal[1] = 1
    alert_id: str
    rule: str
    subject: str = Field(description="what the alert is about: a sensor id, or an area key")
    category: str
    sensor_type: str | None = None
    severity: Severity
    colour: str = ""
    status: AlertStatus = AlertStatus.NEW
    title: str
    location: Location
    departments: tuple[str, ...] = ()
    first_seen: UtcDatetime
    last_seen: UtcDatetime
    count: int = Field(default=1, ge=1)
    peak_severity: Severity | None = None
    revision: int = Field(default=1, ge=1, description="bumped on every update of the same alert")
    evidence: Evidence
    # Wall-clock send time of the reading that triggered it (latency measurement only).
    trigger_sent_at: UtcDatetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_colour(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("colour") and data.get("severity"):
            data = dict(data)
            data["colour"] = Severity(data["severity"]).colour
        return data


class ActionKind(StrEnum):
    ACK = "ack"
    RESOLVE = "resolve"
    CLOSE = "close"
    COMMENT = "comment"
    REASSIGN = "reassign"
    ESCALATE = "escalate"
    FEEDBACK = "feedback"
    REOPEN = "reopen"


class AlertAction(WireModel):
    schema_version: Literal[1] = 1
    event_id: str = Field(min_length=1, max_length=128)
    alert_id: str
    action: ActionKind
    actor: str = Field(min_length=1, max_length=64)
    actor_department: str | None = None
    ts: UtcDatetime
    comment: str | None = Field(default=None, max_length=2000)
    target_department: str | None = None
    satisfaction: int | None = Field(default=None, ge=1, le=5)


class Incident(WireModel):
    schema_version: Literal[1] = 1
    incident_id: str
    kind: str
    severity: Severity
    status: Literal["open", "resolved", "closed"] = "open"
    location: Location
    alert_ids: tuple[str, ...] = ()
    ticket_ids: tuple[str, ...] = ()
    first_seen: UtcDatetime
    last_seen: UtcDatetime
    revision: int = Field(default=1, ge=1)
