"""Emergency mode (平急转换): a district or the whole city switches between the
normal and the emergency profile.

A profile is data (policy.yaml `emergency:`):
  - `sla_factor`: SLA windows (acknowledge-by, resolve-by, hotline deadlines)
    are multiplied by it (emergency: shorter);
  - `threshold_scale`: per sensor type, a factor the detectors apply to their
    warning thresholds (emergency: water level warnings earlier). Detectors
    read it through `threshold_scale(policy, mode, sensor_type)`;
  - the emergency bureau on every water and traffic alert is a routing rule
    with `match: {mode: emergency}` (streams/rules/routing.yaml), so it stays data.

The mode in force is recorded in every alert's `evidence.details["mode"]`
(see `ModeInfo.detail`), and lifecycle timers read it from there, so a replay
of the recorded alerts applies the same SLAs as live.

State (one small dict, the same on every worker: a global table or a
compacted control topic replayed at start)::

    {"city": {"mode": "normal", "since": iso|None, "by": actor|None},
     "districts": {"<district code>": {"mode": "emergency", "since": iso, "by": actor}},
     "seen": [event ids, bounded]}

Switches are idempotent by event_id and authorised for `ops` and `ema` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from streams.routing import Geo, Mode, Where, load_geo

AUTHORISED = frozenset({"ops", "ema"})
SEEN_MAX = 256


@dataclass(frozen=True, slots=True)
class Profile:
    sla_factor: float = 1.0
    threshold_scale: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EmergencyPolicy:
    profiles: Mapping[str, Profile] = field(
        default_factory=lambda: {
            "normal": Profile(),
            "emergency": Profile(0.5, {"water_level": 0.9, "rainfall": 0.8, "manhole_gas": 0.8}),
        }
    )

    def profile(self, mode: str) -> Profile:
        return self.profiles.get(mode) or Profile()

    @classmethod
    def from_yaml(cls, node: Any, where: Where, line: int) -> EmergencyPolicy:
        m = where.mapping(node, line, "emergency", ("profiles",))
        profs = where.mapping(m.get("profiles"), m.line_of("profiles"), "emergency: profiles", ("normal", "emergency"))
        out: dict[str, Profile] = {}
        for name, raw in profs.items():
            p = where.mapping(raw, profs.line_of(name), f"emergency profile {name}", ("sla_factor", "threshold_scale"))
            factor = p.get("sla_factor", 1.0)
            if not isinstance(factor, int | float) or isinstance(factor, bool) or not 0 < factor <= 10:
                raise where.err(p.line_of("sla_factor"), f"profile {name}: sla_factor must be in (0, 10], got {factor!r}")
            scales: dict[str, float] = {}
            if "threshold_scale" in p:
                ts = where.mapping(p["threshold_scale"], p.line_of("threshold_scale"), f"profile {name}: threshold_scale")
                for st, v in ts.items():
                    if not isinstance(v, int | float) or isinstance(v, bool) or not 0 < v <= 10:
                        raise where.err(ts.line_of(st), f"profile {name}: threshold_scale {st} must be in (0, 10]")
                    scales[st] = float(v)
            out[name] = Profile(float(factor), scales)
        out.setdefault("normal", Profile())
        out.setdefault("emergency", Profile(0.5))
        return cls(out)


@dataclass(frozen=True, slots=True)
class ModeInfo:
    """The mode in force for one alert's area."""

    mode: Mode = "normal"
    scope: str = "city"  # "city" or "district:<code>"
    since: str | None = None  # ISO time of the switch

    @property
    def detail(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mode": self.mode, "scope": self.scope}
        if self.since:
            d["since"] = self.since
        return d


NORMAL = ModeInfo()


def empty_state() -> dict[str, Any]:
    return {"city": {"mode": "normal", "since": None, "by": None}, "districts": {}, "seen": []}


def mode_for(state: Mapping[str, Any] | None, district: str, geo: Geo | None = None) -> ModeInfo:
    """Mode in force for an area (district name or code): city emergency wins."""
    if not state:
        return NORMAL
    city = state.get("city") or {}
    if city.get("mode") == "emergency":
        return ModeInfo("emergency", "city", city.get("since"))
    code = district
    if district not in (state.get("districts") or {}):
        code = (geo or load_geo()).district_code(district) or district
    d = (state.get("districts") or {}).get(code)
    if d and d.get("mode") == "emergency":
        return ModeInfo("emergency", f"district:{code}", d.get("since"))
    return NORMAL


@dataclass(frozen=True, slots=True)
class ModeSwitch:
    """Control message: switch `scope` ("city" or "district:<code or name>") to `mode`."""

    event_id: str
    scope: str
    mode: Mode
    actor: str
    actor_department: str | None
    ts: datetime

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModeSwitch:
        ts = d["ts"]
        if isinstance(ts, str):
            ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        if not isinstance(ts, datetime) or ts.tzinfo is None:
            raise ValueError("ts must be a timezone-aware time")
        mode = d["mode"]
        if mode not in ("normal", "emergency"):
            raise ValueError(f"mode must be normal or emergency, got {mode!r}")
        return cls(str(d["event_id"]), str(d["scope"]), mode, str(d["actor"]), d.get("actor_department"), ts)


@dataclass(frozen=True, slots=True)
class SwitchResult:
    accepted: bool
    reason: str = ""  # rejection class ("unauthorised", "invalid_scope") or "" / "duplicate"
    message: str = ""
    changed: bool = False


def switch(state: dict[str, Any] | None, sw: ModeSwitch, geo: Geo | None = None) -> tuple[dict[str, Any], SwitchResult]:
    """Apply a switch; never mutates the input state."""
    st: dict[str, Any] = {
        "city": dict((state or empty_state())["city"]),
        "districts": dict((state or {}).get("districts") or {}),
        "seen": list((state or {}).get("seen") or []),
    }
    if sw.event_id in st["seen"]:
        return st, SwitchResult(True, "duplicate")
    if sw.actor_department not in AUTHORISED:
        return st, SwitchResult(False, "unauthorised",
                                f"{sw.actor} ({sw.actor_department}) may not switch modes; only {sorted(AUTHORISED)}")
    entry = {"mode": sw.mode, "since": sw.ts.isoformat(), "by": sw.actor}
    if sw.scope == "city":
        changed = st["city"].get("mode") != sw.mode
        st["city"] = entry
    elif sw.scope.startswith("district:"):
        g = geo or load_geo()
        name = g.district_name(sw.scope.split(":", 1)[1])
        code = g.district_code(name) if name else None
        if code is None:
            return st, SwitchResult(False, "invalid_scope", f"unknown district in scope {sw.scope!r}")
        changed = (st["districts"].get(code) or {}).get("mode", "normal") != sw.mode
        if sw.mode == "normal":
            st["districts"].pop(code, None)
        else:
            st["districts"][code] = entry
    else:
        return st, SwitchResult(False, "invalid_scope", f"scope must be 'city' or 'district:<code>', got {sw.scope!r}")
    st["seen"] = [*st["seen"], sw.event_id][-SEEN_MAX:]
    return st, SwitchResult(True, "", "", changed)


def threshold_scale(policy: EmergencyPolicy, mode: str, sensor_type: str | None) -> float:
    """Factor for a detector's warning thresholds under `mode` (1.0 = unchanged)."""
    if sensor_type is None:
        return 1.0
    return float(policy.profile(mode).threshold_scale.get(sensor_type, 1.0))


def mode_of_alert(details: Mapping[str, Any] | None) -> str:
    m = (details or {}).get("mode")
    return str(m.get("mode", "normal")) if isinstance(m, Mapping) else "normal"


__all__ = ["EmergencyPolicy", "ModeInfo", "ModeSwitch", "Profile", "mode_for", "switch", "threshold_scale"]
