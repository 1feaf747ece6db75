"""The plain path's housekeeping, which TimescaleDB would otherwise do with its
policies: create partitions ahead, refresh the rollups of hours whose raw rows
changed, drop partitions past their retention tier.

Every function takes `now` so tests and replays control the clock. One
maintenance run at a time per schema (an advisory lock); concurrent callers
skip instead of waiting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from schemas.common import now_utc
from storage.db import current_flavor

log = logging.getLogger("citybrain.storage.maintenance")


@dataclass(slots=True)
class MaintenanceReport:
    flavor: str
    partitions_created: int = 0
    hours_refreshed: int = 0
    dropped: list[str] = field(default_factory=list)
    skipped: bool = False


async def _policies(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT table_name, time_column, partition_interval, retention, premake FROM storage_policy "
        "ORDER BY table_name"
    )


async def ensure_partitions_ahead(conn: asyncpg.Connection, now: datetime | None = None) -> int:
    """The current partition and `premake` more ahead, for every partitioned table."""
    now = now or now_utc()
    made = await conn.fetchval(
        "SELECT coalesce(sum(cb_ensure_partitions(table_name::regclass, "
        "ARRAY(SELECT $1::timestamptz + k * partition_interval FROM generate_series(0, premake) k))), 0) "
        "FROM storage_policy"
    , now)
    return int(made)


async def drop_expired(conn: asyncpg.Connection, now: datetime | None = None) -> list[str]:
    """Drop every partition whose whole range is older than its table's retention."""
    now = now or now_utc()
    dropped: list[str] = []
    for p in await _policies(conn):
        if p["retention"] is None:
            continue
        cutoff = now - p["retention"]
        parts = await conn.fetch(
            "SELECT partition_name, hi FROM cb_partitions($1::regclass) WHERE hi <= $2 ORDER BY hi",
            p["table_name"], cutoff,
        )
        for part in parts:
            await conn.execute(f'DROP TABLE IF EXISTS "{part["partition_name"]}"')
            dropped.append(part["partition_name"])
            log.info("retention: dropped %s (ends %s, cutoff %s)", part["partition_name"], part["hi"], cutoff)
    return dropped


async def refresh_rollups(conn: asyncpg.Connection, now: datetime | None = None, max_hours: int = 1000) -> int:
    """Recompute the 1-minute and 1-hour rollups of dirty hours from raw rows."""
    now = now or now_utc()
    retention = await conn.fetchval("SELECT retention FROM storage_policy WHERE table_name = 'readings'")
    horizon = now - retention if retention is not None else datetime.min.replace(tzinfo=now.tzinfo)
    total = 0
    while True:
        n = await conn.fetchval("SELECT cb_refresh_rollups($1, $2)", horizon, max_hours)
        total += int(n)
        if n < max_hours:
            return total


async def refresh_timescale_rollups(conn: asyncpg.Connection, start: datetime | None,
                                    end: datetime | None) -> None:
    """Timescale path: materialize the continuous aggregates for a window now
    (the policies do it on their schedule)."""
    # the window's parameters are "any" to Timescale: typed here, or the server cannot bind them
    await conn.execute("CALL refresh_continuous_aggregate('readings_1m', $1::timestamptz, $2::timestamptz)",
                       start, end)
    await conn.execute("CALL refresh_continuous_aggregate('readings_1h', $1::timestamptz, $2::timestamptz)",
                       start, end)


async def run_maintenance(conn: asyncpg.Connection, now: datetime | None = None) -> MaintenanceReport:
    now = now or now_utc()
    flavor = await current_flavor(conn)
    report = MaintenanceReport(flavor)
    if flavor != "plain":
        return report  # Timescale's own jobs create chunks, refresh, compress and drop
    schema = await conn.fetchval("SELECT current_schema()")
    got = await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", f"citybrain.maintain:{schema}")
    if not got:
        report.skipped = True
        return report
    try:
        report.partitions_created = await ensure_partitions_ahead(conn, now)
        report.hours_refreshed = await refresh_rollups(conn, now)
        report.dropped = await drop_expired(conn, now)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", f"citybrain.maintain:{schema}")
    return report
