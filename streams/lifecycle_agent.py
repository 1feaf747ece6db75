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
(wall clock live, event time in replay). A replay worker (progress markers,
streams.markers) fires a record's own alert's due timers before applying it,
and the other alerts' once every source partition has reported past them.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from schemas import Alert, AlertAction, AlertStatus
from streams import markers
from streams.context import WorkerContext
from streams.escalation import Notice
from streams.lifecycle import (
    OPEN_STATES,
    Held,
    HoldPolicy,
    Lifecycle,
    Rejection,
    Step,
    expire,
    hold,
    release,
    unknown_alert_message,
)

log = logging.getLogger("citybrain.streams.lifecycle")

Kind = Literal["detected", "action"]


@dataclass(slots=True)
class Outcome:
    alerts: list[Alert] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    rejection: Rejection | None = None
    held: bool = False  # an action waiting for its alert (event clock only): nothing to publish yet


Source = tuple[str, int, int]  # topic, partition, offset of an input record (for the DLQ)


class LifecycleCore:
    """State-as-data around `Lifecycle`: a dict of alert_id -> state JSON bytes
    (the Faust table's data, or a plain dict in tests) and the due-time index."""

    def __init__(self, lifecycle: Lifecycle, store: Any, retention_s: float = 7 * 86400,
                 hold_policy: HoldPolicy | None = None) -> None:
        self.lc = lifecycle
        self.store = store  # MutableMapping[bytes, bytes]
        self.retention_s = retention_s  # a finished alert (cleared, resolved, closed) quiet this long is dropped
        self._heap: list[tuple[datetime, bytes]] = []
        self._due: dict[bytes, datetime] = {}
        # None (live, the wall clock): an action on an unknown alert is refused at once. On the
        # event clock (replay) it waits for its alert (streams.lifecycle.hold), in memory only:
        # a replay worker is started afresh for its run
        self.hold_policy = hold_policy
        self.held: Held = {}

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

    def holds_for(self, key: bytes) -> bool:
        """Whether an action on `key` would be held now (event clock, alert not seen yet)."""
        return self.hold_policy is not None and not self.store.get(key)

    def release(self, key: bytes) -> list[dict[str, Any]]:
        """The held actions of an alert that has just arrived, in event-time order
        (each: "value" as it arrived, "src" topic/partition/offset, "ts", "event_id")."""
        self.held, out = release(self.held, key.decode("utf-8", "replace"))
        return out

    def expire_held(self, now: datetime) -> list[tuple[bytes, dict[str, Any], Rejection]]:
        """Held actions whose alert did not come in time: refuse them as live would."""
        if self.hold_policy is None or not self.held:
            return []
        self.held, gone = expire(self.held, now, self.hold_policy)
        out = []
        for alert_id, e in gone:
            kind = str(orjson.loads(e["value"]).get("action", "action"))
            waited = (now - datetime.fromisoformat(e["ts"])).total_seconds()
            out.append((alert_id.encode(), e, Rejection("unknown_alert", unknown_alert_message(kind, alert_id,
                                                                                               waited))))
        return out

    def apply(self, kind: Kind, key: bytes, value: bytes, now: datetime, partition: int,
              source: Source | None = None) -> tuple[Outcome, bytes | None]:
        """One input record. Returns (what to publish, the new state bytes to
        changelog or None when the state did not change). Raises
        ValidationError for a payload that is not an Alert / AlertAction.
        On the event clock an action on an alert not seen yet is held
        (`Outcome.held`); `release(key)` gives it back once the alert came."""
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
            if prev is None and self.hold_policy is not None:
                entry = {"value": value.decode("utf-8", "replace"), "src": list(source) if source else None}
                self.held, held = hold(self.held, action, entry, self.hold_policy)
                if held:
                    return Outcome(held=True), None
            new, step = self.lc.on_action(prev, action)
        out = Outcome(step.alerts, step.notices, step.rejection)
        if new is None or new is prev or step.duplicate or step.rejection is not None:
            return out, None
        new["p"] = partition
        return out, self._save(key, new)

    def tick(
        self, now: datetime, owned: Callable[[int], bool] | None = None, *, at_due: bool = False
    ) -> list[tuple[bytes, int, Outcome, bytes | None]]:
        """Every alert whose due time has passed, once each: (key, partition,
        outcome, new state bytes, or None when the alert was dropped after its
        retention). `owned(partition)` filters out alerts whose partition this
        worker no longer holds. `at_due` (a replay): each timer fires at its own
        due time, one after the other in time order, up to `now`, so the outcome
        does not depend on how far past them the clock had got."""
        out: list[tuple[bytes, int, Outcome, bytes | None]] = []
        if at_due:
            while (due := self.next_due()) is not None and due <= now:
                _, key = heapq.heappop(self._heap)
                self._due.pop(key, None)
                if (fired := self._fire(key, due, owned)) is not None:
                    out.append(fired)
            return out
        keys: list[bytes] = []
        while (due := self.next_due()) is not None and due <= now:
            _, key = heapq.heappop(self._heap)
            self._due.pop(key, None)
            keys.append(key)
        for key in keys:
            if (fired := self._fire(key, now, owned)) is not None:
                out.append(fired)
        return out

    def tick_own(self, key: bytes, upto: datetime) -> list[tuple[bytes, int, Outcome, bytes | None]]:
        """The timers of one alert due at or before `upto`, each at its due time:
        a replay applies an alert's record only after the timers that came
        before it live, whatever the other alerts' sources have reached."""
        out: list[tuple[bytes, int, Outcome, bytes | None]] = []
        while (due := self._due.get(key)) is not None and due <= upto:
            self._due.pop(key, None)  # its heap entry is now stale: next_due skips it
            if (fired := self._fire(key, due, None)) is not None:
                out.append(fired)
        return out

    def _fire(self, key: bytes, now: datetime,
              owned: Callable[[int], bool] | None) -> tuple[bytes, int, Outcome, bytes | None] | None:
        st = self._load(key)
        if st is None:
            return None
        p = int(st.get("p", 0))
        if owned is not None and not owned(p):
            return None
        expires = self._expires_at(st)
        if expires is not None and expires <= now:
            del self.store[key]
            return key, p, Outcome(), None
        new, step = self.lc.tick(st, now)
        if new is None:
            return None
        if new is st:  # nothing changed: keep it indexed, but never at or before `now` again
            due = self.lc.due_at(st)
            if due is not None and due > now:
                self._index(key, st)
            return None
        new["p"] = p
        return key, p, Outcome(step.alerts, step.notices, None), self._save(key, new)


def held_event(key: bytes, entry: Mapping[str, Any]) -> Any:
    """A held action as the DLQ helper reads an event (`.message` with topic,
    partition, offset, key, value): the record it arrived as."""
    topic, partition, offset = entry.get("src") or ("", -1, -1)
    return SimpleNamespace(message=SimpleNamespace(topic=topic, partition=partition, offset=offset, key=key,
                                                   value=str(entry["value"]).encode()))


def register(ctx: WorkerContext) -> None:
    app, s = ctx.app, ctx.settings
    table = app.Table("alert-state", key_type=bytes, value_type=bytes, partitions=s.partitions)
    # on the event clock (replay) an action may come before its alert's replayed detection: it waits
    hold_policy = ctx.policy.lifecycle if ctx.clock.kind == "event" else None
    core = LifecycleCore(Lifecycle(ctx.rules, ctx.policy), table.data, s.alert_retention_s, hold_policy)
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

    # A replay (progress markers, streams.markers): every detected partition hears from each
    # readings partition's detect stage and each area partition's burst detector how far it has
    # got; a timer fires once all of them are past it, so no earlier record of its alert can
    # still come from a partition that runs behind
    by_markers = s.progress_markers
    progress = markers.Progress([*(f"detect:{p}" for p in range(s.partitions)),
                                 *(f"area:{p}" for p in range(s.partitions))])

    def safe_time() -> datetime | None:
        return progress.safe([p for p in range(s.partitions) if owned(p)])

    async def run_due(is_owned: Callable[[int], bool] = owned) -> None:
        if not ctx.clock.started:
            return
        now = ctx.clock.now()
        if by_markers:
            # never past the latest event time applied either, as the live event clock: after
            # the replay's final markers, timers fire as far as live's had got, not further
            safe = safe_time()
            if safe is None:
                return
            now = min(now, safe)
        async with lock:
            for key, partition, outcome, body in core.tick(now, is_owned, at_due=by_markers):
                # body None: a tombstone, as Faust's own table deletion sends
                table.send_changelog(partition, key, body, value_serializer="raw")
                await emit(outcome)
            await expire_held(now)

    async def step(kind: Kind, event: Any, key: bytes | None, value: bytes, partition: int) -> None:
        """One record (under the lock): apply it, dead-letter a refusal, changelog, publish.
        A detection that makes an alert known releases the actions held for it."""
        try:
            if by_markers and kind == "detected" and markers.is_marker(value):
                source, marked, _ = markers.decode(value)
                progress.observe(partition, source, marked)
                return  # handle() runs the timers the marker has made safe
            if key is None:
                raise ValueError("a record without a key (alert_id)")
            # live, a record is applied at the wall clock (SLA clocks start at dispatch);
            # on the event clock (replay) at its own event time (a detection's last_seen,
            # an action's ts), not at the worker-wide maximum, which depends on how the
            # partitions interleave: the replay dispatches and escalates as live did
            at = ctx.clock.now()
            # an action held for its alert moves no clock: it has not happened here yet
            if ctx.clock.kind == "event" and not (kind == "action" and core.holds_for(key)):
                ts = orjson.loads(value).get("last_seen" if kind == "detected" else "ts")
                if isinstance(ts, str):
                    at = datetime.fromisoformat(ts)
                ctx.clock.observe(at)
                # timers due before this record fire before it, whatever else ran ahead; with
                # markers only its own alert's: the others' may have records still to come
                fired = core.tick_own(key, at) if by_markers else core.tick(at, owned)
                for due_key, due_partition, due, due_body in fired:
                    table.send_changelog(due_partition, due_key, due_body, value_serializer="raw")
                    await emit(due)
            msg = event.message
            outcome, body = core.apply(kind, key, value, at, partition, (msg.topic, msg.partition, msg.offset))
        except (ValidationError, ValueError, orjson.JSONDecodeError) as exc:
            text = exc.errors(include_url=False)[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            await ctx.dead_letter(event, f"invalid_{'alert' if kind == 'detected' else 'action'}",
                                  str(text), "lifecycle")
            return
        except Exception as exc:  # one bad record must not stop or silently ack the stream
            log.exception("lifecycle failed")
            await ctx.dead_letter(event, "processing_error", f"{type(exc).__name__}: {exc}", "lifecycle")
            return
        if outcome.held:
            return
        if outcome.rejection is not None:
            await ctx.dead_letter(event, outcome.rejection.reason, outcome.rejection.message, "lifecycle")
            return
        if body is not None:
            assert key is not None
            table.send_changelog(partition, key, body)
            if kind == "action":
                await ctx.publish_applied_action(key, value)
        await emit(outcome)
        if kind == "detected" and body is not None and core.held:
            assert key is not None
            for entry in core.release(key):
                await step("action", held_event(key, entry), key, entry["value"].encode(), partition)

    async def expire_held(now: datetime) -> None:
        for key, entry, rejection in core.expire_held(now):
            await ctx.dead_letter(held_event(key, entry), rejection.reason, rejection.message, "lifecycle")

    async def handle(kind: Kind, events: list[Any]) -> None:
        async with lock:
            for event in events:
                msg = event.message
                await step(kind, event, msg.key, msg.value, msg.partition)
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


@dataclass(frozen=True, slots=True)
class LifecycleHandles:
    """For tests and tools: the core, the agents and the due-timer step."""

    core: LifecycleCore
    detected_agent: Any
    actions_agent: Any
    run_due: Any


def mode_group(app_id: str) -> str:
    """The consumer group whose committed offset on the control topic says how far
    an event-clock (replay) worker's mode board has applied the switches."""
    return f"{app_id}-mode"


def register_mode_board(ctx: WorkerContext) -> None:
    """Every worker reads the whole compacted `city.control.mode` topic (the
    latest switch per scope) and follows it; detection stamps the mode of the
    alert's area into its evidence."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
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

    def apply_switch(value: bytes, offset: int) -> None:
        try:
            sw = ModeSwitch.from_dict(orjson.loads(value))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("mode switch at offset %d ignored: %s", offset, exc)
            return
        new, res = switch(ctx.modes.state, sw, ctx.modes.geo)
        if not res.accepted:
            log.warning("mode switch %s refused: %s", sw.event_id, res.message)
            return
        ctx.modes.state = new
        if res.changed:
            log.warning("mode: %s is now %s (by %s)", sw.scope, sw.mode, sw.actor)

    # On the event clock (replay) the board also commits, as group `<app id>-mode`, the offset up
    # to which it has applied the switches: the replay engine publishes the recorded switches
    # between the readings and waits for that before it goes on (storage.replay), so the
    # readings after a switch are detected under it and the ones before it are not.
    replay = ctx.clock.kind == "event"
    group = mode_group(s.app_id)
    tp = TopicPartition(name, 0)

    @ctx.app.task
    async def follow_mode() -> None:
        while True:
            consumer = None
            try:
                await ensure()
                if replay:
                    # the whole topic, and the offset it has applied committed for the replay engine
                    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap_servers, group_id=group,
                                                enable_auto_commit=False, metadata_max_age_ms=5000,
                                                client_id=f"{s.app_id}-mode", **s.kafka_security.aiokafka_kwargs())
                    await consumer.start()
                    consumer.assign([tp])
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer = AIOKafkaConsumer(name, bootstrap_servers=s.kafka_bootstrap_servers, group_id=None,
                                                auto_offset_reset="earliest", enable_auto_commit=False,
                                                metadata_max_age_ms=5000, client_id=f"{s.app_id}-mode",
                                                **s.kafka_security.aiokafka_kwargs())
                    await consumer.start()
                async for m in consumer:
                    apply_switch(m.value, m.offset)
                    if replay:
                        await consumer.commit({tp: m.offset + 1})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka away: keep the last known modes and try again
                log.warning("mode topic %s: %s; retrying", name, exc)
                await asyncio.sleep(2)
            finally:
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        await consumer.stop()

    ctx.extras["follow_mode"] = follow_mode


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

    ctx.extras["reload_rules"] = reload_rules
