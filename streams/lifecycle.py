"""Alert lifecycle: new -> dispatched -> acknowledged -> resolved -> closed,
plus cleared (the condition ended) and reopened; actions with authorisation;
SLA timers and escalation; persistence raises. Pure and synchronous.

Partitioning: ONE STATE PER alert_id (the key of `city.alerts` and
`city.alert.actions`). The agent feeds it three kinds of input:

    lc = Lifecycle(rules_holder_or_table, policy)
    st, step = lc.on_alert(st, alert, now)     # each alert revision from detection
    st, step = lc.on_action(st, action)        # each AlertAction
    st, step = lc.tick(st, now)                # on a timer, when now >= lc.due_at(st)

`now` is the event-time clock in replay (the latest event time seen) and the
wall clock live. A `Step` carries the alerts to publish (the full, current
alert: to `city.alerts` and, via `routing.departments_for`/`department_copy`,
to each department topic), timer notices (reminders, escalations, raises),
and, for a refused action, a `Rejection(reason, message)` to dead-letter.
The input state is never mutated; a rejected or duplicate action returns the
input state unchanged.

Transitions (anything else is `illegal_transition`)::

    ack       new | dispatched | reopened              -> acknowledged   (stops the ack clock)
    resolve   acknowledged | cleared                   -> resolved       (stops all clocks)
    close     resolved | cleared                       -> closed
    reopen    resolved | closed | cleared              -> reopened       (fresh clocks)
    reassign  any but resolved | closed                -> dispatched     (hand over: + target, - actor's dept)
    escalate  any but resolved | closed                -> (same)         (+ next rung's department)
    comment   any but closed                           -> (same)
    feedback  resolved | closed, satisfaction 1..5      -> (same)
    detection clear   new|dispatched|acknowledged|reopened -> cleared
    detection active  cleared | resolved | closed          -> reopened

Authorisation: the actor's department must be one the alert is currently
routed to, or `ops`; citizen feedback may also come from `citizen`.
Idempotency: an action whose event_id was applied before is a no-op
(`Step.duplicate`); the last SEEN_MAX ids are remembered per alert.

State (JSON data)::

    {"alert": {... last published Alert, JSON mode ...},
     "det": {"severity": "III", "since": iso, "revision": int},
     "status": "dispatched", "severity": "II" (effective, after raises),
     "routed": [codes], "added": [codes], "removed": [codes],
     "timers": {... see streams.escalation ...} | None,
     "satisfaction": int | None, "rev": int,
     "history": [{"at", "actor", "department", "action", "from", "to", "event_id", "note"}],
     "seen": [event ids]}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from schemas import ActionKind, Alert, AlertAction, AlertStatus, Severity
from streams import escalation as esc
from streams.alerting import AlertPolicy
from streams.emergency import EmergencyPolicy, mode_of_alert
from streams.escalation import EscalationPolicy, Notice
from streams.hotline_workflow import HotlinePolicy
from streams.incidents import IncidentPolicy
from streams.routing import OPS, RULES_DIR, RoutingTable, RulesHolder, Where, query_for_alert, read_yaml

DEFAULT_POLICY_FILE = RULES_DIR / "policy.yaml"
CITIZEN = "citizen"
HISTORY_MAX = 50
SEEN_MAX = 256

S = AlertStatus
OPEN_STATES = frozenset({S.NEW, S.DISPATCHED, S.ACKNOWLEDGED, S.REOPENED})
TRANSITIONS: dict[ActionKind, tuple[frozenset[AlertStatus], AlertStatus | None]] = {
    ActionKind.ACK: (frozenset({S.NEW, S.DISPATCHED, S.REOPENED}), S.ACKNOWLEDGED),
    ActionKind.RESOLVE: (frozenset({S.ACKNOWLEDGED, S.CLEARED}), S.RESOLVED),
    ActionKind.CLOSE: (frozenset({S.RESOLVED, S.CLEARED}), S.CLOSED),
    ActionKind.REOPEN: (frozenset({S.RESOLVED, S.CLOSED, S.CLEARED}), S.REOPENED),
    ActionKind.REASSIGN: (frozenset(OPEN_STATES | {S.CLEARED}), S.DISPATCHED),
    ActionKind.ESCALATE: (frozenset(OPEN_STATES | {S.CLEARED}), None),
    ActionKind.COMMENT: (frozenset(set(S) - {S.CLOSED}), None),
    ActionKind.FEEDBACK: (frozenset({S.RESOLVED, S.CLOSED}), None),
}
_HINTS = {
    ActionKind.RESOLVE: "acknowledge it first",
    ActionKind.ACK: "only a new, dispatched or reopened alert can be acknowledged",
    ActionKind.CLOSE: "resolve it first",
    ActionKind.REOPEN: "it is still open",
    ActionKind.FEEDBACK: "feedback is for a resolved alert",
}


@dataclass(frozen=True, slots=True)
class HoldPolicy:
    """On the event clock (replay) an action whose alert the lifecycle has not
    seen yet is held, not refused: the replay publishes the recorded actions
    beside the readings, and the detection of the alert may reach the
    lifecycle after the action (another topic, another partition). It waits
    until its alert arrives, at most `unknown_s` of event time past its own
    time (then refused as `unknown_alert`, as live), and at most `max_held`
    actions wait at once (beyond that the next one is refused at once).
    policy.yaml: `lifecycle: {hold_unknown: 15m, max_held: 10000}`."""

    unknown_s: float = 900.0
    max_held: int = 10_000

    @classmethod
    def from_yaml(cls, node: Any, where: Where, line: int) -> HoldPolicy:
        m = where.mapping(node, line, "lifecycle", ("hold_unknown", "max_held"))
        out = cls()
        if "hold_unknown" in m:
            out = cls(where.duration_s(m["hold_unknown"], m.line_of("hold_unknown"), "lifecycle: hold_unknown"),
                      out.max_held)
        if "max_held" in m:
            n = m["max_held"]
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise where.err(m.line_of("max_held"), f"lifecycle: max_held must be a whole number >= 0, got {n!r}")
            out = cls(out.unknown_s, n)
        return out


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything in policy.yaml, each section owned by its module."""

    alerting: AlertPolicy = field(default_factory=AlertPolicy)
    escalation: EscalationPolicy = field(default_factory=EscalationPolicy)
    emergency: EmergencyPolicy = field(default_factory=EmergencyPolicy)
    hotline: HotlinePolicy = field(default_factory=HotlinePolicy)
    incidents: IncidentPolicy = field(default_factory=IncidentPolicy)
    lifecycle: HoldPolicy = field(default_factory=HoldPolicy)


def parse_policy(data: Any, name: str) -> Policy:
    where = Where(name)
    top = where.mapping(data, 1, "policy file",
                        ("version", "alerting", "escalation", "emergency", "hotline", "incidents", "lifecycle"))
    kw: dict[str, Any] = {}
    for key, cls in (("alerting", AlertPolicy), ("escalation", EscalationPolicy), ("emergency", EmergencyPolicy),
                     ("hotline", HotlinePolicy), ("incidents", IncidentPolicy), ("lifecycle", HoldPolicy)):
        if key in top:
            kw[key] = cls.from_yaml(top[key], where, top.line_of(key))  # type: ignore[attr-defined]
    return Policy(**kw)


def load_policy(path: Path = DEFAULT_POLICY_FILE) -> Policy:
    """policy.yaml validated; ConfigError names the line and the problem."""
    return parse_policy(read_yaml(path), str(path))


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # DLQ reason class: unknown_alert | unauthorised | illegal_transition | invalid_action
    message: str


@dataclass(slots=True)
class Step:
    alerts: list[Alert] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    rejection: Rejection | None = None
    duplicate: bool = False

    @property
    def accepted(self) -> bool:
        return self.rejection is None


def _iso(t: datetime) -> str:
    return t.isoformat()


def _copy(state: Mapping[str, Any]) -> dict[str, Any]:
    """A private copy of a JSON state (an orjson round trip: ~10x faster than deepcopy)."""
    out: dict[str, Any] = orjson.loads(orjson.dumps(state))
    return out


class Lifecycle:
    def __init__(self, rules: RoutingTable | RulesHolder, policy: Policy | None = None) -> None:
        self._rules = rules
        self.policy = policy or Policy()

    @property
    def table(self) -> RoutingTable:
        r = self._rules
        return r.table if isinstance(r, RulesHolder) else r

    # ------------------------------------------------------------------ helpers

    def _sla(self, st: Mapping[str, Any]) -> esc.Sla:
        mode = mode_of_alert(st["alert"]["evidence"].get("details"))
        factor = self.policy.emergency.profile(mode).sla_factor
        return self.policy.escalation.window(Severity(st["severity"]), factor)

    @staticmethod
    def departments(st: Mapping[str, Any]) -> tuple[str, ...]:
        removed = set(st["removed"])
        return tuple(d for d in dict.fromkeys([*st["routed"], *st["added"]]) if d not in removed)

    def _publish(self, st: dict[str, Any], step: Step) -> None:
        st["rev"] += 1
        a = st["alert"]
        timers = st.get("timers") or {}
        details = dict(a["evidence"].get("details") or {})
        details["lifecycle"] = {
            "rung": esc.RUNG_NAMES[timers.get("rung", 0)],
            "ack_by": timers.get("ack_by"),
            "resolve_by": timers.get("resolve_by"),
            "escalations": timers.get("escalations", []),
            "detected_severity": st["det"]["severity"],
        }
        if st["history"]:
            # the latest transition travels with the revision, so alert_history stores who did what when
            details["lifecycle"]["last"] = st["history"][-1]
        if st.get("satisfaction") is not None:
            details["lifecycle"]["satisfaction"] = st["satisfaction"]
        sev = Severity(st["severity"])
        peak = Severity(a.get("peak_severity") or sev.value)
        a.update(
            status=st["status"], severity=sev.value, colour=sev.colour,
            peak_severity=Severity.from_rank(max(peak.rank, sev.rank)).value,
            departments=list(self.departments(st)), revision=st["rev"],
            evidence={**a["evidence"], "details": details},
        )  # fmt: skip
        step.alerts.append(Alert.model_validate(a))

    def _history(self, st: dict[str, Any], at: datetime, actor: str, dept: str | None, action: str, frm: str,
                 to: str, event_id: str | None = None, note: str | None = None) -> None:
        entry = {"at": _iso(at), "actor": actor, "department": dept, "action": action, "from": frm, "to": to}
        if event_id:
            entry["event_id"] = event_id
        if note:
            entry["note"] = note[:500]
        st["history"] = [*st["history"], entry][-HISTORY_MAX:]

    def _route(self, st: dict[str, Any]) -> None:
        """Routing of the effective severity; routed departments only grow."""
        alert = Alert.model_validate({**st["alert"], "severity": st["severity"], "peak_severity": st["severity"]})
        new = self.table.route_query(query_for_alert(alert))
        st["routed"] = list(dict.fromkeys([*st["routed"], *new]))

    def _raised_at(self, st: dict[str, Any], det: Severity, target: Severity) -> datetime:
        """When persistence lifted `det` to `target` (dates the raise at its due
        time, not at the tick that noticed it)."""
        at, sev = datetime.fromisoformat(st["det"]["since"]), det
        while sev.rank < target.rank:
            r = next((x for x in self.policy.escalation.raises
                      if x.from_severity is sev and x.applies(st["alert"]["category"])), None)
            if r is None:
                break
            at += timedelta(seconds=r.after_s)
            sev = Severity.from_rank(sev.rank + 1)
        return at

    def _raise(self, st: dict[str, Any], now: datetime) -> Notice | None:
        det = Severity(st["det"]["severity"])
        sev, _ = esc.raised_severity(det, datetime.fromisoformat(st["det"]["since"]), now, st["alert"]["category"],
                                     self.policy.escalation.raises)
        cur = Severity(st["severity"])
        if sev is cur:
            return None
        st["severity"] = sev.value
        if sev.rank > cur.rank:
            now = min(now, self._raised_at(st, det, sev))
            before = set(self.departments(st))
            self._route(st)
            if st.get("timers"):
                st["timers"] = esc.tighten(st["timers"], self._sla(st))
            added = tuple(d for d in self.departments(st) if d not in before)
            reason = f"condition persisted: {cur.value} ({cur.colour}) raised to {sev.value} ({sev.colour})"
            self._history(st, now, "system", None, "raise", cur.value, sev.value, note=reason)
            return Notice("raised", st["alert"]["alert_id"], now, "persistence", reason, self.departments(st),
                          st["timers"]["rung"] if st.get("timers") else 0, added[0] if added else None)
        return None

    # ------------------------------------------------------------------ inputs

    def on_alert(self, state: dict[str, Any] | None, alert: Alert, now: datetime) -> tuple[dict[str, Any], Step]:
        """A detection revision of the alert (from alerting.apply_signal)."""
        step = Step()
        if state is not None and alert.revision <= state["det"]["revision"]:
            step.duplicate = True  # redelivered or out-of-order detection revision
            return state, step
        st: dict[str, Any]
        registry = self.table.registry
        if state is None:
            st = {
                "alert": alert.model_dump(mode="json"),
                "det": {"severity": alert.severity.value, "since": _iso(alert.first_seen), "revision": alert.revision},
                "status": S.NEW.value, "severity": alert.severity.value,
                "routed": [], "added": [], "removed": [], "timers": None, "satisfaction": None, "rev": 0,
                "history": [], "seen": [],
            }  # fmt: skip
            self._raise(st, now)
            self._route(st)
            self._history(st, alert.first_seen, "system", None, "detect", "", S.NEW.value)
            if alert.status is S.CLEARED:
                st["status"] = S.CLEARED.value
            elif self.departments(st):
                st["status"] = S.DISPATCHED.value
                rung = esc.rung_of(self.departments(st), alert.location, registry)
                st["timers"] = esc.start(now, rung, self._sla(st))
                self._history(st, now, "system", None, "dispatch", S.NEW.value, S.DISPATCHED.value,
                              note=", ".join(self.departments(st)))
            self._publish(st, step)
            return st, step

        st = _copy(state)
        prev_alert = st["alert"]
        keep = {k: prev_alert[k] for k in ("peak_severity", "departments", "status", "revision", "colour")}
        st["alert"] = {**alert.model_dump(mode="json"), **keep}
        det = st["det"]
        if alert.severity.value != det["severity"]:
            det.update(severity=alert.severity.value, since=_iso(alert.last_seen))
        det["revision"] = alert.revision
        status = S(st["status"])
        if alert.status is S.CLEARED:
            if status in OPEN_STATES:
                st["status"] = S.CLEARED.value
                if st.get("timers"):
                    st["timers"] = esc.stop_all(st["timers"])
                self._history(st, alert.last_seen, "system", None, "clear", status.value, S.CLEARED.value)
            st["severity"] = alert.severity.value
        else:
            st["severity"] = alert.severity.value
            raised = self._raise(st, now)
            if raised:
                step.notices.append(raised)
            self._route(st)
            if status in (S.CLEARED, S.RESOLVED, S.CLOSED):
                st["status"] = S.REOPENED.value
                rung = st["timers"]["rung"] if st.get("timers") else esc.rung_of(
                    self.departments(st), alert.location, registry)
                timers = esc.start(now, rung, self._sla(st))
                timers["escalations"] = (st.get("timers") or {}).get("escalations", [])
                st["timers"] = timers
                self._history(st, alert.last_seen, "system", None, "reopen", status.value, S.REOPENED.value,
                              note="the condition returned")
            elif status is S.NEW and self.departments(st):
                st["status"] = S.DISPATCHED.value
                st["timers"] = esc.start(now, esc.rung_of(self.departments(st), alert.location, registry),
                                         self._sla(st))
            elif st.get("timers"):
                st["timers"] = esc.tighten(st["timers"], self._sla(st))
        self._publish(st, step)
        return st, step

    def on_action(self, state: dict[str, Any] | None, action: AlertAction) -> tuple[dict[str, Any] | None, Step]:
        def reject(reason: str, message: str) -> tuple[dict[str, Any] | None, Step]:
            return state, Step(rejection=Rejection(reason, f"{action.action.value} on {action.alert_id}: {message}"))

        if state is None:
            return reject("unknown_alert", "no such alert (not yet seen, or already expired)")
        if action.event_id in state["seen"]:
            return state, Step(duplicate=True)
        status = S(state["status"])
        depts = self.departments(state)
        actor_dept = action.actor_department
        kind = action.action
        allowed = actor_dept == OPS or (actor_dept in depts) or (kind is ActionKind.FEEDBACK and actor_dept == CITIZEN)
        if not allowed:
            return reject("unauthorised", f"{action.actor} of {actor_dept or 'no department'} is not among the "
                          f"alert's departments ({', '.join(depts) or 'none'}) nor ops")
        sources, target = TRANSITIONS[kind]
        if status not in sources:
            hint = _HINTS.get(kind, "")
            return reject("illegal_transition", f"not allowed from {status.value}" + (f" ({hint})" if hint else ""))
        registry = self.table.registry
        if kind is ActionKind.COMMENT and not action.comment:
            return reject("invalid_action", "a comment needs text")
        if kind is ActionKind.FEEDBACK and action.satisfaction is None:
            return reject("invalid_action", "feedback needs a satisfaction score 1..5")
        if kind is ActionKind.REASSIGN:
            tgt = action.target_department
            if not tgt or tgt not in registry:
                return reject("invalid_action", f"reassign needs a known target_department, got {tgt!r}")
            if tgt in depts:
                return reject("invalid_action", f"{tgt} already has this alert")

        st = _copy(state)
        step = Step()
        location = Alert.model_validate(st["alert"]).location
        new_status = target or status
        note = action.comment
        if kind is ActionKind.ACK and st.get("timers"):
            st["timers"] = esc.stop_ack(st["timers"])
        elif kind in (ActionKind.RESOLVE, ActionKind.CLOSE) and st.get("timers"):
            st["timers"] = esc.stop_all(st["timers"])
        elif kind is ActionKind.REOPEN:
            rung = st["timers"]["rung"] if st.get("timers") else esc.rung_of(depts, location, registry)
            timers = esc.start(action.ts, rung, self._sla(st))
            timers["escalations"] = (st.get("timers") or {}).get("escalations", [])
            st["timers"] = timers
        elif kind is ActionKind.REASSIGN:
            tgt = action.target_department
            assert tgt is not None
            st["added"] = [*st["added"], tgt]
            st["removed"] = [d for d in st["removed"] if d != tgt]
            if actor_dept != OPS and actor_dept is not None:
                st["removed"] = [*st["removed"], actor_dept]
            rung = st["timers"]["rung"] if st.get("timers") else 0
            timers = esc.start(action.ts, rung, self._sla(st))
            timers["escalations"] = (st.get("timers") or {}).get("escalations", [])
            st["timers"] = timers
            note = f"to {tgt}" + (f": {action.comment}" if action.comment else "")
        elif kind is ActionKind.ESCALATE:
            timers = st.get("timers") or esc.start(action.ts, esc.rung_of(depts, location, registry), self._sla(st))
            reason = f"manual by {action.actor} ({actor_dept})" + (f": {action.comment}" if action.comment else "")
            timers, added = esc.escalate(timers, action.ts, location, registry, self._sla(st), reason,
                                         acked=timers.get("ack_by") is None)
            if added is None:
                return reject("illegal_transition", "already at the top of the ladder (city operations center)")
            st["timers"] = timers
            st["added"] = [*st["added"], added]
            st["removed"] = [d for d in st["removed"] if d != added]
            step.notices.append(Notice("escalated", st["alert"]["alert_id"], action.ts, "manual", reason,
                                       self.departments(st), timers["rung"], added))
            note = reason
        elif kind is ActionKind.FEEDBACK:
            st["satisfaction"] = action.satisfaction
            note = f"satisfaction {action.satisfaction}" + (f": {action.comment}" if action.comment else "")
        st["status"] = new_status.value
        st["seen"] = [*st["seen"], action.event_id][-SEEN_MAX:]
        self._history(st, action.ts, action.actor, actor_dept, kind.value, status.value, new_status.value,
                      action.event_id, note)
        self._publish(st, step)
        return st, step

    def tick(self, state: dict[str, Any] | None, now: datetime) -> tuple[dict[str, Any] | None, Step]:
        """Timers due at `now`: persistence raises, reminders, escalations."""
        step = Step()
        if state is None or S(state["status"]) not in OPEN_STATES:
            return state, step
        st = _copy(state)
        changed = False
        raised = self._raise(st, now)
        if raised:
            step.notices.append(raised)
            changed = True
        if st.get("timers"):
            alert = Alert.model_validate(st["alert"])
            before = st["timers"]
            timers, notices = esc.tick(
                before, now, alert_id=alert.alert_id, location=alert.location, departments=self.departments(st),
                registry=self.table.registry, sla=self._sla(st), remind_fraction=self.policy.escalation.remind_fraction,
            )
            st["timers"] = timers
            for n in notices:
                if n.kind == "escalated" and n.added_department:
                    st["added"] = [*st["added"], n.added_department]
                    st["removed"] = [d for d in st["removed"] if d != n.added_department]
                    self._history(st, n.at, "system", None, "escalate", esc.RUNG_NAMES[before["rung"]],
                                  esc.RUNG_NAMES[timers["rung"]], note=n.reason)
                    changed = True
                elif n.kind == "overdue":
                    self._history(st, n.at, "system", None, "overdue", st["status"], st["status"], note=n.reason)
                    changed = True
            step.notices.extend(notices)
            changed = changed or timers != before
        if not changed:
            return state, step
        if any(n.kind in ("escalated", "raised", "overdue") for n in step.notices):
            self._publish(st, step)
        return st, step

    def due_at(self, state: Mapping[str, Any] | None) -> datetime | None:
        """When `tick` next has work: the agent keeps (due_at, alert_id) in a timer index."""
        if state is None or S(state["status"]) not in OPEN_STATES:
            return None
        out = [esc.due_at(state.get("timers"), self.policy.escalation.remind_fraction)]
        since = datetime.fromisoformat(state["det"]["since"])
        sev, total = Severity(state["det"]["severity"]), 0.0
        while True:  # the next persistence raise above the effective severity
            r = next((x for x in self.policy.escalation.raises
                      if x.from_severity is sev and x.applies(state["alert"]["category"])), None)
            if r is None:
                break
            total += r.after_s
            sev = Severity.from_rank(sev.rank + 1)
            if sev.rank > Severity(state["severity"]).rank:
                out.append(since + timedelta(seconds=total))
                break
        due = [d for d in out if d is not None]
        return min(due) if due else None

    @staticmethod
    def finished(state: Mapping[str, Any] | None, now: datetime, retention_s: float = 7 * 86400) -> bool:
        """True when the agent may delete the key: closed and quiet for `retention_s`."""
        if state is None or state["status"] != S.CLOSED.value or not state["history"]:
            return state is None
        last = datetime.fromisoformat(state["history"][-1]["at"])
        return (now - last).total_seconds() >= retention_s


# ---------------------------------------------------------------------- held actions
# In replay (the event clock) an action on an alert not seen yet waits for its
# alert instead of being refused (HoldPolicy). The waiting room is data: a
# dict alert_id -> list of entries in arrival order, each entry a JSON-able
# dict {"ts": iso (the action's event time), "event_id", "value": the record
# as it arrived (text), "src": [topic, partition, offset] (for the DLQ)}.
# Functions return new dicts and never mutate their input.

Held = dict[str, list[dict[str, Any]]]


def held_count(held: Mapping[str, list[dict[str, Any]]]) -> int:
    return sum(len(v) for v in held.values())


def hold(held: Held, action: AlertAction, entry: Mapping[str, Any], policy: HoldPolicy) -> tuple[Held, bool]:
    """Put `entry` (an action on an alert not seen yet) in the waiting room.
    Returns (the new room, whether it is held): False when the room is full
    (refuse it now, `unknown_alert`). A redelivered action (same event_id)
    is held once."""
    waiting = held.get(action.alert_id, [])
    if any(e["event_id"] == action.event_id for e in waiting):
        return held, True
    if held_count(held) >= policy.max_held:
        return held, False
    item = {**entry, "ts": _iso(action.ts), "event_id": action.event_id}
    return {**held, action.alert_id: [*waiting, item]}, True


def release(held: Held, alert_id: str) -> tuple[Held, list[dict[str, Any]]]:
    """The actions waiting for `alert_id` (it has arrived), in event-time order
    (arrival order among equal times), and the room without them."""
    waiting = held.get(alert_id)
    if not waiting:
        return held, []
    rest = {k: v for k, v in held.items() if k != alert_id}
    return rest, sorted(waiting, key=lambda e: datetime.fromisoformat(e["ts"]))


def expire(held: Held, now: datetime, policy: HoldPolicy) -> tuple[Held, list[tuple[str, dict[str, Any]]]]:
    """Actions whose alert did not come while the event-time clock moved
    `policy.unknown_s` past their own time: (the room without them, the
    (alert_id, entry) pairs to refuse as `unknown_alert`), oldest first."""
    limit = timedelta(seconds=policy.unknown_s)
    gone: list[tuple[str, dict[str, Any]]] = []
    out: Held = {}
    for alert_id, waiting in held.items():
        keep = []
        for e in waiting:
            if now - datetime.fromisoformat(e["ts"]) > limit:
                gone.append((alert_id, e))
            else:
                keep.append(e)
        if keep:
            out[alert_id] = keep
    if not gone:
        return held, []
    gone.sort(key=lambda p: datetime.fromisoformat(p[1]["ts"]))
    return out, gone


def unknown_alert_message(action_kind: str, alert_id: str, waited_s: float) -> str:
    return (f"{action_kind} on {alert_id}: no such alert (held {waited_s:.0f} s of event time in replay, "
            "its alert never came)")
