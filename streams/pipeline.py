"""Per-reading processing shared by the Faust agent, replay and the CLI:
detection engine -> signals -> alerts (with routing). Pure and synchronous.

State per sensor: {"det": engine states, "alerts": {rule: alert state}, "p": source partition}.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from schemas import Alert, SensorReading
from streams.alerting import apply_signal
from streams.detectors.base import Signal
from streams.detectors.engine import DetectionEngine
from streams.emergency import NORMAL, EmergencyPolicy, ModeInfo, threshold_scale
from streams.routing import RoutingTable


class ReadingProcessor:
    def __init__(
        self,
        routing: RoutingTable,
        engine: DetectionEngine | None = None,
        mode_of: Callable[[str], ModeInfo] | None = None,
        emergency: EmergencyPolicy | None = None,
    ) -> None:
        self.routing = routing
        self.engine = engine if engine is not None else DetectionEngine()
        self.mode_of = mode_of  # district -> emergency mode in force (平急转换); None: always normal
        self.emergency = emergency if emergency is not None else EmergencyPolicy()

    def step(self, state: dict[str, Any] | None, reading: SensorReading) -> tuple[dict[str, Any], list[Alert]]:
        """Raises `LateEvent` (a RejectedPayload, reason 'late') for a reading past the lateness."""
        st = state if state is not None else {"det": None, "alerts": {}}
        scale = 1.0
        if self.mode_of is not None:
            mode = self.mode_of(reading.location.district)
            if mode.mode != "normal":
                scale = threshold_scale(self.emergency, mode.mode, reading.sensor_type)
        st["det"], signals = self.engine.step_reading(st.get("det"), reading, scale)
        return st, self._alerts(st, signals)

    def tick(self, state: dict[str, Any], watermark: datetime) -> tuple[dict[str, Any], list[Alert]]:
        """Event-time progress without a new reading (silence detection)."""
        det, signals = self.engine.tick(state.get("det"), watermark)
        state["det"] = det
        return state, self._alerts(state, signals)

    def _alerts(self, st: dict[str, Any], signals: list[Signal]) -> list[Alert]:
        alerts: list[Alert] = []
        for sig in signals:
            mode = self.mode_of(sig.location.district) if self.mode_of is not None else NORMAL
            new, alert = apply_signal(st["alerts"].get(sig.rule), sig, self.routing, mode=mode)
            if new is None:
                st["alerts"].pop(sig.rule, None)
            else:
                st["alerts"][sig.rule] = new
            alerts.append(alert)
        return alerts
