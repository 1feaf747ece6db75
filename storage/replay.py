"""Incident replay: recorded readings and hotline events of a time range,
with the operator actions and emergency mode switches recorded in it, out of
PostgreSQL in event-time order, through an isolated worker, and the alerts it
produces compared with the alerts that were recorded.

Isolation: the run's records go to `replay.<run>.*` topics (never a live
one), the worker is a child process with its own Faust app id
(`citybrain-replay-<run>`, which is also its consumer group and the prefix of
its changelog topics), its own data directory and optionally another rules
file. Nothing of a run is shared with the live pipeline but the database it
reads (read only, apart from its row in `replay_runs`).

Kafka identity: `ReplaySettings.kafka_security` (KAFKA_SECURITY_PROTOCOL,
KAFKA_SASL_*; citybrain.kafka_security). On the SASL listener a replay runs as
the `replay` principal, which owns `replay.*` and `citybrain-replay-*` and may
only describe the live readings topic (citybrain.security_cli.replay_acls);
every client the engine makes and the worker it starts use that identity.

Determinism: rows are read in (ts, key, event_id) order through a server-side
cursor and published keyed like live (readings by sensor_id, hotline events
by ticket_id) into as many partitions as the live topics have, so each sensor
sees the same sequence of readings as it did live; the hotline events all on
one partition, so each area's calls reach it in event-time order. Actions (`alert_actions`,
keyed by alert_id like live) and switches (`mode_switches`) go to the run's
action and control topics at their event time, each group of them behind a
barrier (`_Barrier`): the worker has handled everything before it, and has
applied it before anything after it goes out. An action that still reaches
the lifecycle before its alert is held there until the alert comes
(streams.lifecycle.hold, event clock only). The pure comparison lives in
`storage.replay_diff`.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.admin import DeleteGroupsRequest
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from citybrain.errors import ConfigError, ServiceError
from citybrain.kafka_admin import department_topics, ensure_topics, pipeline_topics
from citybrain.kafka_security import ENV_VARS as SECURITY_VARS
from citybrain.kafka_security import KafkaSecurity, without_passwords
from citybrain.topics import LIVE, Topics
from storage.audit import append_audit
from storage.db import connect
from storage.kafka_topics import ensure_control_topic
from storage.replay_diff import AlertView, ReplayDiff, Scope, check_run, diff_alerts, keep_latest
from storage.replay_partitions import spread_sensors
from streams import markers

log = logging.getLogger("citybrain.storage.replay")
DEFAULT_PARTITIONS = 4


class ReplaySettings(BaseSettings):
    """One frozen settings object; the environment is read at the entry point only."""

    model_config = SettingsConfigDict(frozen=True, env_prefix="REPLAY_", extra="ignore", populate_by_name=True)

    database_url: SecretStr = Field(validation_alias=AliasChoices("database_url", "DATABASE_URL"))
    kafka_bootstrap_servers: str = Field(
        validation_alias=AliasChoices("kafka_bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS")
    )
    # KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_*: SASL as the `replay` principal (citybrain.kafka_security);
    # the engine's clients and its worker child use it
    kafka_security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    db_schema: str = "public"
    run_root: str = ".run/replay"
    partitions: int = Field(default=0, ge=0, description="0: as many as the live readings topic has")
    fetch_batch: int = Field(default=5000, ge=1, description="rows per FETCH from the server-side cursor")
    # the end of a run is proven (_catch_up); a quiet wait is only an extra margin
    quiet_s: float = Field(default=0.0, ge=0, description="once the end is proven, also no new alert for this long")
    worker_tick_s: float = Field(default=2.0, gt=0, description="the replay worker's silence sweep interval")
    stall_timeout_s: float = Field(default=300.0, gt=0, description="no progress for this long: fail")
    worker_stop_timeout_s: float = Field(default=30.0, gt=0)
    workers: int = Field(default=0, ge=0, le=64, description="worker processes sharing the run's partitions; "
                         "0: one per CPU core, at most one per partition")
    worker_log_level: str = "warning"
    # no alert depends on it (timers fire at their due times, bursts clear at bucket boundaries):
    # fewer markers, fewer silence sweeps; more, an earlier safe time for the lifecycle
    marker_every_s: float = Field(default=300.0, gt=0, description="event seconds between the progress "
                                  "markers put on every readings and hotline partition (streams.markers)")


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    run: str
    scope: Scope
    warmup: timedelta = timedelta(0)
    rules_file: Path | None = None
    speed: float | None = None  # event seconds per wall second; None: as fast as possible
    keep: bool = False
    json_path: Path | None = None

    def __post_init__(self) -> None:
        check_run(self.run)

    @property
    def read_from(self) -> datetime:
        return self.scope.start - self.warmup


@dataclass(slots=True)
class ReplayOutcome:
    run: str
    status: str
    run_dir: Path
    readings: int = 0
    hotline: int = 0
    actions: int = 0  # recorded operator actions republished
    modes: int = 0  # recorded mode switches republished
    ready_s: float = 0.0  # from the start of the run until every worker was in the group (publishing starts)
    publish_s: float = 0.0  # reading the range and publishing it
    detect_s: float = 0.0  # from the start of the run until the worker had committed every reading
    total_s: float = 0.0
    workers: int = 0  # worker processes the run used
    diff: ReplayDiff | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_dir_of(settings: ReplaySettings, run: str) -> Path:
    return Path(settings.run_root).resolve() / run


def app_id(run: str) -> str:
    return f"citybrain-replay-{run}"


def mode_group(run: str) -> str:
    """The group whose committed offset on the run's control topic says how far the
    worker's mode board has applied the switches (streams.lifecycle_agent.mode_group)."""
    return f"{app_id(run)}-mode"


def run_topic_prefixes(run: str) -> tuple[str, str]:
    """Every topic a run creates starts with one of these: its pipeline topics
    and the Faust app's internal ones (changelogs, assignor)."""
    return Topics.for_replay(run).prefix, f"{app_id(run)}-"


def run_of_topic(topic: str) -> str | None:
    """Run ids hold no '.' and no '-', so both kinds of topic name give their run back unambiguously."""
    for prefix, sep in (("replay.", "."), ("citybrain-replay-", "-")):
        if topic.startswith(prefix):
            run = topic[len(prefix):].split(sep, 1)[0]
            return run or None
    return None


# --- reading the range -------------------------------------------------------

_READINGS_SQL = """
SELECT ts, event_id, sensor_id, sensor_type, value, unit, district, street, grid, lat, lon, sent_at, source
FROM readings
WHERE ts >= $1 AND ts < $2
  AND ($3::text IS NULL OR district = $3 OR street = $3)
  AND (cardinality($4::text[]) = 0 OR sensor_id = ANY($4::text[]))
ORDER BY ts, sensor_id, event_id
"""

_HOTLINE_SQL = """
SELECT ts, event_id, ticket_id, kind, category, status, district, street, grid, lat, lon, description, urgency,
       channel, caller_ref, satisfaction, department
FROM hotline_events
WHERE ts >= $1 AND ts < $2
  AND ($3::text IS NULL OR district = $3 OR street = $3)
  AND cardinality($4::text[]) = 0
ORDER BY ts, ticket_id, event_id
"""

# operator and citizen actions (as the lifecycle accepted them) on the alerts of the scope
_ACTIONS_SQL = """
SELECT a.ts, a.event_id, a.alert_id, a.action, a.actor, a.actor_department, a.comment, a.target_department,
       a.satisfaction
FROM alert_actions a JOIN alerts al ON al.alert_id = a.alert_id
WHERE a.ts >= $1 AND a.ts < $2
  AND ($3::text IS NULL OR al.district = $3 OR al.street = $3)
  AND (cardinality($4::text[]) = 0 OR al.subject = ANY($4::text[]))
ORDER BY a.ts, a.alert_id, a.event_id
"""

# emergency mode switches: every one of the range, whatever the area (a city-wide switch
# concerns every area, another district's is ignored by the alerts it does not cover)
_MODES_SQL = """
SELECT ts, event_id, scope, payload FROM mode_switches
WHERE ts >= $1 AND ts < $2
ORDER BY ts, event_id
"""

_ALERTS_SQL = """
SELECT alert_id, revision, rule, subject, district, street, severity, peak_severity, departments, first_seen,
       last_seen, status, count
FROM alerts
WHERE first_seen >= $1 AND first_seen < $2
  AND ($3::text IS NULL OR district = $3 OR street = $3)
  AND (cardinality($4::text[]) = 0 OR subject = ANY($4::text[]))
"""


def _loc(r: asyncpg.Record) -> dict[str, Any]:
    loc: dict[str, Any] = {"district": r["district"], "lat": r["lat"], "lon": r["lon"]}
    if r["street"] is not None:
        loc["street"] = r["street"]
    if r["grid"] is not None:
        loc["grid"] = r["grid"]
    return loc


def reading_json(r: asyncpg.Record) -> bytes:
    """The stored row back in its wire form (schemas.SensorReading)."""
    d: dict[str, Any] = {"event_id": r["event_id"], "sensor_id": r["sensor_id"], "sensor_type": r["sensor_type"],
                         "value": r["value"], "unit": r["unit"], "ts": r["ts"].isoformat(), "location": _loc(r)}
    if r["sent_at"] is not None:
        d["sent_at"] = r["sent_at"].isoformat()
    if r["source"] is not None:
        d["source"] = r["source"]
    return orjson.dumps(d)


def hotline_json(r: asyncpg.Record) -> bytes:
    """The stored row back in its wire form (schemas.HotlineEvent; the caller only as caller_ref)."""
    d: dict[str, Any] = {"event_id": r["event_id"], "ticket_id": r["ticket_id"], "kind": r["kind"],
                         "category": r["category"], "status": r["status"], "ts": r["ts"].isoformat(),
                         "location": _loc(r), "description": r["description"], "urgency": r["urgency"],
                         "channel": r["channel"]}
    for k in ("caller_ref", "satisfaction", "department"):
        if r[k] is not None:
            d[k] = r[k]
    return orjson.dumps(d)


def action_json(r: asyncpg.Record) -> bytes:
    """The stored action back in its wire form (schemas.AlertAction)."""
    d: dict[str, Any] = {"event_id": r["event_id"], "alert_id": r["alert_id"], "action": r["action"],
                         "actor": r["actor"], "ts": r["ts"].isoformat()}
    for k in ("actor_department", "comment", "target_department", "satisfaction"):
        if r[k] is not None:
            d[k] = r[k]
    return orjson.dumps(d)


def mode_json(r: asyncpg.Record) -> bytes:
    """The stored switch as it was published (streams.emergency.ModeSwitch)."""
    payload = r["payload"]
    return payload.encode() if isinstance(payload, str) else orjson.dumps(payload)


# at one event time: mode switches, actions, then readings and hotline events (a reading
# measured at the time of a switch reached the worker after it, live)
KIND_ORDER = {"mode": 0, "action": 1, "reading": 2, "hotline": 3}
CONTROL_KINDS = frozenset({"mode", "action"})


@dataclass(frozen=True, slots=True)
class Record:
    ts: datetime
    topic: str
    key: bytes
    value: bytes
    kind: str  # "reading" | "hotline" | "mode" | "action"


async def _cursor(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...], prefetch: int,
                  make: Callable[[asyncpg.Record], Record]) -> AsyncIterator[Record]:
    async for row in conn.cursor(sql, *args, prefetch=prefetch):
        yield make(row)


async def merged_records(conn: asyncpg.Connection, req: ReplayRequest, topics: Topics,
                         prefetch: int) -> AsyncIterator[Record]:
    """Readings, hotline events, mode switches and operator actions of the
    range, merged into one event-time order (ties: switches, actions,
    readings, hotline events; then by key and event id, as each query orders). Every
    cursor is server side: the range is never held in memory. Must run inside
    a transaction (cursors live in one)."""
    scope = req.scope
    args = (req.read_from, scope.end, scope.area, list(scope.sensors))
    sources = [
        _cursor(conn, _READINGS_SQL, args, prefetch,
                lambda r: Record(r["ts"], topics.readings, r["sensor_id"].encode(), reading_json(r), "reading")),
        _cursor(conn, _HOTLINE_SQL, args, max(100, prefetch // 10),
                lambda r: Record(r["ts"], topics.hotline, r["ticket_id"].encode(), hotline_json(r), "hotline")),
        _cursor(conn, _MODES_SQL, args[:2], 100,
                lambda r: Record(r["ts"], topics.control_mode, r["scope"].encode(), mode_json(r), "mode")),
        _cursor(conn, _ACTIONS_SQL, args, 100,
                lambda r: Record(r["ts"], topics.actions, r["alert_id"].encode(), action_json(r), "action")),
    ]
    heads: list[Record | None] = [await anext(src, None) for src in sources]
    while True:
        live = [(h.ts, KIND_ORDER[h.kind], i) for i, h in enumerate(heads) if h is not None]
        if not live:
            return
        i = min(live)[2]
        rec = heads[i]
        assert rec is not None
        yield rec
        heads[i] = await anext(sources[i], None)


@dataclass(frozen=True, slots=True)
class RangeCounts:
    """What a range holds: readings per sensor (the engine spreads the sensors
    over the partitions by them, storage.replay_partitions) and hotline events."""

    per_sensor: dict[str, int]
    hotline: int

    @property
    def readings(self) -> int:
        return sum(self.per_sensor.values())


async def count_range(conn: asyncpg.Connection, req: ReplayRequest) -> RangeCounts:
    scope = req.scope
    args = (req.read_from, scope.end, scope.area, list(scope.sensors))
    # the same filters without the ORDER BY: counting needs no sort
    rows = await conn.fetch(f"SELECT sensor_id, count(*) AS n FROM ({_READINGS_SQL.split('ORDER BY')[0]}) q "
                            "GROUP BY sensor_id", *args)
    n_h = await conn.fetchval(f"SELECT count(*) FROM ({_HOTLINE_SQL.split('ORDER BY')[0]}) q", *args)
    return RangeCounts({r["sensor_id"]: int(r["n"]) for r in rows}, int(n_h))


async def count_controls(conn: asyncpg.Connection, req: ReplayRequest) -> tuple[int, int]:
    """(operator actions, mode switches) the run republishes."""
    scope = req.scope
    args = (req.read_from, scope.end, scope.area, list(scope.sensors))
    n_a = await conn.fetchval(f"SELECT count(*) FROM ({_ACTIONS_SQL.split('ORDER BY')[0]}) q", *args)
    n_m = await conn.fetchval(f"SELECT count(*) FROM ({_MODES_SQL.split('ORDER BY')[0]}) q", *args[:2])
    return int(n_a), int(n_m)


async def recorded_alerts(conn: asyncpg.Connection, scope: Scope) -> list[AlertView]:
    rows = await conn.fetch(_ALERTS_SQL, scope.start, scope.end, scope.area, list(scope.sensors))
    return [AlertView.from_row(r) for r in rows]


# --- Kafka helpers -------------------------------------------------------------

ClientKwargs = Mapping[str, Any] | None  # KafkaSecurity.aiokafka_kwargs(): SASL / TLS, or nothing


@contextlib.asynccontextmanager
async def _admin(bootstrap: str, client_kwargs: ClientKwargs = None) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000, **(client_kwargs or {}))
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def live_partitions(bootstrap: str, client_kwargs: ClientKwargs = None) -> int:
    """The live readings topic's partition count (asked without creating it;
    the `replay` principal may describe that topic and nothing else live)."""
    async with _admin(bootstrap, client_kwargs) as admin:
        if LIVE.readings not in set(await admin.list_topics()):
            return DEFAULT_PARTITIONS
        for t in await admin.describe_topics([LIVE.readings]):
            if t.get("topic") == LIVE.readings and not t.get("error_code") and t.get("partitions"):
                return len(t["partitions"])
    return DEFAULT_PARTITIONS


async def list_replay_topics(bootstrap: str, client_kwargs: ClientKwargs = None) -> dict[str, list[str]]:
    """run -> its topics still in Kafka."""
    async with _admin(bootstrap, client_kwargs) as admin:
        names = await admin.list_topics()
    out: dict[str, list[str]] = {}
    for name in sorted(names):
        run = run_of_topic(name)
        if run is not None:
            out.setdefault(run, []).append(name)
    return out


async def delete_run_kafka(bootstrap: str, run: str, rounds: int = 3, client_kwargs: ClientKwargs = None) -> list[str]:
    """Remove a run's topics and its worker's consumer group; returns the topics
    removed. A few rounds: a worker that was still starting when it was
    stopped may have made a topic (its control topic) after the first listing."""
    prefixes = run_topic_prefixes(run)
    removed: list[str] = []
    async with _admin(bootstrap, client_kwargs) as admin:
        for n in range(rounds):
            doomed = [t for t in await admin.list_topics() if t.startswith(prefixes)]
            if not doomed:
                break
            await admin.delete_topics(doomed)
            removed += [t for t in doomed if t not in removed]
            if n + 1 < rounds:
                await asyncio.sleep(1)
        try:
            # aiokafka's admin has no delete_consumer_groups yet: the protocol request, sent to the coordinator
            coordinator = await admin.find_coordinator(app_id(run))
            await admin._send_request(DeleteGroupsRequest([app_id(run), mode_group(run)]), coordinator)
        except KafkaError as exc:  # an unknown or still-active group: Kafka expires it after its retention
            log.info("consumer group %s not deleted: %s", app_id(run), exc)
    return removed


async def _worker_lag(admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, group: str, topics: list[str],
                      partitions: int) -> tuple[int, int]:
    """(records the worker has committed on the first topic, records still
    ahead of it on all of them). Its inputs after the readings (hotline
    events, its own detected-alert topic) count too: an alert is not out
    before the lifecycle agent has handled its detection.

    The committed offsets are read first, the ends after: a worker flushes
    what a record made it send before it commits that record (Faust's
    commit), so 0 ahead means that when the offsets were read every record
    on these topics had been handled and everything it led to was on them.
    Read the other way round, a stage could send and commit in between and
    its new records would not be counted."""
    tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
    try:
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
    except KafkaError:
        committed = {}
    ends = await consumer.end_offsets(tps)
    done = 0
    ahead = 0
    for tp in tps:
        c = committed.get(tp)
        off = c.offset if c is not None and c.offset >= 0 else 0
        if tp.topic == topics[0]:
            done += off
        ahead += max(0, ends[tp] - off)
    return done, ahead


class _AlertCollector:
    """Reads the run's alert topic from the start, keeps the latest revision per alert."""

    def __init__(self, bootstrap: str, topic: str, client_kwargs: ClientKwargs = None) -> None:
        self.latest: dict[str, AlertView] = {}
        self.read_to: dict[int, int] = {}  # partition -> the next offset to read
        self.received = 0
        self.bad = 0
        self.last_at = time.monotonic()
        self._consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                          auto_offset_reset="earliest", enable_auto_commit=False,
                                          metadata_max_age_ms=2000, **(client_kwargs or {}))
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            batches = await self._consumer.getmany(timeout_ms=300, max_records=5000)
            for msgs in batches.values():
                for m in msgs:
                    self.received += 1
                    self.read_to[m.partition] = m.offset + 1
                    self.last_at = time.monotonic()
                    try:
                        keep_latest(self.latest, AlertView.from_alert_json(orjson.loads(m.value)))
                    except (ValueError, KeyError, TypeError):
                        self.bad += 1
                        log.warning("unreadable alert at %s/%s@%s", m.topic, m.partition, m.offset)

    def has_read(self, ends: Mapping[TopicPartition, int]) -> bool:
        """Whether it has read every partition of its topic up to `ends`.
        Raises ServiceError if it has stopped reading (a run must not wait for it)."""
        if self._task is not None and self._task.done() and not self._stop.is_set():
            exc = None if self._task.cancelled() else self._task.exception()
            raise ServiceError(f"the replay's alert collector stopped: {exc!r}")
        return all(self.read_to.get(tp.partition, 0) >= end for tp, end in ends.items())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is None:
            return
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._consumer.stop()


# --- the worker child ---------------------------------------------------------

def worker_count(asked: int, partitions: int, cpus: int | None = None) -> int:
    """Worker processes for a run: as asked, else one per CPU core and at most
    one per partition (a worker without a partition only costs start-up).
    Each sensor's detection depends only on its own partition, whichever worker
    holds it, and SLA timers wait for every partition's progress markers
    (streams.markers), so the count changes no alert."""
    if asked > 0:
        return asked
    return max(1, min(cpus if cpus is not None else (os.cpu_count() or 1), partitions))


def worker_env(base_env: Mapping[str, str], settings: ReplaySettings, req: ReplayRequest, partitions: int,
               data_dir: Path) -> dict[str, str]:
    """The replay worker's environment: the caller's, with the run's app id,
    topic prefix and data dir, and the engine's own Kafka identity (the
    `replay` principal on SASL), whatever the caller's environment said."""
    env = {k: v for k, v in without_passwords(base_env).items() if k not in SECURITY_VARS}
    env.update(settings.kafka_security.to_env())
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        WORKER_APP_ID=app_id(req.run),
        WORKER_TOPIC_PREFIX=Topics.for_replay(req.run).prefix,
        WORKER_DATA_DIR=str(data_dir),
        WORKER_PARTITIONS=str(partitions),
        WORKER_TICK_EVERY_S=str(settings.worker_tick_s),
        # one process runs every agent: the engine follows one consumer group, and the
        # event clock and the mode board's commits belong to one worker
        WORKER_ROLE="all",
        # no standby copies of the other workers' tables: a run whose worker dies fails
        # (_Workers.check), so nothing would fail over to them; reading the other
        # workers' changelogs cost bench.replay ~2 s of 79 (median of 3 runs each)
        WORKER_STANDBY_REPLICAS="0",
        # the second worker to join rebalances the first, which hears of it at its next
        # heartbeat: at Faust's 3 s that was most of the ~5 s the workers took to be ready
        # (a rebalance that soon after the start lost records until streams.faust_fixes fix 5)
        WORKER_HEARTBEAT_INTERVAL_S="0.5",
        PYTHONUNBUFFERED="1",
    )
    if req.rules_file is not None:  # else the live worker's rules (its environment): unchanged rules
        env["WORKER_RULES_FILE"] = str(req.rules_file)
    if _worker_has_event_clock():
        env["WORKER_CLOCK"] = "event"
        # SLA timers fire once every partition is past them (streams.markers), not at the
        # latest event time of whichever partition runs ahead
        env["WORKER_PROGRESS_MARKERS"] = "true"
    return env


def rules_in_effect(base_env: Mapping[str, str], req: ReplayRequest) -> Path:
    from streams.routing import DEFAULT_RULES

    if req.rules_file is not None:
        return req.rules_file
    return Path(base_env["WORKER_RULES_FILE"]) if base_env.get("WORKER_RULES_FILE") else DEFAULT_RULES


def replay_departments(rules: Path, areas: set[tuple[str, str | None]]) -> list[str]:
    """The city-wide departments and the district and street offices of the
    areas the range covers: their topics are made before the worker starts
    (`citybrain.kafka_admin.department_topics`; made on first use inside the
    worker's agent, about a second each, a 500-sensor replay stalled for good)."""
    from streams.routing import load_rules

    districts = {d for d, _ in areas}
    return [code for code, dept in load_rules(rules).departments.items()
            if dept.district is None
            or (dept.street is None and dept.district in districts)
            or (dept.district, dept.street) in areas]


async def areas_in_range(conn: asyncpg.Connection, req: ReplayRequest) -> set[tuple[str, str | None]]:
    scope = req.scope
    args = (req.read_from, scope.end, scope.area, list(scope.sensors))
    rows = await conn.fetch(
        f"SELECT DISTINCT district, street FROM ({_READINGS_SQL.split('ORDER BY')[0]}) r UNION "
        f"SELECT DISTINCT district, street FROM ({_HOTLINE_SQL.split('ORDER BY')[0]}) h", *args)
    return {(r["district"], r["street"]) for r in rows}


def _worker_has_event_clock() -> bool:
    """Whether this worker version can take its clock from event time (replay
    then reproduces SLA escalations as well); older ones have no such setting."""
    from streams.app import WorkerSettings

    return "clock" in WorkerSettings.model_fields


def _make_dir(path: str) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)


class _Workers:
    """The replay's worker processes: one Faust app id, so one consumer group
    that shares the run's partitions among them. Each in its own session: a
    Ctrl-C in the terminal reaches the replay only, which stops them in order."""

    def __init__(self, settings: ReplaySettings, run_dir: Path) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.procs: list[asyncio.subprocess.Process] = []

    def log_path(self, i: int) -> Path:
        return self.run_dir / ("worker.log" if i == 0 else f"worker{i}.log")

    async def start(self, env: Mapping[str, str], n: int) -> None:
        for i in range(n):
            wenv = dict(env)
            if n > 1:  # Faust keeps per-worker files under its data dir
                wenv["WORKER_DATA_DIR"] = f"{env['WORKER_DATA_DIR']}/w{i}"
            _make_dir(wenv["WORKER_DATA_DIR"])  # Faust makes only the last level
            with self.log_path(i).open("ab") as out:
                self.procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "citybrain.cli", "worker", "--log-level", self.settings.worker_log_level,
                    env=wenv, stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                ))

    def check(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.returncode is not None:
                raise ServiceError(f"replay worker exited with code {proc.returncode}; see {self.log_path(i)}")

    async def stop(self) -> None:
        live = [p for p in self.procs if p.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        for proc in live:
            try:
                await asyncio.wait_for(proc.wait(), self.settings.worker_stop_timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


# --- the run --------------------------------------------------------------------

class Interrupted(Exception):
    """The stop event was set (Ctrl-C): wind down and clean up."""


Progress = Callable[[str], None]


async def _db(settings: ReplaySettings) -> asyncpg.Connection:
    try:
        return await connect(settings.database_url.get_secret_value(), settings.db_schema, "citybrain-replay")
    except (OSError, asyncpg.PostgresError) as exc:
        raise ServiceError(f"PostgreSQL unreachable: {exc}") from exc


async def _require_table(conn: asyncpg.Connection) -> None:
    if await conn.fetchval("SELECT to_regclass('replay_runs')") is None:
        raise ConfigError("storage schema has no replay_runs table: run `citybrain db migrate`")


async def run_replay(settings: ReplaySettings, req: ReplayRequest, *, stop: asyncio.Event,
                     base_env: Mapping[str, str], now: Callable[[], datetime],
                     progress: Progress = lambda s: None) -> ReplayOutcome:
    run_dir = run_dir_of(settings, req.run)
    out = ReplayOutcome(req.run, "running", run_dir)
    t0 = time.monotonic()
    topics = Topics.for_replay(req.run)
    if req.rules_file is not None and not req.rules_file.is_file():
        raise ConfigError(f"rules file {req.rules_file} does not exist")
    conn = await _db(settings)
    try:
        await _require_table(conn)
        if await conn.fetchval("SELECT to_regclass('mode_switches')") is None:
            raise ConfigError("storage schema has no mode_switches table: run `citybrain db migrate`")
        counts = await count_range(conn, req)
        n_readings, n_hotline = counts.readings, counts.hotline
        n_actions, n_modes = await count_controls(conn, req)
        kafka = settings.kafka_bootstrap_servers
        kw = settings.kafka_security.aiokafka_kwargs()
        partitions = settings.partitions or await live_partitions(kafka, kw)
        try:
            await conn.execute(
                "INSERT INTO replay_runs (run_id, status, started_at, range_from, range_to, area, sensors,"
                " rules_file, speed, run_dir, pid, host) VALUES ($1, 'running', $2, $3, $4, $5, $6, $7, $8, $9,"
                " $10, $11)",
                req.run, now(), req.scope.start, req.scope.end, req.scope.area, list(req.scope.sensors),
                str(req.rules_file) if req.rules_file else None, _speed_text(req.speed), str(run_dir), os.getpid(),
                socket.gethostname(),
            )
        except asyncpg.UniqueViolationError:
            raise ConfigError(f"replay run {req.run} exists already: choose another --run") from None
        # every replay run is on the audit trail: who re-ran which range with which rules
        await append_audit(
            conn, actor=f"{getpass.getuser()}@{socket.gethostname()}", kind="replay.run", subject=req.run,
            details={"from": req.scope.start.isoformat(), "to": req.scope.end.isoformat(), "area": req.scope.area,
                     "sensors": list(req.scope.sensors), "speed": _speed_text(req.speed),
                     "rules_file": str(req.rules_file) if req.rules_file else None},
            at=now(),
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        out.workers = n_workers = worker_count(settings.workers, partitions)
        progress(f"replay {req.run}: {n_readings} readings, {n_hotline} hotline events, {n_actions} operator "
                 f"actions and {n_modes} mode switches of "
                 f"{req.read_from.isoformat()} .. {req.scope.end.isoformat()} into {topics.prefix}* "
                 f"({partitions} partitions, {n_workers} worker{'s' if n_workers > 1 else ''})")
        workers = _Workers(settings, run_dir)
        collector = _AlertCollector(kafka, topics.alerts, kw)
        status = "failed"
        try:
            # the control topic first: made after the others, it waited ~1.7 s for the broker
            # to lay out their partitions before it was served (bench.replay)
            await ensure_control_topic(kafka, topics.control_mode, kw)
            wanted = pipeline_topics(topics, partitions)
            codes = replay_departments(rules_in_effect(base_env, req), await areas_in_range(conn, req))
            # one partition per department topic: a replay only writes them (its alerts are read
            # from city.alerts), and a city's ~270 of them at 4 partitions each kept the broker
            # busy for ~3 s at the start of every run and again deleting them
            wanted.update(department_topics(topics, codes, 1, hotline=n_hotline > 0))
            await ensure_topics(kafka, wanted, client_kwargs=kw)
            await collector.start()
            env = worker_env(base_env, settings, req, partitions, run_dir / "faust")
            await workers.start(env, n_workers)
            await _all_joined(settings, req, n_workers, stop, workers, progress)
            out.ready_s = time.monotonic() - t0
            pub_s = await _publish(settings, conn, req, topics, spread_sensors(counts.per_sensor, partitions),
                                   partitions, n_readings + n_hotline + n_actions + n_modes, out, stop, workers,
                                   progress)
            out.publish_s = pub_s
            caught_up = await _catch_up(settings, req, topics, partitions, n_readings, collector, stop, workers,
                                        progress)
            out.detect_s = caught_up - t0
            status = "done"
        except Interrupted:
            status = "interrupted"
        finally:
            await workers.stop()
            await collector.stop()
            out.status = status
            if not req.keep:
                try:
                    await delete_run_kafka(kafka, req.run, client_kwargs=kw)
                except KafkaError as exc:  # the run's outcome stands; `replay --clean` can finish this
                    log.warning("could not remove the topics of replay %s: %s", req.run, exc)
                shutil.rmtree(run_dir / "faust", ignore_errors=True)
            if status != "done":
                with contextlib.suppress(Exception):
                    await conn.execute("UPDATE replay_runs SET status = $2, finished_at = $3, readings = $4,"
                                       " hotline = $5, topics_kept = $6 WHERE run_id = $1",
                                       req.run, status, now(), out.readings, out.hotline, req.keep)
        if status != "done":
            out.total_s = time.monotonic() - t0
            return out
        recorded = await recorded_alerts(conn, req.scope)
        extra = {"run": req.run, "scope": req.scope.to_dict(), "warmup_s": req.warmup.total_seconds(),
                 "rules_file": str(req.rules_file) if req.rules_file else None, "speed": _speed_text(req.speed),
                 "readings": out.readings, "hotline": out.hotline, "actions": out.actions, "modes": out.modes,
                 "unreadable_alerts": collector.bad}
        out.diff = diff_alerts(recorded, collector.latest.values(), req.scope, extra)
        out.total_s = time.monotonic() - t0
        body = orjson.dumps(out.diff.to_json(), option=orjson.OPT_INDENT_2)
        (run_dir / "diff.json").write_bytes(body)
        if req.json_path is not None:
            req.json_path.parent.mkdir(parents=True, exist_ok=True)
            req.json_path.write_bytes(body)
        await conn.execute("UPDATE replay_runs SET status = 'done', finished_at = $2, readings = $3, hotline = $4,"
                           " summary = $5::jsonb, topics_kept = $6 WHERE run_id = $1",
                           req.run, now(), out.readings, out.hotline, orjson.dumps(out.diff.summary()).decode(),
                           req.keep)
        return out
    finally:
        await conn.close()


def _speed_text(speed: float | None) -> str:
    return "max" if speed is None else f"{speed:g}x"


HOTLINE_PARTITION = 0  # a replay's calls all go here (see _publish)


class _Batches:
    """Records into per-partition Kafka batches: a replay publishes far faster
    than one `send` per record. The partition is the one the caller names
    (readings: storage.replay_partitions; hotline events: HOTLINE_PARTITION),
    else Kafka's default for the key (murmur2, as live producers pick it: the
    actions, keyed by alert_id, must reach the lifecycle partition holding
    their alert); batches of one partition go out in order."""

    def __init__(self, producer: AIOKafkaProducer, partitions: int) -> None:
        self.producer = producer
        self.all = list(range(partitions))
        self.part_of: dict[bytes, int] = {}
        self.open: dict[tuple[str, int], Any] = {}
        self.sent: list[asyncio.Future[Any]] = []
        self.partitioner = DefaultPartitioner()

    def partition(self, key: bytes) -> int:
        p = self.part_of.get(key)
        if p is None:
            p = self.part_of[key] = self.partitioner(key, self.all, self.all)
        return p

    async def add(self, topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
        tp = (topic, self.partition(key) if partition is None else partition)
        batch = self.open.get(tp)
        if batch is None:
            batch = self.open[tp] = self.producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start the next
            await self._send(tp)
            batch = self.open[tp] = self.producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)

    async def _send(self, tp: tuple[str, int]) -> None:
        batch = self.open.pop(tp)
        self.sent.append(await self.producer.send_batch(batch, tp[0], partition=tp[1]))

    async def mark(self, topics: Sequence[str], at: datetime, final: bool = False) -> None:
        """A progress marker on every partition of `topics`, after what each has been given."""
        body = markers.encode("engine", at, final)
        for topic in topics:
            for p in self.all:
                await self.add(topic, markers.KEY, body, partition=p)

    async def flush(self) -> None:
        """Send every open batch and wait until Kafka has them all (acks=all)."""
        for tp in list(self.open):
            await self._send(tp)
        await asyncio.gather(*self.sent)
        self.sent.clear()


class _Barrier:
    """Operator actions and mode switches go out between the readings at their
    event time, each group of them only once the worker has handled every
    record published before it (its committed offsets at the end of the
    readings, hotline, detected-alert and action topics), and the readings
    after them only once it has applied them (the action topic's offsets; the
    mode board's group at the switch). So a switch changes the thresholds from
    its own time on, and an action meets the alert as it was at its time, as
    live, however far ahead of the worker the replay publishes. It costs about
    two of the worker's commit intervals per group of them."""

    def __init__(self, settings: ReplaySettings, req: ReplayRequest, topics: Topics, partitions: int,
                 stop: asyncio.Event, workers: _Workers, progress: Progress) -> None:
        self.settings, self.req, self.topics, self.partitions = settings, req, topics, partitions
        self.stop, self.workers, self.progress = stop, workers, progress
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self.waits = 0
        self.waited_s = 0.0

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            kw = self.settings.kafka_security.aiokafka_kwargs()
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap_servers,
                                              request_timeout_ms=15000, **kw)
            await self._admin.start()
            self._consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap_servers,
                                              group_id=None, **kw)
            await self._consumer.start()
        return self._admin, self._consumer

    async def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()

    async def _until(self, done: Callable[[], Any], what: str) -> None:
        t0 = last = time.monotonic()
        seen: Any = None
        while True:
            if self.stop.is_set():
                raise Interrupted
            self.workers.check()
            state = await done()
            if state is True:
                break
            t = time.monotonic()
            if state != seen:
                seen, last = state, t
            elif t - last > self.settings.stall_timeout_s:
                raise ServiceError(f"replay worker made no progress for {self.settings.stall_timeout_s:.0f} s "
                                   f"while {what}; see {self.workers.log_path(0)}")
            await _sleep_or_stop(0.2, self.stop)
        self.waits += 1
        self.waited_s += time.monotonic() - t0

    async def caught_up(self) -> None:
        """Until the worker has handled everything published so far."""
        admin, consumer = await self._clients()
        t = self.topics
        watched = [t.readings, t.hotline, t.incident_items, t.alerts_detected, t.actions]

        async def done() -> Any:
            _, ahead = await _worker_lag(admin, consumer, app_id(self.req.run), watched, self.partitions)
            return True if ahead == 0 else ahead

        await self._until(done, "catching up before an operator action or a mode switch")

    async def applied(self, mode_offset: int | None) -> None:
        """Until the worker has applied the actions published (and the mode switch at `mode_offset`)."""
        admin, consumer = await self._clients()
        tp = TopicPartition(self.topics.control_mode, 0)

        async def done() -> Any:
            _, ahead = await _worker_lag(admin, consumer, app_id(self.req.run), [self.topics.actions],
                                         self.partitions)
            board = -1
            if mode_offset is not None:
                try:
                    got = await admin.list_consumer_group_offsets(mode_group(self.req.run), partitions=[tp])
                except KafkaError:
                    got = {}
                c = got.get(tp)
                board = c.offset if c is not None else -1
            if ahead == 0 and (mode_offset is None or board > mode_offset):
                return True
            return (ahead, board)

        await self._until(done, "applying operator actions and mode switches")


async def _publish(settings: ReplaySettings, conn: asyncpg.Connection, req: ReplayRequest, topics: Topics,
                   placement: Mapping[bytes, int], partitions: int, total: int, out: ReplayOutcome, stop: asyncio.Event,
                   workers: _Workers, progress: Progress) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all",
                                enable_idempotence=True, linger_ms=20, max_batch_size=512 * 1024,
                                request_timeout_ms=60000, **settings.kafka_security.aiokafka_kwargs())
    await producer.start()
    batches = _Batches(producer, partitions)
    barrier = _Barrier(settings, req, topics, partitions, stop, workers, progress)
    t0 = time.monotonic()
    last_report = 0.0
    first_ts: datetime | None = None
    n = 0
    in_controls = False  # published actions / switches the worker has not been seen to apply yet
    mode_offset: int | None = None
    # progress markers (streams.markers) at fixed event times: every `marker_every_s`, and a final
    # one at the last record's time
    every = timedelta(seconds=settings.marker_every_s)
    marked_topics = (topics.readings, topics.hotline)
    next_mark: datetime | None = None
    last_ts: datetime | None = None
    try:
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            async for rec in merged_records(conn, req, topics, settings.fetch_batch):
                if next_mark is None or rec.ts >= next_mark:
                    mark = markers.boundary(rec.ts, every)
                    if next_mark is not None:
                        await batches.mark(marked_topics, mark)
                    next_mark = mark + every
                last_ts = rec.ts
                if req.speed is not None:
                    first_ts = first_ts or rec.ts
                    due = (rec.ts - first_ts).total_seconds() / req.speed - (time.monotonic() - t0)
                    if due > 0.005:
                        await batches.flush()
                        await _sleep_or_stop(due, stop)
                if rec.kind in CONTROL_KINDS:
                    if not in_controls:
                        await batches.flush()
                        await barrier.caught_up()
                        in_controls = True
                    if rec.kind == "mode":  # the control topic has one partition
                        md = await producer.send_and_wait(rec.topic, rec.value, key=rec.key, partition=0)
                        mode_offset = md.offset
                        out.modes += 1
                    else:  # keyed by alert_id like the detected alerts: the same partition of the lifecycle
                        await producer.send_and_wait(rec.topic, rec.value, key=rec.key,
                                                     partition=batches.partition(rec.key))
                        out.actions += 1
                    n += 1
                    continue
                if in_controls:
                    await barrier.applied(mode_offset)
                    in_controls, mode_offset = False, None
                if rec.kind == "reading":
                    # a sensor recorded after the count (a range reaching into live) takes its live partition
                    await batches.add(rec.topic, rec.key, rec.value, partition=placement.get(rec.key))
                    out.readings += 1
                else:
                    # every call on one partition, in the recorded order: the workflow agent forwards
                    # them to their area's partition in that order, so each area's burst detector sees
                    # its calls in event-time order whichever worker runs it, rather than interleaved
                    # by how far each ticket partition has got (a handful of records a minute)
                    await batches.add(rec.topic, rec.key, rec.value, partition=HOTLINE_PARTITION)
                    out.hotline += 1
                n += 1
                if n % settings.fetch_batch == 0:
                    if stop.is_set():
                        raise Interrupted
                    workers.check()
                    elapsed = time.monotonic() - t0
                    if elapsed - last_report >= 1.0:
                        last_report = elapsed
                        progress(f"published {n}/{total} ({100 * n / max(total, 1):.0f} %), "
                                 f"{n / max(elapsed, 1e-9):,.0f} records/s")
            if last_ts is not None:
                await batches.mark(marked_topics, last_ts, final=True)
            await batches.flush()
            if in_controls:
                await barrier.applied(mode_offset)
    finally:
        await barrier.close()
        await producer.stop()
    elapsed = time.monotonic() - t0
    waits = (f"; waited {barrier.waited_s:.1f} s in {barrier.waits} waits for the worker at "
             f"{out.actions} operator actions and {out.modes} mode switches") if barrier.waits else ""
    progress(f"published {n}/{total} records in {elapsed:.1f} s ({n / max(elapsed, 1e-9):,.0f}/s){waits}")
    return elapsed


async def _all_joined(settings: ReplaySettings, req: ReplayRequest, n: int, stop: asyncio.Event,
                      workers: _Workers, progress: Progress) -> None:
    """Until every worker is in the run's consumer group and the group is stable.
    Publishing before the last one joined made Faust rebalance mid-run: a
    recovery in the run costs seconds, and records read in its window are
    where Faust's drain loop lost offsets (fixed in streams.faust_drain)."""
    group = app_id(req.run)
    t0 = time.monotonic()
    async with _admin(settings.kafka_bootstrap_servers, settings.kafka_security.aiokafka_kwargs()) as admin:
        while True:
            workers.check()
            try:
                found = [g for r in await admin.describe_consumer_groups([group]) for g in r.groups if g[1] == group]
            except KafkaError:
                found = []
            state = (found[0][2], len(found[0][5])) if found else ("absent", 0)
            if state[0] == "Stable" and state[1] >= n:
                progress(f"{n} worker{'s' if n > 1 else ''} ready after {time.monotonic() - t0:.1f} s")
                return
            if time.monotonic() - t0 > settings.stall_timeout_s:
                raise ServiceError(f"replay workers did not all join group {group} within "
                                   f"{settings.stall_timeout_s:.0f} s ({state[1]} of {n}, {state[0]}); "
                                   f"see {workers.log_path(0)}")
            await _sleep_or_stop(0.5, stop)


async def _sleep_or_stop(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    if stop.is_set():
        raise Interrupted


async def _catch_up(settings: ReplaySettings, req: ReplayRequest, topics: Topics, partitions: int, n_readings: int,
                    collector: _AlertCollector, stop: asyncio.Event, workers: _Workers,
                    progress: Progress) -> float:
    """Until the run is over: the workers have handled every record on their
    input topics (`_worker_lag`, once everything is published, the engine's
    final progress markers included) and the collector has read the alert
    topic to its end. Nothing comes after that: each stage forwards the final
    markers after its last output, the lifecycle fires its last timers when
    they reach it (streams.markers), and what the wall-clock timers of a
    replay worker still do sends no alert (silence sweeps repeat the final
    marker's, spikes tick on markers). Before the markers, the end was a guess:
    no alert for 6 s. Returns the monotonic time it was proven (before any
    extra `quiet_s` wait)."""
    kw = settings.kafka_security.aiokafka_kwargs()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None, **kw)
    await consumer.start()
    t0 = time.monotonic()
    last_seen: tuple[int, int] = (-1, -1)
    last_progress_at = time.monotonic()
    caught_up_at: float | None = None
    watched = [topics.readings, topics.hotline, topics.incident_items, topics.alerts_detected,
               topics.actions]
    alert_tps = [TopicPartition(topics.alerts, p) for p in range(partitions)]
    try:
        async with _admin(settings.kafka_bootstrap_servers, kw) as admin:
            while True:
                if stop.is_set():
                    raise Interrupted
                workers.check()
                done, ahead = await _worker_lag(admin, consumer, app_id(req.run), watched, partitions)
                t = time.monotonic()
                if (done, ahead) != last_seen:
                    last_seen, last_progress_at = (done, ahead), t
                    # min: the readings topic also carries the progress markers
                    progress(f"detected {min(done, n_readings)}/{n_readings} readings, {ahead} records ahead "
                             f"of the worker, {len(collector.latest)} alerts")
                if ahead == 0:
                    ends = await consumer.end_offsets(alert_tps)
                    if not collector.has_read(ends):
                        await _sleep_or_stop(0.05, stop)
                        continue
                    caught_up_at = caught_up_at or t
                    if t - max(caught_up_at, collector.last_at) >= settings.quiet_s:
                        progress(f"caught up: {min(done, n_readings)} readings through detection in "
                                 f"{t - t0:.1f} s after publishing; {len(collector.latest)} alerts")
                        return caught_up_at
                else:
                    caught_up_at = None
                    if t - last_progress_at > settings.stall_timeout_s:
                        raise ServiceError(f"replay worker made no progress for {settings.stall_timeout_s:.0f} s "
                                           f"({ahead} records behind); see {workers.log_path(0)}")
                await _sleep_or_stop(0.5, stop)
    finally:
        await consumer.stop()


# --- list and clean -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RunInfo:
    run: str
    status: str
    started_at: datetime | None
    range_from: datetime | None
    range_to: datetime | None
    readings: int
    summary: dict[str, Any] | None
    topics: tuple[str, ...]
    run_dir: str | None
    cleaned: bool


async def list_runs(settings: ReplaySettings, limit: int = 100) -> list[RunInfo]:
    conn = await _db(settings)
    try:
        await _require_table(conn)
        rows = await conn.fetch("SELECT * FROM replay_runs ORDER BY started_at DESC LIMIT $1", limit)
    finally:
        await conn.close()
    kafka = await list_replay_topics(settings.kafka_bootstrap_servers, settings.kafka_security.aiokafka_kwargs())
    out: list[RunInfo] = []
    for r in rows:
        out.append(RunInfo(r["run_id"], r["status"], r["started_at"], r["range_from"], r["range_to"], r["readings"],
                           orjson.loads(r["summary"]) if r["summary"] else None,
                           tuple(kafka.pop(r["run_id"], ())), r["run_dir"], r["cleaned_at"] is not None))
    for run, names in sorted(kafka.items()):  # topics of runs this schema does not know (another schema, a crash)
        out.append(RunInfo(run, "unknown", None, None, None, 0, None, tuple(names), None, False))
    return out


def _alive(pid: int | None, host: str | None) -> bool:
    if pid is None or host != socket.gethostname():
        return host is not None and host != socket.gethostname()  # another machine's run: assume it lives
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def clean_runs(settings: ReplaySettings, run: str | None, now: Callable[[], datetime]) -> list[tuple[str, int]]:
    """Remove the topics, consumer group and worker data of one run, or of every
    run that is not running; the row and diff.json stay. Returns (run, topics removed)."""
    conn = await _db(settings)
    try:
        await _require_table(conn)
        if run is not None:
            check_run(run)
            rows = await conn.fetch("SELECT run_id, status, pid, host, run_dir FROM replay_runs WHERE run_id = $1",
                                    run)
            if rows and rows[0]["status"] == "running" and _alive(rows[0]["pid"], rows[0]["host"]):
                raise ConfigError(f"replay run {run} is still running (pid {rows[0]['pid']}); stop it first")
            targets = [(run, rows[0]["run_dir"] if rows else None)]
        else:
            rows = await conn.fetch("SELECT run_id, status, pid, host, run_dir FROM replay_runs "
                                    "WHERE cleaned_at IS NULL OR topics_kept ORDER BY started_at")
            targets = [(r["run_id"], r["run_dir"]) for r in rows
                       if not (r["status"] == "running" and _alive(r["pid"], r["host"]))]
        done: list[tuple[str, int]] = []
        for rid, rdir in targets:
            removed = await delete_run_kafka(settings.kafka_bootstrap_servers, rid,
                                             client_kwargs=settings.kafka_security.aiokafka_kwargs())
            base = Path(rdir) if rdir else run_dir_of(settings, rid)
            shutil.rmtree(base / "faust", ignore_errors=True)
            await conn.execute("UPDATE replay_runs SET cleaned_at = $2, topics_kept = false,"
                               " status = CASE WHEN status = 'running' THEN 'interrupted' ELSE status END"
                               " WHERE run_id = $1", rid, now())
            done.append((rid, len(removed)))
        return done
    finally:
        await conn.close()
