"""The Faust app. Agents stay thin: take a batch of events, call the pure
detection/alerting/lifecycle code, send what it returns.

`create_app` builds one `WorkerContext` (streams.context) and hands it to each
agent module's `register(ctx)` of the worker's role (`ROLES`; a new module adds
itself there): streams.detect_agent (readings -> detection revisions,
per-sensor state), streams.lifecycle_agent (revisions and actions -> alerts,
fan-out, timers), streams.hotline_agents (tickets, the three rates, incidents).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import faust
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from citybrain.kafka_security import KafkaSecurity
from citybrain.topics import Topics
from streams import detect_agent, faust_fixes, hotline_agents, lifecycle_agent
from streams.context import LifecycleClock, ModeBoard, WorkerContext
from streams.lifecycle import DEFAULT_POLICY_FILE, load_policy
from streams.routing import DEFAULT_RULES, RulesHolder

log = logging.getLogger("citybrain.streams")


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
    # the detect stage's batches off the fast path (only a backlog fills them: live
    # fetches are small). Each touched sensor's state is encoded and sent to the
    # changelog once per batch, so a longer batch sends fewer: in bench.worker
    # (100,000 readings, 1,000 sensors, 4 partitions) 1,000 -> 4,000 took the
    # changelog records from 68 % to 25 % of the readings; the CPU per reading
    # went from 71.2 us to 67.4 us (4,000) and 64.9 us (10,000), medians of 3 runs
    detect_batch_max: int = 10_000
    # Faust's standby replicas: each worker also keeps a copy of the tables of
    # partitions another worker owns (reading their changelogs as they are
    # written), so a failover resumes without recovering from the changelog
    standby_replicas: int = Field(default=1, ge=0)
    # offsets are committed every second by Faust's timer, and also inline by the
    # consumer's delivery loop once this many records are acked since the last commit
    commit_every: int = 2000
    batch_within_s: float = 0.02
    # readings straight from the consumer's fetched batches to the detect stage
    # (streams.detect_agent), ~1.6x cheaper a reading; false: through the detect
    # agent's Faust stream (the same stage, Faust's per-event machinery)
    fast_path: bool = True
    data_dir: str = ".run/faust"
    tick_every_s: float = 10.0
    lateness_s: float = 600.0
    # SLA timers: the wall clock live, the event-time clock in replay
    clock: Literal["wall", "event"] = "wall"
    # a replay worker (event clock): stages follow and forward the engine's progress
    # markers (streams.markers), and SLA timers fire only once no earlier record can come
    progress_markers: bool = False
    lifecycle_tick_s: float = 1.0
    # tickets, KPIs and incidents are slow-moving: a longer batching window
    # (take_events wakes every `within` even when idle) saves the idle CPU
    hotline_batch_within_s: float = 0.2
    alert_retention_s: float = 7 * 86400  # a finished alert's lifecycle state is kept this long after its last change
    rules_poll_s: float = 2.0
    # the event loop: uvloop's callbacks, tasks and socket reads cost less than asyncio's
    # (the worker's loop turns over several times per reading); "asyncio" for the standard one
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # which agents this process runs (ROLES): "all" in one process, or the two halves
    # in two, "detect" (readings -> detections) and "alerts" (lifecycle, fan-out,
    # hotline, incidents), so the alert path never waits behind the readings' CPU
    role: Literal["all", "detect", "alerts"] = "all"
    # how long a send waits for more records to share its batch; the sensor states go as
    # ready-made batches (streams.changelog), so this is the wait of each detection and alert
    # (bench.e2e at 10,000/s, halves apart: detection -> department p50 14-16 ms with 5, 10-13 with 1)
    producer_linger_ms: int = Field(default=1, ge=0)

    @property
    def faust_app_id(self) -> str:
        """A half runs as its own Faust app (its own consumer group and changelog
        topics): Kafka would otherwise spread every topic's partitions over both."""
        return self.app_id if self.role == "all" else f"{self.app_id}-{self.role}"


Registrar = Callable[[WorkerContext], None]
# Each agent module: `register(ctx)` declares its agents, tables and timers.
ROLES: dict[str, tuple[Registrar, ...]] = {
    "all": (detect_agent.register, lifecycle_agent.register, hotline_agents.register),
    "detect": (detect_agent.register,),
    "alerts": (lifecycle_agent.register, hotline_agents.register),
}


def create_app(settings: WorkerSettings, clock: Callable[[], datetime]) -> faust.App:
    faust_fixes.apply()
    topics = Topics(prefix=settings.topic_prefix)
    app = faust.App(
        settings.faust_app_id,
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
        producer_linger_ms=settings.producer_linger_ms,
        producer_max_batch_size=512 * 1024,
        broker_commit_every=settings.commit_every,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=8192,
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=60.0,
        table_standby_replicas=settings.standby_replicas,
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
    for register in ROLES[settings.role]:
        register(ctx)
    # every role detects or routes: each follows the emergency modes and the rules file
    lifecycle_agent.register_mode_board(ctx)
    lifecycle_agent.register_rules_reload(ctx)
    app.citybrain_context = ctx  # type: ignore[attr-defined]

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # (mode types receivers as a union mypy cannot match)
    async def close_clients(sender: Any, **kwargs: Any) -> None:
        # the department topics' admin client: left open, its tasks kept the worker's
        # shutdown waiting a second for them (mode's Worker._gather_all) before it cancelled them
        await ctx.close()

    return app


def context_of(app: faust.App) -> WorkerContext:
    """The context `create_app` built (agent tests swap its publishing for fakes)."""
    ctx: WorkerContext = app.citybrain_context  # type: ignore[attr-defined]
    return ctx

