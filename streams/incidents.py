"""Incidents: alerts and hotline tickets that share an area, a time window and
related categories are linked into one `schemas.Incident`.

Partitioning: the state is PER AREA KEY = the district code of the item's
location (`area_key(location)`, e.g. "chaoyang"). The detection worker is
partitioned by sensor_id and the hotline by ticket_id, so the agent
re-partitions alerts (from `city.alerts`) and hotline events (from
`city.hotline.events`) by `area_key(x.location)` before calling:

    st, incidents = correlator.step(st, alert_or_hotline_event)
    st, incidents = correlator.tick(st, now)      # periodically: resolve/close/expire

Correlation (policy.yaml `incidents:`): an item belongs to a group (flood,
gas, noise, air) by sensor type or category; it joins an incident of the same
group in the same district whose last member was seen within `window` and
that has a member in the same street or within `radius_km`. Some members only
join, never start an incident (a traffic slowdown joins a flood; on its own
it is not a flood). An incident is published once it has `min_members`
members; its severity is the highest member's (a ticket counts as IV, an
urgent one as III); it is `open` while any member is active, `resolved` when
all are resolved/cleared/closed, `closed` after `close_after` without news
(open ones after `max_span` without news). An incident takes no more members
once it has `max_members` or is older than `max_span`: the next item starts a
new one, so a long complaint season is a series of incidents, not one
without end.
The incident_id is stable_id(group, area, first member, first time): the
same input order gives the same ids. A member already linked is updated in
place (idempotent under redelivery).

State::

    {"incidents": {incident_id: {"kind", "area", "first_seen", "last_seen", "status",
                                 "location": {...}, "members": {"a:<alert_id>" | "t:<ticket_id>":
                                 {"sev": "II", "active": bool}}, "points": [[lat, lon]], "streets": [..],
                                 "emitted": bool, "rev": int, "quiet_since": iso | None}},
     "index": {member key: incident_id}}
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from schemas import Alert, AlertStatus, HotlineEvent, Incident, Location, Severity, TicketStatus, stable_id
from streams.routing import Geo, Where, load_geo


@dataclass(frozen=True, slots=True)
class Group:
    kind: str
    starters: frozenset[str]  # sensor types or categories that can start an incident
    joiners: frozenset[str] = frozenset()  # that can only join an existing one


def _default_groups() -> tuple[Group, ...]:
    return (
        Group("flood", frozenset({"water_level", "rainfall", "flooding"}),
              frozenset({"traffic_speed", "traffic_flow", "traffic"})),
        Group("gas", frozenset({"manhole_gas", "gas_smell", "odour"})),
        Group("noise", frozenset({"noise"})),
        Group("air", frozenset({"pm25", "pm10", "no2", "o3", "co", "so2", "air_pollution"})),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class IncidentPolicy:
    groups: tuple[Group, ...] = field(default_factory=_default_groups)
    window_s: float = 2 * 3600
    radius_km: float = 3.0
    min_members: int = 2
    # an incident stops taking members at this size or age: a long complaint
    # season becomes a series of incidents, and the state per district stays small
    max_members: int = 200
    max_span_s: float = 24 * 3600
    close_after_s: float = 2 * 3600
    ticket_severity: Mapping[str, Severity] = field(
        default_factory=lambda: {"normal": Severity.IV, "urgent": Severity.III}
    )

    @classmethod
    def from_yaml(cls, node: Any, where: Where, line: int) -> IncidentPolicy:
        m = where.mapping(node, line, "incidents",
                          ("groups", "window", "radius_km", "min_members", "max_members", "max_span", "close_after",
                           "ticket_severity"))
        kw: dict[str, Any] = {}
        if "groups" in m:
            g = where.mapping(m["groups"], m.line_of("groups"), "incidents: groups")
            groups = []
            for kind, raw in g.items():
                gm = where.mapping(raw, g.line_of(kind), f"group {kind}", ("start", "join"))
                if "start" not in gm:
                    raise where.err(gm.line, f"group {kind}: needs start (sensor types or categories)")
                starters = frozenset(where.strings(gm["start"], gm.line_of("start"), f"group {kind}: start"))
                joiners = frozenset(where.strings(gm["join"], gm.line_of("join"), f"group {kind}: join")) \
                    if "join" in gm else frozenset()
                groups.append(Group(kind, starters, joiners))
            kw["groups"] = tuple(groups)
        for key, attr in (("window", "window_s"), ("close_after", "close_after_s"), ("max_span", "max_span_s")):
            if key in m:
                kw[attr] = where.duration_s(m[key], m.line_of(key), f"incidents: {key}")
        if "radius_km" in m:
            r = m["radius_km"]
            if not isinstance(r, int | float) or isinstance(r, bool) or not r > 0:
                raise where.err(m.line_of("radius_km"), f"incidents: radius_km must be > 0, got {r!r}")
            kw["radius_km"] = float(r)
        if "min_members" in m:
            n = m["min_members"]
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise where.err(m.line_of("min_members"), f"incidents: min_members must be an integer >= 1, got {n!r}")
            kw["min_members"] = n
        if "max_members" in m:
            n = m["max_members"]
            if not isinstance(n, int) or isinstance(n, bool) or n < 2:
                raise where.err(m.line_of("max_members"), f"incidents: max_members must be an integer >= 2, got {n!r}")
            kw["max_members"] = n
        if "ticket_severity" in m:
            ts = where.mapping(m["ticket_severity"], m.line_of("ticket_severity"), "incidents: ticket_severity",
                               ("normal", "urgent"))
            kw["ticket_severity"] = {
                **cls().ticket_severity,
                **{k: where.severity(v, ts.line_of(k), f"ticket_severity {k}") for k, v in ts.items()},
            }
        return cls(**kw)


def area_key(location: Location, geo: Geo | None = None) -> str:
    """The key to re-partition incident correlation by: the district code."""
    return (geo or load_geo()).district_code(location.district) or location.district


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    dy = (lat2 - lat1) * 111.32
    dx = (lon2 - lon1) * 111.32 * math.cos(math.radians((lat1 + lat2) / 2))
    return math.hypot(dx, dy)


ALERT_ACTIVE = frozenset({AlertStatus.NEW, AlertStatus.DISPATCHED, AlertStatus.ACKNOWLEDGED, AlertStatus.REOPENED})
POINTS_MAX = 32


@dataclass(frozen=True, slots=True)
class _Item:
    key: str
    kind_key: str  # sensor type or category
    severity: Severity
    active: bool
    ts: datetime
    location: Location


class IncidentCorrelator:
    def __init__(self, policy: IncidentPolicy | None = None, geo: Geo | None = None) -> None:
        self.policy = policy or IncidentPolicy()
        self.geo = geo or load_geo()

    def _item(self, x: Alert | HotlineEvent) -> _Item | None:
        if isinstance(x, Alert):
            if x.category == "sensor_health":
                return None
            sev = x.peak_severity or x.severity
            return _Item(f"a:{x.alert_id}", x.sensor_type or x.category, sev, x.status in ALERT_ACTIVE,
                         x.last_seen, x.location)
        if x.kind == "feedback":
            return None
        active = x.status not in (TicketStatus.RESOLVED, TicketStatus.CLOSED)
        return _Item(f"t:{x.ticket_id}", x.category.value, self.policy.ticket_severity.get(x.urgency, Severity.IV),
                     active, x.ts, x.location)

    def _group(self, kind_key: str) -> tuple[Group, bool] | None:
        for g in self.policy.groups:
            if kind_key in g.starters:
                return g, True
            if kind_key in g.joiners:
                return g, False
        return None

    def _near(self, inc: Mapping[str, Any], item: _Item) -> bool:
        if item.location.street and item.location.street in inc["streets"]:
            return True
        return any(distance_km(lat, lon, item.location.lat, item.location.lon) <= self.policy.radius_km
                   for lat, lon in inc["points"])

    def step(self, state: dict[str, Any] | None, x: Alert | HotlineEvent,
             owned: bool = False) -> tuple[dict[str, Any], list[Incident]]:  # fmt: skip
        """`owned`: the caller gives the state away (e.g. just decoded from bytes),
        so it is changed in place instead of copied first."""
        st: dict[str, Any] = (state if owned else copy.deepcopy(state)) if state else {"incidents": {}, "index": {}}
        item = self._item(x)
        if item is None:
            return st, []
        iid = st["index"].get(item.key)
        if iid is not None and iid in st["incidents"]:
            inc = st["incidents"][iid]
            m = inc["members"][item.key]
            if m == {"sev": item.severity.value, "active": item.active}:
                return st, []  # redelivered: nothing new
            inc["members"][item.key] = {"sev": item.severity.value, "active": item.active}
            inc["last_seen"] = max(inc["last_seen"], item.ts.isoformat())
            return st, self._changed(inc, iid, item.ts)
        found = self._group(item.kind_key)
        if found is None:
            return st, []
        group, can_start = found
        if not item.active:
            return st, []  # an already finished item starts or joins nothing
        horizon = (item.ts - timedelta(seconds=self.policy.window_s)).isoformat()
        born_after = (item.ts - timedelta(seconds=self.policy.max_span_s)).isoformat()
        best = None
        for cid in sorted(st["incidents"]):
            inc = st["incidents"][cid]
            if inc["kind"] == group.kind and inc["status"] != "closed" and inc["last_seen"] >= horizon \
                    and inc["first_seen"] >= born_after and len(inc["members"]) < self.policy.max_members \
                    and self._near(inc, item):
                best = cid
                break
        if best is None:
            if not can_start:
                return st, []
            area = area_key(item.location, self.geo)
            best = stable_id("incident", group.kind, area, item.key, item.ts.isoformat(), prefix="i-")
            st["incidents"][best] = {
                "kind": group.kind, "area": area, "first_seen": item.ts.isoformat(), "last_seen": item.ts.isoformat(),
                "status": "open", "location": item.location.model_dump(mode="json"), "members": {}, "points": [],
                "streets": [], "emitted": False, "rev": 0, "quiet_since": None,
            }  # fmt: skip
        inc = st["incidents"][best]
        inc["members"][item.key] = {"sev": item.severity.value, "active": item.active}
        st["index"][item.key] = best
        inc["last_seen"] = max(inc["last_seen"], item.ts.isoformat())
        if can_start:
            inc["points"] = [*inc["points"], [item.location.lat, item.location.lon]][-POINTS_MAX:]
            if item.location.street and item.location.street not in inc["streets"]:
                inc["streets"] = [*inc["streets"], item.location.street][-POINTS_MAX:]
        return st, self._changed(inc, best, item.ts)

    def _changed(self, inc: dict[str, Any], iid: str, now: datetime) -> list[Incident]:
        any_active = any(m["active"] for m in inc["members"].values())
        if any_active:
            inc["status"], inc["quiet_since"] = "open", None
        elif inc["status"] == "open":
            inc["status"], inc["quiet_since"] = "resolved", now.isoformat()
        if len(inc["members"]) < self.policy.min_members and not inc["emitted"]:
            return []
        inc["emitted"] = True
        inc["rev"] += 1
        return [self.incident(iid, inc)]

    @staticmethod
    def incident(iid: str, inc: Mapping[str, Any]) -> Incident:
        members = inc["members"]
        sev = Severity.from_rank(max(Severity(m["sev"]).rank for m in members.values()))
        return Incident(
            incident_id=iid, kind=inc["kind"], severity=sev, status=inc["status"],
            location=Location.model_validate(inc["location"]),
            alert_ids=tuple(sorted(k[2:] for k in members if k.startswith("a:"))),
            ticket_ids=tuple(sorted(k[2:] for k in members if k.startswith("t:"))),
            first_seen=datetime.fromisoformat(inc["first_seen"]), last_seen=datetime.fromisoformat(inc["last_seen"]),
            revision=inc["rev"],
        )  # fmt: skip

    def tick(self, state: dict[str, Any] | None, now: datetime,
             owned: bool = False) -> tuple[dict[str, Any] | None, list[Incident]]:  # fmt: skip
        """Close incidents resolved for `close_after`, and open ones without news for
        `max_span`; drop unpublished ones past the window. `owned` as for `step`."""
        if not state:
            return state, []
        st = state if owned else copy.deepcopy(state)
        out: list[Incident] = []
        for iid in sorted(st["incidents"]):
            inc = st["incidents"][iid]
            drop = False
            if not inc["emitted"]:
                drop = (now - datetime.fromisoformat(inc["last_seen"])).total_seconds() > self.policy.window_s
            elif inc["status"] == "resolved" and inc["quiet_since"] and \
                    (now - datetime.fromisoformat(inc["quiet_since"])).total_seconds() >= self.policy.close_after_s:
                inc["status"] = "closed"
                inc["rev"] += 1
                out.append(self.incident(iid, inc))
                drop = True
            elif (now - datetime.fromisoformat(inc["last_seen"])).total_seconds() >= self.policy.max_span_s:
                # no news for a day although a member is still open (a ticket nobody closed):
                # the incident is over; its members' own lifecycles go on
                inc["status"] = "closed"
                inc["rev"] += 1
                out.append(self.incident(iid, inc))
                drop = True
            if drop:
                for k in inc["members"]:
                    st["index"].pop(k, None)
                del st["incidents"][iid]
        return st, out
