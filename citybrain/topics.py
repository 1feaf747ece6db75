"""Kafka topic names (DESIGN.md). Configuration with these defaults; tests and
replay runs give a prefix so they never touch the live topics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = ""

    def _t(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def readings(self) -> str:
        return self._t("city.sensor.readings")

    @property
    def hotline(self) -> str:
        return self._t("city.hotline.events")

    @property
    def alerts(self) -> str:
        return self._t("city.alerts")

    def dept(self, code: str) -> str:
        return self._t(f"city.alerts.dept.{code}")

    @property
    def alerts_detected(self) -> str:
        """Internal: detection revisions keyed by alert_id, before the lifecycle."""
        return self._t("city.alerts.detected")

    @property
    def control_mode(self) -> str:
        """Emergency mode switches (compacted, one partition, key = scope)."""
        return self._t("city.control.mode")

    @property
    def actions(self) -> str:
        return self._t("city.alert.actions")

    @property
    def incidents(self) -> str:
        return self._t("city.incidents")

    @property
    def dlq(self) -> str:
        return self._t("city.dlq")

    @classmethod
    def for_replay(cls, run: str) -> Topics:
        return cls(prefix=f"replay.{run}.")


LIVE = Topics()
