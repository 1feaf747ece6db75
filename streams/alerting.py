"""Signals -> Alerts: one open alert per (rule, subject, episode), revisions
for updates, routed departments attached. Pure; state is a small dict per
(rule, subject) kept beside the detector state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas import Alert, AlertStatus, Severity, alert_id_for
from streams.detectors.base import Signal
from streams.routing import RoutingTable


def apply_signal(prev: dict[str, Any] | None, sig: Signal, routing: RoutingTable) -> tuple[dict[str, Any] | None, Alert]:
    alert_id = alert_id_for(sig.rule, sig.subject, sig.episode_start.isoformat())
    if prev is None or prev.get("alert_id") != alert_id:
        prev = {"alert_id": alert_id, "revision": 0, "count": 0, "peak": sig.severity.value,
                "first_seen": sig.ts.isoformat()}  # fmt: skip
    peak = Severity.from_rank(max(Severity(prev["peak"]).rank, sig.severity.rank))
    state = {**prev, "revision": prev["revision"] + 1, "count": prev["count"] + 1, "peak": peak.value}
    departments = routing.route(sig.category, sig.sensor_type, peak, sig.location.district, sig.location.street)
    if sig.kind == "clear":
        status = AlertStatus.CLEARED
    else:
        status = AlertStatus.DISPATCHED if departments else AlertStatus.NEW
    alert = Alert(
        alert_id=alert_id,
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
        evidence=sig.evidence,
        trigger_sent_at=sig.sent_at,
    )
    return (None if sig.kind == "clear" else state), alert
