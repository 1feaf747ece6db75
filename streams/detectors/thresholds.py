"""Standards-based level thresholds (data in thresholds.yaml), per sensor type and site.

- `NoiseThreshold`: rolling energy-equivalent level Leq against the GB 3096-2008
  limit of the site's zone class, day (06-22) or night (22-06) local time;
  severity by the exceedance in dB.
- `WaterLevelThreshold`: median of the last readings against the site's
  警戒水位 warning and 保证水位 guarantee levels (IV approaching, III warning,
  II half way to guarantee, I guarantee).
- `GasThreshold`: manhole combustible gas %LEL against fixed levels and the
  site's alarm levels.

All share one hysteresis: open at the first level, update when the severity
changes, clear after `clear_after` readings below the first level minus a
margin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from schemas import Evidence, SensorReading, SensorType, Severity
from streams.detectors.base import PerSensor, Signal, State
from streams.detectors.config import DetectConfig, default_config
from streams.detectors.localtime import LocalClock


def _signal(det: Any, kind: str, reading: SensorReading, category: str, severity: Severity, start: float,
            title: str, evidence: Evidence) -> Signal:  # fmt: skip
    return Signal(
        kind=kind,  # type: ignore[arg-type]
        rule=f"{det.name}:{reading.sensor_type}",
        subject=reading.sensor_id,
        category=category,
        sensor_type=str(reading.sensor_type),
        severity=severity,
        episode_start=datetime.fromtimestamp(start, UTC),
        ts=reading.ts,
        location=reading.location,
        title=title,
        evidence=evidence,
        sent_at=reading.sent_at,
    )


def hysteresis(ep: list[Any] | None, sev: Severity | None, below_clear: bool, t: float,
               clear_after: int) -> tuple[list[Any] | None, str | None]:  # fmt: skip
    """Episode [start, severity, readings below clear] -> (episode, open|update|clear|None)."""
    if ep is None:
        if sev is not None:
            return [t, sev.value, 0], "open"
        return None, None
    if sev is not None and sev.value != ep[1]:
        ep[1] = sev.value
        ep[2] = 0
        return ep, "update"
    if sev is None and below_clear:
        ep[2] += 1
        if ep[2] >= clear_after:
            return None, "clear"
        return ep, None
    ep[2] = 0
    return ep, None


def push_median(vals: list[float], x: float, k: int) -> float:
    """Append `x` to the window `vals` (kept to its last `k`, in place) and
    return the window's median (the mean of the middle two when even)."""
    vals.append(x)
    if len(vals) > k:
        del vals[0]
    s = sorted(vals)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def step_episode(st: State, sev: Severity | None, cleared: bool, t: float,
                 clear_after: int) -> tuple[str | None, Severity | None]:
    """`hysteresis` on the state's episode, keeping its start and severity in the
    state: (open|update|clear|None, the signal's severity when there is one)."""
    ep, kind = hysteresis(st["ep"], sev, cleared, t, clear_after)
    st["ep"] = ep
    if ep is not None:
        st["start"] = ep[0]
        st["sev"] = ep[1]
    if kind is None:
        return None, None
    return kind, sev if sev is not None else Severity(st["sev"])


def _level(value: float, levels: list[tuple[float, Severity]]) -> Severity | None:
    sev = None
    for at, s in levels:
        if value >= at:
            sev = s
    return sev


class NoiseThreshold:
    name = "noise_gb3096"
    version = "1.0.1"  # 1.0.1: state rounded as round(v * 10**k) / 10**k

    def __init__(self, config: DetectConfig | None = None) -> None:
        self.cfg = config or default_config()
        c = self.cfg.section("noise")
        self.window_s = int(c["window_s"])
        self.bucket_s = max(60, self.window_s // 6)
        self.day_h = int(c["day_start_h"])
        self.night_h = int(c["night_start_h"])
        self.default_zone = str(c["default_zone"])
        self.clear_margin = float(c["clear_margin"])
        self.clear_after = int(c["clear_after"])
        self.above_usual_db = float(c.get("above_usual_db", 6.0))
        self.learn_min = int(c.get("learn_min_readings", 30))
        self.learn_s = float(c.get("learn_hours", 3.0)) * 3600.0
        self.clock = LocalClock(self.cfg.tz)
        self.site_zone: PerSensor[str, str] = PerSensor(lambda sid: self.zone(self.cfg.site(sid)))

    def applies_to(self, reading: SensorReading) -> bool:
        return reading.sensor_type is SensorType.NOISE

    def zone(self, site: Mapping[str, Any]) -> str:
        z = str(site.get("zone_class", self.default_zone)).lower()
        z = "4a" if z == "4" else z
        return z if z in self.cfg.noise_limits else self.default_zone

    def step(self, state: State | None, reading: SensorReading) -> tuple[State, list[Signal]]:
        st: State = state if state is not None else {"b": [], "ep": None}
        t = reading.ts.timestamp()
        b0 = int(t - t % self.bucket_s)
        energy = 10.0 ** (reading.value / 10.0)
        buckets: list[list[float]] = st["b"]
        if buckets and buckets[-1][0] == b0:
            buckets[-1][1] += energy
            buckets[-1][2] += 1
        elif not buckets or buckets[-1][0] < b0:
            buckets.append([b0, energy, 1])
            newest = b0  # the window moved: drop what fell out of it
            if buckets[0][0] <= newest - self.window_s:
                buckets[:] = [b for b in buckets if b[0] > newest - self.window_s]
        else:  # late within lateness: into its bucket if kept
            for b in buckets:
                if b[0] == b0:
                    b[1] += energy
                    b[2] += 1
                    break
        buckets[-1][1] = round(buckets[-1][1] * 10.0) / 10.0  # energy sums: 0.1 of >= 1e2 keeps the state short
        energy_sum = 0.0
        count: float = 0
        for b in buckets:
            energy_sum += b[1]
            count += b[2]
        leq = 10.0 * math.log10(energy_sum / count)
        hour = self.clock.hour(t)
        day = self.day_h <= hour < self.night_h
        zone = self.site_zone(reading.sensor_id)
        limit = self.cfg.noise_limits[zone][0 if day else 1]
        excess = leq - limit
        sev = _level(excess, self.cfg.noise_exceedance)
        # the site's usual Leq at this local hour (learned): a site that always
        # exceeds its zone limit is a compliance matter for the daily report,
        # not an alert every evening; only an exceedance that also stands out
        # from the usual by `above_usual_db` alerts once the hour is learned
        usual = st.setdefault("u", [0.0] * 24)
        uc = st.setdefault("uc", [0] * 24)
        learned = uc[hour] >= self.learn_min
        unusual = not learned or leq - usual[hour] >= self.above_usual_db
        if st["ep"] is None and not unusual:
            sev = None
        gap = t - st.get("lt", t)
        # a running mean at first, then ~learn_hours of this hour's data; an open
        # episode teaches the usual level 4x slower
        a_time = min(1.0, max(gap, 1.0) / self.learn_s) * (0.25 if st["ep"] is not None else 1.0)
        a = max(1.0 / (uc[hour] + 1), a_time)
        usual[hour] = round((usual[hour] + a * (leq - usual[hour])) * 100.0) / 100.0
        uc[hour] = min(uc[hour] + 1, 999)
        st["lt"] = t
        first = self.cfg.noise_exceedance[0][0]
        ep, kind = hysteresis(st["ep"], sev, excess <= first - self.clear_margin, t, self.clear_after)
        st["ep"] = ep
        if kind is None:
            return st, []
        start = ep[0] if ep is not None else st["ep_last"]
        if ep is not None:
            st["ep_last"] = ep[0]
        severity = sev if sev is not None else Severity(st.get("sev_last", "IV"))
        if sev is not None:
            st["sev_last"] = sev.value
        ev = Evidence(
            detector=self.name, detector_version=self.version,
            statistic=f"Leq {self.window_s // 60} min vs GB 3096-2008 zone {zone} {'day' if day else 'night'} limit",
            value=round(leq, 2), threshold=limit,
            window_start=datetime.fromtimestamp(buckets[0][0], UTC), window_end=reading.ts,
            details={"excess_db": round(excess, 2), "zone": zone, "period": "day" if day else "night", "local_hour": hour,
                     "usual_leq": usual[hour] if learned else None},
        )  # fmt: skip
        title = f"噪声超标 noise Leq {leq:.1f} dB(A) > {limit:.0f} (zone {zone}, {'day' if day else 'night'})"
        return st, [_signal(self, kind, reading, "noise", severity, start, title, ev)]


class _MedianLevel:
    """Median of the last `k` readings against per-site levels."""

    name = "level"
    version = "1.0.0"
    category = "level"
    sensor_type: SensorType
    k: int
    clear_after: int

    def __init__(self) -> None:
        # callers do not modify the list
        self.levels_for: PerSensor[str, list[tuple[float, Severity]]] = PerSensor(
            lambda sid: self.levels(self.cfg.site(sid)))

    def levels(self, site: Mapping[str, Any]) -> list[tuple[float, Severity]]:
        raise NotImplementedError

    def clear_below(self, levels: list[tuple[float, Severity]]) -> float:
        raise NotImplementedError

    def statistic(self) -> str:
        raise NotImplementedError

    def applies_to(self, reading: SensorReading) -> bool:
        return reading.sensor_type is self.sensor_type

    # emergency mode (平急转换) lowers these levels by the profile's threshold_scale
    scalable = True

    def step(self, state: State | None, reading: SensorReading, scale: float = 1.0) -> tuple[State, list[Signal]]:
        st: State = state if state is not None else {"v": [], "t0": None, "ep": None}
        t = reading.ts.timestamp()
        vals: list[float] = st["v"]
        med = push_median(vals, reading.value, self.k)
        levels = self.levels_for(reading.sensor_id)
        if scale != 1.0:
            levels = [(at * scale, s) for at, s in levels]
        sev = _level(med, levels)
        kind, severity = step_episode(st, sev, med < self.clear_below(levels), t, self.clear_after)
        if kind is None or severity is None:
            return st, []
        ev = Evidence(
            detector=self.name, detector_version=self.version, statistic=self.statistic(),
            value=round(med, 4), threshold=levels[0][0],
            window_start=reading.ts, window_end=reading.ts,
            details={"levels": [[round(at, 6), s.value] for at, s in levels], "last": vals[:], "unit": reading.unit,
                     **({"threshold_scale": scale} if scale != 1.0 else {})},
        )  # fmt: skip
        title = f"{self.title_zh} {reading.sensor_type} {med:g} {reading.unit} >= {levels[0][0]:g}"
        if kind == "clear":
            title = f"{self.title_zh} cleared: {reading.sensor_type} {med:g} {reading.unit}"
        return st, [_signal(self, kind, reading, self.category, severity, st["start"], title, ev)]

    cfg: DetectConfig
    title_zh = ""


class WaterLevelThreshold(_MedianLevel):
    name = "water_level"
    version = "1.0.0"
    category = "water"
    sensor_type = SensorType.WATER_LEVEL
    title_zh = "水位预警"

    def __init__(self, config: DetectConfig | None = None) -> None:
        super().__init__()
        self.cfg = config or default_config()
        c = self.cfg.section("water_level")
        self.default = c["default_site"]
        self.approach = float(c["approach_fraction"])
        self.k = int(c["median_of"])
        self.margin = float(c["clear_margin_fraction"])
        self.clear_after = int(c["clear_after"])

    def levels(self, site: Mapping[str, Any]) -> list[tuple[float, Severity]]:
        warn = float(site.get("warning_level", self.default["warning_level"]))
        guar = float(site.get("guarantee_level", self.default["guarantee_level"]))
        if guar <= warn:
            guar = warn * 1.2 if warn > 0 else warn + 1.0
        base = float(site.get("base_level", 0.0))
        approach = base + self.approach * (warn - base)
        return [(approach, Severity.IV), (warn, Severity.III), ((warn + guar) / 2, Severity.II), (guar, Severity.I)]

    def clear_below(self, levels: list[tuple[float, Severity]]) -> float:
        return levels[0][0] - self.margin * abs(levels[1][0])

    def statistic(self) -> str:
        return f"median of last {self.k} water levels vs site warning/guarantee levels"


class GasThreshold(_MedianLevel):
    name = "manhole_gas"
    version = "1.0.0"
    category = "gas"
    sensor_type = SensorType.MANHOLE_GAS
    title_zh = "燃气浓度报警"

    def __init__(self, config: DetectConfig | None = None) -> None:
        super().__init__()
        self.cfg = config or default_config()
        c = self.cfg.section("manhole_gas")
        self.base_levels = self.cfg.gas_levels
        self.site_levels = {str(k): Severity(str(v)) for k, v in c["site_levels"].items()}
        self.k = int(c["median_of"])
        self.margin = float(c["clear_margin"])
        self.clear_after = int(c["clear_after"])

    def levels(self, site: Mapping[str, Any]) -> list[tuple[float, Severity]]:
        site_pts = sorted(((float(site[k]), sev) for k, sev in self.site_levels.items() if k in site),
                          key=lambda x: x[1].rank)  # fmt: skip
        if not site_pts:
            return list(self.base_levels)
        lowest = min(at for at, _ in site_pts)
        low_rank = min(s.rank for _, s in site_pts)
        out = [(at, s) for at, s in self.base_levels if at < lowest and s.rank < low_rank]
        for at, s in site_pts:
            if not out or (at > out[-1][0] and s.rank > out[-1][1].rank):
                out.append((at, s))
        return out

    def clear_below(self, levels: list[tuple[float, Severity]]) -> float:
        return levels[0][0] - self.margin

    def statistic(self) -> str:
        return f"median of last {self.k} readings, %LEL vs alarm levels"


class RainfallThreshold(_MedianLevel):
    """Rain intensity (mm/h) against the short-duration heavy-rain levels of
    thresholds.yaml (暴雨 16 mm/h and above)."""

    name = "rainfall"
    version = "1.0.0"
    category = "water"
    sensor_type = SensorType.RAINFALL
    title_zh = "强降雨"

    def __init__(self, config: DetectConfig | None = None) -> None:
        super().__init__()
        self.cfg = config or default_config()
        c = self.cfg.section("rainfall")
        self.base_levels = [(float(at), Severity(str(s))) for at, s in c["levels"]]
        self.k = int(c["median_of"])
        self.margin = float(c["clear_margin"])
        self.clear_after = int(c["clear_after"])

    def levels(self, site: Mapping[str, Any]) -> list[tuple[float, Severity]]:
        return self.base_levels

    def clear_below(self, levels: list[tuple[float, Severity]]) -> float:
        return levels[0][0] - self.margin

    def statistic(self) -> str:
        return f"median of last {self.k} rain intensities (mm/h) vs heavy-rain levels"
