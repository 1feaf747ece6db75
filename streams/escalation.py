"""SLA timers and the escalation ladder (street -> district -> city operations
center). Pure: time is always passed in (event time in replay, the wall clock
live), so a replay escalates exactly as live did.

Per alert, the lifecycle keeps a `timers` dict::

    {"rung": 0|1|2,                     # 0 street/owning department, 1 district, 2 city ops
     "rung_since": iso,                 # when the current rung got the alert
     "ack_by": iso | None,              # None once acknowledged (ack stops this clock)
     "resolve_by": iso | None,          # None once resolved
     "reminded": [deadline iso, ...],   # reminders already sent (once per deadline)
     "escalations": [{"at", "from", "to", "department", "reason"}, ...]}

On each tick: a reminder when `remind_fraction` of a window has passed; at a
deadline the alert goes up one rung (the next ladder department is added) with
the reason recorded, and the new rung gets fresh windows. At the top rung an
expiry is reported once as `overdue` and that clock stops.

SLA windows are per severity (policy.yaml `escalation: sla:`), multiplied by
the emergency profile's `sla_factor` when the alert's area is in emergency mode.
Persistence raises (`escalation: raise:`) lift the severity of a condition that
lasts: e.g. III (yellow) held for 30 min becomes II (orange).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from schemas import Location, Severity
from streams.routing import OPS, LList, Registry, Where

RUNG_NAMES = ("street", "district", "city")
ESCALATIONS_MAX = 16


@dataclass(frozen=True, slots=True)
class Sla:
    ack_s: float
    resolve_s: float


@dataclass(frozen=True, slots=True)
class Raise:
    """A condition held at `from_severity` for `after_s` goes up one level."""

    from_severity: Severity
    after_s: float
    categories: frozenset[str] = frozenset()  # empty = every category

    def applies(self, category: str) -> bool:
        return not self.categories or category in self.categories


def _default_sla() -> dict[Severity, Sla]:
    return {
        Severity.I: Sla(5 * 60, 2 * 3600),
        Severity.II: Sla(15 * 60, 4 * 3600),
        Severity.III: Sla(30 * 60, 12 * 3600),
        Severity.IV: Sla(2 * 3600, 48 * 3600),
    }


def _default_raises() -> tuple[Raise, ...]:
    return (Raise(Severity.III, 30 * 60), Raise(Severity.II, 60 * 60, frozenset({"water", "gas"})))


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    sla: Mapping[Severity, Sla] = field(default_factory=_default_sla)
    remind_fraction: float = 0.75
    raises: tuple[Raise, ...] = field(default_factory=_default_raises)

    def window(self, severity: Severity, factor: float = 1.0) -> Sla:
        s = self.sla[severity]
        return Sla(s.ack_s * factor, s.resolve_s * factor)

    @classmethod
    def from_yaml(cls, node: Any, where: Where, line: int) -> EscalationPolicy:
        m = where.mapping(node, line, "escalation", ("sla", "remind_fraction", "raise"))
        sla = _default_sla()
        if "sla" in m:
            s = where.mapping(m["sla"], m.line_of("sla"), "escalation: sla", ("IV", "III", "II", "I"))
            for sev_s, raw in s.items():
                sev = Severity(sev_s)
                w = where.mapping(raw, s.line_of(sev_s), f"sla {sev_s}", ("acknowledge", "resolve"))
                for k in ("acknowledge", "resolve"):
                    if k not in w:
                        raise where.err(w.line, f"sla {sev_s}: needs {k}")
                ack = where.duration_s(w["acknowledge"], w.line_of("acknowledge"), f"sla {sev_s}: acknowledge")
                res = where.duration_s(w["resolve"], w.line_of("resolve"), f"sla {sev_s}: resolve")
                if res < ack:
                    raise where.err(w.line, f"sla {sev_s}: resolve window is shorter than acknowledge")
                sla[sev] = Sla(ack, res)
        frac = m.get("remind_fraction", 0.75)
        if not isinstance(frac, int | float) or isinstance(frac, bool) or not 0 < frac < 1:
            raise where.err(m.line_of("remind_fraction"), f"remind_fraction must be in (0, 1), got {frac!r}")
        raises: list[Raise] = []
        if "raise" in m:
            lst = m["raise"]
            if not isinstance(lst, LList):
                raise where.err(m.line_of("raise"), "raise must be a list")
            for i, raw in enumerate(lst):
                r = where.mapping(raw, lst.line_of(i), f"raise {i + 1}", ("from", "after", "categories"))
                if "from" not in r or "after" not in r:
                    raise where.err(r.line, f"raise {i + 1}: needs from and after")
                sev = where.severity(r["from"], r.line_of("from"), f"raise {i + 1}: from")
                if sev is Severity.I:
                    raise where.err(r.line_of("from"), f"raise {i + 1}: I (red) is the top, it cannot be raised")
                after = where.duration_s(r["after"], r.line_of("after"), f"raise {i + 1}: after")
                cats = frozenset(where.strings(r["categories"], r.line_of("categories"), "categories")) \
                    if "categories" in r else frozenset()
                raises.append(Raise(sev, after, cats))
        else:
            raises = list(_default_raises())
        return cls(sla, float(frac), tuple(raises))


# --------------------------------------------------------------------------- ladder


def ladder(location: Location, registry: Registry) -> tuple[str | None, str | None, str]:
    """The departments of each rung for an area: (street, district, ops)."""
    return (
        registry.street_dept(location.district, location.street),
        registry.district_dept(location.district),
        OPS,
    )


def rung_of(departments: Sequence[str], location: Location, registry: Registry) -> int:
    """Highest rung already involved; city departments other than ops count as
    the first line (rung 0), like the street."""
    lad = ladder(location, registry)
    rung = 0
    for i, code in enumerate(lad):
        if code is not None and code in departments:
            rung = max(rung, i)
    return rung


def next_rung(rung: int, location: Location, registry: Registry) -> tuple[int, str] | None:
    """The next rung above `rung` that has a department, or None at the top."""
    lad = ladder(location, registry)
    for i in range(rung + 1, len(lad)):
        code = lad[i]
        if code is not None:
            return i, code
    return None


# --------------------------------------------------------------------------- timers


def _iso(t: datetime) -> str:
    return t.isoformat()


def _t(s: str | None) -> datetime | None:
    return datetime.fromisoformat(s) if s else None


def start(now: datetime, rung: int, sla: Sla) -> dict[str, Any]:
    return {
        "rung": rung,
        "rung_since": _iso(now),
        "ack_by": _iso(now + timedelta(seconds=sla.ack_s)),
        "resolve_by": _iso(now + timedelta(seconds=sla.resolve_s)),
        "reminded": [],
        "escalations": [],
    }


def tighten(timers: dict[str, Any], sla: Sla) -> dict[str, Any]:
    """After a severity rise: deadlines no later than the new windows allow."""
    t = dict(timers)
    since = datetime.fromisoformat(t["rung_since"])
    for key, window in (("ack_by", sla.ack_s), ("resolve_by", sla.resolve_s)):
        cur = _t(t.get(key))
        if cur is not None:
            t[key] = _iso(min(cur, since + timedelta(seconds=window)))
    return t


def stop_ack(timers: dict[str, Any]) -> dict[str, Any]:
    return {**timers, "ack_by": None}


def stop_all(timers: dict[str, Any]) -> dict[str, Any]:
    return {**timers, "ack_by": None, "resolve_by": None}


NoticeKind = Literal["reminder", "escalated", "overdue", "raised"]


@dataclass(frozen=True, slots=True)
class Notice:
    """Something a timer decided, for the ops center and the departments involved."""

    kind: NoticeKind
    alert_id: str
    at: datetime
    deadline: str  # "ack" | "resolve" | "persistence" | "manual"
    reason: str
    departments: tuple[str, ...] = ()  # who should hear about it
    rung: int = 0
    added_department: str | None = None

    @property
    def notice_id(self) -> str:
        """The same notice decided twice (a redelivery, a replay) has the same id."""
        return f"{self.alert_id}:{self.kind}:{self.deadline}:{self.at.isoformat()}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "notice_id": self.notice_id, "kind": self.kind, "alert_id": self.alert_id, "at": self.at.isoformat(), "deadline": self.deadline,
            "reason": self.reason, "departments": list(self.departments), "rung": RUNG_NAMES[self.rung],
            "added_department": self.added_department,
        }  # fmt: skip


def escalate(
    timers: dict[str, Any], now: datetime, location: Location, registry: Registry, sla: Sla, reason: str,
    *, acked: bool,
) -> tuple[dict[str, Any], str | None]:
    """Up one rung: returns (timers, department added) or (timers, None) at the top."""
    nxt = next_rung(timers["rung"], location, registry)
    if nxt is None:
        return timers, None
    rung, dept = nxt
    t = dict(timers)
    t["escalations"] = [
        *t.get("escalations", []),
        {"at": _iso(now), "from": RUNG_NAMES[timers["rung"]], "to": RUNG_NAMES[rung], "department": dept,
         "reason": reason},
    ][-ESCALATIONS_MAX:]
    t["rung"] = rung
    t["rung_since"] = _iso(now)
    t["ack_by"] = None if acked else _iso(now + timedelta(seconds=sla.ack_s))
    if t.get("resolve_by") is not None:
        t["resolve_by"] = _iso(max(datetime.fromisoformat(t["resolve_by"]), now + timedelta(seconds=sla.ack_s)))
    return t, dept


def due_at(timers: Mapping[str, Any] | None, remind_fraction: float) -> datetime | None:
    """The next time `tick` has something to do (for the agent's timer index)."""
    if not timers:
        return None
    since = datetime.fromisoformat(timers["rung_since"])
    out: list[datetime] = []
    for key in ("ack_by", "resolve_by"):
        dl = _t(timers.get(key))
        if dl is None:
            continue
        out.append(dl)
        if timers[key] not in timers.get("reminded", []):
            out.append(since + (dl - since) * remind_fraction)
    return min(out) if out else None


def tick(
    timers: dict[str, Any],
    now: datetime,
    *,
    alert_id: str,
    location: Location,
    departments: Sequence[str],
    registry: Registry,
    sla: Sla,
    remind_fraction: float,
) -> tuple[dict[str, Any], list[Notice]]:
    """Reminders and escalations due at `now`. At most one escalation per tick
    and per deadline; a caller ticking late catches up one rung per call."""
    t = dict(timers)
    notices: list[Notice] = []
    since = datetime.fromisoformat(t["rung_since"])
    for key, name in (("ack_by", "ack"), ("resolve_by", "resolve")):
        dl = _t(t.get(key))
        if dl is None:
            continue
        if now >= dl:
            # dated at the deadline, not at the tick: how late a tick runs (a timer
            # interval live, the interleaving of partitions in replay) changes nothing
            reason = (f"not {'acknowledged' if name == 'ack' else 'resolved'} by {dl.isoformat()} "
                      f"at rung {RUNG_NAMES[t['rung']]}")
            new, dept = escalate(t, dl, location, registry, sla, reason, acked=t.get("ack_by") is None)
            if dept is None:
                t[key] = None
                notices.append(Notice("overdue", alert_id, dl, name, reason + " (top of the ladder)",
                                      tuple(departments), t["rung"]))
            else:
                t = new
                notices.append(Notice("escalated", alert_id, dl, name, reason, (*departments, dept), t["rung"], dept))
            break
        remind_at = since + (dl - since) * remind_fraction
        if now >= remind_at and t[key] not in t.get("reminded", []):
            t["reminded"] = [*t.get("reminded", []), t[key]][-8:]
            notices.append(Notice("reminder", alert_id, remind_at, name,
                                  f"{'acknowledge' if name == 'ack' else 'resolve'} by {dl.isoformat()}",
                                  tuple(departments), t["rung"]))
    return t, notices


def raised_severity(
    base: Severity, since: datetime, now: datetime, category: str, raises: Sequence[Raise]
) -> tuple[Severity, float | None]:
    """Severity after persistence raises for a condition at `base` since
    `since`, and the seconds until the next raise (None if none pending)."""
    sev = base
    left = (now - since).total_seconds()
    while True:
        step = next((r for r in raises if r.from_severity is sev and r.applies(category)), None)
        if step is None:
            return sev, None
        if left < step.after_s:
            return sev, step.after_s - left
        left -= step.after_s
        sev = Severity.from_rank(sev.rank + 1)
