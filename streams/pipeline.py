"""Per-reading processing shared by the Faust agent, replay and the CLI:
detectors -> signals -> alerts (with routing). Pure and synchronous.

State per sensor: {"det": {detector name: state}, "alerts": {rule: alert state}}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas import Alert, SensorReading
from streams.alerting import apply_signal
from streams.detectors.aqi import AirQualityThreshold
from streams.detectors.base import Detector
from streams.routing import RoutingTable


def default_detectors() -> list[Detector]:
    return [AirQualityThreshold()]


class ReadingProcessor:
    def __init__(self, routing: RoutingTable, detectors: Sequence[Detector] | None = None) -> None:
        self.routing = routing
        self.detectors = list(detectors) if detectors is not None else default_detectors()

    def step(self, state: dict[str, Any] | None, reading: SensorReading) -> tuple[dict[str, Any], list[Alert]]:
        st = state if state is not None else {"det": {}, "alerts": {}}
        alerts: list[Alert] = []
        for det in self.detectors:
            if not det.applies_to(reading):
                continue
            det_state, signals = det.step(st["det"].get(det.name), reading)
            st["det"][det.name] = det_state
            for sig in signals:
                prev = st["alerts"].get(sig.rule)
                new, alert = apply_signal(prev, sig, self.routing)
                if new is None:
                    st["alerts"].pop(sig.rule, None)
                else:
                    st["alerts"][sig.rule] = new
                alerts.append(alert)
        return st, alerts
