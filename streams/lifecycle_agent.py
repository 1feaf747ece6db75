"""The lifecycle agent: one state per alert_id, fed by detection revisions
(`city.alerts.detected`) and actions (`city.alert.actions`), both keyed by
alert_id and co-partitioned, so every input of one alert reaches the worker
that holds its state. It publishes the current alert to `city.alerts` and each
routed department's copy to `city.alerts.dept.<code>`; refused actions go to
the DLQ with the reason and leave the state untouched; accepted ones are
forwarded to `city.alert.actions.applied` (what storage records as the alert's
action history, so a refused action never shows up there).

SLA timers: a due-time index (a heap of (due, alert_id)) rebuilt from the
table after each recovery and kept current on every write, so a tick touches
only the alerts whose time has come. `now` is the worker's LifecycleClock
(wall clock live, event time in replay).

Also here: the emergency mode board (every worker folds the whole compacted
`city.control.mode` topic) and the rules hot reload (mtime poll; a bad file
is logged with its line and the old rules stay in force).

The state transitions are in `LifecycleCore`, pure and synchronous, so the
agent only moves bytes and the same code runs under Faust's test_context.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from schemas import Alert, AlertAction, AlertStatus
from streams.context import WorkerContext
from streams.escalation import Notice
from streams.lifecycle import OPEN_STATES, Lifecycle, Rejection, Step

log = logging.getLogger("citybrain.streams.lifecycle")

Kind = Literal["detected", "action"]


@dataclass(slots=True)
class Outcome:
    alerts: list[Alert] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    rejection: Rejection | None = None


class LifecycleCore:
    """State-as-data around `Lifecycle`: a dict of alert_id -> state JSON bytes
    (the Faust table's data, or a plain dict in tests) and the due-time index."""

    def __init__(self, lifecycle: Lifecycle, store: Any, retention_s: float = 7 * 86400) -> None:
        self.lc = lifecycle
        self.store = store  # MutableMapping[bytes, bytes]
        self.retention_s = retention_s  # a finished alert (cleared, resolved, closed) quiet this long is dropped
        self._heap: list[tuple[datetime, bytes]] = []
        self._due: dict[bytes, datetime] = {}

    # ------------------------------------------------------------------ index

    def rebuild_index(self) -> int:
        self._heap, self._due = [], {}
        for key, raw in list(self.store.items()):
            if raw:
                self._index(key, orjson.loads(raw))
        return len(self._due)

    def _expires_at(self, st: dict[str, Any]) -> datetime | None:
        if AlertStatus(st["status"]) in OPEN_STATES or not st["history"]:
            return None
        return datetime.fromisoformat(st["history"][-1]["at"]) + timedelta(seconds=self.retention_s)

    def _index(self, key: bytes, st: dict[str, Any] | None) -> None:
        due = self.lc.due_at(st)
        if due is None and st is not None:
            due = self._expires_at(st)
        if due is None:
            self._due.pop(key, None)
        elif self._due.get(key) != due:
            self._due[key] = due
            heapq.heappush(self._heap, (due, key))

    def next_due(self) -> datetime | None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # stale: superseded or no longer due
        return self._heap[0][0] if self._heap else None

    def _load(self, key: bytes) -> dict[str, Any] | None:
        raw = self.store.get(key)
        return orjson.loads(raw) if raw else None

    def _save(self, key: bytes, st: dict[str, Any]) -> bytes:
        body = orjson.dumps(st)
        self.store[key] = body
        self._index(key, st)
        return body

    # ------------------------------------------------------------------ inputs

    def apply(self, kind: Kind, key: bytes, value: bytes, now: datetime, partition: int) -> tuple[Outcome, bytes | None]:
        """One input record. Returns (what to publish, the new state bytes to
        changelog or None when the state did not change). Raises
        ValidationError for a payload that is not an Alert / AlertAction."""
        prev = self._load(key)
        step: Step
        new: dict[str, Any] | None
        if kind == "detected":
            alert = Alert.model_validate_json(value)
            new, step = self.lc.on_alert(prev, alert, now)
        else:
            action = AlertAction.model_validate_json(value)
            if action.alert_id.encode() != key:
                return Outcome(rejection=Rejection("invalid_action", f"key {key!r} is not the action's alert_id "
                                                   f"{action.alert_id!r}")), None
            new, step = self.lc.on_action(prev, action)
        out = Outcome(step.alerts, step.notices, step.rejection)
        if new is None or new is prev or step.duplicate or step.rejection is not None:
            return out, None
        new["p"] = partition
        return out, self._save(key, new)

    def tick(
        self, now: datetime, owned: Callable[[int], bool] | None = None
    ) -> list[tuple[bytes, int, Outcome, bytes | None]]:
        """Every alert whose due time has passed, once each: (key, partition,
        outcome, new state bytes, or None when the alert was dropped after its
        retention). `owned(partition)` filters out alerts whose partition this
        worker no longer holds."""
        keys: list[bytes] = []
        while (due := self.next_due()) is not None and due <= now:
            _, key = heapq.heappop(self._heap)
            self._due.pop(key, None)
            keys.append(key)
        out: list[tuple[bytes, int, Outcome, bytes | None]] = []
        for key in keys:
            st = self._load(key)
            if st is None:
                continue
            p = int(st.get("p", 0))
            if owned is not None and not owned(p):
                continue
            expires = self._expires_at(st)
            if expires is not None and expires <= now:
                del self.store[key]
                out.append((key, p, Outcome(), None))
                continue
            new, step = self.lc.tick(st, now)
            if new is None:
                continue
            if new is st:  # nothing changed: keep it indexed, but never at or before `now` again
                due = self.lc.due_at(st)
                if due is not None and due > now:
                    self._index(key, st)
                continue
            new["p"] = p
            out.append((key, p, Outcome(step.alerts, step.notices, None), self._save(key, new)))
        return out


def register(ctx: WorkerContext) -> None:
    app, s = ctx.app, ctx.settings
    table = app.Table("alert-state", key_type=bytes, value_type=bytes, partitions=s.partitions)
    core = LifecycleCore(Lifecycle(ctx.rules, ctx.policy), table.data, s.alert_retention_s)
    lock = asyncio.Lock()  # one writer of the alert states at a time: the agents or the timer
    detected_name = ctx.topics.alerts_detected

    @table.on_recover
    async def _rebuild() -> None:
        n = core.rebuild_index()
        log.info("lifecycle: %d alerts with a pending timer after recovery", n)

    def owned(partition: int) -> bool:
        from faust.types import TP

        try:
            return TP(detected_name, partition) in app.consumer.assignment()
        except Exception:  # consumer not started: nothing is ours yet
            return False

    async def emit(outcome: Outcome) -> None:
        for alert in outcome.alerts:
            await ctx.publish_alert(alert)
        for n in outcome.notices:
            log.info("lifecycle %s %s: %s (%s)", n.kind, n.alert_id, n.reason, ", ".join(n.departments))
            await ctx.publish_notice(n.alert_id.encode(), orjson.dumps(n.as_dict()))

    async def run_due(is_owned: Callable[[int], bool] = owned) -> None:
        if not ctx.clock.started:
            return
        async with lock:
            for key, partition, outcome, body in core.tick(ctx.clock.now(), is_owned):
                # body None: a tombstone, as Faust's own table deletion sends
                table.send_changelog(partition, key, body, value_serializer="raw")
                await emit(outcome)

    async def handle(kind: Kind, events: list[Any]) -> None:
        async with lock:
            for event in events:
                msg = event.message
                try:
                    if msg.key is None:
                        raise ValueError("a record without a key (alert_id)")
                    # live, a record is applied at the wall clock (SLA clocks start at dispatch);
                    # on the event clock (replay) at its own event time (a detection's last_seen,
                    # an action's ts), not at the worker-wide maximum, which depends on how the
                    # partitions interleave: the replay dispatches and escalates as live did
                    at = ctx.clock.now()
                    if ctx.clock.kind == "event":
                        ts = orjson.loads(msg.value).get("last_seen" if kind == "detected" else "ts")
                        if isinstance(ts, str):
                            at = datetime.fromisoformat(ts)
                        ctx.clock.observe(at)
                        # timers due before this record fire before it, whatever else ran ahead
                        for key, partition, due, due_body in core.tick(at, owned):
                            table.send_changelog(partition, key, due_body, value_serializer="raw")
                            await emit(due)
                    outcome, body = core.apply(kind, msg.key, msg.value, at, msg.partition)
                except (ValidationError, ValueError, orjson.JSONDecodeError) as exc:
                    text = exc.errors(include_url=False)[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
                    await ctx.dead_letter(event, f"invalid_{'alert' if kind == 'detected' else 'action'}",
                                          str(text), "lifecycle")
                    continue
                except Exception as exc:  # one bad record must not stop or silently ack the stream
                    log.exception("lifecycle failed")
                    await ctx.dead_letter(event, "processing_error", f"{type(exc).__name__}: {exc}", "lifecycle")
                    continue
                if outcome.rejection is not None:
                    await ctx.dead_letter(event, outcome.rejection.reason, outcome.rejection.message, "lifecycle")
                    continue
                if body is not None:
                    table.send_changelog(msg.partition, msg.key, body)
                    if kind == "action":
                        await ctx.publish_applied_action(msg.key, msg.value)
                await emit(outcome)
        if ctx.clock.kind == "event":
            await run_due()  # event time moves only with records: tick right after them

    # two agents on co-partitioned topics (both keyed by alert_id), one table:
    # partition p of both topics and of the table's changelog go to the same worker
    def topic(name: str) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, value_serializer="raw", partitions=s.partitions)

    # one record at a time: alerts and actions are few, and a batching window
    # (take_events with `within`) wakes the agent hundreds of times a second
    # even when idle; this way an alert waits for nothing
    @app.agent(topic(detected_name), name="lifecycle-detected")
    async def lifecycle_detected(stream: Any) -> None:
        async for event in stream.events():
            await handle("detected", [event])

    @app.agent(topic(ctx.topics.actions), name="lifecycle-actions")
    async def lifecycle_actions(stream: Any) -> None:
        async for event in stream.events():
            await handle("action", [event])

    @app.timer(interval=s.lifecycle_tick_s)
    async def lifecycle_tick() -> None:
        await run_due()

    ctx.extras["lifecycle"] = LifecycleHandles(core, lifecycle_detected, lifecycle_actions, run_due)
    register_mode_board(ctx)
    register_rules_reload(ctx)


@dataclass(frozen=True, slots=True)
class LifecycleHandles:
    """For tests and tools: the core, the agents and the due-timer step."""

    core: LifecycleCore
    detected_agent: Any
    actions_agent: Any
    run_due: Any


def register_mode_board(ctx: WorkerContext) -> None:
    """Every worker reads the whole compacted `city.control.mode` topic (the
    latest switch per scope) and follows it; detection stamps the mode of the
    alert's area into its evidence."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    from streams.emergency import ModeSwitch, switch

    s = ctx.settings
    name = ctx.topics.control_mode

    async def ensure() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap_servers, client_id=f"{s.app_id}-mode",
                                    **s.kafka_security.aiokafka_kwargs())
        await admin.start()
        try:
            if name not in set(await admin.list_topics()):
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([NewTopic(name, 1, 1, topic_configs={"cleanup.policy": "compact"})])
        finally:
            await admin.close()

    @ctx.app.task
    async def follow_mode() -> None:
        while True:
            consumer = None
            try:
                await ensure()
                consumer = AIOKafkaConsumer(name, bootstrap_servers=s.kafka_bootstrap_servers, group_id=None,
                                            auto_offset_reset="earliest", enable_auto_commit=False,
                                            metadata_max_age_ms=5000, client_id=f"{s.app_id}-mode",
                                            **s.kafka_security.aiokafka_kwargs())
                await consumer.start()
                async for m in consumer:
                    try:
                        sw = ModeSwitch.from_dict(orjson.loads(m.value))
                    except (ValueError, KeyError, TypeError) as exc:
                        log.warning("mode switch at offset %d ignored: %s", m.offset, exc)
                        continue
                    new, res = switch(ctx.modes.state, sw, ctx.modes.geo)
                    if not res.accepted:
                        log.warning("mode switch %s refused: %s", sw.event_id, res.message)
                        continue
                    ctx.modes.state = new
                    if res.changed:
                        log.warning("mode: %s is now %s (by %s)", sw.scope, sw.mode, sw.actor)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka away: keep the last known modes and try again
                log.warning("mode topic %s: %s; retrying", name, exc)
                await asyncio.sleep(2)
            finally:
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        await consumer.stop()


def register_rules_reload(ctx: WorkerContext) -> None:
    """Poll the rules file's mtime; a valid change is in force for the next
    record, an invalid one is logged (file, line, problem) and ignored."""
    path = Path(ctx.settings.rules_file)

    def stamp() -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    seen = {"stamp": stamp()}

    @ctx.app.timer(interval=ctx.settings.rules_poll_s)
    async def reload_rules() -> None:
        now = stamp()
        if now is None or now == seen["stamp"]:
            return
        seen["stamp"] = now
        if ctx.rules.reload(path):
            t = ctx.rules.table
            log.warning("routing rules reloaded from %s (%d rules, fingerprint %s)", path, len(t.rules), t.fingerprint)
        else:
            log.error("routing rules rejected, the old rules stay in force: %s", ctx.rules.last_error)
