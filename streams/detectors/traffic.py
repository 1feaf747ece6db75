"""Traffic congestion (拥堵) from a road speed sensor: the speed against the
usual speed of the same road at the same hour.

Traffic operation indices (e.g. Beijing's 道路交通运行指数) judge a road by its
speed relative to its reference speed, not by a fixed figure: 25 km/h is a
jam on an expressway at night and normal on a main road at the evening rush.
So the reference is learned per sensor and hour of day (24 bins, linearly
interpolated, like the statistical baseline's profile) and the signal is

    ratio = median(last `median_of` speeds) / usual speed at this hour

with levels as data (`traffic.levels`: ratio at or below -> severity). The
generic statistical detectors follow a slow ramp (a jam builds over ten
minutes and their fast model tracks it); a ratio to the hour's usual speed
does not, and the bins learn nothing while the ratio is low (a jam never
becomes the usual), so a long jam stays a jam.

State: ~24 bins x (mean, weight), the last speeds and the episode: < 0.6 KB.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from schemas import Evidence, SensorReading, SensorType, Severity
from streams.detectors.base import Signal, State
from streams.detectors.config import DetectConfig, default_config
from streams.detectors.localtime import LocalClock
from streams.detectors.thresholds import _signal, push_median, step_episode


class TrafficCongestion:
    name = "traffic_congestion"
    version = "1.0.1"  # 1.0.1: state rounded as round(v * 10**k) / 10**k
    category = "traffic"

    def __init__(self, config: DetectConfig | None = None) -> None:
        self.cfg = config or default_config()
        c = self.cfg.section("traffic")
        # levels from the mildest (highest ratio) to the worst
        self.levels = sorted(((float(r), Severity(str(s))) for r, s in c["levels"]), reverse=True)
        self.k = int(c["median_of"])
        self.clear_ratio = float(c["clear_ratio"])
        self.clear_after = int(c["clear_after"])
        self.severity_margin = float(c.get("severity_margin", 0.05))
        self.learn_below = float(c["learn_above_ratio"])
        self.warm_weight = float(c["bin_warm_readings"])
        self.alpha = float(c["bin_alpha"])
        self.clock = LocalClock(self.cfg.tz)

    def applies_to(self, reading: SensorReading) -> bool:
        return reading.sensor_type is SensorType.TRAFFIC_SPEED

    def _bins(self, t: float) -> tuple[int, int, float]:
        h = ((t + self.clock.offset(t)) % 86400.0) / 3600.0 - 0.5
        i0 = math.floor(h)
        w1 = h - i0
        return i0 % 24, (i0 + 1) % 24, w1

    def step(self, state: State | None, reading: SensorReading) -> tuple[State, list[Signal]]:
        st: State = state if state is not None else {"m": [0.0] * 24, "w": [0.0] * 24, "v": [], "ep": None}
        t = reading.ts.timestamp()
        x = float(reading.value)
        med = push_median(st["v"], x, self.k)
        i0, i1, w1 = self._bins(t)
        m, w = st["m"], st["w"]
        warm = w[i0] >= self.warm_weight and w[i1] >= self.warm_weight
        usual = m[i0] * (1.0 - w1) + m[i1] * w1 if warm else None
        ratio = med / usual if usual else None
        if ratio is None or (ratio >= self.learn_below and st["ep"] is None):
            # learn the usual speed of these hours (1/n at first, then a slow EWMA)
            for i, wt in ((i0, 1.0 - w1), (i1, w1)):
                if wt <= 0.0:
                    continue
                w[i] = min(w[i] + wt, 1e6)
                a = max(self.alpha, 1.0 / w[i]) * wt
                m[i] = round((m[i] + a * (x - m[i])) * 1e3) / 1e3
                w[i] = round(w[i] * 1e3) / 1e3
        sev = None
        if ratio is not None:
            for at, level in self.levels:
                if ratio <= at:
                    sev = level
        ep0 = st["ep"]
        if ep0 is not None and ratio is not None and sev is not None and sev.rank < Severity(ep0[1]).rank:
            # a milder level only once the ratio is clearly above the worse level's
            # threshold: a jam hovering at a boundary does not flap between severities
            worse_at = next(at for at, lv in self.levels if lv.value == ep0[1])
            if ratio <= worse_at + self.severity_margin:
                sev = Severity(ep0[1])
        below_clear = ratio is None or ratio >= self.clear_ratio
        # the episode clears after readings at or above the clear ratio, not below a level
        kind, severity = step_episode(st, sev, below_clear, t, self.clear_after)
        if kind is None or severity is None:
            return st, []
        ev = Evidence(
            detector=self.name, detector_version=self.version,
            statistic=f"median of last {self.k} speeds / usual speed at this hour (congestion ratio)",
            value=round(ratio, 4) if ratio is not None else 1.0, threshold=self.levels[0][0],
            window_start=datetime.fromtimestamp(st.get("start", t), UTC), window_end=reading.ts,
            details={"speed_kmh": round(med, 2), "usual_kmh": round(usual, 2) if usual else None,
                     "levels": [[at, lv.value] for at, lv in self.levels], "unit": reading.unit},
        )  # fmt: skip
        usual_txt = f"{usual:.0f}" if usual else "?"
        title = f"道路拥堵 congestion: {med:.0f} km/h, usual {usual_txt} km/h at this hour"
        if kind == "clear":
            title = f"道路拥堵 cleared: {med:.0f} km/h (usual {usual_txt} km/h)"
        return st, [_signal(self, kind, reading, self.category, severity, st["start"], title, ev)]


__all__ = ["TrafficCongestion"]
