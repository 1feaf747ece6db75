"""The Faust app. Agents stay thin: take a batch of events, call the pure
detection/alerting/lifecycle code, send what it returns.

`create_app` builds one `WorkerContext` (streams.context) and hands it to each
agent module's `register(ctx)`; a new module adds one line to `REGISTRARS`.

Per-sensor state lives in a changelog-backed table keyed by the raw
sensor_id bytes; each key's changelog record goes to its source partition
(Faust's co-partitioning), so a restarted or rebalanced worker recovers
exactly the state of the partitions it owns. With `take_events` batching the
table is written once per key per batch, with the partition given
explicitly rather than through Faust's current-event context.

A record that cannot be processed is dead-lettered with a reason; it is never
allowed to raise out of the agent (an exception there would ack it silently,
faust-streaming#315).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import faust
import orjson
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from citybrain.errors import RejectedPayload
from citybrain.kafka_security import KafkaSecurity
from citybrain.topics import Topics
from schemas import Alert, SensorReading
from streams import faust_fixes, hotline_agents, lifecycle_agent
from streams.changelog import ChangelogBatcher
from streams.context import EPOCH, LifecycleClock, ModeBoard, WorkerContext
from streams.lifecycle import DEFAULT_POLICY_FILE, load_policy
from streams.pipeline import ReadingProcessor
from streams.routing import DEFAULT_RULES, RulesHolder

log = logging.getLogger("citybrain.streams")

DECODED_MAX = 20_000  # decoded sensor states kept between batches (~10 kB each)


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, env_prefix="WORKER_", extra="ignore")

    app_id: str = "citybrain-streams"
    kafka_bootstrap_servers: str = Field(validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    # KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_*: SASL as the `worker` principal (citybrain.kafka_security)
    kafka_security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 3.0
    topic_prefix: str = ""
    partitions: int = 4
    rules_file: str = str(DEFAULT_RULES)
    policy_file: str = str(DEFAULT_POLICY_FILE)
    batch_max: int = 1000
    batch_within_s: float = 0.02
    data_dir: str = ".run/faust"
    tick_every_s: float = 10.0
    lateness_s: float = 600.0
    # SLA timers: the wall clock live, the event-time clock in replay
    clock: Literal["wall", "event"] = "wall"
    lifecycle_tick_s: float = 1.0
    # tickets, KPIs and incidents are slow-moving: a longer batching window
    # (take_events wakes every `within` even when idle) saves the idle CPU
    hotline_batch_within_s: float = 0.2
    alert_retention_s: float = 7 * 86400  # a finished alert's lifecycle state is kept this long after its last change
    rules_poll_s: float = 2.0
    # the event loop: uvloop's callbacks, tasks and socket reads cost less than asyncio's
    # (the worker's loop turns over several times per reading); "asyncio" for the standard one
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"


def register_detect(ctx: WorkerContext) -> None:
    """Readings -> detection engine -> alert revisions (one open alert per rule and subject)."""
    app, settings = ctx.app, ctx.settings
    readings_topic = app.topic(
        ctx.topics.readings, key_type=bytes, value_type=bytes, value_serializer="raw", partitions=settings.partitions
    )
    state = app.Table("sensor-state", key_type=bytes, value_type=bytes, partitions=settings.partitions)
    detected_topic = app.topic(ctx.topics.alerts_detected, key_type=bytes, value_type=bytes, value_serializer="raw")
    processor = ReadingProcessor(ctx.rules.table, mode_of=ctx.modes.mode_for, emergency=ctx.policy.emergency)
    # Event-time progress PER SOURCE PARTITION: a worker consumes its
    # partitions unevenly (catching up, replaying at full speed), so a
    # worker-wide maximum would make the sensors of a lagging partition look
    # silent; a partition's own maximum depends only on its own, ordered input.
    watermarks: dict[int, datetime] = {}
    # key -> (the bytes this agent last stored, that state decoded): spares an orjson.loads per reading
    decoded: dict[bytes, tuple[bytes, dict[str, Any]]] = {}
    changelog = ChangelogBatcher(app, state)

    ctx.extras["detected_topic"] = detected_topic

    async def publish(alert: Alert) -> None:
        await ctx.publish_detected(alert)

    def current_rules() -> None:
        # hot reload: the holder swaps its table; the processor reads it per batch
        processor.routing = ctx.rules.table

    @app.agent(readings_topic, name="detect")
    async def detect(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            current_rules()
            touched: dict[bytes, tuple[int, dict[str, Any]]] = {}
            for event in events:
                try:
                    reading = SensorReading.model_validate_json(event.message.value)
                except ValidationError as exc:
                    await ctx.dead_letter(event, "invalid_reading", str(exc.errors(include_url=False)[0]["msg"]),
                                          "detect")
                    continue
                key = reading.sensor_id.encode()
                try:
                    st: dict[str, Any] | None
                    held = touched.get(key)
                    if held is not None:
                        st = held[1]
                    else:
                        raw = state.data.get(key)
                        cached = decoded.get(key)
                        # the same bytes object as this agent last stored: its decoded form is current
                        # (a recovery or rebalance puts other objects in the table)
                        st = cached[1] if cached is not None and cached[0] is raw else (
                            orjson.loads(raw) if raw else None)
                    st, alerts = processor.step(st, reading)
                    st["p"] = event.message.partition
                    touched[key] = (event.message.partition, st)
                    if reading.ts > watermarks.get(event.message.partition, EPOCH):
                        watermarks[event.message.partition] = reading.ts
                except RejectedPayload as exc:  # late beyond the allowed lateness, counted in the DLQ
                    await ctx.dead_letter(event, exc.reason, exc.message, "detect")
                    continue
                except Exception as exc:  # one bad record must not stop or silently ack the stream
                    log.exception("processing failed")
                    decoded.pop(key, None)  # the step may have left it half-changed
                    await ctx.dead_letter(event, "processing_error", f"{type(exc).__name__}: {exc}", "detect")
                    continue
                for alert in alerts:
                    await publish(alert)
            if len(decoded) + len(touched) > DECODED_MAX:
                decoded.clear()  # bounded memory for a city of many sensors; the hot ones come back
            changes: list[tuple[int, bytes, bytes]] = []
            for key, (partition, st) in touched.items():
                body = orjson.dumps(st)
                state.data[key] = body
                decoded[key] = (body, st)
                changes.append((partition, key, body))
            if changes:
                await changelog.send(changes)

    ctx.extras["detect"] = DetectHandles(detect, state, changelog)

    @app.timer(interval=settings.tick_every_s)
    async def tick_sensors() -> None:
        """Silence is detected by event-time progress, not by the next reading:
        every few seconds each sensor this worker holds sees its partition's
        watermark (the partition's latest event time minus the lateness)."""
        lateness = timedelta(seconds=settings.lateness_s)
        marks = {p: t - lateness for p, t in watermarks.items()}
        if not marks:
            return
        current_rules()
        changes: list[tuple[int, bytes, bytes]] = []
        for n, key in enumerate(list(state.data.keys())):
            if n % 200 == 199:
                await asyncio.sleep(0)  # let the detect agent run between slices of the sweep
            raw = state.data.get(key)
            if not raw:
                continue
            st = orjson.loads(raw)
            watermark = marks.get(st.get("p", 0))
            if watermark is None:
                continue
            try:
                st, alerts = processor.tick(st, watermark)
            except Exception:
                log.exception("tick failed for %r", key)
                continue
            if alerts:
                for alert in alerts:
                    await publish(alert)
            body = orjson.dumps(st)
            if body != raw:
                state.data[key] = body
                decoded.pop(key, None)
                changes.append((st.get("p", 0), key, body))
        # a key the detect agent wrote again while the sweep yielded has its newer record queued already
        current = [c for c in changes if state.data.get(c[1]) is c[2]]
        if current:
            await changelog.send(current)


@dataclass(frozen=True, slots=True)
class DetectHandles:
    """For tests and tools: the detect agent, its per-sensor state table and
    the sender of that table's changelog records."""

    agent: Any
    table: Any
    changelog: ChangelogBatcher


# Each agent module: `register(ctx)` declares its agents, tables and timers.
REGISTRARS: tuple[Callable[[WorkerContext], None], ...] = (
    register_detect,
    lifecycle_agent.register,
    hotline_agents.register,
)


def create_app(settings: WorkerSettings, clock: Callable[[], datetime]) -> faust.App:
    faust_fixes.apply()
    topics = Topics(prefix=settings.topic_prefix)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{s}" for s in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=settings.kafka_security.faust_credentials(),
        # a worker killed -9 holds its partitions until its session expires: Faust's 60 s
        # default made a restarted or surviving worker wait about a minute (bench.faults)
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        store="memory://",
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        web_enabled=False,
        producer_acks=-1,
        producer_linger_ms=5,
        producer_max_batch_size=512 * 1024,
        broker_commit_every=2000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=8192,
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=60.0,
    )
    rules = RulesHolder(Path(settings.rules_file))
    ctx = WorkerContext(
        app=app,
        settings=settings,
        topics=topics,
        wall=clock,
        clock=LifecycleClock(settings.clock, clock),
        rules=rules,
        policy=load_policy(Path(settings.policy_file)),
        modes=ModeBoard(rules.table.registry.geo),
        dlq_topic=app.topic(topics.dlq, key_type=bytes, value_type=bytes, value_serializer="raw"),
        alerts_topic=app.topic(topics.alerts, key_type=bytes, value_type=bytes, value_serializer="raw"),
    )
    for register in REGISTRARS:
        register(ctx)
    app.citybrain_context = ctx  # type: ignore[attr-defined]
    return app


def context_of(app: faust.App) -> WorkerContext:
    """The context `create_app` built (agent tests swap its publishing for fakes)."""
    ctx: WorkerContext = app.citybrain_context  # type: ignore[attr-defined]
    return ctx

