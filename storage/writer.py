"""The storage writer: Kafka topics -> PostgreSQL, in batches, exactly once in
the database.

Loop: collect up to `batch_size` records or `batch_timeout_ms`; decode them
(malformed or invalid payloads go to the DLQ); per table, COPY the rows into a
temporary staging table and merge them with one `INSERT .. SELECT .. ON
CONFLICT` (time-series tables skip what is already there, `alerts` and
`incidents` keep the highest revision, every alert revision lands in
`alert_history`); send the dead letters and wait for Kafka's acks; only then
commit the consumed offsets. A crash anywhere before the commit makes Kafka
redeliver the batch, and the merge makes the second write a no-op.

With `db_connections` > 1 a large batch is split by Kafka partition (a
partition's records stay together, so one key is never merged by two
transactions at once) and the parts are merged concurrently, one connection
each; offsets are committed only after every part is durable. A part that
committed before another failed is simply written again on redelivery (the
merge skips it), so the split keeps the at-least-once, once-in-the-database
contract.

Errors are classified in `storage.errors`: transient ones (connection lost,
shutdown, deadlock, too many connections) are retried with exponential
backoff while consumption is paused; a permanent one (the data) is isolated by
bisecting the batch and the bad record(s) dead-lettered with the reason; a
fatal one (schema, grants) stops the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from citybrain.dlq import dlq_headers
from citybrain.errors import PermanentError, TransientError
from citybrain.kafka_admin import ensure_topics, pipeline_topics
from citybrain.kafka_security import KafkaSecurity
from citybrain.topics import Topics
from schemas.common import now_utc
from storage import errors
from storage.db import Flavor, connect, current_flavor
from storage.kafka_topics import ensure_control_topic
from storage.rows import READING_COLUMNS, SPECS, Row, TableSpec, dlq_row, partition_probes

log = logging.getLogger("citybrain.storage.writer")
_READING_ORDER = itemgetter(READING_COLUMNS.index("sensor_id"), READING_COLUMNS.index("ts"))
T = TypeVar("T")
COMPONENT = "storage-writer"


class WriterSettings(BaseSettings):
    """One frozen settings object; the environment is read at the entry point only."""

    model_config = SettingsConfigDict(frozen=True, env_prefix="WRITER_", extra="ignore", populate_by_name=True)

    database_url: SecretStr = Field(validation_alias=AliasChoices("database_url", "DATABASE_URL"))
    kafka_bootstrap_servers: str = Field(
        validation_alias=AliasChoices("kafka_bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS")
    )
    # KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_*: SASL as the `writer` principal (citybrain.kafka_security)
    kafka_security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    topic_prefix: str = ""
    db_schema: str = "public"
    group_id: str = "citybrain-storage"
    client_id: str = "citybrain-storage-writer"
    kinds: tuple[str, ...] = ("readings", "hotline", "alerts", "actions", "incidents", "tickets", "kpi", "modes",
                              "dlq")
    batch_size: int = Field(default=5000, ge=1)
    db_connections: int = Field(default=2, ge=1, le=32,
                                description="parts of a batch merged concurrently (split by Kafka partition)")
    split_min_rows: int = Field(default=2000, ge=1, description="a kind's rows below this go as one part")
    batch_timeout_ms: int = Field(default=500, ge=1)
    # the broker holds a fetch until this much is there (or the wait is up): a fetch per
    # record or few cost the writer and Kafka more CPU than the rows (bench.e2e at
    # 3,000/s: writer 9.1 -> ~5 s, Kafka 15.6 -> 10-15 s); storage is not on the alert path
    fetch_min_bytes: int = Field(default=256 * 1024, ge=1)
    fetch_max_wait_ms: int = Field(default=100, ge=0, le=5000)
    retry_initial_s: float = Field(default=0.2, gt=0)
    retry_max_s: float = Field(default=15.0, gt=0)
    maintenance_interval_s: float = Field(default=60.0, ge=0, description="0 disables the plain-path job")
    session_timeout_ms: int = Field(default=10_000, ge=6_000, description="Kafka group session timeout")
    metrics_port: int = 0

    @property
    def topics(self) -> Topics:
        return Topics(prefix=self.topic_prefix)

    def topic_kinds(self) -> dict[str, str]:
        t = self.topics
        by_kind = {"readings": t.readings, "hotline": t.hotline, "alerts": t.alerts, "actions": t.actions_applied,
                   "incidents": t.incidents, "tickets": t.hotline_tickets, "kpi": t.kpi, "modes": t.control_mode, "dlq": t.dlq}
        return {by_kind[k]: k for k in self.kinds}


class WriterMetrics:
    """Counters in their own registry, so several writers (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rows_written = Counter("citybrain_storage_rows_written_total", "rows newly written", ["table"],
                                    registry=r)
        self.duplicates = Counter("citybrain_storage_duplicates_skipped_total",
                                  "rows already stored (or an older revision) and skipped", ["table"], registry=r)
        self.dead_lettered = Counter("citybrain_storage_dead_lettered_total", "records sent to the DLQ",
                                     ["reason"], registry=r)
        self.retries = Counter("citybrain_storage_retries_total", "transient failures retried", registry=r)
        self.batches = Counter("citybrain_storage_batches_total", "batches made durable and committed",
                               registry=r)
        self.consumed = Counter("citybrain_storage_records_consumed_total", "Kafka records consumed",
                                registry=r)
        self.last_commit = Gauge("citybrain_storage_last_commit_timestamp_seconds",
                                 "wall time of the last offset commit", registry=r)

    def serve(self, port: int) -> None:
        start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                key = sample.name.removeprefix("citybrain_storage_").removesuffix("_total")
                for label in ("table", "reason"):
                    if label in sample.labels:
                        key += ":" + sample.labels[label]
                out[key] = out.get(key, 0) + sample.value
        return out

    def total(self, name: str) -> float:
        return sum(v for k, v in self.snapshot().items() if k == name or k.startswith(name + ":"))


# ----------------------------------------------------------------- database path
async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Create this session's staging tables (temporary, emptied at commit)."""
    for spec in SPECS.values():
        await conn.execute(spec.stage_ddl())


async def ensure_partitions(conn: asyncpg.Connection, spec: TableSpec, rows: list[Row]) -> None:
    """Plain path: create the partitions a batch needs before it is merged."""
    for table, index in spec.partitioned:
        await conn.fetchval("SELECT cb_ensure_partitions($1::regclass, $2::timestamptz[])", table,
                            partition_probes(rows, index))


async def write_rows(conn: asyncpg.Connection, spec: TableSpec, rows: list[Row], flavor: Flavor) -> int:
    """COPY into staging + idempotent merge, in one transaction. Returns the
    number of rows newly written (the rest were already there)."""
    if flavor == "plain":
        await ensure_partitions(conn, spec, rows)
    if spec.kind == "readings":
        # in key order (sensor_id, ts; migration 0010): consecutive inserts reach the same
        # index leaf and heap pages hold one sensor's run (bench.store: ~20-40% more rows/s)
        rows = sorted(rows, key=_READING_ORDER)
    async with conn.transaction():
        await conn.copy_records_to_table(spec.stage, records=rows, columns=spec.columns)
        return int(await conn.fetchval(spec.merge_sql(flavor)))


def split_by_partition(keys: list[tuple[str, int]], parts: int, min_rows: int) -> list[list[int]]:
    """Indexes of `keys` (each item's topic and partition) in at most `parts`
    groups of similar size; a partition never spans two groups, and fewer than
    `min_rows` items stay one group (a merge costs a round trip or three)."""
    if parts <= 1 or len(keys) < min_rows:
        return [list(range(len(keys)))] if keys else []
    by_tp: dict[tuple[str, int], list[int]] = {}
    for i, tp in enumerate(keys):
        by_tp.setdefault(tp, []).append(i)
    bins: list[list[int]] = [[] for _ in range(min(parts, len(by_tp)))]
    # largest partition first into the emptiest group: close to even for the few partitions a batch holds
    for idx in sorted(by_tp.values(), key=len, reverse=True):
        min(bins, key=len).extend(idx)
    return [sorted(b) for b in bins if b]


async def _all_or_first_error(coros: list[Awaitable[T]]) -> list[T]:
    """Await every coroutine; on the first failure cancel the rest and raise it
    (a part left running would write on a connection the next batch reuses)."""
    if len(coros) == 1:
        return [await coros[0]]
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        pending = [t for t in tasks if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending)
    for t in tasks:
        exc = None if t.cancelled() else t.exception()
        if exc is not None:
            raise exc
    return [t.result() for t in tasks]


# ----------------------------------------------------------------- the writer
@dataclass(slots=True)
class _Item:
    record: Any  # aiokafka ConsumerRecord
    row: Row


@dataclass(slots=True)
class _Slot:
    """One database connection of the writer; a part of a batch is merged on one slot."""

    conn: asyncpg.Connection | None = None


class _Stopped(Exception):
    """Stop was asked while waiting out a transient failure."""


class StorageWriter:
    def __init__(self, settings: WriterSettings, metrics: WriterMetrics | None = None,
                 clock: Callable[[], datetime] = now_utc) -> None:
        self.settings = settings
        self.metrics = metrics or WriterMetrics()
        self.clock = clock
        self._topic_kinds = settings.topic_kinds()
        self._slots = [_Slot() for _ in range(settings.db_connections)]
        self._flavor: Flavor | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._paused = False
        self._polling = False

    # ------------------------------------------------------------ lifecycle
    async def start(self, stop: asyncio.Event) -> None:
        s = self.settings
        await self._retrying(lambda: self._db(self._slots[0]), stop, self._slots[0])
        self._producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, acks="all",
                                          enable_idempotence=True, client_id=f"{s.client_id}-dlq",
                                          **s.kafka_security.aiokafka_kwargs())
        await self._producer.start()
        # subscribe only to topics that exist: a consumer that subscribes to a
        # missing topic only notices it at its next metadata refresh (minutes)
        await ensure_topics(s.kafka_bootstrap_servers, pipeline_topics(s.topics, 4),
                            client_kwargs=s.kafka_security.aiokafka_kwargs())
        if "modes" in s.kinds:  # made as the worker makes it: one partition, compacted
            await ensure_control_topic(s.kafka_bootstrap_servers, s.topics.control_mode,
                                       s.kafka_security.aiokafka_kwargs())
        self._consumer = AIOKafkaConsumer(
            *self._topic_kinds,
            **s.kafka_security.aiokafka_kwargs(),
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.group_id,
            client_id=s.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.batch_size,
            max_poll_interval_ms=300_000,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=min(3000, s.session_timeout_ms // 3),
            fetch_min_bytes=s.fetch_min_bytes,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
        )
        await self._consumer.start()

    async def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
        for slot in self._slots:
            await self._drop_connection(slot)

    async def run(self, stop: asyncio.Event) -> None:
        maintenance: asyncio.Task[None] | None = None
        try:
            await self.start(stop)
            if self.settings.maintenance_interval_s > 0 and self._flavor == "plain":
                maintenance = asyncio.create_task(self._maintenance_loop(stop), name="storage-maintenance")
            while not stop.is_set():
                records = await self._collect(stop)
                if records:
                    await self.flush(records, stop)
        except _Stopped:
            log.warning("stopped while the database was unavailable; the uncommitted batch will be redelivered")
        finally:
            if maintenance is not None:
                maintenance.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await maintenance
            await self.close()

    # ------------------------------------------------------------ consuming
    async def _collect(self, stop: asyncio.Event) -> list[Any]:
        assert self._consumer is not None
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.batch_timeout_ms / 1000
        out: list[Any] = []
        # resumed here, not when a retry succeeds: with parts of a batch retrying
        # concurrently, one resuming while another polls would fetch (and lose) records
        self._resume()
        while len(out) < s.batch_size and not stop.is_set():
            left = deadline - loop.time()
            if left <= 0:
                break
            got = await self._consumer.getmany(timeout_ms=max(1, int(min(left, 0.2) * 1000)),
                                               max_records=s.batch_size - len(out))
            for recs in got.values():
                out.extend(recs)
        self.metrics.consumed.inc(len(out))
        return out

    async def flush(self, records: list[Any], stop: asyncio.Event) -> None:
        """Make a batch durable (rows and dead letters), then commit its offsets."""
        by_kind: dict[str, list[_Item]] = {}
        dead: list[tuple[Any, str, str, str]] = []  # record, reason, message, stage
        for rec in records:
            kind = self._topic_kinds.get(rec.topic)
            if kind is None:
                continue
            spec = SPECS[kind]
            try:
                row = self._decode(spec, rec)
            except _Rejected as rej:
                dead.append((rec, rej.reason, rej.message, "decode"))
                continue
            by_kind.setdefault(kind, []).append(_Item(rec, row))
        for kind, items in by_kind.items():
            spec = SPECS[kind]
            groups = split_by_partition([(i.record.topic, i.record.partition) for i in items], len(self._slots),
                                        self.settings.split_min_rows)
            parts = await _all_or_first_error([
                self._write_isolating(spec, [items[i] for i in group], stop, self._slots[n])
                for n, group in enumerate(groups)])
            written = sum(w for w, _ in parts)
            bad = [d for _, ds in parts for d in ds]
            self.metrics.rows_written.labels(spec.table).inc(written)
            self.metrics.duplicates.labels(spec.table).inc(len(items) - written - len(bad))
            dead.extend(bad)
        if dead:
            await self._retrying(lambda: self._dead_letter(dead), stop)
        await self._commit(records)

    def _decode(self, spec: TableSpec, rec: Any) -> Row:
        if spec.kind == "dlq":
            return dlq_row(rec.topic, rec.partition, rec.offset, rec.key, rec.value, rec.headers or (),
                           rec.timestamp)
        if rec.value is None:
            raise _Rejected("empty_payload", "record has no value")
        assert spec.model is not None and spec.to_row is not None
        try:
            model = spec.model.model_validate_json(rec.value)
        except ValidationError as exc:
            reason = "malformed_json" if any(e["type"] == "json_invalid" for e in exc.errors()) \
                else "invalid_payload"
            raise _Rejected(reason, str(exc)) from exc
        return spec.to_row(model)

    async def _commit(self, records: list[Any]) -> None:
        assert self._consumer is not None
        offsets: dict[TopicPartition, int] = {}
        for rec in records:
            tp = TopicPartition(rec.topic, rec.partition)
            offsets[tp] = max(offsets.get(tp, 0), rec.offset + 1)
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # partitions moved to another member: it re-reads them, the merge makes that harmless
            log.warning("offset commit refused after a rebalance (%s); redelivery is idempotent", exc)
            return
        self.metrics.batches.inc()
        self.metrics.last_commit.set(self.clock().timestamp())

    # ------------------------------------------------------------ writing
    async def _db(self, slot: _Slot) -> asyncpg.Connection:
        if slot.conn is None or slot.conn.is_closed():
            conn = await connect(self.settings.database_url.get_secret_value(), self.settings.db_schema,
                                 self.settings.client_id, timeout=10)
            try:
                self._flavor = await current_flavor(conn)
                await prepare_connection(conn)
            except BaseException:
                await conn.close()
                raise
            slot.conn = conn
        return slot.conn

    async def _drop_connection(self, slot: _Slot) -> None:
        conn, slot.conn = slot.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
            if not conn.is_closed():
                conn.terminate()

    async def _write_once(self, spec: TableSpec, rows: list[Row], slot: _Slot) -> int:
        conn = await self._db(slot)
        assert self._flavor is not None
        return await write_rows(conn, spec, rows, self._flavor)

    async def _write_isolating(self, spec: TableSpec, items: list[_Item], stop: asyncio.Event, slot: _Slot,
                               ) -> tuple[int, list[tuple[Any, str, str, str]]]:
        """Write; on a permanent error bisect until the bad records are alone."""
        rows = [i.row for i in items]
        try:
            return await self._retrying(lambda: self._write_once(spec, rows, slot), stop, slot), []
        except PermanentError as exc:
            if len(items) == 1:
                cause = exc.__cause__ or exc
                log.warning("dead-lettering %s record at %s/%d/%d: %s", spec.kind, items[0].record.topic,
                            items[0].record.partition, items[0].record.offset, exc)
                return 0, [(items[0].record, errors.reason(cause), str(cause), "write")]
        mid = len(items) // 2
        w1, d1 = await self._write_isolating(spec, items[:mid], stop, slot)
        w2, d2 = await self._write_isolating(spec, items[mid:], stop, slot)
        return w1 + w2, d1 + d2

    async def _retrying(self, fn: Callable[[], Awaitable[T]], stop: asyncio.Event, slot: _Slot | None = None) -> T:
        """Run `fn`; transient failures are retried with backoff while the
        consumer is paused (and still polled, so it keeps its group membership).
        `slot`: the connection `fn` uses, dropped after a database failure."""
        delay = self.settings.retry_initial_s
        while True:
            try:
                result = await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                kind = errors.classify(exc) if not isinstance(exc, KafkaError) else "transient"
                if kind == "fatal" and slot is not None and slot.conn is not None and slot.conn.is_closed():
                    kind = "transient"  # whatever it said, the connection died under it
                if kind != "transient":
                    raise errors.wrap(exc) from exc
                self.metrics.retries.inc()
                log.warning("transient failure (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
                if slot is not None and not isinstance(exc, KafkaError):
                    await self._drop_connection(slot)
                await self._pause_for(delay, stop)
                delay = min(delay * 2, self.settings.retry_max_s)
                continue
            return result

    async def _pause_for(self, delay: float, stop: asyncio.Event) -> None:
        consumer = self._consumer
        if consumer is not None:
            assigned = consumer.assignment()
            if assigned:
                consumer.pause(*assigned)
                self._paused = True
            if not self._polling:  # parts retrying at once: one of them polls
                self._polling = True
                try:
                    with contextlib.suppress(KafkaError):
                        await consumer.getmany(timeout_ms=0)
                finally:
                    self._polling = False
        if stop.is_set():
            raise _Stopped
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            raise _Stopped

    def _resume(self) -> None:
        if self._paused and self._consumer is not None:
            self._consumer.resume(*self._consumer.assignment())
            self._paused = False

    async def _dead_letter(self, dead: list[tuple[Any, str, str, str]]) -> None:
        assert self._producer is not None
        topic = self.settings.topics.dlq
        at = self.clock()
        futures = []
        for rec, reason, message, stage in dead:
            headers = dlq_headers(reason=reason, message=message, source=f"{rec.topic}/{rec.partition}/{rec.offset}",
                                  component=COMPONENT, stage=stage, at=at, partition=rec.partition,
                                  offset=rec.offset)
            futures.append(await self._producer.send(topic, value=rec.value, key=rec.key, headers=headers))
        await asyncio.gather(*futures)
        for _, reason, _, _ in dead:
            self.metrics.dead_lettered.labels(reason).inc()

    # ------------------------------------------------------------ maintenance
    async def _maintenance_loop(self, stop: asyncio.Event) -> None:
        from storage.maintenance import run_maintenance

        s = self.settings
        while not stop.is_set():
            try:
                conn = await connect(s.database_url.get_secret_value(), s.db_schema, f"{s.client_id}-maint",
                                     timeout=10)
                try:
                    report = await run_maintenance(conn, self.clock())
                    log.info("maintenance: %s", report)
                finally:
                    await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("maintenance failed (%s: %s); next run in %.0fs", type(exc).__name__, exc,
                            s.maintenance_interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), s.maintenance_interval_s)


class _Rejected(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


async def run_writer(settings: WriterSettings, stop: asyncio.Event, metrics: WriterMetrics | None = None) -> None:
    """Consume and write until `stop` is set; returns after the batch in hand
    is flushed and committed. Raises ConfigError on a fatal (schema/grant) error."""
    writer = StorageWriter(settings, metrics)
    if settings.metrics_port:
        writer.metrics.serve(settings.metrics_port)
    await writer.run(stop)


__all__ = ["StorageWriter", "TransientError", "WriterMetrics", "WriterSettings", "run_writer", "split_by_partition",
           "write_rows"]
