"""Signals -> Alerts: one open alert per (rule, subject), revisions for updates,
routed departments and the mode in force attached. Pure; the state is a small
dict per (rule, subject) kept beside the detector state (partition: the
subject's sensor_id).

- While an alert is open, every signal of the same rule continues it (same
  alert_id, count + 1, last_seen, peak severity), whatever episode_start the
  detector gives: one open alert per (rule, subject), never a storm.
- A clear marks it CLEARED but the state is kept for `flap_window_s`: a
  condition that comes back within that window continues the same alert as
  REOPENED (flapping damped: one alert, not one per flap); later, a new
  episode gets a new alert_id from (rule, subject, episode start).

State::

    {"alert_id": str, "revision": int, "count": int, "peak": "II",
     "first_seen": iso, "cleared_at": iso | None, "flaps": int}
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas import Alert, AlertStatus, Severity, alert_id_for
from streams.detectors.base import Signal
from streams.emergency import NORMAL, ModeInfo
from streams.routing import HOTLINE_CATEGORIES, RoutingTable, Source, Where


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    flap_window_s: float = 900.0  # a re-open this soon after a clear continues the same alert

    @classmethod
    def from_yaml(cls, node: Any, where: Where, line: int) -> AlertPolicy:
        m = where.mapping(node, line, "alerting", ("flap_window",))
        if "flap_window" in m:
            return cls(where.duration_s(m["flap_window"], m.line_of("flap_window"), "alerting: flap_window"))
        return cls()


DEFAULT_POLICY = AlertPolicy()


def apply_signal(
    prev: dict[str, Any] | None,
    sig: Signal,
    routing: RoutingTable,
    *,
    mode: ModeInfo = NORMAL,
    policy: AlertPolicy = DEFAULT_POLICY,
) -> tuple[dict[str, Any] | None, Alert]:
    """Returns (new state, alert). The state is never None: a cleared alert
    is remembered (a few fields) so that a flap continues it."""
    ts_iso = sig.ts.isoformat()
    status: AlertStatus
    if prev is not None and prev.get("cleared_at") is None:
        state = dict(prev)  # open: continue it
        status = AlertStatus.DISPATCHED
    elif (
        prev is not None
        and sig.kind != "clear"
        and (sig.ts - datetime.fromisoformat(prev["cleared_at"])).total_seconds() <= policy.flap_window_s
    ):
        state = {**prev, "cleared_at": None, "flaps": prev.get("flaps", 0) + 1}  # flap: reopen the same alert
        status = AlertStatus.REOPENED
    elif prev is not None and sig.kind == "clear":
        state = dict(prev)  # already cleared: another clear changes nothing but is reported
        status = AlertStatus.CLEARED
    else:
        state = {
            "alert_id": alert_id_for(sig.rule, sig.subject, sig.episode_start.isoformat()),
            "revision": 0, "count": 0, "peak": sig.severity.value, "first_seen": ts_iso,
            "cleared_at": None, "flaps": 0,
        }  # fmt: skip
        status = AlertStatus.DISPATCHED
    peak = Severity.from_rank(max(Severity(state["peak"]).rank, sig.severity.rank))
    state.update(revision=state["revision"] + 1, count=state["count"] + 1, peak=peak.value)
    source: Source = "hotline" if sig.sensor_type is None and sig.category in HOTLINE_CATEGORIES else "sensor"
    departments = routing.route(
        sig.category, sig.sensor_type, peak, sig.location.district, sig.location.street,
        source=source, mode=mode.mode,
    )  # fmt: skip
    if sig.kind == "clear":
        status = AlertStatus.CLEARED
        state["cleared_at"] = state.get("cleared_at") or ts_iso
    elif status is AlertStatus.DISPATCHED and not departments:
        status = AlertStatus.NEW
    details = {**sig.evidence.details, "mode": mode.detail}
    if state.get("flaps"):
        details["flaps"] = state["flaps"]
    alert = Alert(
        alert_id=state["alert_id"],
        rule=sig.rule,
        subject=sig.subject,
        category=sig.category,
        sensor_type=sig.sensor_type,
        severity=sig.severity,
        status=status,
        title=sig.title,
        location=sig.location,
        departments=departments,
        first_seen=datetime.fromisoformat(state["first_seen"]),
        last_seen=sig.ts,
        count=state["count"],
        peak_severity=peak,
        revision=state["revision"],
        evidence=sig.evidence.model_copy(update={"details": details}),
        trigger_sent_at=sig.sent_at,
    )
    return state, alert
