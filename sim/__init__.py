"""The city simulator: Beijing's geography, a sensor fleet with daily rhythms
and faults, incidents that move several signals and the hotline at once, and
the ground truth (labels) to score detection against.

    city = build_city(seed=1, sensors=1000)
    scenario = plan(city, start, timedelta(hours=6), incidents=["rainstorm"], faults=5, seed=1)
    for event in generate(city, scenario): ...      # Reading | Call | TicketUpdate, in time order
    scenario.labels                                 # what really happened
"""

from sim.fleet import City, Sensor, build_city, registry
from sim.generate import Event, Reading, generate, simulate, validated
from sim.geo import Geography, load_geography
from sim.hotline import Call, TicketUpdate
from sim.scenario import FAULT_KINDS, INCIDENT_KINDS, FaultSpec, IncidentSpec, Label, Scenario, plan

__all__ = [
    "FAULT_KINDS",
    "INCIDENT_KINDS",
    "Call",
    "City",
    "Event",
    "FaultSpec",
    "Geography",
    "IncidentSpec",
    "Label",
    "Reading",
    "Scenario",
    "Sensor",
    "TicketUpdate",
    "build_city",
    "generate",
    "load_geography",
    "plan",
    "registry",
    "simulate",
    "validated",
]
