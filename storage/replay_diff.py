"""Replay, the pure part: argument parsing, the scope filter, the latest
revision of each alert, and the diff between the alerts a replay produced and
the alerts that were recorded. No I/O, no clock: the engine in
`storage.replay` feeds it, tests call it directly."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from citybrain.errors import ConfigError

# the fields a replay must reproduce; anything else (revision, count, evidence
# numbers) follows from these and would only repeat a difference
COMPARED = ("severity", "peak_severity", "departments", "first_seen", "last_seen", "status")
# no '.' and no '-': a run's topics (`replay.<run>.`, `citybrain-replay-<run>-`) name their run unambiguously
RUN_RE = re.compile(r"^[a-z0-9][a-z0-9_]{2,40}$")
_SPEED_RE = re.compile(r"^(\d+(?:\.\d+)?)x?$")


def parse_time(text: str, name: str) -> datetime:
    """ISO 8601 with a zone; a naive time would silently mean the server's zone."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{name} {text!r} is not an ISO 8601 time (e.g. 2026-07-01T08:00:00+08:00)") from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise ConfigError(f"{name} {text!r} has no time zone: add Z or +08:00")
    return t


def parse_range(t_from: str, t_to: str) -> tuple[datetime, datetime]:
    start, end = parse_time(t_from, "--from"), parse_time(t_to, "--to")
    if start >= end:
        raise ConfigError(f"--from {t_from} is not before --to {t_to}")
    return start, end


def parse_speed(text: str) -> float | None:
    """`max` (None: as fast as Kafka takes it) or `Nx`: N event seconds per wall second."""
    t = text.strip().lower()
    if t == "max":
        return None
    m = _SPEED_RE.match(t)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"speed {text!r} is not 'max' or a positive factor like '60x'")
    return float(m.group(1))


def check_run(run: str) -> str:
    if not RUN_RE.match(run):
        raise ConfigError(f"replay run {run!r} must match {RUN_RE.pattern}")
    return run


def new_run_id(now: datetime, token: str | None = None) -> str:
    """Sortable by start time, unique by a random suffix; safe in topic names and app ids."""
    return f"{now.strftime('%Y%m%dt%H%M%S')}_{token or secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class Scope:
    """What a replay covers: alerts first seen in [start, end), in an area
    (district or street name), about some sensors, of every rule but the
    ignored ones (a rule known to be noisy can be left out of the comparison)."""

    start: datetime
    end: datetime
    area: str | None = None
    sensors: tuple[str, ...] = ()
    ignore_rules: tuple[str, ...] = ()

    def covers(self, a: AlertView) -> bool:
        if not self.start <= a.first_seen < self.end or a.rule in self.ignore_rules:
            return False
        if self.area is not None and self.area not in (a.district, a.street):
            return False
        return not self.sensors or a.subject in self.sensors

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat(), "area": self.area,
                "sensors": list(self.sensors), "ignore_rules": list(self.ignore_rules)}


@dataclass(frozen=True, slots=True)
class AlertView:
    """The part of an alert that a replay is judged on (plus what names it)."""

    alert_id: str
    revision: int
    rule: str
    subject: str
    district: str
    street: str | None
    severity: str
    peak_severity: str | None
    departments: tuple[str, ...]
    first_seen: datetime
    last_seen: datetime
    status: str
    count: int

    @classmethod
    def from_alert_json(cls, a: Mapping[str, Any]) -> AlertView:
        """From the wire form (a parsed `schemas.Alert` JSON)."""
        loc = a.get("location") or {}
        return cls(
            alert_id=a["alert_id"], revision=int(a.get("revision", 1)), rule=a["rule"], subject=a["subject"],
            district=loc.get("district", ""), street=loc.get("street"), severity=a["severity"],
            peak_severity=a.get("peak_severity"), departments=tuple(a.get("departments") or ()),
            first_seen=_dt(a["first_seen"]), last_seen=_dt(a["last_seen"]), status=a.get("status", "new"),
            count=int(a.get("count", 1)),
        )

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> AlertView:
        """From a row of the `alerts` table."""
        return cls(
            alert_id=r["alert_id"], revision=r["revision"], rule=r["rule"], subject=r["subject"],
            district=r["district"], street=r["street"], severity=r["severity"], peak_severity=r["peak_severity"],
            departments=tuple(r["departments"] or ()), first_seen=r["first_seen"], last_seen=r["last_seen"],
            status=r["status"], count=r["count"],
        )

    def value(self, name: str) -> Any:
        v = getattr(self, name)
        if name == "departments":
            return sorted(v)  # routing adds departments in rule order; the set is what matters
        return v

    def to_dict(self) -> dict[str, Any]:
        return {"alert_id": self.alert_id, "revision": self.revision, "rule": self.rule, "subject": self.subject,
                "district": self.district, "street": self.street, "severity": self.severity,
                "peak_severity": self.peak_severity, "departments": list(self.departments),
                "first_seen": self.first_seen.isoformat(), "last_seen": self.last_seen.isoformat(),
                "status": self.status, "count": self.count}


def _dt(v: Any) -> datetime:
    t = v if isinstance(v, datetime) else datetime.fromisoformat(str(v))
    if t.tzinfo is None:
        raise ValueError(f"naive time {v!r} in an alert")
    return t


def keep_latest(latest: dict[str, AlertView], a: AlertView) -> None:
    """At-least-once delivery repeats revisions and the topic's partitions
    interleave: the highest revision wins, whatever order they arrive in."""
    held = latest.get(a.alert_id)
    if held is None or a.revision > held.revision:
        latest[a.alert_id] = a


@dataclass(frozen=True, slots=True)
class Change:
    alert: AlertView  # as replayed
    fields: dict[str, tuple[Any, Any]]  # name -> (recorded, replayed)


@dataclass(frozen=True, slots=True)
class ReplayDiff:
    identical: tuple[str, ...] = ()
    missing: tuple[AlertView, ...] = ()  # recorded, not produced by the replay
    new: tuple[AlertView, ...] = ()  # produced by the replay, not recorded
    changed: tuple[Change, ...] = ()
    recorded: int = 0
    replayed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.missing or self.new or self.changed)

    def summary(self) -> dict[str, int]:
        return {"recorded": self.recorded, "replayed": self.replayed, "identical": len(self.identical),
                "missing": len(self.missing), "new": len(self.new), "changed": len(self.changed)}

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,
            "summary": self.summary(),
            "empty": self.empty,
            "identical": list(self.identical),
            "missing": [a.to_dict() for a in self.missing],
            "new": [a.to_dict() for a in self.new],
            "changed": [
                {"alert_id": c.alert.alert_id, "rule": c.alert.rule, "subject": c.alert.subject,
                 "changes": {k: [_plain(r), _plain(p)] for k, (r, p) in c.fields.items()}}
                for c in self.changed
            ],
        }


def _plain(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


def diff_alerts(recorded: Iterable[AlertView], replayed: Iterable[AlertView], scope: Scope,
                extra: Mapping[str, Any] | None = None) -> ReplayDiff:
    """Both sides are cut to the same scope, then matched by alert_id (which is
    derived from rule, subject and window start, so the same condition gets
    the same id in a replay)."""
    rec: dict[str, AlertView] = {}
    for a in recorded:
        if scope.covers(a):
            keep_latest(rec, a)
    rep: dict[str, AlertView] = {}
    for a in replayed:
        if scope.covers(a):
            keep_latest(rep, a)
    identical: list[str] = []
    changed: list[Change] = []
    for aid in sorted(rec.keys() & rep.keys()):
        r, p = rec[aid], rep[aid]
        fields = {name: (r.value(name), p.value(name)) for name in COMPARED if r.value(name) != p.value(name)}
        if fields:
            changed.append(Change(p, fields))
        else:
            identical.append(aid)
    order = _order
    return ReplayDiff(
        identical=tuple(identical),
        missing=tuple(sorted((rec[k] for k in rec.keys() - rep.keys()), key=order)),
        new=tuple(sorted((rep[k] for k in rep.keys() - rec.keys()), key=order)),
        changed=tuple(changed),
        recorded=len(rec),
        replayed=len(rep),
        extra=dict(extra or {}),
    )


def _order(a: AlertView) -> tuple[datetime, str]:
    return (a.first_seen, a.alert_id)


def _short(v: Any, width: int = 40) -> str:
    if isinstance(v, datetime):
        s = v.strftime("%Y-%m-%d %H:%M:%S")
    elif isinstance(v, list | tuple):
        s = ",".join(str(x) for x in v) or "-"
    else:
        s = "-" if v is None else str(v)
    return s if len(s) <= width else s[: width - 1] + "…"


def render_table(d: ReplayDiff, limit: int = 50) -> str:
    """The diff for a terminal: a summary line, then one line per difference."""
    s = d.summary()
    lines = [f"recorded {s['recorded']}, replayed {s['replayed']}: {s['identical']} identical, "
             f"{s['missing']} missing, {s['new']} new, {s['changed']} changed"]
    if d.empty:
        lines.append("no differences: the replay reproduced every recorded alert")
        return "\n".join(lines)
    rows: list[Sequence[str]] = [("", "rule", "subject", "first seen", "field", "recorded", "replayed")]
    for a in d.missing:
        rows.append(("missing", a.rule, a.subject, _short(a.first_seen), "severity", a.severity, "-"))
    for a in d.new:
        rows.append(("new", a.rule, a.subject, _short(a.first_seen), "severity", "-", a.severity))
    for c in d.changed:
        for name, (r, p) in c.fields.items():
            rows.append(("changed", c.alert.rule, c.alert.subject, _short(c.alert.first_seen), name,
                         _short(r), _short(p)))
    shown = rows[: limit + 1]
    widths = [max(len(r[i]) for r in shown) for i in range(len(shown[0]))]
    for r in shown:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    if len(rows) > len(shown):
        lines.append(f"... {len(rows) - len(shown)} more lines in the JSON")
    return "\n".join(lines)
