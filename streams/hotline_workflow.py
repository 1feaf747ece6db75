"""Hotline workflow (接诉即办): a ticket from `city.hotline.events` is dispatched
through the same routing rules as alerts (source: hotline, its category, a
severity from its urgency, its area, the mode in force), gets deadlines for
first contact and resolution (by urgency, policy.yaml `hotline:`), follows
status updates and takes the citizen's satisfaction feedback. It emits
`KpiFact`s, each counted exactly once per ticket, from which `streams.kpi`
computes the 三率 (see there for the definitions).

Partitioning: ONE STATE PER ticket_id (the key of `city.hotline.events`).

    wf = HotlineWorkflow(rules_holder_or_table, policy)
    st, out = wf.step(st, event, mode=ModeInfo)   # each HotlineEvent
    st, out = wf.tick(st, now)                    # when now >= wf.due_at(st)

`out` is a `WorkflowStep`: `dispatch` (departments and deadlines, on the
first event of a ticket), `facts` (KpiFacts: fan each one out to
`fact.scopes`, the kpi state is keyed by scope), `notices` (overdue) and
`rejection` (DLQ reason and message) for an event that cannot apply.

Status semantics: the first update to in_progress, resolved or closed after
dispatch is the first contact (响应); resolved or closed is the resolution;
a later in_progress after resolution is a reopening (重办), recorded, not
recounted. A deadline tick counts a missed deadline at once; should the
on-time event turn up later (the worker was behind its input), the verdict is
corrected with a replacing fact, so the rates depend only on event times, not
on when the timer ran. Feedback is accepted once a ticket is resolved or closed; a new
feedback replaces the old one (the fact carries the previous verdict so the
rate is corrected, not double counted).

State::

    {"ticket_id", "category", "district", "street", "urgency", "created": iso, "period": "YYYY-MM",
     "departments": [..], "first_contact_by": iso, "resolve_by": iso, "status": str,
     "responded_at": iso|None, "resolved_at": iso|None, "satisfaction": int|None,
     "counted": {"response": bool, "resolution": bool}, "seen": [event ids], "history": [..],
     "location": {...}, "rev": int, "missed": {kind: bool}, "caller_ref": keyed hash | None}

What the agent publishes about a ticket is a `TicketRecord` (`ticket_record`):
the whole ticket as the operations center sees it on `city.hotline.tickets`,
and `ticket_view(record, code, registry)` as department `code` may see it on
its own ticket topic (no caller reference unless its policy allows it).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from schemas import HotlineEvent, Location, Severity, TicketStatus, stable_id
from schemas.tickets import ChangeKind, TicketRecord
from streams.emergency import NORMAL, EmergencyPolicy, ModeInfo
from streams.routing import Registry, RoutingTable, RulesHolder, Where, mask_text

BEIJING = ZoneInfo("Asia/Shanghai")
SEEN_MAX = 64
HISTORY_MAX = 30


@dataclass(frozen=True, slots=True)
class Deadline:
    first_contact_s: float
    resolve_s: float


def _default_deadlines() -> dict[str, Deadline]:
    return {"normal": Deadline(2 * 3600, 7 * 86400), "urgent": Deadline(30 * 60, 24 * 3600)}


@dataclass(frozen=True, slots=True)
class HotlinePolicy:
    deadlines: Mapping[str, Deadline] = field(default_factory=_default_deadlines)
    severity: Mapping[str, Severity] = field(default_factory=lambda: {"normal": Severity.IV, "urgent": Severity.III})
    satisfied_min: int = 4  # a score of 4 or 5 (of 1..5) counts as satisfied
    retain_s: float = 35 * 86400  # a settled ticket's state is kept this long after its last change (late feedback)

    @classmethod
    def from_yaml(cls, node: Any, where: Where, line: int) -> HotlinePolicy:
        m = where.mapping(node, line, "hotline", ("deadlines", "severity", "satisfied_min", "retain"))
        base = cls()
        deadlines = dict(base.deadlines)
        if "deadlines" in m:
            d = where.mapping(m["deadlines"], m.line_of("deadlines"), "hotline: deadlines", ("normal", "urgent"))
            for urg, raw in d.items():
                w = where.mapping(raw, d.line_of(urg), f"deadlines {urg}", ("first_contact", "resolve"))
                for k in ("first_contact", "resolve"):
                    if k not in w:
                        raise where.err(w.line, f"deadlines {urg}: needs {k}")
                deadlines[urg] = Deadline(
                    where.duration_s(w["first_contact"], w.line_of("first_contact"), f"{urg}: first_contact"),
                    where.duration_s(w["resolve"], w.line_of("resolve"), f"{urg}: resolve"),
                )
        severity = dict(base.severity)
        if "severity" in m:
            s = where.mapping(m["severity"], m.line_of("severity"), "hotline: severity", ("normal", "urgent"))
            severity.update({k: where.severity(v, s.line_of(k), f"severity {k}") for k, v in s.items()})
        sat = m.get("satisfied_min", 4)
        if not isinstance(sat, int) or isinstance(sat, bool) or not 1 <= sat <= 5:
            raise where.err(m.line_of("satisfied_min"), f"satisfied_min must be 1..5, got {sat!r}")
        retain = where.duration_s(m["retain"], m.line_of("retain"), "hotline: retain") if "retain" in m \
            else base.retain_s
        return cls(deadlines, severity, sat, retain)


FactKind = Literal["response", "resolution", "satisfaction"]


@dataclass(frozen=True, slots=True)
class KpiFact:
    """One ticket's contribution to one rate. `ok` is the verdict; for a
    replaced satisfaction score `prev_ok` is the verdict it replaces."""

    fact_id: str
    kind: FactKind
    ticket_id: str
    period: str  # month the ticket was created, Beijing time: "2025-07"
    scopes: tuple[str, ...]  # department codes and "district:<code>"
    ok: bool
    prev_ok: bool | None = None
    at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"fact_id": self.fact_id, "kind": self.kind, "ticket_id": self.ticket_id, "period": self.period,
                "scopes": list(self.scopes), "ok": self.ok, "prev_ok": self.prev_ok, "at": self.at}


@dataclass(frozen=True, slots=True)
class Dispatch:
    ticket_id: str
    departments: tuple[str, ...]
    first_contact_by: datetime
    resolve_by: datetime
    mode: str


@dataclass(frozen=True, slots=True)
class TicketRejection:
    reason: str
    message: str


@dataclass(slots=True)
class WorkflowStep:
    dispatch: Dispatch | None = None
    facts: list[KpiFact] = field(default_factory=list)
    notices: list[dict[str, Any]] = field(default_factory=list)
    rejection: TicketRejection | None = None
    duplicate: bool = False


_ORDER = {TicketStatus.OPEN: 0, TicketStatus.DISPATCHED: 1, TicketStatus.IN_PROGRESS: 2, TicketStatus.RESOLVED: 3,
          TicketStatus.CLOSED: 4}  # fmt: skip


def ticket_record(st: Mapping[str, Any], change: ChangeKind, at: datetime, ev: HotlineEvent | None = None
                  ) -> TicketRecord:
    """The ticket as the operations center sees it (caller_ref: a keyed hash, never a phone)."""
    overdue = tuple(kind for kind, done in (("response", "responded_at"), ("resolution", "resolved_at"))
                    if st["counted"][kind] and st[done] is None)
    loc = st.get("location") or {"district": st["district"], "street": st["street"], "lat": 0.0, "lon": 0.0}
    return TicketRecord(
        ticket_id=st["ticket_id"], revision=max(1, int(st.get("rev", 1))), change=change,
        event_id=ev.event_id if ev is not None else None, category=st["category"], urgency=st["urgency"],
        status=st["status"], location=Location.model_validate(loc), departments=tuple(st["departments"]),
        created=datetime.fromisoformat(st["created"]), first_contact_by=datetime.fromisoformat(st["first_contact_by"]),
        resolve_by=datetime.fromisoformat(st["resolve_by"]),
        responded_at=datetime.fromisoformat(st["responded_at"]) if st["responded_at"] else None,
        resolved_at=datetime.fromisoformat(st["resolved_at"]) if st["resolved_at"] else None,
        overdue=overdue, satisfaction=st["satisfaction"], mode=st.get("mode", "normal"), updated=at,
        description=mask_text(ev.description) if ev is not None else "",
        caller_ref=st.get("caller_ref") or (ev.caller_ref if ev is not None else None),
    )  # fmt: skip


def ticket_view(record: TicketRecord, code: str, registry: Registry) -> TicketRecord:
    """The record as department `code` may see it: the caller's keyed hash only
    for a pseudonymous department; phone numbers are already masked."""
    if code not in record.departments:
        raise ValueError(f"ticket {record.ticket_id} is not routed to {code}")
    dept = registry.get(code)
    if dept is not None and dept.pii == "pseudonymous":
        return record
    return record.model_copy(update={"caller_ref": None})


class HotlineWorkflow:
    def __init__(self, rules: RoutingTable | RulesHolder, policy: HotlinePolicy | None = None,
                 emergency: EmergencyPolicy | None = None) -> None:
        self._rules = rules
        self.policy = policy or HotlinePolicy()
        self.emergency = emergency or EmergencyPolicy()

    @property
    def table(self) -> RoutingTable:
        r = self._rules
        return r.table if isinstance(r, RulesHolder) else r

    def _scopes(self, st: Mapping[str, Any]) -> tuple[str, ...]:
        code = self.table.registry.geo.district_code(st["district"]) or st["district"]
        return (*st["departments"], f"district:{code}")

    def _fact(self, st: dict[str, Any], kind: FactKind, ok: bool, at: datetime, prev_ok: bool | None = None,
              seq: int = 0) -> KpiFact:
        return KpiFact(stable_id("kpi", st["ticket_id"], kind, seq, prefix="k-"), kind, st["ticket_id"],
                       st["period"], self._scopes(st), ok, prev_ok, at.isoformat())

    def _create(self, ev: HotlineEvent, mode: ModeInfo) -> tuple[dict[str, Any], Dispatch]:
        sev = self.policy.severity.get(ev.urgency, Severity.IV)
        depts = self.table.route(ev.category.value, None, sev, ev.location.district, ev.location.street,
                                 source="hotline", mode=mode.mode)
        factor = self.emergency.profile(mode.mode).sla_factor
        dl = self.policy.deadlines.get(ev.urgency) or _default_deadlines()["normal"]
        fc = ev.ts + timedelta(seconds=dl.first_contact_s * factor)
        rb = ev.ts + timedelta(seconds=dl.resolve_s * factor)
        st = {
            "ticket_id": ev.ticket_id, "category": ev.category.value, "district": ev.location.district,
            "street": ev.location.street, "urgency": ev.urgency, "created": ev.ts.isoformat(),
            "period": ev.ts.astimezone(BEIJING).strftime("%Y-%m"), "departments": list(depts),
            "first_contact_by": fc.isoformat(), "resolve_by": rb.isoformat(), "status": TicketStatus.DISPATCHED.value,
            "responded_at": None, "resolved_at": None, "satisfaction": None, "feedbacks": 0,
            "counted": {"response": False, "resolution": False}, "seen": [], "history": [], "mode": mode.mode,
            "location": ev.location.model_dump(mode="json", exclude_none=True), "rev": 0, "caller_ref": ev.caller_ref,
        }  # fmt: skip
        return st, Dispatch(ev.ticket_id, depts, fc, rb, mode.mode)

    @staticmethod
    def _hist(st: dict[str, Any], at: datetime, what: str, note: str = "") -> None:
        st["history"] = [*st["history"], {"at": at.isoformat(), "what": what, **({"note": note} if note else {})}]
        st["history"] = st["history"][-HISTORY_MAX:]

    def step(self, state: dict[str, Any] | None, ev: HotlineEvent, mode: ModeInfo = NORMAL
             ) -> tuple[dict[str, Any] | None, WorkflowStep]:
        out = WorkflowStep()
        if state is not None and ev.event_id in state["seen"]:
            out.duplicate = True
            return state, out
        if state is None:
            if ev.kind == "feedback":
                out.rejection = TicketRejection("unknown_ticket", f"feedback for unknown ticket {ev.ticket_id}")
                return state, out
            st, out.dispatch = self._create(ev, mode)
            self._hist(st, ev.ts, "dispatched", ", ".join(st["departments"]) +
                       ("" if ev.kind == "created" else " (created from a status event)"))
        else:
            st = copy.deepcopy(state)
        if ev.kind == "feedback":
            if st["status"] not in (TicketStatus.RESOLVED.value, TicketStatus.CLOSED.value):
                out.rejection = TicketRejection("illegal_transition",
                                                f"feedback on ticket {ev.ticket_id} before it is resolved "
                                                f"(status {st['status']})")
                return state, out
            if ev.satisfaction is None:
                out.rejection = TicketRejection("invalid_event", f"feedback on {ev.ticket_id} without satisfaction")
                return state, out
            prev = st["satisfaction"]
            ok = ev.satisfaction >= self.policy.satisfied_min
            prev_ok = None if prev is None else prev >= self.policy.satisfied_min
            st["satisfaction"] = ev.satisfaction
            st["feedbacks"] += 1
            out.facts.append(self._fact(st, "satisfaction", ok, ev.ts, prev_ok, st["feedbacks"]))
            self._hist(st, ev.ts, "feedback", str(ev.satisfaction))
        elif ev.kind == "status" or (ev.kind == "created" and state is None and ev.status != TicketStatus.OPEN):
            new = ev.status
            old = TicketStatus(st["status"])
            if new in (TicketStatus.IN_PROGRESS, TicketStatus.RESOLVED, TicketStatus.CLOSED):
                if st["responded_at"] is None:
                    st["responded_at"] = ev.ts.isoformat()
                    self._decide(st, out, "response", "first_contact_by", ev.ts)
            if new in (TicketStatus.RESOLVED, TicketStatus.CLOSED) and st["resolved_at"] is None:
                st["resolved_at"] = ev.ts.isoformat()
                self._decide(st, out, "resolution", "resolve_by", ev.ts)
            if new is TicketStatus.IN_PROGRESS and old in (TicketStatus.RESOLVED, TicketStatus.CLOSED):
                st["resolved_at"] = None  # reopened (重办): tracked, not recounted
            if new not in (TicketStatus.OPEN, TicketStatus.DISPATCHED):
                st["status"] = new.value
            self._hist(st, ev.ts, f"status {old.value} -> {st['status']}")
        st["seen"] = [*st["seen"], ev.event_id][-SEEN_MAX:]
        st["rev"] = st.get("rev", 0) + 1
        return st, out

    def _decide(self, st: dict[str, Any], out: WorkflowStep, kind: FactKind, deadline_key: str, ts: datetime) -> None:
        ok = ts <= datetime.fromisoformat(st[deadline_key])
        if not st["counted"][kind]:
            st["counted"][kind] = True
            out.facts.append(self._fact(st, kind, ok, ts))
        elif ok and (st.get("missed") or {}).get(kind):
            # a tick judged it missed before this on-time event arrived (a worker
            # behind its input): the verdict is corrected, not counted again
            st["missed"] = {**st["missed"], kind: False}
            out.facts.append(self._fact(st, kind, True, ts, prev_ok=False, seq=1))

    def tick(self, state: dict[str, Any] | None, now: datetime) -> tuple[dict[str, Any] | None, WorkflowStep]:
        """Missed deadlines: counted once as a failed response / resolution."""
        out = WorkflowStep()
        if state is None:
            return state, out
        st = state
        for kind, key, done in (("response", "first_contact_by", "responded_at"),
                                ("resolution", "resolve_by", "resolved_at")):
            dl = datetime.fromisoformat(st[key])
            if now > dl and st[done] is None and not st["counted"][kind]:
                if st is state:
                    st = copy.deepcopy(state)
                st["counted"][kind] = True
                st["missed"] = {**(st.get("missed") or {}), kind: True}
                out.facts.append(self._fact(st, kind, False, dl))  # type: ignore[arg-type]
                out.notices.append({"kind": "overdue", "ticket_id": st["ticket_id"], "deadline": kind,
                                    "due": st[key], "departments": st["departments"]})
                self._hist(st, now, f"{kind} deadline missed", st[key])
        if st is not state:
            st["rev"] = st.get("rev", 0) + 1
        return st, out

    def expires_at(self, state: Mapping[str, Any] | None) -> datetime | None:
        """When a settled ticket (resolved or closed, both rates decided) may be
        forgotten: `retain` after its last change. None while it is not settled.
        A forgotten ticket's events would start it again: `retain` is longer than
        any redelivery or late feedback is expected to be."""
        if state is None or state["status"] not in (TicketStatus.RESOLVED.value, TicketStatus.CLOSED.value) \
                or not all(state["counted"].values()):
            return None
        # "touched": when the worker last changed it (its clock), so replaying old
        # events does not forget a ticket while they are still arriving
        last = max([datetime.fromisoformat(state["created"])] +
                   [datetime.fromisoformat(h["at"]) for h in state["history"]] +
                   ([datetime.fromisoformat(state["touched"])] if state.get("touched") else []))
        return last + timedelta(seconds=self.policy.retain_s)

    @staticmethod
    def due_at(state: Mapping[str, Any] | None) -> datetime | None:
        if state is None:
            return None
        due = [datetime.fromisoformat(state[k]) for k, done, kind in
               (("first_contact_by", "responded_at", "response"), ("resolve_by", "resolved_at", "resolution"))
               if state[done] is None and not state["counted"][kind]]
        return min(due) if due else None
