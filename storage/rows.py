"""Wire models -> table rows, and how each table is merged idempotently.

A batch goes COPY -> temporary staging table -> one INSERT .. SELECT with
ON CONFLICT. Time-series tables skip rows already present (their unique key
includes the time column); `alerts` and `incidents` keep the highest revision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from citybrain.dlq import decode_headers
from schemas import Alert, AlertAction, HotlineEvent, Incident, SensorReading
from schemas.tickets import KpiRecord, TicketRecord

Row = tuple[Any, ...]

READING_COLUMNS = ("ts", "event_id", "sensor_id", "sensor_type", "value", "unit", "district", "street", "grid",
                   "lat", "lon", "sent_at", "source")
HOTLINE_COLUMNS = ("ts", "event_id", "ticket_id", "kind", "category", "status", "district", "street", "grid",
                   "lat", "lon", "description", "urgency", "channel", "caller_ref", "satisfaction", "department")
ALERT_COLUMNS = ("alert_id", "revision", "rule", "subject", "category", "sensor_type", "severity", "severity_rank",
                 "colour", "status", "title", "district", "street", "grid", "lat", "lon", "departments",
                 "first_seen", "last_seen", "count", "peak_severity", "evidence", "payload")
HISTORY_COLUMNS = ("first_seen", "alert_id", "revision", "status", "severity", "departments", "last_seen",
                   "payload")
ACTION_COLUMNS = ("ts", "event_id", "alert_id", "action", "actor", "actor_department", "comment",
                  "target_department", "satisfaction")
INCIDENT_COLUMNS = ("incident_id", "revision", "kind", "severity", "severity_rank", "status", "district",
                    "street", "grid", "lat", "lon", "alert_ids", "ticket_ids", "first_seen", "last_seen",
                    "payload")
TICKET_COLUMNS = ("ticket_id", "revision", "change", "category", "urgency", "status", "district", "street", "grid",
                  "lat", "lon", "departments", "created", "first_contact_by", "resolve_by", "responded_at",
                  "resolved_at", "overdue", "satisfaction", "mode", "updated", "payload")
KPI_COLUMNS = ("scope", "period", "revision", "response_rate", "resolution_rate", "satisfaction_rate", "counts")
MODE_COLUMNS = ("ts", "event_id", "scope", "mode", "actor", "actor_department", "comment", "payload")
DLQ_COLUMNS = ("at", "dlq_topic", "dlq_partition", "dlq_offset", "reason", "message", "source", "component",
               "stage", "record_key", "size_bytes")


def reading_row(r: SensorReading) -> Row:
    loc = r.location
    return (r.ts, r.event_id, r.sensor_id, r.sensor_type.value, r.value, r.unit, loc.district, loc.street,
            loc.grid, loc.lat, loc.lon, r.sent_at, r.source)


def hotline_row(e: HotlineEvent) -> Row:
    loc = e.location
    return (e.ts, e.event_id, e.ticket_id, e.kind, e.category.value, e.status.value, loc.district, loc.street,
            loc.grid, loc.lat, loc.lon, e.description, e.urgency, e.channel, e.caller_ref, e.satisfaction,
            e.department)


def alert_row(a: Alert) -> Row:
    loc = a.location
    return (a.alert_id, a.revision, a.rule, a.subject, a.category, a.sensor_type, a.severity.value,
            a.severity.rank, a.colour, a.status.value, a.title, loc.district, loc.street, loc.grid, loc.lat,
            loc.lon, list(a.departments), a.first_seen, a.last_seen, a.count,
            a.peak_severity.value if a.peak_severity else None,
            a.evidence.model_dump_json(), a.model_dump_json(exclude_none=True))


def action_row(a: AlertAction) -> Row:
    return (a.ts, a.event_id, a.alert_id, a.action.value, a.actor, a.actor_department, a.comment,
            a.target_department, a.satisfaction)


class ModeSwitchRecord(BaseModel):
    """A switch on `city.control.mode` as the opscenter publishes it (streams.emergency.ModeSwitch):
    recorded so a replay can switch at the same event time."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: str = Field(min_length=1, max_length=128)
    scope: str = Field(min_length=1, max_length=200)
    mode: Literal["normal", "emergency"]
    actor: str = Field(min_length=1, max_length=64)
    actor_department: str | None = None
    ts: AwareDatetime
    comment: str | None = Field(default=None, max_length=2000)


def mode_row(m: ModeSwitchRecord) -> Row:
    return (m.ts, m.event_id, m.scope, m.mode, m.actor, m.actor_department, m.comment,
            m.model_dump_json(exclude_none=True))


def incident_row(i: Incident) -> Row:
    loc = i.location
    return (i.incident_id, i.revision, i.kind, i.severity.value, i.severity.rank, i.status, loc.district,
            loc.street, loc.grid, loc.lat, loc.lon, list(i.alert_ids), list(i.ticket_ids), i.first_seen,
            i.last_seen, i.model_dump_json(exclude_none=True))


def ticket_row(t: TicketRecord) -> Row:
    loc = t.location
    return (t.ticket_id, t.revision, t.change, t.category, t.urgency, t.status, loc.district, loc.street, loc.grid,
            loc.lat, loc.lon, list(t.departments), t.created, t.first_contact_by, t.resolve_by, t.responded_at,
            t.resolved_at, list(t.overdue), t.satisfaction, t.mode, t.updated, t.model_dump_json(exclude_none=True))


def kpi_row(k: KpiRecord) -> Row:
    return (k.scope, k.period, k.revision, k.response_rate, k.resolution_rate, k.satisfaction_rate,
            orjson.dumps(k.counts).decode())


def dlq_row(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
            headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...], timestamp_ms: int) -> Row:
    h = decode_headers(list(headers or ()))
    at: datetime
    try:
        at = datetime.fromisoformat(h["citybrain.errors.time"])
        if at.tzinfo is None:
            raise ValueError
    except (KeyError, ValueError):
        at = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return (at, topic, partition, offset, h.get("citybrain.errors.reason", "unknown"),
            h.get("citybrain.errors.exception.message", ""), h.get("citybrain.errors.source", ""),
            h.get("citybrain.errors.connector.name", ""), h.get("citybrain.errors.stage", ""),
            key.decode("utf-8", "replace") if key is not None else None, len(value or b""))


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One kind of record: its model, its staging columns and its merge."""

    kind: str
    table: str                      # table the staging table is LIKE
    columns: tuple[str, ...]
    model: type[Any] | None         # None: not JSON (the DLQ index reads headers)
    to_row: Callable[[Any], Row] | None
    partitioned: tuple[tuple[str, int], ...]  # (table, index of its time column in the row)

    @property
    def stage(self) -> str:
        return f"_stage_{self.kind}"

    def stage_ddl(self) -> str:
        return (f"CREATE TEMP TABLE IF NOT EXISTS {self.stage} (LIKE {self.table} INCLUDING DEFAULTS) "
                "ON COMMIT DELETE ROWS")

    def merge_sql(self, flavor: str) -> str:
        """SQL returning one row (written, skipped-or-superseded is the rest)."""
        s = self.stage
        if self.kind == "readings":
            cols = ", ".join(READING_COLUMNS)
            if flavor == "plain":
                return (
                    f"WITH ins AS (INSERT INTO readings ({cols}) SELECT {cols} FROM {s} "
                    "ON CONFLICT DO NOTHING RETURNING ts), "
                    "marked AS (INSERT INTO rollup_dirty (hour, marks) "
                    "SELECT h, count(*) FROM (SELECT date_bin(interval '1 hour', ts, "
                    "timestamptz '2000-01-01 00:00:00+00') AS h FROM ins) x GROUP BY h ORDER BY h "
                    "ON CONFLICT (hour) DO UPDATE SET marks = rollup_dirty.marks + EXCLUDED.marks RETURNING 1) "
                    "SELECT count(*) FROM ins"
                )
            return (f"WITH ins AS (INSERT INTO readings ({cols}) SELECT {cols} FROM {s} "
                    "ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM ins")
        if self.kind == "alerts":
            hcols = ", ".join(HISTORY_COLUMNS)
            acols = ", ".join(ALERT_COLUMNS)
            updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in ALERT_COLUMNS if c != "alert_id")
            return (
                f"WITH h AS (INSERT INTO alert_history ({hcols}) SELECT {hcols} FROM {s} "
                "ON CONFLICT DO NOTHING RETURNING 1), "
                f"u AS (INSERT INTO alerts ({acols}) SELECT DISTINCT ON (alert_id) {acols} FROM {s} "
                "ORDER BY alert_id, revision DESC "
                f"ON CONFLICT (alert_id) DO UPDATE SET {updates}, updated_at = now() "
                "WHERE alerts.revision < EXCLUDED.revision RETURNING 1) "
                "SELECT count(*) FROM h"
            )
        if self.kind in ("tickets", "kpi"):  # latest revision per ticket / per (scope, period)
            cols = ", ".join(self.columns)
            key = "ticket_id" if self.kind == "tickets" else "scope, period"
            updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in self.columns if c not in key.split(", "))
            return (
                f"WITH u AS (INSERT INTO {self.table} ({cols}) SELECT DISTINCT ON ({key}) {cols} FROM {s} "
                f"ORDER BY {key}, revision DESC "
                f"ON CONFLICT ({key}) DO UPDATE SET {updates}, updated_at = now() "
                f"WHERE {self.table}.revision < EXCLUDED.revision RETURNING 1) SELECT count(*) FROM u"
            )
        if self.kind == "incidents":
            icols = ", ".join(INCIDENT_COLUMNS)
            updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in INCIDENT_COLUMNS if c != "incident_id")
            return (
                f"WITH u AS (INSERT INTO incidents ({icols}) SELECT DISTINCT ON (incident_id) {icols} FROM {s} "
                "ORDER BY incident_id, revision DESC "
                f"ON CONFLICT (incident_id) DO UPDATE SET {updates}, updated_at = now() "
                "WHERE incidents.revision < EXCLUDED.revision RETURNING 1) SELECT count(*) FROM u"
            )
        cols = ", ".join(self.columns)
        return (f"WITH ins AS (INSERT INTO {self.table} ({cols}) SELECT {cols} FROM {s} "
                "ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM ins")


SPECS: dict[str, TableSpec] = {
    "readings": TableSpec("readings", "readings", READING_COLUMNS, SensorReading, reading_row, (("readings", 0),)),
    "hotline": TableSpec("hotline", "hotline_events", HOTLINE_COLUMNS, HotlineEvent, hotline_row,
                         (("hotline_events", 0),)),
    "alerts": TableSpec("alerts", "alerts", ALERT_COLUMNS, Alert, alert_row, (("alert_history", 17),)),
    "actions": TableSpec("actions", "alert_actions", ACTION_COLUMNS, AlertAction, action_row,
                         (("alert_actions", 0),)),
    "incidents": TableSpec("incidents", "incidents", INCIDENT_COLUMNS, Incident, incident_row, ()),
    "tickets": TableSpec("tickets", "hotline_tickets", TICKET_COLUMNS, TicketRecord, ticket_row, ()),
    "kpi": TableSpec("kpi", "hotline_kpi", KPI_COLUMNS, KpiRecord, kpi_row, ()),
    "modes": TableSpec("modes", "mode_switches", MODE_COLUMNS, ModeSwitchRecord, mode_row,
                       (("mode_switches", 0),)),
    "dlq": TableSpec("dlq", "dlq_index", DLQ_COLUMNS, None, None, (("dlq_index", 0),)),
}



def partition_probes(rows: list[Row], index: int) -> list[datetime]:
    """One time per distinct UTC day in the rows: enough to ensure every
    daily, monthly or yearly partition the rows need."""
    days = {r[index].astimezone(UTC).date() for r in rows}
    return [datetime(d.year, d.month, d.day, tzinfo=UTC) for d in sorted(days)]


__all__ = ["SPECS", "ModeSwitchRecord", "Row", "TableSpec", "partition_probes"]
