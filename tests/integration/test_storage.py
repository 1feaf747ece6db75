"""Storage on the real stack: migrations, the idempotent writer (crashes, a
killed database connection, poison records), retention and rollups.

Every test migrates its own PostgreSQL schema and uses its own topic prefix
and consumer group, so tests never see each other's rows or records.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from citybrain.dlq import decode_headers
from citybrain.errors import ConfigError
from citybrain.kafka_admin import ensure_topics, pipeline_topics
from citybrain.topics import Topics
from schemas import Alert, SensorReading
from storage.db import connect
from storage.kafka_topics import ensure_control_topic
from storage.maintenance import drop_expired, ensure_partitions_ahead, refresh_rollups
from storage.migrate import Migration, load_migrations, migrate, migrate_connection
from storage.rows import SPECS, alert_row, reading_row
from storage.writer import WriterMetrics, WriterSettings, run_writer, write_rows
from streams.emergency import ModeSwitch

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


# ------------------------------------------------------------------ fixtures
@pytest.fixture
async def schema(database_url: str, unique: str) -> AsyncIterator[str]:
    name = f"t_{unique}"
    await migrate(database_url, name)
    yield name
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def db(database_url: str, schema: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(database_url, schema, "test")
    yield conn
    await conn.close()


@pytest.fixture
async def topics(kafka_bootstrap: str, unique: str) -> Topics:
    t = Topics(prefix=f"t{unique}.")
    await ensure_topics(kafka_bootstrap, pipeline_topics(t, 2))
    return t


def settings_for(database_url: str, kafka_bootstrap: str, schema: str, topics: Topics, unique: str,
                 **kw: object) -> WriterSettings:
    base: dict[str, object] = {
        "database_url": database_url, "kafka_bootstrap_servers": kafka_bootstrap, "topic_prefix": topics.prefix,
        "db_schema": schema, "group_id": f"g-{unique}", "client_id": f"w-{unique}", "batch_size": 1000,
        "batch_timeout_ms": 200, "retry_initial_s": 0.1, "retry_max_s": 1.0, "maintenance_interval_s": 0,
    }
    base.update(kw)
    return WriterSettings(**base)  # type: ignore[arg-type]


def reading(i: int, ts: datetime | None = None, sensor: str | None = None, value: float | None = None,
            street: str | None = "望京街道", district: str | None = None) -> SensorReading:
    return SensorReading.model_validate({
        "event_id": f"r-{i}", "sensor_id": sensor or f"s-{i % 7}", "sensor_type": "pm25",
        "value": value if value is not None else float(i % 300), "unit": "ug/m3",
        "ts": (ts or T0 + timedelta(seconds=i)).isoformat(),
        "location": {"district": district or ("朝阳区" if i % 2 else "海淀区"), "street": street, "lat": 39.9, "lon": 116.4},
    })


def alert(alert_id: str, revision: int, status: str = "new", severity: str = "III") -> Alert:
    return Alert.model_validate({
        "alert_id": alert_id, "rule": "pm25_iaqi", "subject": "s-1", "category": "air", "sensor_type": "pm25",
        "severity": severity, "status": status, "title": "PM2.5 high",
        "location": {"district": "朝阳区", "street": "望京街道", "lat": 39.9, "lon": 116.4},
        "departments": ["eco", "street"], "first_seen": T0.isoformat(),
        "last_seen": (T0 + timedelta(minutes=revision)).isoformat(), "revision": revision,
        "evidence": {"detector": "threshold", "detector_version": "1", "statistic": "pm25 1h", "value": 160.0,
                     "threshold": 150.0, "window_start": T0.isoformat(),
                     "window_end": (T0 + timedelta(hours=1)).isoformat()},
    })


async def produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    try:
        futs = [await producer.send(topic, value=v, key=k) for k, v in items]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


def reading_records(rs: list[SensorReading]) -> list[tuple[bytes | None, bytes]]:
    return [(r.sensor_id.encode(), r.to_json()) for r in rs]


async def wait_for(predicate, limit: float = 60, every: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        if await predicate():
            return
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(every)


async def terminate_backends(db: asyncpg.Connection, application_name: str) -> int:
    """Kill the writer's database connections (as a DBA or a failover would)."""
    n: int = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name=$1", application_name)
    return n


async def count(conn: asyncpg.Connection, table: str) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))


# ------------------------------------------------------------------ migrations
async def test_migrations_from_empty_and_rerun(database_url: str, unique: str) -> None:
    name = f"m_{unique}"
    conn = await connect(database_url, name, "test")
    try:
        first = await migrate_connection(conn, name)
        assert first.flavor == "plain"
        assert first.applied == tuple(m.version for m in load_migrations())
        second = await migrate_connection(conn, name)
        assert second.applied == () and second.already == first.applied
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname=$1",
                                                                 name)}
        for t in ("readings", "hotline_events", "alerts", "alert_history", "alert_actions", "incidents",
                  "dlq_index", "readings_1m", "readings_1h", "schema_migrations", "storage_policy"):
            assert t in tables
        # partitioned by time, unique keys include the time column
        kind = await conn.fetchval("SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid=c.relnamespace "
                                   "WHERE n.nspname=$1 AND c.relname='readings'", name)
        assert kind == b"p" or kind == "p"
        pk = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid=$1::regclass AND contype='p'",
            f"{name}.readings")
        assert pk == "PRIMARY KEY (sensor_id, ts, event_id)"  # migration 0010
        assert await ensure_partitions_ahead(conn) > 0
        assert await ensure_partitions_ahead(conn) == 0  # already there
        # an applied migration that changed is refused (forward-only)
        changed = [Migration(m.version, m.name, m.text + "\n-- edited\n") for m in load_migrations()]
        with pytest.raises(ConfigError, match="forward-only"):
            await migrate_connection(conn, name, migrations=changed)
        # a new migration is applied on top
        extra = [*load_migrations(), Migration(9999, "extra", "CREATE TABLE extra_t (x int);")]
        third = await migrate_connection(conn, name, migrations=extra)
        assert third.applied == (9999,)
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()


async def test_concurrent_migrations_apply_once(database_url: str, unique: str) -> None:
    name = f"c_{unique}"
    try:
        results = await asyncio.gather(*(migrate(database_url, name) for _ in range(3)))
        assert sorted(len(r.applied) for r in results) == [0, 0, len(load_migrations())]
    finally:
        conn = await asyncpg.connect(database_url)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()


# ------------------------------------------------------------------ write path
async def test_same_batch_twice_is_written_once(db: asyncpg.Connection) -> None:
    from storage.writer import prepare_connection

    await prepare_connection(db)
    rows = [reading_row(reading(i)) for i in range(2000)]
    # a day boundary and a far-past day: partitions are made on demand
    rows.append(reading_row(reading(90001, ts=datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC))))
    rows.append(reading_row(reading(90002, ts=datetime(2020, 1, 1, tzinfo=UTC))))
    assert await write_rows(db, SPECS["readings"], rows, "plain") == len(rows)
    assert await write_rows(db, SPECS["readings"], rows, "plain") == 0
    assert await count(db, "readings") == len(rows)

    spec = SPECS["alerts"]
    await write_rows(db, spec, [alert_row(alert("a-1", 2, "dispatched", "II"))], "plain")
    # an older revision arriving late goes to history but never overwrites the latest
    await write_rows(db, spec, [alert_row(alert("a-1", 1)), alert_row(alert("a-1", 2, "dispatched", "II"))], "plain")
    latest = await db.fetchrow("SELECT revision, status, severity, departments FROM alerts WHERE alert_id='a-1'")
    assert (latest["revision"], latest["status"], latest["severity"]) == (2, "dispatched", "II")
    assert latest["departments"] == ["eco", "street"]
    assert [r["revision"] for r in await db.fetch("SELECT revision FROM alert_history ORDER BY revision")] == [1, 2]
    await write_rows(db, spec, [alert_row(alert("a-1", 3, "acknowledged", "II"))], "plain")
    assert await db.fetchval("SELECT revision FROM alerts WHERE alert_id='a-1'") == 3


# ------------------------------------------------------------------ writer
async def _run_writer_until(settings: WriterSettings, metrics: WriterMetrics, done) -> None:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    task = asyncio.create_task(run_writer(settings, stop, metrics))
    try:
        await wait_for(lambda: _check(task, done), limit=90)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _check(task: asyncio.Task[None], done) -> bool:  # type: ignore[no-untyped-def]
    if task.done():
        task.result()  # re-raise a writer failure
        raise AssertionError("writer exited early")
    return bool(await done())


async def test_writer_all_topics_and_redelivery_is_idempotent(
        database_url: str, kafka_bootstrap: str, schema: str, db: asyncpg.Connection, topics: Topics,
        unique: str) -> None:
    from schemas import AlertAction, HotlineEvent, Incident

    rs = [reading(i) for i in range(3000)]
    await produce(kafka_bootstrap, topics.readings, reading_records(rs) + reading_records(rs[:500]))
    hot = HotlineEvent.model_validate({
        "event_id": "h-1", "ticket_id": "T1", "kind": "created", "category": "flooding", "ts": T0.isoformat(),
        "location": {"district": "朝阳区", "lat": 39.9, "lon": 116.4}, "caller_ref": "k-abc"})
    await produce(kafka_bootstrap, topics.hotline, [(b"T1", hot.to_json())] * 2)
    await produce(kafka_bootstrap, topics.alerts, [(b"a-1", alert("a-1", r).to_json()) for r in (1, 2, 2, 3)])
    act = AlertAction.model_validate({"event_id": "x-1", "alert_id": "a-1", "action": "ack", "actor": "op1",
                                      "ts": T0.isoformat()})
    await produce(kafka_bootstrap, topics.actions_applied, [(b"a-1", act.to_json())])
    inc = Incident.model_validate({"incident_id": "i-1", "kind": "flood", "severity": "II",
                                   "location": {"district": "朝阳区", "lat": 39.9, "lon": 116.4},
                                   "alert_ids": ["a-1"], "ticket_ids": ["T1"], "first_seen": T0.isoformat(),
                                   "last_seen": T0.isoformat()})
    await produce(kafka_bootstrap, topics.incidents, [(b"i-1", inc.to_json())])

    s = settings_for(database_url, kafka_bootstrap, schema, topics, unique)
    m1 = WriterMetrics()

    async def all_in() -> bool:
        return (await count(db, "readings") == 3000 and await count(db, "alert_history") == 3
                and await count(db, "incidents") == 1 and await count(db, "alert_actions") == 1
                and await count(db, "hotline_events") == 1)

    await _run_writer_until(s, m1, all_in)
    assert m1.total("rows_written") >= 3000 + 3 + 1 + 1 + 1
    assert m1.total("duplicates_skipped") >= 500 + 1 + 1
    assert await db.fetchval("SELECT revision FROM alerts WHERE alert_id='a-1'") == 3

    # a new consumer group re-reads every topic from the start: nothing is written twice
    m2 = WriterMetrics()
    s2 = settings_for(database_url, kafka_bootstrap, schema, topics, unique, group_id=f"g2-{unique}")

    async def all_seen() -> bool:
        return m2.total("records_consumed") >= 3500 + 2 + 4 + 1 + 1

    await _run_writer_until(s2, m2, all_seen)
    assert m2.total("rows_written") == 0
    assert await count(db, "readings") == 3000
    assert await count(db, "hotline_events") == 1


def mode_switch(event_id: str, mode: str, minutes: int, scope: str = "district:chaoyang") -> bytes:
    """A switch as the opscenter publishes it on city.control.mode."""
    return orjson.dumps({"event_id": event_id, "scope": scope, "mode": mode, "actor": "duty-officer",
                         "actor_department": "ops", "ts": (T0 + timedelta(minutes=minutes)).isoformat(),
                         "comment": "暴雨红色预警"})


async def test_writer_records_mode_switches_once_from_the_compacted_control_topic(
        database_url: str, kafka_bootstrap: str, schema: str, db: asyncpg.Connection, topics: Topics,
        unique: str) -> None:
    s = settings_for(database_url, kafka_bootstrap, schema, topics, unique)
    on, off = mode_switch("m-1", "emergency", 0), mode_switch("m-2", "normal", 90)
    # the writer makes the control topic as the worker does before it subscribes; here it exists already
    await ensure_control_topic(kafka_bootstrap, topics.control_mode)
    await produce(kafka_bootstrap, topics.control_mode, [(b"district:chaoyang", on), (b"district:chaoyang", on),
                                                         (b"district:chaoyang", off), (b"city", b'{"mode": "x"}')])
    metrics = WriterMetrics()

    async def done() -> bool:
        return await count(db, "mode_switches") == 2 and await count(db, "dlq_index") == 1

    await _run_writer_until(s, metrics, done)
    rows = await db.fetch("SELECT ts, event_id, scope, mode, actor, actor_department, comment, payload "
                          "FROM mode_switches ORDER BY ts")
    assert [(r["event_id"], r["mode"], r["ts"]) for r in rows] == [
        ("m-1", "emergency", T0), ("m-2", "normal", T0 + timedelta(minutes=90))]
    assert rows[0]["scope"] == "district:chaoyang" and rows[0]["actor_department"] == "ops"
    payload = orjson.loads(rows[0]["payload"])
    assert ModeSwitch.from_dict(payload) == ModeSwitch.from_dict(orjson.loads(on)), "what the worker reads, kept"
    assert payload["comment"] == "暴雨红色预警"
    assert metrics.total("duplicates_skipped") == 1, "the redelivered switch is written once"
    (dead,) = await db.fetch("SELECT reason, source FROM dlq_index")
    assert dead["reason"] == "invalid_payload" and dead["source"].startswith(topics.control_mode + "/")
    # the partition for a switch years later is made on demand (plain path)
    later = mode_switch("m-3", "emergency", 60 * 24 * 800)
    await produce(kafka_bootstrap, topics.control_mode, [(b"district:chaoyang", later)])

    async def later_in() -> bool:
        return await count(db, "mode_switches") == 3

    await _run_writer_until(s, WriterMetrics(), later_in)


async def test_writer_makes_the_control_topic_as_the_worker_does(
        database_url: str, kafka_bootstrap: str, schema: str, db: asyncpg.Connection, topics: Topics,
        unique: str) -> None:
    s = settings_for(database_url, kafka_bootstrap, schema, topics, unique)
    await _run_writer_until(s, WriterMetrics(), lambda: _true())
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        (meta,) = await admin.describe_topics([topics.control_mode])
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topics.control_mode)])
    finally:
        await admin.close()
    assert len(meta["partitions"]) == 1
    entries = {c[0]: c[1] for c in configs[0].resources[0][4]}
    assert entries["cleanup.policy"] == "compact"


async def _true() -> bool:
    return True


async def test_bad_records_are_dead_lettered_and_the_rest_written(
        database_url: str, kafka_bootstrap: str, schema: str, db: asyncpg.Connection, topics: Topics,
        unique: str) -> None:
    good = [reading(i) for i in range(1000)]
    nul = reading(5000, street="bad\x00street")  # valid JSON and model, refused by PostgreSQL (22021)
    records = [*reading_records(good[:400]), (b"s-x", nul.to_json()), (b"s-y", b"{not json")]
    records += reading_records(good[400:])
    await produce(kafka_bootstrap, topics.readings, records)
    s = settings_for(database_url, kafka_bootstrap, schema, topics, unique)
    metrics = WriterMetrics()

    async def done() -> bool:
        return await count(db, "readings") == 1000 and await count(db, "dlq_index") == 2

    await _run_writer_until(s, metrics, done)
    assert metrics.total("dead_lettered") == 2
    reasons = {r["reason"]: r for r in await db.fetch("SELECT * FROM dlq_index")}
    assert set(reasons) == {"malformed_json", "bad_encoding"}
    assert reasons["bad_encoding"]["stage"] == "write"
    assert reasons["bad_encoding"]["source"].startswith(topics.readings + "/")

    consumer = AIOKafkaConsumer(topics.dlq, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                group_id=f"check-{unique}")
    await consumer.start()
    try:
        got = await consumer.getmany(timeout_ms=5000)
        dlq = [r for recs in got.values() for r in recs]
    finally:
        await consumer.stop()
    assert sorted(r.value for r in dlq) == sorted([nul.to_json(), b"{not json"])
    for r in dlq:
        h = decode_headers(r.headers)
        assert h["citybrain.errors.connector.name"] == "storage-writer"
        assert h["citybrain.errors.reason"] in ("malformed_json", "bad_encoding")


async def test_connection_killed_mid_stream_loses_and_duplicates_nothing(
        database_url: str, kafka_bootstrap: str, schema: str, db: asyncpg.Connection, topics: Topics,
        unique: str) -> None:
    n = 30000
    s = settings_for(database_url, kafka_bootstrap, schema, topics, unique, batch_size=500)
    metrics = WriterMetrics()
    stop = asyncio.Event()
    task = asyncio.create_task(run_writer(s, stop, metrics))

    async def feed() -> None:
        for k in range(0, n, 2000):
            await produce(kafka_bootstrap, topics.readings, reading_records([reading(i) for i in range(k, k + 2000)]))
            await asyncio.sleep(0.05)

    feeder = asyncio.create_task(feed())
    killed = 0
    try:
        while not feeder.done() or await count(db, "readings") < n:
            assert not task.done(), task.exception()
            if killed < 5 and await count(db, "readings") > killed * n / 6:
                killed += await terminate_backends(db, s.client_id)
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await feeder
    assert killed >= 3
    assert metrics.total("retries") >= 1
    assert await count(db, "readings") == n
    assert await db.fetchval("SELECT count(DISTINCT event_id) FROM readings") == n


async def test_writer_killed_mid_batch_and_restarted_writes_every_row_once(
        database_url: str, kafka_bootstrap: str, schema: str, db: asyncpg.Connection, topics: Topics,
        unique: str) -> None:
    n = 40000
    await produce(kafka_bootstrap, topics.readings, reading_records([reading(i) for i in range(n)]))
    env = dict(os.environ, DATABASE_URL=database_url, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
               WRITER_TOPIC_PREFIX=topics.prefix, WRITER_DB_SCHEMA=schema, WRITER_GROUP_ID=f"g-{unique}",
               WRITER_CLIENT_ID=f"w-{unique}", WRITER_BATCH_SIZE="2000", WRITER_MAINTENANCE_INTERVAL_S="0",
               WRITER_SESSION_TIMEOUT_MS="6000")
    cmd = [sys.executable, "-m", "citybrain.cli", "db", "writer"]
    kills = 0
    for _ in range(3):
        proc = await asyncio.create_subprocess_exec(*cmd, env=env, cwd=ROOT)
        try:
            before = await count(db, "readings")
            await wait_for(lambda b=before: _grown(db, b, 3000), limit=60, every=0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10)
        kills += 1
        if await count(db, "readings") == n:
            break
    assert kills >= 1
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, cwd=ROOT)
    try:
        await wait_for(lambda: _equal(db, n), limit=90)
        # the committed offsets catch up with the rows: nothing more arrives
        await asyncio.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert await count(db, "readings") == n
    assert await db.fetchval("SELECT count(DISTINCT event_id) FROM readings") == n


async def test_parts_merged_concurrently_store_every_row_once(
        database_url: str, kafka_bootstrap: str, schema: str, db: asyncpg.Connection, unique: str) -> None:
    """A batch split by partition over three connections, the connections killed
    mid-stream, duplicates and a poison record in the stream: every row once."""
    topics = Topics(prefix=f"t{unique}p.")
    await ensure_topics(kafka_bootstrap, pipeline_topics(topics, 4))
    n = 24000
    rs = [reading(i, sensor=f"s-{i % 40}") for i in range(n)]
    nul = reading(n + 1, sensor="s-3", street="bad\x00street")  # refused by PostgreSQL inside one part
    s = settings_for(database_url, kafka_bootstrap, schema, topics, unique, batch_size=3000, db_connections=3,
                     split_min_rows=50)
    metrics = WriterMetrics()
    stop = asyncio.Event()
    task = asyncio.create_task(run_writer(s, stop, metrics))

    async def feed() -> None:
        for k in range(0, n, 3000):
            chunk = reading_records(rs[k:k + 3000])
            if k == 6000:
                chunk.insert(1500, (b"s-3", nul.to_json()))
            await produce(kafka_bootstrap, topics.readings, chunk + reading_records(rs[k:k + 300]))  # + redelivered
            await asyncio.sleep(0.05)

    feeder = asyncio.create_task(feed())
    killed = 0
    most_backends = 0
    try:
        while not feeder.done() or await count(db, "readings") < n or await count(db, "dlq_index") < 1:
            assert not task.done(), task.exception()
            most_backends = max(most_backends, await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", s.client_id))
            if killed < 4 and await count(db, "readings") > killed * n / 5:
                killed += await terminate_backends(db, s.client_id)
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await feeder
    assert most_backends >= 2  # the parts did go over more than one connection
    assert killed >= 3 and metrics.total("retries") >= 1
    assert await count(db, "readings") == n
    assert await db.fetchval("SELECT count(DISTINCT event_id) FROM readings") == n
    assert [r["reason"] for r in await db.fetch("SELECT reason FROM dlq_index")] == ["bad_encoding"]
    # every hour written is marked for its rollups, whichever part wrote it
    assert await db.fetchval(
        "SELECT count(*) FROM (SELECT DISTINCT date_trunc('hour', ts) FROM readings) h "
        "WHERE NOT EXISTS (SELECT 1 FROM rollup_dirty d WHERE d.hour = h.date_trunc)") == 0


async def _grown(db: asyncpg.Connection, before: int, by: int) -> bool:
    return await count(db, "readings") >= before + by


async def _equal(db: asyncpg.Connection, n: int) -> bool:
    return await count(db, "readings") == n


# ------------------------------------------------------------------ retention and rollups
async def test_retention_drops_only_what_is_past_its_tier(db: asyncpg.Connection) -> None:
    from storage.writer import prepare_connection

    await prepare_connection(db)
    now = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
    ages = {"old": timedelta(days=32), "edge": timedelta(days=29, hours=23), "new": timedelta(hours=1)}
    rows = [reading_row(reading(i, ts=now - age)) for i, age in enumerate(ages.values())]
    await write_rows(db, SPECS["readings"], rows, "plain")
    for age in (timedelta(days=400), timedelta(days=200), timedelta(days=3000)):
        t = now - age
        await db.fetchval("SELECT cb_ensure_partition('readings_1m'::regclass, $1)", t)
        await db.fetchval("SELECT cb_ensure_partition('readings_1h'::regclass, $1)", t)
        for table in ("readings_1m", "readings_1h"):
            await db.execute(f"INSERT INTO {table} VALUES ($1, 's', 'pm25', 'd', NULL, 1, 1, 1, 1, 1)", t)
    dropped = await drop_expired(db, now)
    assert any(d.startswith("readings_p") for d in dropped)
    assert not any(d.startswith("readings_1h") for d in dropped)  # 1-hour rollups are kept
    left = [r["ts"] for r in await db.fetch("SELECT ts FROM readings ORDER BY ts")]
    assert left == [now - ages["edge"], now - ages["new"]]  # the 30-day-old day is not yet past its tier
    m1 = [r["bucket"] for r in await db.fetch("SELECT bucket FROM readings_1m ORDER BY bucket")]
    assert m1 == [now - timedelta(days=200)]  # 1-minute rollups: one year
    assert await count(db, "readings_1h") == 3
    # dropping again is a no-op
    assert await drop_expired(db, now) == []


async def test_rollups_equal_aggregates_from_raw_rows(db: asyncpg.Connection) -> None:
    from storage.writer import prepare_connection

    await prepare_connection(db)
    rnd = random.Random(7)
    now = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)

    def batch(start: int, k: int) -> list[tuple[object, ...]]:
        return [reading_row(reading(start + i, ts=T0 + timedelta(seconds=rnd.randrange(0, 3 * 3600)),
                                    sensor=f"s-{rnd.randrange(5)}", value=round(rnd.uniform(0, 500), 3)))
                for i in range(k)]

    await write_rows(db, SPECS["readings"], batch(0, 5000), "plain")
    assert await refresh_rollups(db, now) == 3
    await _compare_rollups(db)
    # late rows into hours already rolled up, plus a duplicate: refresh again
    await write_rows(db, SPECS["readings"], batch(5000, 700) + batch(0, 10), "plain")
    assert await refresh_rollups(db, now) >= 1
    await _compare_rollups(db)
    assert await refresh_rollups(db, now) == 0  # nothing dirty: idempotent


async def _compare_rollups(db: asyncpg.Connection) -> None:
    for table, width in (("readings_1m", "1 minute"), ("readings_1h", "1 hour")):
        raw = await db.fetch(
            f"SELECT date_bin(interval '{width}', ts, timestamptz '2000-01-01+00') AS bucket, sensor_id, "
            "count(*) AS n, min(value) AS vmin, max(value) AS vmax, sum(value) AS vsum, avg(value) AS vavg "
            "FROM readings GROUP BY 1, 2 ORDER BY 1, 2")
        rolled = await db.fetch(f"SELECT bucket, sensor_id, n, vmin, vmax, vsum, vavg FROM {table} ORDER BY 1, 2")
        assert len(raw) == len(rolled) > 0
        for a, b in zip(raw, rolled, strict=True):
            assert (a["bucket"], a["sensor_id"], a["n"], a["vmin"], a["vmax"]) == (
                b["bucket"], b["sensor_id"], b["n"], b["vmin"], b["vmax"])
            assert math.isclose(a["vsum"], b["vsum"], rel_tol=1e-9)
            assert math.isclose(a["vavg"], b["vavg"], rel_tol=1e-9)



# ------------------------------------------------------------------ queries
async def test_queries_series_alerts_areas(db: asyncpg.Connection) -> None:
    from storage import queries
    from storage.writer import prepare_connection

    await prepare_connection(db)
    now = T0 + timedelta(days=1)
    rows = [reading_row(reading(i, ts=T0 + timedelta(seconds=30 * i), sensor="s-q", value=float(i % 50),
                                district="朝阳区"))
            for i in range(2 * 120)]  # two hours, every 30 s
    rows += [reading_row(reading(1000 + i, ts=T0 + timedelta(minutes=i), sensor="s-h", value=float(i),
                                 district="海淀区")) for i in range(60)]
    await write_rows(db, SPECS["readings"], rows, "plain")
    await refresh_rollups(db, now)

    raw = await queries.sensor_series(db, "s-q", T0, T0 + timedelta(hours=2), now=now)
    assert raw.resolution == "raw" and len(raw.points) == 240
    minute = await queries.sensor_series(db, "s-q", T0, T0 + timedelta(days=2), now=now)
    assert minute.resolution == "1m" and len(minute.points) == 120 and all(p.n == 2 for p in minute.points)
    hour = await queries.sensor_series(db, "s-q", T0 - timedelta(days=20), T0 + timedelta(days=20), now=now)
    assert hour.resolution == "1h" and [p.n for p in hour.points] == [120, 120]
    assert math.isclose(sum(p.vavg * p.n for p in hour.points), sum(r[4] for r in rows if r[2] == "s-q"))
    old = await queries.sensor_series(db, "s-q", T0, T0 + timedelta(hours=1), now=T0 + timedelta(days=40))
    assert old.resolution == "1m"  # raw is past retention then

    spec = SPECS["alerts"]
    for k in range(5):
        a = alert(f"a-{k}", 1, "new" if k % 2 else "acknowledged", "II" if k < 2 else "IV")
        await write_rows(db, spec, [alert_row(a)], "plain")
    await db.execute("UPDATE alerts SET last_seen = last_seen + make_interval(mins => "
                     "substring(alert_id from 3)::int)")
    page = await queries.list_alerts(db, limit=2)
    assert [a.alert_id for a in page.items] == ["a-4", "a-3"] and page.next_cursor
    page2 = await queries.list_alerts(db, limit=2, cursor=page.next_cursor)
    assert [a.alert_id for a in page2.items] == ["a-2", "a-1"]
    page3 = await queries.list_alerts(db, limit=2, cursor=page2.next_cursor)
    assert [a.alert_id for a in page3.items] == ["a-0"] and page3.next_cursor is None
    assert {a.alert_id for a in (await queries.list_alerts(db, status="new")).items} == {"a-1", "a-3"}
    assert {a.alert_id for a in (await queries.list_alerts(db, severity=["II"], department="eco")).items} == {
        "a-0", "a-1"}
    assert (await queries.list_alerts(db, department="water")).items == []
    assert len((await queries.list_alerts(db, district="朝阳区", rule="pm25_iaqi",
                                           since=T0, until=T0 + timedelta(hours=1))).items) == 5
    assert [a.revision for a in await queries.alert_history(db, "a-0")] == [1]
    assert (await queries.list_incidents(db)).items == []

    res, areas = await queries.area_aggregates(db, T0, T0 + timedelta(days=2), now=now)
    assert res == "1m"
    by_area = {a.area: a for a in areas}
    assert set(by_area) == {"朝阳区", "海淀区"}
    assert (by_area["朝阳区"].n, by_area["海淀区"].n) == (240, 60)
    assert (by_area["海淀区"].vmin, by_area["海淀区"].vmax, by_area["海淀区"].vavg) == (0, 59, 29.5)
    res_raw, areas_raw = await queries.area_aggregates(db, T0, T0 + timedelta(hours=3), now=now)
    assert res_raw == "raw"
    assert [(a.area, a.n, a.vmin, a.vmax) for a in areas_raw] == [(a.area, a.n, a.vmin, a.vmax) for a in areas]
    for a, b in zip(areas_raw, areas, strict=True):
        assert math.isclose(a.vavg, b.vavg)
