"""Hotline (接诉即办), its 三率, the hotline spike early warning (未诉先办) and
incidents (吹哨报到) in the Faust worker.

    city.hotline.events (key ticket_id)
        -> agent hotline-workflow: ticket state per ticket_id (HotlineWorkflow)
             -> city.hotline.tickets (key ticket_id): the ticket after each change (operations center)
             -> city.hotline.dept.<code> (key ticket_id): the same as that department may see it
             -> city.kpi.facts (key scope): each KpiFact once per scope
             -> city.incidents.items (key district code): the event, header kind=hotline
    city.alerts (key alert_id)
        -> agent incident-alerts: forwards alerts to city.incidents.items (key district code), kind=alert
    city.kpi.facts -> agent hotline-kpi: 三率 state per scope -> city.kpi (key scope, KpiSnapshot)
    city.incidents.items -> agent incident-area:
         hotline events: spike detector state per (district, category, street) -> alert revisions to
                         the lifecycle (city.alerts.detected), like the detect agent's
         alerts and hotline events: correlator state per district -> city.incidents (key incident_id)

Every re-keyed topic has the pipeline's partition count, and each table's
changelog record goes to the partition its source record came from (the
pattern of the sensor-state table), so a restarted worker recovers exactly the
state of its partitions. Deadlines and incident closing run on the worker's
LifecycleClock (wall clock live, event time in replay); the spike window
advances on it minus the allowed lateness.

Delivery is at least once and every consumer here is idempotent: the
workflow remembers recent event ids per ticket (a redelivered event changes
nothing), facts carry stable ids that the 三率 state remembers, the spike
state remembers recent event ids, and the correlator updates a known member
in place. A record that cannot be processed is dead-lettered with a reason;
nothing raises out of an agent (faust-streaming#315).

The cores below are pure and synchronous over a mapping of key -> JSON bytes
(the Faust table's data, or a dict in tests); the agents only move bytes.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from pydantic import ValidationError

from schemas import Alert, HotlineEvent, Incident
from streams import kpi, markers
from streams.alerting import AlertPolicy, apply_signal
from streams.context import WorkerContext
from streams.detectors.base import LateEvent
from streams.detectors.engine import DetectionEngine, hotline_key
from streams.emergency import ModeInfo
from streams.hotline_workflow import (
    ChangeKind,
    HotlineWorkflow,
    KpiFact,
    TicketRecord,
    WorkflowStep,
    ticket_record,
    ticket_view,
)
from streams.incidents import IncidentCorrelator, area_key
from streams.routing import OPS, RoutingTable, RulesHolder

log = logging.getLogger("citybrain.streams.hotline")

KIND_HEADER = "citybrain.kind"
SPIKE_SEEN_MAX = 256
Store = MutableMapping[bytes, bytes]
ModeOf = Callable[[str], ModeInfo]


class InvalidRecord(Exception):
    """A record the agent cannot use: dead-lettered with `reason`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _load(store: Store, key: bytes) -> dict[str, Any] | None:
    raw = store.get(key)
    return orjson.loads(raw) if raw else None


def _first_error(exc: ValidationError) -> str:
    e = exc.errors(include_url=False)[0]
    where = ".".join(str(x) for x in e.get("loc", ()))
    return f"{where}: {e['msg']}" if where else str(e["msg"])


# ----------------------------------------------------------------------------- tickets


@dataclass(slots=True)
class TicketOutcome:
    records: list[TicketRecord] = field(default_factory=list)
    facts: list[KpiFact] = field(default_factory=list)
    notices: list[dict[str, Any]] = field(default_factory=list)
    rejection: tuple[str, str] | None = None
    duplicate: bool = False


class TicketCore:
    """Ticket states (ticket_id -> JSON bytes) with a due-time index, so a
    deadline tick touches only the tickets whose deadline has passed, and an
    expiry index, so a settled ticket is forgotten `retain` after its last
    change (the table does not grow without bound)."""

    def __init__(self, workflow: HotlineWorkflow, store: Store) -> None:
        self.wf = workflow
        self.store = store
        self._heap: list[tuple[datetime, bytes]] = []
        self._due: dict[bytes, datetime] = {}
        self._exp_heap: list[tuple[datetime, bytes]] = []
        self._exp: dict[bytes, datetime] = {}

    def rebuild_index(self) -> int:
        self._heap, self._due, self._exp_heap, self._exp = [], {}, [], {}
        for key in list(self.store.keys()):
            self._index(key, _load(self.store, key))
        return len(self._due)

    def _index(self, key: bytes, st: dict[str, Any] | None) -> None:
        for when, heap, index in ((self.wf.due_at(st), self._heap, self._due),
                                  (self.wf.expires_at(st), self._exp_heap, self._exp)):
            if when is None:
                index.pop(key, None)
            elif index.get(key) != when:
                index[key] = when
                heapq.heappush(heap, (when, key))

    def expire(self, now: datetime, owned: Callable[[int], bool] | None = None) -> list[tuple[bytes, int]]:
        """Forget settled tickets past their retention: (key, partition) of each,
        for a tombstone in the changelog."""
        out: list[tuple[bytes, int]] = []
        while self._exp_heap and self._exp_heap[0][0] <= now:
            when, key = heapq.heappop(self._exp_heap)
            if self._exp.get(key) != when:
                continue  # stale: the ticket changed since
            self._exp.pop(key, None)
            st = _load(self.store, key)
            if st is None:
                continue
            p = int(st.get("p", 0))
            if owned is not None and not owned(p):
                continue
            del self.store[key]
            self._due.pop(key, None)
            out.append((key, p))
        return out

    def _save(self, key: bytes, st: dict[str, Any]) -> bytes:
        body = orjson.dumps(st)
        self.store[key] = body
        self._index(key, st)
        return body

    @staticmethod
    def parse(key: bytes | None, value: bytes | None) -> HotlineEvent:
        if value is None:
            raise InvalidRecord("invalid_hotline_event", "a hotline record without a value")
        try:
            ev = HotlineEvent.model_validate_json(value)
        except ValidationError as exc:
            raise InvalidRecord("invalid_hotline_event", _first_error(exc)) from None
        if key is not None and key != ev.ticket_id.encode():
            # the ticket's state lives in the partition of its ticket_id
            raise InvalidRecord("invalid_hotline_event", f"record key {key!r} is not the ticket_id {ev.ticket_id!r}")
        return ev

    def apply(self, ev: HotlineEvent, partition: int, mode: ModeInfo, now: datetime | None = None
              ) -> tuple[TicketOutcome, bytes | None]:
        """One hotline event at worker time `now`. Returns (what to publish, new
        state bytes for the changelog or None when nothing changed)."""
        key = ev.ticket_id.encode()
        prev = _load(self.store, key)
        new, step = self.wf.step(prev, ev, mode)
        out = self._outcome(step)
        if step.duplicate or step.rejection is not None or new is None:
            return out, None
        change: ChangeKind = "dispatched" if step.dispatch is not None else (
            "feedback" if ev.kind == "feedback" else "updated")
        new["p"] = partition
        if now is not None:
            new["touched"] = now.isoformat()
        out.records.append(ticket_record(new, change, ev.ts, ev))
        return out, self._save(key, new)

    @staticmethod
    def _outcome(step: WorkflowStep) -> TicketOutcome:
        out = TicketOutcome(facts=list(step.facts), notices=list(step.notices), duplicate=step.duplicate)
        if step.rejection is not None:
            out.rejection = (step.rejection.reason, step.rejection.message)
        return out

    def tick(self, now: datetime, owned: Callable[[int], bool] | None = None
             ) -> list[tuple[bytes, int, TicketOutcome, bytes]]:
        """Every ticket whose deadline passed, once: (key, partition, outcome, new state bytes)."""
        keys: list[bytes] = []
        out: list[tuple[bytes, int, TicketOutcome, bytes]] = []
        while self._heap and self._heap[0][0] <= now:
            due, key = heapq.heappop(self._heap)
            if self._due.get(key) == due:
                self._due.pop(key, None)
                keys.append(key)
        for key in keys:
            st = _load(self.store, key)
            if st is None:
                continue
            p = int(st.get("p", 0))
            if owned is not None and not owned(p):
                continue
            new, step = self.wf.tick(st, now)
            if new is None or new is st:
                self._index(key, st)
                continue
            new["p"] = p
            new["touched"] = now.isoformat()
            res = self._outcome(step)
            res.records.append(ticket_record(new, "overdue", now))
            out.append((key, p, res, self._save(key, new)))
        return out


# ----------------------------------------------------------------------------- 三率


def fact_from_json(value: bytes | None) -> KpiFact:
    try:
        d = orjson.loads(value or b"")
        return KpiFact(fact_id=str(d["fact_id"]), kind=d["kind"], ticket_id=str(d["ticket_id"]),
                       period=str(d["period"]), scopes=tuple(d["scopes"]), ok=bool(d["ok"]),
                       prev_ok=None if d.get("prev_ok") is None else bool(d["prev_ok"]), at=str(d.get("at", "")))
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidRecord("invalid_kpi_fact", f"{type(exc).__name__}: {exc}") from None


class KpiCore:
    """三率 state per scope (scope -> JSON bytes)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def apply(self, scope: str, fact: KpiFact, partition: int) -> tuple[kpi.KpiSnapshot | None, bytes | None]:
        snaps, changed = self.apply_batch([(scope, fact, partition)])
        return (snaps[0] if snaps else None), (changed[scope.encode()][1] if changed else None)

    def apply_batch(self, items: list[tuple[str, KpiFact, int]]
                    ) -> tuple[list[kpi.KpiSnapshot], dict[bytes, tuple[int, bytes]]]:
        """A batch of facts: the latest snapshot per (scope, period) that changed,
        and each changed scope's state written once (key -> (partition, bytes))."""
        states: dict[bytes, tuple[int, dict[str, Any]]] = {}
        latest: dict[tuple[str, str], kpi.KpiSnapshot] = {}
        for scope, fact, partition in items:
            if fact.kind not in kpi.KINDS:
                raise InvalidRecord("invalid_kpi_fact", f"unknown kind {fact.kind!r}")
            key = scope.encode()
            held = states.get(key)
            new, snap = kpi.apply(held[1] if held else _load(self.store, key), scope, fact)
            if snap is None:
                continue  # redelivered fact
            states[key] = (partition, new)
            latest[(snap.scope, snap.period)] = snap
        changed: dict[bytes, tuple[int, bytes]] = {}
        for key, (partition, st) in states.items():
            st["p"] = partition
            body = orjson.dumps(st)
            self.store[key] = body
            changed[key] = (partition, body)
        return list(latest.values()), changed


# ----------------------------------------------------------------------------- spikes and incidents


@dataclass(slots=True)
class AreaOutcome:
    alerts: list[Alert] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    changed: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # (table, key, body)
    late: str | None = None


class AreaCore:
    """Per district: the hotline spike detector (one state per (category,
    street or grid) of the district) and the incident correlator (one state
    per district). Both tables are written with the partition of the
    district-keyed source record."""

    SPIKES = "spikes"
    INCIDENTS = "incidents"

    def __init__(self, engine: DetectionEngine, correlator: IncidentCorrelator, routing: Callable[[], RoutingTable],
                 spikes: Store, incidents: Store, alerting: AlertPolicy | None = None) -> None:
        self.engine = engine
        self.correlator = correlator
        self.routing = routing
        self.spikes = spikes
        self.incidents = incidents
        self.alerting = alerting or AlertPolicy()
        self._bursting: set[bytes] = set()  # spike keys with a burst in progress: all a tick needs to visit

    def rebuild_index(self) -> int:
        self._bursting = {k for k in list(self.spikes.keys()) if self._in_burst(_load(self.spikes, k))}
        return len(self._bursting)

    def _in_burst(self, st: dict[str, Any] | None) -> bool:
        return bool(st and st.get("det") and (st["det"].get(self.engine.hotline.name) or {}).get("ep") is not None)

    def _save_spike(self, key: bytes, st: dict[str, Any]) -> bytes:
        body = orjson.dumps(st)
        self.spikes[key] = body
        if self._in_burst(st):
            self._bursting.add(key)
        else:
            self._bursting.discard(key)
        return body

    def area_of(self, x: Alert | HotlineEvent) -> str:
        return area_key(x.location, self.correlator.geo)

    @staticmethod
    def spike_key(area: str, ev: HotlineEvent) -> bytes:
        # the district in the key: a street name may repeat in another district
        return f"{area}|{hotline_key(ev)}".encode()

    def _signals_to_alerts(self, st: dict[str, Any], signals: list[Any], mode: ModeInfo) -> list[Alert]:
        alerts = []
        for sig in signals:
            new, alert = apply_signal(st["alerts"].get(sig.rule), sig, self.routing(), mode=mode, policy=self.alerting)
            if new is None:
                st["alerts"].pop(sig.rule, None)
            else:
                st["alerts"][sig.rule] = new
            alerts.append(alert)
        return alerts

    def hotline(self, ev: HotlineEvent, partition: int, mode: ModeInfo) -> AreaOutcome:
        out = AreaOutcome()
        area = self.area_of(ev)
        if self.engine.hotline.applies_to(ev):
            key = self.spike_key(area, ev)
            st = _load(self.spikes, key) or {"det": None, "alerts": {}, "seen": []}
            if ev.event_id not in st["seen"]:  # a redelivered call is not a second call
                try:
                    st["det"], signals = self.engine.step_hotline(st.get("det"), ev)
                except LateEvent as exc:
                    out.late = exc.message  # too late for the window; the rest still applies
                else:
                    out.alerts = self._signals_to_alerts(st, signals, mode)
                    st["seen"] = [*st["seen"], ev.event_id][-SPIKE_SEEN_MAX:]
                    st["p"] = partition
                    out.changed.append((self.SPIKES, key, self._save_spike(key, st)))
        self._correlate(area, ev, partition, out)
        return out

    def alert(self, alert: Alert, partition: int) -> AreaOutcome:
        out = AreaOutcome()
        self._correlate(self.area_of(alert), alert, partition, out)
        return out

    def _correlate(self, area: str, x: Alert | HotlineEvent, partition: int, out: AreaOutcome) -> None:
        key = area.encode()
        raw = self.incidents.get(key)
        prev = orjson.loads(raw) if raw else None
        st, incidents = self.correlator.step(prev, x, owned=True)  # prev is our own fresh decode
        st["p"] = partition
        body = orjson.dumps(st)
        if body != raw:
            self.incidents[key] = body
            out.changed.append((self.INCIDENTS, key, body))
        out.incidents.extend(incidents)

    def tick_spikes(self, watermark: datetime, mode_of: ModeOf,
                    partition: int | None = None) -> list[tuple[bytes, int, list[Alert], bytes]]:
        """Advance the windows of the bursts in progress (of one partition, if given), so a
        burst clears when the calls stop: (key, partition, alert revisions, new state bytes)
        for each burst."""
        out: list[tuple[bytes, int, list[Alert], bytes]] = []
        name = self.engine.hotline.name
        for key in sorted(self._bursting):
            st = _load(self.spikes, key)
            if not self._in_burst(st):
                self._bursting.discard(key)
                continue
            assert st is not None
            if partition is not None and int(st.get("p", 0)) != partition:
                continue
            st["det"], signals = self.engine.tick(st["det"], watermark)
            alerts = self._signals_to_alerts(st, signals, mode_of(st["det"][name]["loc"]["district"])) \
                if signals else []
            out.append((key, int(st.get("p", 0)), alerts, self._save_spike(key, st)))
        return out

    def tick_incidents(self, now: datetime) -> list[tuple[bytes, int, list[Incident], bytes]]:
        """Close incidents resolved long enough; drop unpublished ones past the window."""
        out: list[tuple[bytes, int, list[Incident], bytes]] = []
        for key in sorted(self.incidents.keys()):
            raw = self.incidents.get(key)
            if not raw:
                continue
            st = orjson.loads(raw)
            p = int(st.get("p", 0))
            new, incidents = self.correlator.tick(st, now, owned=True)
            if new is None:
                continue
            new["p"] = p
            body = orjson.dumps(new)
            if body != raw:
                self.incidents[key] = body
                out.append((key, p, incidents, body))
        return out


# ----------------------------------------------------------------------------- the agents


def register(ctx: WorkerContext) -> None:
    app, s, topics = ctx.app, ctx.settings, ctx.topics
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "value_serializer": "raw"}
    hotline_topic = app.topic(topics.hotline, partitions=s.partitions, **raw)
    tickets_topic = app.topic(topics.hotline_tickets, **raw)
    facts_topic = app.topic(topics.kpi_facts, partitions=s.partitions, **raw)
    kpi_topic = app.topic(topics.kpi, **raw)
    items_topic = app.topic(topics.incident_items, partitions=s.partitions, **raw)
    alerts_in = app.topic(topics.alerts, partitions=s.partitions, **raw)
    incidents_topic = app.topic(topics.incidents, **raw)
    detected = getattr(topics, "alerts_detected", None)
    detected_topic = app.topic(detected, **raw) if detected else None

    table_args: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "partitions": s.partitions}
    ticket_table = app.Table("hotline-tickets", **table_args)
    kpi_table = app.Table("hotline-kpi", **table_args)
    spike_table = app.Table("hotline-spikes", **table_args)
    incident_table = app.Table("incidents", **table_args)

    rules: RulesHolder = ctx.rules
    tickets = TicketCore(HotlineWorkflow(rules, ctx.policy.hotline, ctx.policy.emergency), ticket_table.data)
    kpis = KpiCore(kpi_table.data)
    area = AreaCore(DetectionEngine(), IncidentCorrelator(ctx.policy.incidents, rules.table.registry.geo),
                    lambda: rules.table, spike_table.data, incident_table.data, ctx.policy.alerting)
    tables = {AreaCore.SPIKES: spike_table, AreaCore.INCIDENTS: incident_table}
    ticket_lock = asyncio.Lock()  # one writer of the ticket states at a time: the agent or the deadline timer
    area_lock = asyncio.Lock()
    hotline_name = topics.hotline

    @ticket_table.on_recover
    async def _rebuild() -> None:
        log.info("hotline: %d tickets with a pending deadline after recovery", tickets.rebuild_index())

    @spike_table.on_recover
    async def _rebuild_bursts() -> None:
        log.info("hotline: %d bursts in progress after recovery", area.rebuild_index())

    def owned(partition: int) -> bool:
        from faust.types import TP

        try:
            return TP(hotline_name, partition) in app.consumer.assignment()
        except Exception:  # consumer not started: nothing is ours yet
            return False

    async def dept_ticket_topic(code: str) -> Any:
        return await ctx.run_time_topic(topics.hotline_dept(code))

    async def publish_ticket(out: TicketOutcome) -> None:
        registry = rules.table.registry
        for rec in out.records:
            key = rec.ticket_id.encode()
            await tickets_topic.send(key=key, value=rec.to_json(), force=True)
            for code in rec.departments:
                if code == OPS:
                    continue  # ops reads city.hotline.tickets
                body = ticket_view(rec, code, registry).to_json()
                await (await dept_ticket_topic(code)).send(key=key, value=body, force=True)
        for fact in out.facts:
            body = orjson.dumps(fact.as_dict())
            for scope in fact.scopes:
                await facts_topic.send(key=scope.encode(), value=body, force=True)
        for n in out.notices:
            log.info("hotline %s %s: %s deadline %s (%s)", n["kind"], n["ticket_id"], n["deadline"], n["due"],
                     ", ".join(n["departments"]))

    async def publish_alert(alert: Alert) -> None:
        if detected_topic is not None:  # through the lifecycle, like the detect agent's alerts
            await detected_topic.send(key=alert.alert_id.encode(), value=alert.to_json(), force=True)
        else:
            await ctx.publish_alert(alert)

    async def publish_incident(inc: Incident) -> None:
        await incidents_topic.send(key=inc.incident_id.encode(), value=inc.to_json(), force=True)

    async def run_deadlines() -> None:
        if not ctx.clock.started:
            return
        async with ticket_lock:
            now = ctx.clock.now()
            for key, partition, out, body in tickets.tick(now, owned):
                ticket_table.send_changelog(partition, key, body)
                await publish_ticket(out)
            for key, partition in tickets.expire(now, owned):
                # a tombstone (as Faust deletes): gone after a recovery too
                ticket_table.send_changelog(partition, key, None, value_serializer="raw")

    # a replay's progress (streams.markers): calls forwarded before a marker reach each area
    # partition before it; the area agent ticks its bursts and tells the lifecycle how far it is
    area_progress = markers.Progress(f"hotline:{p}" for p in range(s.partitions))

    async def forward_hotline_marker(event: Any) -> None:
        msg = event.message
        try:
            _, at, final = markers.decode(msg.value)
        except ValueError as exc:
            await ctx.dead_letter(event, "invalid_marker", str(exc), "hotline")
            return
        body = markers.encode(f"hotline:{msg.partition}", at, final)
        await ctx.send_to_every_partition(items_topic, markers.KEY, body, [(KIND_HEADER, b"marker")])

    async def area_marker(partition: int, source: str, at: datetime, final: bool) -> None:
        """Bursts clear by event time only: ticked at the safe time of their partition
        minus the lateness, the watermark live ticks them at; then the lifecycle hears
        that no burst revision earlier than that can come from this partition."""
        before, was_last = area_progress.safe([partition]), area_progress.all_final(partition)
        area_progress.observe(partition, source, at, final)
        safe, last = area_progress.safe([partition]), area_progress.all_final(partition)
        if safe is None or (before is not None and safe <= before and last == was_last):
            return
        lateness = timedelta(seconds=s.lateness_s)
        for key, p, alerts, body in area.tick_spikes(safe - lateness, ctx.modes.mode_for, partition):
            spike_table.send_changelog(p, key, body)
            for a in alerts:
                await publish_alert(a)
        if detected_topic is not None:
            body = markers.encode(f"area:{partition}", markers.forwarded(safe, last, lateness), last)
            await ctx.send_to_every_partition(detected_topic, markers.KEY, body)

    @app.agent(hotline_topic, name="hotline-workflow")
    async def hotline_workflow(stream: Any) -> None:
        async for events in stream.take_events(s.batch_max, within=s.hotline_batch_within_s):
            async with ticket_lock:
                for event in events:
                    msg = event.message
                    if s.progress_markers and markers.is_marker(msg.value):
                        await forward_hotline_marker(event)
                        continue
                    try:
                        ev = TicketCore.parse(msg.key, msg.value)
                        if ctx.clock.kind == "event":
                            ctx.clock.observe(ev.ts)
                        out, body = tickets.apply(ev, msg.partition, ctx.modes.mode_for(ev.location.district),
                                                  ctx.clock.now())
                        if out.rejection is not None:
                            raise InvalidRecord(*out.rejection)
                        if body is not None:
                            ticket_table.send_changelog(msg.partition, msg.key or ev.ticket_id.encode(), body)
                        await publish_ticket(out)
                        # also a duplicate: downstream is idempotent, and a crash between the
                        # changelog and this send must not lose the forward
                        await items_topic.send(key=area.area_of(ev).encode(), value=msg.value,
                                               headers=[(KIND_HEADER, b"hotline")], force=True)
                    except InvalidRecord as exc:
                        await ctx.dead_letter(event, exc.reason, exc.message, "hotline")
                    except Exception as exc:  # one bad record must not stop or silently ack the stream
                        log.exception("hotline workflow failed")
                        await ctx.dead_letter(event, "processing_error", f"{type(exc).__name__}: {exc}", "hotline")
            if ctx.clock.kind == "event":
                await run_deadlines()  # event time moves only with records

    @app.timer(interval=s.tick_every_s)
    async def hotline_deadlines() -> None:
        await run_deadlines()

    @app.agent(facts_topic, name="hotline-kpi")
    async def hotline_kpi(stream: Any) -> None:
        async for events in stream.take_events(s.batch_max, within=s.hotline_batch_within_s):
            items: list[tuple[str, KpiFact, int]] = []
            sources: list[Any] = []
            for event in events:
                msg = event.message
                try:
                    if not msg.key:
                        raise InvalidRecord("invalid_kpi_fact", "a fact without a scope key")
                    fact = fact_from_json(msg.value)
                    if fact.kind not in kpi.KINDS:
                        raise InvalidRecord("invalid_kpi_fact", f"unknown kind {fact.kind!r}")
                    items.append((msg.key.decode(), fact, msg.partition))
                    sources.append(event)
                except (InvalidRecord, UnicodeDecodeError) as exc:
                    reason = exc.reason if isinstance(exc, InvalidRecord) else "invalid_kpi_fact"
                    await ctx.dead_letter(event, reason, str(exc), "kpi")
            try:
                snaps, changed = kpis.apply_batch(items)
            except Exception:  # nothing was written: find the record at fault one by one
                log.exception("kpi batch failed; applying its facts one by one")
                snaps, changed = [], {}
                for event, item in zip(sources, items, strict=True):
                    try:
                        one, one_changed = kpis.apply_batch([item])
                    except Exception as exc:
                        await ctx.dead_letter(event, "processing_error", f"{type(exc).__name__}: {exc}", "kpi")
                        continue
                    snaps += one
                    changed.update(one_changed)
            for key, (partition, body) in changed.items():  # each scope's state once per batch
                kpi_table.send_changelog(partition, key, body)
            for snap in snaps:
                # explicit nulls: a rate with an empty denominator is None, not absent
                await kpi_topic.send(key=snap.scope.encode(), value=snap.as_record().model_dump_json().encode(),
                                     force=True)

    @app.agent(alerts_in, name="incident-alerts")
    async def incident_alerts(stream: Any) -> None:
        async for events in stream.take_events(s.batch_max, within=s.hotline_batch_within_s):
            for event in events:
                msg = event.message
                try:
                    alert = Alert.model_validate_json(msg.value or b"")
                    if alert.category == "sensor_health":
                        continue  # a faulty sensor is never part of an incident
                    await items_topic.send(key=area.area_of(alert).encode(), value=msg.value,
                                           headers=[(KIND_HEADER, b"alert")], force=True)
                except ValidationError as exc:
                    await ctx.dead_letter(event, "invalid_alert", _first_error(exc), "incidents")
                except Exception as exc:
                    log.exception("incident forwarding failed")
                    await ctx.dead_letter(event, "processing_error", f"{type(exc).__name__}: {exc}", "incidents")

    @app.agent(items_topic, name="incident-area")
    async def incident_area(stream: Any) -> None:
        async for events in stream.take_events(s.batch_max, within=s.hotline_batch_within_s):
            async with area_lock:
                for event in events:
                    msg = event.message
                    kind = dict(msg.headers or ()).get(KIND_HEADER)
                    try:
                        if kind == b"marker" and s.progress_markers:
                            try:
                                marker = markers.decode(msg.value or b"")
                            except ValueError as exc:
                                raise InvalidRecord("invalid_marker", str(exc)) from None
                            await area_marker(msg.partition, *marker)
                            continue
                        if kind == b"hotline":
                            ev = TicketCore.parse(None, msg.value)
                            out = area.hotline(ev, msg.partition, ctx.modes.mode_for(ev.location.district))
                            if out.late:
                                log.warning("hotline spike: %s", out.late)
                        elif kind == b"alert":
                            try:
                                alert = Alert.model_validate_json(msg.value or b"")
                            except ValidationError as exc:
                                raise InvalidRecord("invalid_alert", _first_error(exc)) from None
                            out = area.alert(alert, msg.partition)
                        else:
                            raise InvalidRecord("invalid_item", f"unknown item kind {kind!r}")
                        for table, key, body in out.changed:
                            tables[table].send_changelog(msg.partition, key, body)
                        for a in out.alerts:
                            await publish_alert(a)
                        for inc in out.incidents:
                            await publish_incident(inc)
                    except InvalidRecord as exc:
                        await ctx.dead_letter(event, exc.reason, exc.message, "incidents")
                    except Exception as exc:
                        log.exception("incident correlation failed")
                        await ctx.dead_letter(event, "processing_error", f"{type(exc).__name__}: {exc}", "incidents")

    @app.timer(interval=s.tick_every_s)
    async def area_tick() -> None:
        if not ctx.clock.started:
            return
        now = ctx.clock.now()
        async with area_lock:
            try:
                # a replay ticks its bursts at its markers' times (area_marker), not as the wall clock runs
                spikes = [] if s.progress_markers else area.tick_spikes(now - timedelta(seconds=s.lateness_s),
                                                                         ctx.modes.mode_for)
                closed = area.tick_incidents(now)
            except Exception:
                log.exception("hotline/incident tick failed")
                return
            for key, p, alerts, body in spikes:
                spike_table.send_changelog(p, key, body)
                for a in alerts:
                    await publish_alert(a)
            for key, p, incidents, body in closed:
                incident_table.send_changelog(p, key, body)
                for inc in incidents:
                    await publish_incident(inc)
