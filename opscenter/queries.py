"""SQL of the operations center against storage's tables (alerts,
alert_history, alert_actions, incidents, hotline_tickets, hotline_kpi,
hotline_events, readings and the 1-minute / 1-hour rollups). Read-only; every function takes a connection
(or pool) and plain values, so the API, the reports and the benchmark share it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any, TypeAlias

import asyncpg
import orjson

OPEN_STATUSES = ("new", "dispatched", "acknowledged", "reopened")
UNACKED_STATUSES = ("new", "dispatched", "reopened")
DONE_STATUSES = ("resolved", "closed", "cleared")
SEVERITIES = ("I", "II", "III", "IV")

Conn: TypeAlias = Any  # asyncpg.Connection or asyncpg.Pool


class BadCursor(ValueError):
    pass


def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([p.isoformat() if isinstance(p, datetime) else p
                                                  for p in parts])).decode().rstrip("=")


def decode_cursor(cursor: str, n: int) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = orjson.loads(raw)
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise BadCursor("cursor is not one this API returned") from exc
    if not isinstance(parts, list) or len(parts) != n:
        raise BadCursor("cursor is not one this API returned")
    return parts


def _time(text: Any) -> datetime:
    try:
        t = datetime.fromisoformat(str(text))
    except ValueError as exc:
        raise BadCursor("cursor is not one this API returned") from exc
    if t.tzinfo is None:
        raise BadCursor("cursor is not one this API returned")
    return t


class Where:
    """A small WHERE builder with numbered parameters."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, sql: str, *values: Any) -> None:
        names = [self.arg(v) for v in values]
        self.parts.append(sql.format(*names))

    def sql(self) -> str:
        return (" WHERE " + " AND ".join(self.parts)) if self.parts else ""


# ------------------------------------------------------------------ alerts
@dataclass(frozen=True, slots=True)
class AlertFilter:
    status: Sequence[str] = ()
    severity: Sequence[str] = ()
    department: str | None = None
    district: str | None = None
    street: str | None = None
    rule: str | None = None
    category: str | None = None
    subject: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    open_only: bool = False
    visible_to: str | None = None  # a department principal sees only its own


ALERT_LIST_COLUMNS = ("alert_id, revision, rule, subject, category, sensor_type, severity, colour, status, title, "
                      "district, street, grid, lat, lon, departments, first_seen, last_seen, count, peak_severity, "
                      "evidence::text AS evidence")


def _alert_where(f: AlertFilter) -> Where:
    w = Where()
    if f.status:
        w.add("status = ANY({0})", list(f.status))
    if f.open_only:
        w.add("status = ANY({0})", list(OPEN_STATUSES))
    if f.severity:
        w.add("severity = ANY({0})", list(f.severity))
    if f.department:
        w.add("departments @> ARRAY[{0}]::text[]", f.department)
    if f.visible_to:
        w.add("departments @> ARRAY[{0}]::text[]", f.visible_to)
    if f.district:
        w.add("district = {0}", f.district)
    if f.street:
        w.add("street = {0}", f.street)
    if f.rule:
        w.add("rule = {0}", f.rule)
    if f.category:
        w.add("category = {0}", f.category)
    if f.subject:
        w.add("subject = {0}", f.subject)
    if f.since:
        w.add("last_seen >= {0}", f.since)
    if f.until:
        w.add("first_seen < {0}", f.until)
    return w


async def list_alert_rows(conn: Conn, f: AlertFilter, limit: int,
                          cursor: str | None) -> tuple[list[asyncpg.Record], str | None]:
    """Keyset pagination on (last_seen, alert_id) descending, which the index
    alerts_last_seen_id (migration 0008) serves without a sort."""
    w = _alert_where(f)
    if cursor:
        ts, aid = decode_cursor(cursor, 2)
        w.add("(last_seen, alert_id) < ({0}, {1})", _time(ts), str(aid))
    sql = (f"SELECT {ALERT_LIST_COLUMNS} FROM alerts{w.sql()} "
           f"ORDER BY last_seen DESC, alert_id DESC LIMIT {int(limit) + 1}")
    rows = await conn.fetch(sql, *w.args)
    nxt = encode_cursor(rows[limit - 1]["last_seen"], rows[limit - 1]["alert_id"]) if len(rows) > limit else None
    return rows[:limit], nxt


async def list_alerts(conn: Conn, f: AlertFilter, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    rows, nxt = await list_alert_rows(conn, f, limit, cursor)
    return [alert_record(r) for r in rows], nxt


async def count_alerts(conn: Conn, f: AlertFilter) -> int:
    w = _alert_where(f)
    return int(await conn.fetchval(f"SELECT count(*) FROM alerts{w.sql()}", *w.args))


def alert_record(r: asyncpg.Record) -> dict[str, Any]:
    d = dict(r)
    d["departments"] = list(d["departments"])
    d["evidence"] = orjson.loads(d["evidence"])
    d["location"] = {k: d.pop(k) for k in ("district", "street", "grid", "lat", "lon")}
    return d


async def get_alert(conn: Conn, alert_id: str) -> dict[str, Any] | None:
    r = await conn.fetchrow(f"SELECT {ALERT_LIST_COLUMNS}, payload::text AS payload FROM alerts WHERE alert_id = $1",
                            alert_id)
    if r is None:
        return None
    d = alert_record(r)
    d["payload"] = orjson.loads(d["payload"])
    return d


HISTORY_FIELDS = ("revision", "status", "severity", "departments", "last_seen", "recorded_at")
ACTION_FIELDS = ("ts", "event_id", "action", "actor", "actor_department", "comment", "target_department",
                 "satisfaction")
_SERIES_MAX = 5000
_DETAIL_SQL = f"""
WITH a AS (
  SELECT {ALERT_LIST_COLUMNS}, payload::text AS payload,
         ARRAY(SELECT ROW({', '.join(HISTORY_FIELDS)}) FROM alert_history h
                WHERE h.alert_id = al.alert_id AND h.first_seen = al.first_seen ORDER BY revision) AS history,
         ARRAY(SELECT ROW({', '.join(ACTION_FIELDS)}) FROM alert_actions x
                WHERE x.alert_id = al.alert_id ORDER BY ts, event_id) AS actions,
         (evidence->>'window_start')::timestamptz - make_interval(mins => $2::int) AS s_since,
         greatest((evidence->>'window_end')::timestamptz, last_seen) + make_interval(mins => $3::int) AS s_until
    FROM alerts al WHERE alert_id = $1),
r AS (
  SELECT CASE WHEN $4::text <> 'auto' THEN $4::text
              WHEN s_until - s_since <= interval '6 hours' THEN 'raw'
              WHEN s_until - s_since <= interval '3 days' THEN '1m' ELSE '1h' END AS res FROM a)
SELECT a.*, r.res,
  ARRAY(SELECT ROW(ts, value) FROM readings
         WHERE r.res = 'raw' AND a.sensor_type IS NOT NULL AND sensor_id = a.subject
           AND ts >= a.s_since AND ts < a.s_until ORDER BY ts LIMIT {_SERIES_MAX}) AS raw_points,
  ARRAY(SELECT ROW(bucket, vavg, vmin, vmax, n) FROM readings_1m
         WHERE r.res = '1m' AND a.sensor_type IS NOT NULL AND sensor_id = a.subject
           AND bucket >= a.s_since AND bucket < a.s_until ORDER BY bucket LIMIT {_SERIES_MAX}) AS m_points,
  ARRAY(SELECT ROW(bucket, vavg, vmin, vmax, n) FROM readings_1h
         WHERE r.res = '1h' AND a.sensor_type IS NOT NULL AND sensor_id = a.subject
           AND bucket >= a.s_since AND bucket < a.s_until ORDER BY bucket LIMIT {_SERIES_MAX}) AS h_points
FROM a, r
"""


async def get_alert_detail(conn: Conn, alert_id: str, before_minutes: int = 120, after_minutes: int = 60,
                           resolution: str = "auto") -> dict[str, Any] | None:
    """The alert with its history, its actions and the sensor's series around
    its window in one round trip (as get_alert, alert_history, alert_actions,
    auto_resolution and series give them): `series_since`, `series_until`,
    `series_resolution`, `points`."""
    r = await conn.fetchrow(_DETAIL_SQL, alert_id, before_minutes, after_minutes, resolution)
    if r is None:
        return None
    d = alert_record(r)
    d["payload"] = orjson.loads(d["payload"])
    d["history"] = [dict(zip(HISTORY_FIELDS, h, strict=True)) for h in d["history"]]
    for h in d["history"]:
        h["departments"] = list(h["departments"])
    d["actions"] = [dict(zip(ACTION_FIELDS, x, strict=True)) for x in d["actions"]]
    res = d.pop("res")
    d["series_resolution"] = res
    d["series_since"] = d.pop("s_since")
    d["series_until"] = d.pop("s_until")
    if res == "raw":
        d["points"] = [{"ts": t, "value": v} for t, v in d["raw_points"]]
    else:
        d["points"] = [{"ts": t, "value": v, "min": lo, "max": hi, "n": n}
                       for t, v, lo, hi, n in d["m_points" if res == "1m" else "h_points"]]
    for k in ("raw_points", "m_points", "h_points"):
        del d[k]
    return d


async def alert_history(conn: Conn, alert_id: str, first_seen: datetime) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT revision, status, severity, departments, last_seen, recorded_at FROM alert_history "
        "WHERE alert_id = $1 AND first_seen = $2 ORDER BY revision", alert_id, first_seen)
    return [dict(r, departments=list(r["departments"])) for r in rows]


async def alert_actions(conn: Conn, alert_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT ts, event_id, action, actor, actor_department, comment, target_department, satisfaction "
        "FROM alert_actions WHERE alert_id = $1 ORDER BY ts, event_id", alert_id)
    return [dict(r) for r in rows]


async def alert_departments(conn: Conn, alert_ids: Sequence[str]) -> dict[str, list[str]]:
    rows = await conn.fetch("SELECT alert_id, departments FROM alerts WHERE alert_id = ANY($1)", list(alert_ids))
    return {r["alert_id"]: list(r["departments"]) for r in rows}


async def first_acks(conn: Conn, alert_ids: Sequence[str]) -> dict[str, datetime]:
    if not alert_ids:
        return {}
    rows = await conn.fetch(
        "SELECT alert_id, min(ts) AS ts FROM alert_actions WHERE alert_id = ANY($1) AND action = 'ack' "
        "GROUP BY alert_id", list(alert_ids))
    return {r["alert_id"]: r["ts"] for r in rows}


# ------------------------------------------------------------------ series
RESOLUTIONS = ("raw", "1m", "1h")


def auto_resolution(since: datetime, until: datetime) -> str:
    span = until - since
    if span <= timedelta(hours=6):
        return "raw"
    if span <= timedelta(days=3):
        return "1m"
    return "1h"


async def series(conn: Conn, sensor_id: str, since: datetime, until: datetime, resolution: str,
                 max_points: int = 5000) -> list[dict[str, Any]]:
    if resolution == "raw":
        rows = await conn.fetch(
            "SELECT ts, value FROM readings WHERE sensor_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts "
            f"LIMIT {int(max_points)}", sensor_id, since, until)
        return [{"ts": r["ts"], "value": r["value"]} for r in rows]
    table = "readings_1m" if resolution == "1m" else "readings_1h"
    rows = await conn.fetch(
        f"SELECT bucket, vmin, vmax, vavg, n FROM {table} WHERE sensor_id = $1 AND bucket >= $2 AND bucket < $3 "
        f"ORDER BY bucket LIMIT {int(max_points)}", sensor_id, since, until)
    return [{"ts": r["bucket"], "value": r["vavg"], "min": r["vmin"], "max": r["vmax"], "n": r["n"]} for r in rows]


async def latest_sensors(conn: Conn, since: datetime, sensor_type: str | None, district: str | None,
                         limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    w = Where()
    w.add("ts >= {0}", since)
    if sensor_type:
        w.add("sensor_type = {0}", sensor_type)
    if district:
        w.add("district = {0}", district)
    after = ""
    if cursor:
        (sid,) = decode_cursor(cursor, 1)
        after = f" WHERE sensor_id > {w.arg(str(sid))}"
    sql = ("SELECT * FROM (SELECT DISTINCT ON (sensor_id) sensor_id, sensor_type, value, unit, ts, district, street, "
           f"grid, lat, lon FROM readings{w.sql()} ORDER BY sensor_id, ts DESC) s{after} "
           f"ORDER BY sensor_id LIMIT {int(limit) + 1}")
    rows = await conn.fetch(sql, *w.args)
    items = [dict(r) for r in rows[:limit]]
    nxt = encode_cursor(rows[limit - 1]["sensor_id"]) if len(rows) > limit else None
    return items, nxt


async def sensor_latest(conn: Conn, sensor_id: str) -> dict[str, Any] | None:
    r = await conn.fetchrow(
        "SELECT sensor_id, sensor_type, value, unit, ts, district, street, grid, lat, lon FROM readings "
        "WHERE sensor_id = $1 ORDER BY ts DESC LIMIT 1", sensor_id)
    return dict(r) if r else None


# ------------------------------------------------------------------ incidents
@dataclass(frozen=True, slots=True)
class IncidentFilter:
    status: Sequence[str] = ()
    severity: Sequence[str] = ()
    district: str | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    visible_to: str | None = None


INCIDENT_COLUMNS = ("incident_id, revision, kind, severity, status, district, street, grid, lat, lon, alert_ids, "
                    "ticket_ids, first_seen, last_seen")


def incident_record(r: asyncpg.Record) -> dict[str, Any]:
    d = dict(r)
    d["alert_ids"] = list(d["alert_ids"])
    d["ticket_ids"] = list(d["ticket_ids"])
    d["location"] = {k: d.pop(k) for k in ("district", "street", "grid", "lat", "lon")}
    return d


async def list_incidents(conn: Conn, f: IncidentFilter, limit: int,
                         cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    w = Where()
    if f.status:
        w.add("status = ANY({0})", list(f.status))
    if f.severity:
        w.add("severity = ANY({0})", list(f.severity))
    if f.district:
        w.add("district = {0}", f.district)
    if f.kind:
        w.add("kind = {0}", f.kind)
    if f.since:
        w.add("last_seen >= {0}", f.since)
    if f.until:
        w.add("first_seen < {0}", f.until)
    if f.visible_to:
        w.add("EXISTS (SELECT 1 FROM alerts a WHERE a.alert_id = ANY(incidents.alert_ids) "
              "AND a.departments @> ARRAY[{0}]::text[])", f.visible_to)
    if cursor:
        ts, iid = decode_cursor(cursor, 2)
        w.add("(last_seen, incident_id) < ({0}, {1})", _time(ts), str(iid))
    rows = await conn.fetch(f"SELECT {INCIDENT_COLUMNS} FROM incidents{w.sql()} "
                            f"ORDER BY last_seen DESC, incident_id DESC LIMIT {int(limit) + 1}", *w.args)
    items = [incident_record(r) for r in rows[:limit]]
    nxt = (encode_cursor(rows[limit - 1]["last_seen"], rows[limit - 1]["incident_id"])
           if len(rows) > limit else None)
    return items, nxt


async def get_incident(conn: Conn, incident_id: str) -> dict[str, Any] | None:
    r = await conn.fetchrow(f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE incident_id = $1", incident_id)
    return incident_record(r) if r else None


async def alerts_by_ids(conn: Conn, alert_ids: Sequence[str]) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"SELECT {ALERT_LIST_COLUMNS} FROM alerts WHERE alert_id = ANY($1) "
                            "ORDER BY first_seen", list(alert_ids))
    return [alert_record(r) for r in rows]


# ------------------------------------------------------------------ hotline tickets
# The hotline workflow's ticket state (city.hotline.tickets, stored by the
# writer in hotline_tickets, highest revision kept): routed departments,
# deadlines, first contact, resolution, satisfaction. The raw calls stay in
# hotline_events (a ticket's detail lists them). Column names as the API has
# always shown them; `department` is the first routed department.
TICKET_SELECT = """
SELECT ticket_id, revision, created AS created_at, updated AS updated_at, status, category,
       departments[1] AS department, departments, district, street, grid, lat, lon,
       payload->>'description' AS description, urgency, payload->>'channel' AS channel,
       payload->>'caller_ref' AS caller_ref, satisfaction, responded_at, resolved_at,
       first_contact_by, resolve_by, overdue, mode,
       (SELECT count(*) FROM hotline_events e WHERE e.ticket_id = t.ticket_id) AS events
  FROM hotline_tickets t"""


@dataclass(frozen=True, slots=True)
class TicketFilter:
    status: Sequence[str] = ()
    category: str | None = None
    district: str | None = None
    street: str | None = None
    department: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    ticket_ids: Sequence[str] = ()
    visible_to: str | None = None


def _ticket_sql(f: TicketFilter) -> tuple[str, Where]:
    """A ticket is in [since, until) when it was open during it: updated at or
    after `since`, created before `until`."""
    w = Where()
    if f.ticket_ids:
        w.add("ticket_id = ANY({0})", list(f.ticket_ids))
    if f.since:
        w.add("updated >= {0}", f.since)
    if f.until:
        w.add("created < {0}", f.until)
    if f.district:
        w.add("district = {0}", f.district)
    if f.street:
        w.add("street = {0}", f.street)
    if f.category:
        w.add("category = {0}", f.category)
    if f.status:
        w.add("status = ANY({0})", list(f.status))
    if f.department:
        w.add("departments @> ARRAY[{0}]::text[]", f.department)
    if f.visible_to:
        w.add("departments @> ARRAY[{0}]::text[]", f.visible_to)
    return TICKET_SELECT + w.sql(), w


def ticket_record(r: asyncpg.Record) -> dict[str, Any]:
    d = dict(r)
    d["departments"] = list(d["departments"])
    d["overdue"] = list(d["overdue"])
    d["location"] = {k: d.pop(k) for k in ("district", "street", "grid", "lat", "lon")}
    return d


async def list_tickets(conn: Conn, f: TicketFilter, limit: int,
                       cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    sql, w = _ticket_sql(f)
    if cursor:
        ts, tid = decode_cursor(cursor, 2)
        cond = f"(updated, ticket_id) < ({w.arg(_time(ts))}, {w.arg(str(tid))})"
        sql += (" AND " if w.parts else " WHERE ") + cond
    sql += f" ORDER BY updated DESC, ticket_id DESC LIMIT {int(limit) + 1}"
    rows = await conn.fetch(sql, *w.args)
    items = [ticket_record(r) for r in rows[:limit]]
    nxt = (encode_cursor(rows[limit - 1]["updated_at"], rows[limit - 1]["ticket_id"])
           if len(rows) > limit else None)
    return items, nxt


async def get_ticket(conn: Conn, ticket_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    sql, w = _ticket_sql(TicketFilter(ticket_ids=[ticket_id]))
    r = await conn.fetchrow(sql, *w.args)
    if r is None:
        return None, []
    events = await conn.fetch(
        "SELECT ts, event_id, kind, status, department, description, satisfaction, caller_ref FROM hotline_events "
        "WHERE ticket_id = $1 ORDER BY ts, event_id", ticket_id)
    return ticket_record(r), [dict(e) for e in events]


async def tickets_by_ids(conn: Conn, ticket_ids: Sequence[str]) -> list[dict[str, Any]]:
    if not ticket_ids:
        return []
    sql, w = _ticket_sql(TicketFilter(ticket_ids=list(ticket_ids)))
    return [ticket_record(r) for r in await conn.fetch(sql + " ORDER BY created", *w.args)]


# ------------------------------------------------------------------ KPIs
@dataclass(frozen=True, slots=True)
class SlaPolicy:
    ack_minutes: dict[str, float] = field(default_factory=dict)
    resolve_minutes: dict[str, float] = field(default_factory=dict)
    emergency_factor: float = 0.5

    def ack_s(self, severity: str, emergency: bool = False) -> float:
        return self.ack_minutes.get(severity, 240) * 60 * (self.emergency_factor if emergency else 1.0)

    def resolve_s(self, severity: str, emergency: bool = False) -> float:
        return self.resolve_minutes.get(severity, 4320) * 60 * (self.emergency_factor if emergency else 1.0)

    def sql_ack_seconds(self, w: Where) -> str:
        """An SQL expression: the acknowledge window (s) of the row in `alerts`."""
        cases = " ".join(f"WHEN '{s}' THEN {w.arg(float(self.ack_s(s)))}::float8" for s in SEVERITIES)
        return (f"(CASE severity {cases} ELSE {w.arg(float(self.ack_s('IV')))}::float8 END * "
                f"CASE WHEN evidence #>> '{{details,mode,mode}}' = 'emergency' "
                f"THEN {w.arg(float(self.emergency_factor))}::float8 ELSE 1.0 END)")


def months(since: datetime, until: datetime, tz: tzinfo) -> list[str]:
    """The calendar months (local time, "YYYY-MM") that [since, until) touches."""
    a = since.astimezone(tz)
    b = (until - timedelta(microseconds=1)).astimezone(tz)
    out = []
    y, m = a.year, a.month
    while (y, m) <= (b.year, b.month):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


async def three_rates(conn: Conn, since: datetime, until: datetime, by: str, visible_to: str | None = None, *,
                      tz: tzinfo, district_name: Callable[[str], str | None] = lambda c: c) -> list[dict[str, Any]]:
    """三率 as the worker computes them (streams.kpi, stored in hotline_kpi per
    scope and month of ticket creation), summed over the months [since, until)
    touches: 响应率 first contact within its deadline / first contact decided,
    解决率 resolved within its deadline / resolution decided, 满意率 rated 4 or 5
    / rated. `tickets` counts the scope's tickets created in those months.
    A department sees its own scope only (district scopes cover every
    department's tickets)."""
    periods = months(since, until, tz)
    if visible_to and by == "district":
        return []
    w = Where()
    w.add("k.period = ANY({0})", periods)
    w.parts.append("k.scope LIKE 'district:%'" if by == "district" else "k.scope NOT LIKE 'district:%'")
    if visible_to:
        w.add("k.scope = {0}", visible_to)
    rows = await conn.fetch(f"SELECT k.scope, k.counts::text AS counts FROM hotline_kpi k{w.sql()}", *w.args)
    sums: dict[str, dict[str, list[int]]] = {}
    for r in rows:
        acc = sums.setdefault(r["scope"], {})
        for kind, pair in orjson.loads(r["counts"]).items():
            ok, n = acc.setdefault(kind, [0, 0])
            acc[kind] = [ok + int(pair[0]), n + int(pair[1])]
    if not sums:
        return []
    # tickets per scope created in those months (local calendar), as the KPI counts them
    first = datetime.strptime(periods[0] + "-01", "%Y-%m-%d").replace(tzinfo=tz)
    last = datetime.strptime(periods[-1] + "-01", "%Y-%m-%d").replace(tzinfo=tz)
    end = (last + timedelta(days=32)).replace(day=1)
    if by == "district":
        names = {s: district_name(s.split(":", 1)[1]) or s.split(":", 1)[1] for s in sums}
        counted = await conn.fetch("SELECT district AS k, count(*) AS n FROM hotline_tickets WHERE created >= $1 "
                                   "AND created < $2 AND district = ANY($3) GROUP BY 1", first, end,
                                   list(set(names.values())))
        by_name = {r["k"]: r["n"] for r in counted}
        tickets = {s: int(by_name.get(names[s], 0)) for s in sums}
    else:
        names = {s: s for s in sums}
        counted = await conn.fetch("SELECT d AS k, count(*) AS n FROM hotline_tickets, unnest(departments) AS d "
                                   "WHERE created >= $1 AND created < $2 AND d = ANY($3) GROUP BY 1", first, end,
                                   list(sums))
        tickets = {s: 0 for s in sums} | {r["k"]: int(r["n"]) for r in counted}

    def rate(pair: list[int]) -> float | None:
        return round(pair[0] / pair[1], 4) if pair[1] else None

    out: list[dict[str, Any]] = []
    for scope, acc in sums.items():
        resp, res, sat = (acc.get(k, [0, 0]) for k in ("response", "resolution", "satisfaction"))
        out.append({by: names[scope], "tickets": tickets[scope], "responded": resp[0], "resolved": res[0],
                    "rated": sat[1], "satisfied": sat[0], "response_rate": rate(resp), "resolution_rate": rate(res),
                    "satisfaction_rate": rate(sat), "response_decided": resp[1], "resolution_decided": res[1],
                    "periods": periods})
    out.sort(key=lambda r: (-int(r["tickets"]), str(r[by])))
    return out


async def alert_rates(conn: Conn, since: datetime, until: datetime, by: str, sla: SlaPolicy,
                      visible_to: str | None = None) -> list[dict[str, Any]]:
    """Alerts first seen in [since, until) per department (unnested) or district:
    acknowledged, resolved, acknowledged late (after the SLA window)."""
    w = Where()
    a, b = w.arg(since), w.arg(until)
    ack_window = sla.sql_ack_seconds(w)
    key = "d.dept" if by == "department" else "al.district"
    join = ", unnest(al.departments) AS d(dept)" if by == "department" else ""
    vis = f" AND al.departments @> ARRAY[{w.arg(visible_to)}]::text[]" if visible_to else ""
    if visible_to and by == "department":
        vis += f" AND d.dept = {w.arg(visible_to)}"
    rows = await conn.fetch(
        f"SELECT {key} AS key, count(*) AS alerts, "
        "count(*) FILTER (WHERE ack.ts IS NOT NULL OR al.status IN ('acknowledged','resolved','closed')) AS acked, "
        "count(*) FILTER (WHERE al.status IN ('resolved','closed','cleared')) AS resolved, "
        f"count(*) FILTER (WHERE ack.ts > al.first_seen + make_interval(secs => {ack_window}) OR "
        f"(ack.ts IS NULL AND al.status IN ('new','dispatched','reopened') AND "
        f"now() > al.first_seen + make_interval(secs => {ack_window}))) AS ack_breached "
        f"FROM alerts al{join} LEFT JOIN LATERAL (SELECT min(ts) AS ts FROM alert_actions x "
        "WHERE x.alert_id = al.alert_id AND x.action = 'ack') ack ON true "
        f"WHERE al.first_seen >= {a} AND al.first_seen < {b}{vis} GROUP BY 1 ORDER BY 2 DESC, 1", *w.args)
    out = []
    for r in rows:
        n = r["alerts"]
        out.append({by: r["key"], "alerts": n, "acknowledged": r["acked"], "resolved": r["resolved"],
                    "ack_breached": r["ack_breached"],
                    "ack_rate": round(r["acked"] / n, 4) if n else None,
                    "resolution_rate": round(r["resolved"] / n, 4) if n else None})
    return out


async def open_by_severity(conn: Conn, visible_to: str | None = None) -> dict[str, int]:
    w = Where()
    w.add("status = ANY({0})", list(OPEN_STATUSES))
    if visible_to:
        w.add("departments @> ARRAY[{0}]::text[]", visible_to)
    rows = await conn.fetch(f"SELECT severity, count(*) AS n FROM alerts{w.sql()} GROUP BY severity", *w.args)
    got = {r["severity"]: r["n"] for r in rows}
    return {s: int(got.get(s, 0)) for s in SEVERITIES}


async def sla_breaches(conn: Conn, sla: SlaPolicy, visible_to: str | None = None,
                       limit: int = 50) -> tuple[int, list[dict[str, Any]]]:
    """Open alerts not acknowledged within their window (now)."""
    w = Where()
    ack_window = sla.sql_ack_seconds(w)
    w.add("status = ANY({0})", list(UNACKED_STATUSES))
    w.parts.append(f"now() > first_seen + make_interval(secs => {ack_window})")
    if visible_to:
        w.add("departments @> ARRAY[{0}]::text[]", visible_to)
    total = int(await conn.fetchval(f"SELECT count(*) FROM alerts{w.sql()}", *w.args))
    rows = await conn.fetch(f"SELECT {ALERT_LIST_COLUMNS} FROM alerts{w.sql()} ORDER BY first_seen LIMIT {int(limit)}",
                            *w.args)
    return total, [alert_record(r) for r in rows]


async def escalations_since(conn: Conn, since: datetime, visible_to: str | None = None) -> int:
    w = Where()
    w.add("x.ts >= {0}", since)
    w.parts.append("x.action = 'escalate'")
    if visible_to:
        w.add("EXISTS (SELECT 1 FROM alerts a WHERE a.alert_id = x.alert_id AND a.departments @> ARRAY[{0}]::text[])",
              visible_to)
    return int(await conn.fetchval(f"SELECT count(*) FROM alert_actions x{w.sql()}", *w.args))
