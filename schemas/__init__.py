"""Wire contract of every topic (pydantic v2). Single source of truth."""

from schemas.alerts import (
    ActionKind,
    Alert,
    AlertAction,
    AlertStatus,
    Evidence,
    Incident,
    alert_id_for,
)
from schemas.common import SCHEMA_VERSION, Location, Severity, UtcDatetime, WireModel, stable_id
from schemas.hotline import HotlineCategory, HotlineEvent, TicketStatus
from schemas.readings import SensorReading, reading_event_id
from schemas.sensors import CATALOGUE, SensorSpec, SensorType

WIRE_MODELS: dict[str, type[WireModel]] = {
    "SensorReading": SensorReading,
    "HotlineEvent": HotlineEvent,
    "Alert": Alert,
    "AlertAction": AlertAction,
    "Incident": Incident,
}

__all__ = [
    "CATALOGUE",
    "SCHEMA_VERSION",
    "WIRE_MODELS",
    "ActionKind",
    "Alert",
    "AlertAction",
    "AlertStatus",
    "Evidence",
    "HotlineCategory",
    "HotlineEvent",
    "Incident",
    "Location",
    "SensorReading",
    "SensorSpec",
    "SensorType",
    "Severity",
    "TicketStatus",
    "UtcDatetime",
    "alert_id_for",
    "reading_event_id",
    "stable_id",
]
