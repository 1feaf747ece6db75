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
    def actions_applied(self) -> str:
        """The actions the lifecycle accepted (refused ones go to the DLQ): what storage records."""
        return self._t("city.alert.actions.applied")

    @property
    def notices(self) -> str:
        """What the lifecycle's timers decided (reminders, escalations, overdue, raised), key alert_id."""
        return self._t("city.alert.notices")

    @property
    def incidents(self) -> str:
        return self._t("city.incidents")

    @property
    def hotline_tickets(self) -> str:
        """Hotline tickets after each change (dispatch, status, feedback, overdue), keyed by ticket_id."""
        return self._t("city.hotline.tickets")

    def hotline_dept(self, code: str) -> str:
        """Department `code`'s copy of the tickets routed to it, keyed by ticket_id."""
        return self._t(f"city.hotline.dept.{code}")

    @property
    def kpi(self) -> str:
        """三率 snapshots of the hotline, keyed by scope (department code or district:<code>)."""
        return self._t("city.kpi")

    @property
    def kpi_facts(self) -> str:
        """Internal: each ticket's KPI facts re-keyed by scope."""
        return self._t("city.kpi.facts")

    @property
    def incident_items(self) -> str:
        """Internal: alerts and hotline events re-keyed by district code, for incidents and hotline spikes."""
        return self._t("city.incidents.items")

    @property
    def dlq(self) -> str:
        return self._t("city.dlq")

    @classmethod
    def for_replay(cls, run: str) -> Topics:
        return cls(prefix=f"replay.{run}.")


LIVE = Topics()
