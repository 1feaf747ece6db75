"""Reads for the operations center and the CLI. Same SQL on both paths: the
rollup tables (plain) and continuous aggregates (Timescale) share their names
and columns.

- `sensor_series`: a sensor's values over a range, at raw / 1-minute / 1-hour
  resolution chosen from the range (and from what retention still holds).
- `list_alerts`, `list_incidents`: filtered, newest first, keyset-paginated
  (an opaque cursor, stable while new alerts arrive).
- `area_aggregates`: per district (or street) and sensor type statistics.

Every function takes an asyncpg connection (or pool) whose search_path is the
storage schema (see `storage.db`).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from citybrain.errors import ConfigError
from schemas import Alert, Incident
from schemas.common import now_utc

Resolution = Literal["raw", "1m", "1h"]
RAW_MAX_SPAN = timedelta(hours=6)
MINUTE_MAX_SPAN = timedelta(days=7)
RAW_RETENTION = timedelta(days=30)
MINUTE_RETENTION = timedelta(days=365)
_TABLE = {"raw": "readings", "1m": "readings_1m", "1h": "readings_1h"}


def choose_resolution(start: datetime, end: datetime, now: datetime | None = None) -> Resolution:
    """Raw up to 6 h, 1-minute up to 7 days, 1-hour beyond; coarser when the
    range starts before the finer tier's retention."""
    if end <= start:
        raise ConfigError("the range's end must be after its start")
    now = now or now_utc()
    span = end - start
    if span <= RAW_MAX_SPAN and start >= now - RAW_RETENTION:
        return "raw"
    if span <= MINUTE_MAX_SPAN and start >= now - MINUTE_RETENTION:
        return "1m"
    return "1h"


@dataclass(frozen=True, slots=True)
class Point:
    ts: datetime
    n: int
    vmin: float
    vmax: float
    vavg: float


@dataclass(frozen=True, slots=True)
class Series:
    sensor_id: str
    resolution: Resolution
    points: list[Point]


def _aware(*ts: datetime | None) -> None:
    for t in ts:
        if t is not None and (t.tzinfo is None or t.utcoffset() is None):
            raise ConfigError("times must carry a timezone")


async def sensor_series(conn: Any, sensor_id: str, start: datetime, end: datetime,
                        resolution: Resolution | Literal["auto"] = "auto", *, now: datetime | None = None,
                        limit: int = 50_000) -> Series:
    """Points in [start, end), oldest first. Raw points have n = 1."""
    _aware(start, end)
    res: Resolution = choose_resolution(start, end, now) if resolution == "auto" else resolution
    if res == "raw":
        rows = await conn.fetch(
            "SELECT ts, 1 AS n, value AS vmin, value AS vmax, value AS vavg FROM readings "
            "WHERE sensor_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT $4",
            sensor_id, start, end, limit)
    else:
        rows = await conn.fetch(
            f"SELECT bucket AS ts, n, vmin, vmax, vavg FROM {_TABLE[res]} "
            "WHERE sensor_id = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket LIMIT $4",
            sensor_id, start, end, limit)
    return Series(sensor_id, res, [Point(r["ts"], int(r["n"]), r["vmin"], r["vmax"], r["vavg"]) for r in rows])


# ------------------------------------------------------------------ alerts and incidents
@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    next_cursor: str | None


def _encode_cursor(ts: datetime, key: str) -> str:
    return base64.urlsafe_b64encode(f"{ts.isoformat()}|{key}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        ts, _, key = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        parsed = datetime.fromisoformat(ts)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError("invalid page cursor") from exc
    _aware(parsed)
    return parsed, key


class _Where:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.args: list[Any] = []

    def add(self, sql: str, *values: Any) -> None:
        for v in values:
            self.args.append(v)
            sql = sql.replace("?", f"${len(self.args)}", 1)
        self.parts.append(sql)

    def sql(self) -> str:
        return ("WHERE " + " AND ".join(self.parts)) if self.parts else ""


def _as_list(v: str | Sequence[str] | None) -> list[str] | None:
    if v is None:
        return None
    return [v] if isinstance(v, str) else list(v)


async def list_alerts(conn: Any, *, status: str | Sequence[str] | None = None,
                      severity: str | Sequence[str] | None = None, department: str | None = None,
                      district: str | None = None, street: str | None = None, rule: str | None = None,
                      since: datetime | None = None, until: datetime | None = None,
                      limit: int = 50, cursor: str | None = None) -> Page:
    """Latest revision of each matching alert, newest `last_seen` first. The
    time range selects alerts active in [since, until)."""
    _aware(since, until)
    w = _Where()
    if (s := _as_list(status)) is not None:
        w.add("status = ANY(?::text[])", s)
    if (sv := _as_list(severity)) is not None:
        w.add("severity = ANY(?::text[])", sv)
    if department is not None:
        w.add("departments @> ARRAY[?]::text[]", department)
    if district is not None:
        w.add("district = ?", district)
    if street is not None:
        w.add("street = ?", street)
    if rule is not None:
        w.add("rule = ?", rule)
    if since is not None:
        w.add("last_seen >= ?", since)
    if until is not None:
        w.add("first_seen < ?", until)
    if cursor is not None:
        ts, key = _decode_cursor(cursor)
        w.add("(last_seen, alert_id) < (?, ?)", ts, key)
    limit = max(1, min(limit, 1000))
    rows = await conn.fetch(
        f"SELECT alert_id, last_seen, payload FROM alerts {w.sql()} ORDER BY last_seen DESC, alert_id DESC "
        f"LIMIT {limit + 1}", *w.args)
    items = [Alert.model_validate_json(r["payload"]) for r in rows[:limit]]
    nxt = _encode_cursor(rows[limit - 1]["last_seen"], rows[limit - 1]["alert_id"]) if len(rows) > limit else None
    return Page(items, nxt)


async def alert_history(conn: Any, alert_id: str) -> list[Alert]:
    """Every stored revision of one alert, oldest first (its lifecycle)."""
    rows = await conn.fetch("SELECT payload FROM alert_history WHERE alert_id = $1 ORDER BY revision", alert_id)
    return [Alert.model_validate_json(r["payload"]) for r in rows]


async def list_incidents(conn: Any, *, status: str | Sequence[str] | None = None,
                         severity: str | Sequence[str] | None = None, kind: str | None = None,
                         district: str | None = None, alert_id: str | None = None,
                         since: datetime | None = None, until: datetime | None = None,
                         limit: int = 50, cursor: str | None = None) -> Page:
    _aware(since, until)
    w = _Where()
    if (s := _as_list(status)) is not None:
        w.add("status = ANY(?::text[])", s)
    if (sv := _as_list(severity)) is not None:
        w.add("severity = ANY(?::text[])", sv)
    if kind is not None:
        w.add("kind = ?", kind)
    if district is not None:
        w.add("district = ?", district)
    if alert_id is not None:
        w.add("alert_ids @> ARRAY[?]::text[]", alert_id)
    if since is not None:
        w.add("last_seen >= ?", since)
    if until is not None:
        w.add("first_seen < ?", until)
    if cursor is not None:
        ts, key = _decode_cursor(cursor)
        w.add("(last_seen, incident_id) < (?, ?)", ts, key)
    limit = max(1, min(limit, 1000))
    rows = await conn.fetch(
        f"SELECT incident_id, last_seen, payload FROM incidents {w.sql()} "
        f"ORDER BY last_seen DESC, incident_id DESC LIMIT {limit + 1}", *w.args)
    items = [Incident.model_validate_json(r["payload"]) for r in rows[:limit]]
    nxt = (_encode_cursor(rows[limit - 1]["last_seen"], rows[limit - 1]["incident_id"])
           if len(rows) > limit else None)
    return Page(items, nxt)


# ------------------------------------------------------------------ areas
@dataclass(frozen=True, slots=True)
class AreaAggregate:
    area: str
    sensor_type: str
    sensors: int
    n: int
    vmin: float
    vmax: float
    vavg: float


async def area_aggregates(conn: Any, start: datetime, end: datetime, *,
                          level: Literal["district", "street"] = "district", sensor_type: str | None = None,
                          district: str | None = None, resolution: Resolution | Literal["auto"] = "auto",
                          now: datetime | None = None) -> tuple[Resolution, list[AreaAggregate]]:
    """Count, min, max and mean of readings per area and sensor type in [start, end)."""
    _aware(start, end)
    if level not in ("district", "street"):
        raise ConfigError("level must be district or street")
    res: Resolution = choose_resolution(start, end, now) if resolution == "auto" else resolution
    tcol = "ts" if res == "raw" else "bucket"
    n, lo, hi, total = (("count(*)", "min(value)", "max(value)", "sum(value)") if res == "raw"
                        else ("sum(n)", "min(vmin)", "max(vmax)", "sum(vsum)"))
    w = _Where()
    w.add(f"{tcol} >= ?", start)
    w.add(f"{tcol} < ?", end)
    if sensor_type is not None:
        w.add("sensor_type = ?", sensor_type)
    if district is not None:
        w.add("district = ?", district)
    rows = await conn.fetch(
        f"SELECT coalesce({level}, '') AS area, sensor_type, count(DISTINCT sensor_id) AS sensors, "
        f"{n} AS n, {lo} AS vmin, {hi} AS vmax, {total} / {n} AS vavg "
        f"FROM {_TABLE[res]} {w.sql()} GROUP BY 1, 2 ORDER BY 1, 2", *w.args)
    return res, [AreaAggregate(r["area"], r["sensor_type"], int(r["sensors"]), int(r["n"]), r["vmin"], r["vmax"],
                               float(r["vavg"])) for r in rows]
