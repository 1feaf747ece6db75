"""Built-in scenarios, ready to run.

`demo`: a few dozen sensors over five central districts and one pollution
episode that builds up two event minutes after the start (tickets get their
status updates and feedback, so the hotline KPIs move too); at the demo's
speed (60: one event hour per wall minute) the PM2.5 1-hour mean passes
115 ug/m3 (IAQI 150, HJ 633) well within the first wall minute.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sim.fleet import City, build_city
from sim.scenario import FaultSpec, IncidentSpec, Scenario, plan

DEMO_DISTRICTS = ("dongcheng", "xicheng", "chaoyang", "haidian", "fengtai")
DEMO_SENSORS = 36
DEMO_SPEED = 60.0
DEMO_DURATION = timedelta(hours=6)
DEMO_POLLUTION = IncidentSpec(
    kind="pollution", start=timedelta(minutes=2), ramp=timedelta(minutes=5), duration=timedelta(hours=3),
    districts=DEMO_DISTRICTS, intensity=1.2,
)


def demo(start: datetime, duration: timedelta = DEMO_DURATION, seed: int = 1,
         sensors: int = DEMO_SENSORS, calls_per_hour: float = 6.0) -> tuple[City, Scenario]:
    city = build_city(seed, sensors=sensors, districts=DEMO_DISTRICTS)
    return city, plan(city, start, duration, incidents=[DEMO_POLLUTION], seed=seed, calls_per_hour=calls_per_hour,
                      ticket_updates=True)


def city(start: datetime, duration: timedelta, seed: int = 1, sensors: int = 1000,
         districts: Sequence[str] | None = None, incidents: Sequence[str | IncidentSpec] = (),
         faults: int | Sequence[str | FaultSpec] = 0, calls_per_hour: float = 30.0,
         prefix: str = "", ticket_updates: bool = False) -> tuple[City, Scenario]:
    c = build_city(seed, sensors=sensors, districts=districts, prefix=prefix)
    return c, plan(c, start, duration, incidents=incidents, faults=faults, seed=seed,
                   calls_per_hour=calls_per_hour, ticket_updates=ticket_updates)
