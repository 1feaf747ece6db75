"""What every agent module of the worker shares: settings, topics, clocks,
the rules in force, the policy, the emergency mode board, dead-lettering and
department fan-out. `create_app` builds one `WorkerContext` and hands it to
each module's `register(ctx)`, which declares that module's agents, tables and
timers on `ctx.app`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from citybrain.dlq import dlq_headers
from citybrain.errors import TransientError
from citybrain.kafka_admin import TopicCreator
from citybrain.topics import Topics
from schemas import Alert
from streams.emergency import NORMAL, ModeInfo, mode_for
from streams.markers import EPOCH
from streams.routing import OPS, Geo, RulesHolder, department_copy

log = logging.getLogger("citybrain.streams")

if TYPE_CHECKING:
    import faust

    from streams.app import WorkerSettings
    from streams.lifecycle import Policy



class LifecycleClock:
    """`now` for SLA timers: the wall clock live; in replay the latest event
    time seen (alerts' last_seen, actions' ts), so a replay escalates exactly
    as live did."""

    def __init__(self, kind: str, wall: Callable[[], datetime]) -> None:
        self.kind = kind
        self.wall = wall
        self.event_time = EPOCH

    def observe(self, ts: datetime) -> None:
        if ts > self.event_time:
            self.event_time = ts

    def now(self) -> datetime:
        return self.wall() if self.kind == "wall" else self.event_time

    @property
    def started(self) -> bool:
        return self.kind == "wall" or self.event_time > EPOCH


@dataclass
class ModeBoard:
    """The emergency mode in force (streams.emergency state), the same on every
    worker: each one folds the whole compacted control topic."""

    geo: Geo | None = None
    state: dict[str, Any] | None = None

    def mode_for(self, district: str) -> ModeInfo:
        return mode_for(self.state, district, self.geo) if self.state else NORMAL


@dataclass
class WorkerContext:
    app: faust.App
    settings: WorkerSettings
    topics: Topics
    wall: Callable[[], datetime]  # for DLQ timestamps and logs
    clock: LifecycleClock  # for SLA timers and deadlines
    rules: RulesHolder
    policy: Policy
    modes: ModeBoard
    dlq_topic: Any
    alerts_topic: Any
    extras: dict[str, Any] = field(default_factory=dict)  # per-module handles (tests, tools)
    _run_time_topics: dict[str, Any] = field(default_factory=dict)
    _topic_creator: TopicCreator | None = None

    @property
    def topic_creator(self) -> TopicCreator:
        """Department topics are created on first use, through one admin client."""
        if self._topic_creator is None:
            s = self.settings
            self._topic_creator = TopicCreator(s.kafka_bootstrap_servers, s.kafka_security.aiokafka_kwargs())
        return self._topic_creator

    async def close(self) -> None:
        """The clients this context opened itself (Faust closes its own)."""
        if self._topic_creator is not None:
            await self._topic_creator.close()

    async def dept_topic(self, code: str) -> Any:
        """`city.alerts.dept.<code>`, created on first use with the pipeline's partition count."""
        return await self.run_time_topic(self.topics.dept(code))

    async def run_time_topic(self, name: str) -> Any:
        """A topic made at run time (a department's alert or ticket topic), created
        on first use with the pipeline's partition count and used only once served."""
        if name not in self._run_time_topics:
            delay = 1.0
            while True:  # blocking the stream beats losing the department's copy
                try:
                    await self.topic_creator.ensure({name: self.settings.partitions})
                    break
                except TransientError as exc:
                    log.warning("department topic %s not ready (%s); retrying in %.0f s", name, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
            self._run_time_topics[name] = self.app.topic(name, key_type=bytes, value_type=bytes, value_serializer="raw")
        return self._run_time_topics[name]

    async def dead_letter(self, event: Any, reason: str, message: str, stage: str) -> None:
        msg = event.message
        headers = dlq_headers(
            reason=reason,
            message=message,
            source=f"kafka:{msg.topic}",
            component=self.settings.app_id,
            stage=stage,
            at=self.wall(),
            partition=msg.partition,
            offset=msg.offset,
        )
        await self.dlq_topic.send(key=msg.key, value=msg.value, headers=headers, force=True)

    async def publish_detected(self, alert: Alert) -> None:
        """A detection revision to `city.alerts.detected`, keyed (and so partitioned)
        by alert_id for the lifecycle agent, which publishes the alert onwards."""
        await self.extras["detected_topic"].send(key=alert.alert_id.encode(), value=alert.to_json(), force=True)

    async def send_to_every_partition(self, topic: Any, key: bytes, value: bytes,
                                      headers: list[tuple[str, bytes]] | None = None) -> None:
        """One record to each of the pipeline's partitions of `topic`, in order
        after what this worker sent there before (a replay's progress markers)."""
        for p in range(self.settings.partitions):
            await topic.send(key=key, value=value, partition=p, headers=headers, force=True)

    def _raw_topic(self, name: str) -> Any:
        """A bytes-in, bytes-out Faust topic of the pipeline, made once per name."""
        key = f"topic:{name}"
        if key not in self.extras:
            self.extras[key] = self.app.topic(name, key_type=bytes, value_type=bytes, value_serializer="raw",
                                              partitions=self.settings.partitions)
        return self.extras[key]

    async def publish_notice(self, key: bytes, value: bytes) -> None:
        """A lifecycle notice (reminder, escalation, overdue, raised) to `city.alert.notices`."""
        await self._raw_topic(self.topics.notices).send(key=key, value=value, force=True)

    async def publish_applied_action(self, key: bytes, value: bytes) -> None:
        """An action the lifecycle accepted, as it arrived, to `city.alert.actions.applied`."""
        await self._raw_topic(self.topics.actions_applied).send(key=key, value=value, force=True)

    async def publish_alert(self, alert: Alert) -> None:
        """The full alert to `city.alerts` (operations center) and to each routed
        department its own copy: only what that department may see."""
        # force=True: send now; Faust flushes the producer before it commits
        # the source offsets, which is the at-least-once we need (its deferred
        # "attachments" are deprecated and held records back until a later commit)
        key = alert.alert_id.encode()
        await self.alerts_topic.send(key=key, value=alert.to_json(), force=True)
        registry = self.rules.table.registry
        for code in alert.departments:
            if code == OPS:
                continue  # ops reads city.alerts
            body = department_copy(alert, code, registry).to_json()
            await (await self.dept_topic(code)).send(key=key, value=body, force=True)
