"""Air quality per HJ 633-2012 (环境空气质量指数 AQI 技术规定).

IAQI_P = (IAQI_hi - IAQI_lo) / (BP_hi - BP_lo) * (C_P - BP_lo) + IAQI_lo,
rounded up to an integer (the standard: 计算结果进位取整数). Concentrations in
ug/m3 except CO in mg/m3. Above the table's top the IAQI is capped at 500.
For the real-time (hourly) index, PM2.5 and PM10 have no 1-hour breakpoints and
use the 24-hour ones; SO2 above 800 ug/m3 (1 h) and O3 above 800 ug/m3 (8 h)
are reported with the 24-hour SO2 / 1-hour O3 tables, as the standard says.

The threshold detector here keeps a rolling event-time mean per sensor (in
fixed buckets, O(1) state) and maps its AQI category to the warning scale:
light pollution (101-150) IV blue, moderate (151-200) III yellow, heavy
(201-300) II orange, severe (>300) I red.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import Evidence, SensorReading, SensorType, Severity
from streams.detectors.base import Signal, State
from streams.detectors.config import DetectConfig, default_config

_CFG = default_config()
IAQI_STEPS = _CFG.iaqi_steps

# pollutant/averaging period -> concentration breakpoints aligned with IAQI_STEPS
# (data: streams/detectors/thresholds.yaml, section air.breakpoints)
BREAKPOINTS: dict[str, tuple[float, ...]] = _CFG.air_breakpoints

CATEGORIES = (
    (50, "优", "excellent"),
    (100, "良", "good"),
    (150, "轻度污染", "lightly polluted"),
    (200, "中度污染", "moderately polluted"),
    (300, "重度污染", "heavily polluted"),
    (math.inf, "严重污染", "severely polluted"),
)


def iaqi(table: str, concentration: float) -> int:
    """Individual AQI of one pollutant; raises ValueError for a bad value or table."""
    try:
        bps = BREAKPOINTS[table]
    except KeyError:
        raise ValueError(f"unknown breakpoint table {table!r}; known: {', '.join(BREAKPOINTS)}") from None
    if not math.isfinite(concentration) or concentration < 0:
        raise ValueError(f"concentration must be a finite number >= 0, got {concentration!r}")
    if table == "so2_1h" and concentration > bps[-1]:
        return iaqi("so2_24h", concentration)
    if table == "o3_8h" and concentration > bps[-1]:
        return iaqi("o3_1h", concentration)
    if concentration >= bps[-1]:
        return IAQI_STEPS[len(bps) - 1] if len(bps) < len(IAQI_STEPS) else 500
    for i in range(1, len(bps)):
        if concentration <= bps[i]:
            lo, hi = bps[i - 1], bps[i]
            ilo, ihi = IAQI_STEPS[i - 1], IAQI_STEPS[i]
            value = (ihi - ilo) / (hi - lo) * (concentration - lo) + ilo
            # round up, but not a float artefact such as 100.00000000001
            return math.ceil(round(value, 6))
    raise AssertionError("unreachable")


def aqi(iaqis: dict[str, int]) -> tuple[int, list[str]]:
    """Overall AQI (max IAQI) and the primary pollutants (those with IAQI = AQI > 50)."""
    if not iaqis:
        raise ValueError("no pollutant given")
    top = max(iaqis.values())
    primary = sorted(p for p, v in iaqis.items() if v == top and top > 50)
    return top, primary


def category(aqi_value: int) -> tuple[str, str]:
    for upper, zh, en in CATEGORIES:
        if aqi_value <= upper:
            return zh, en
    raise AssertionError("unreachable")


def severity_for_aqi(aqi_value: int, levels: list[tuple[float, Severity]] | None = None) -> Severity | None:
    """AQI category -> warning level (thresholds.yaml air.severity_from_aqi)."""
    sev = None
    for at, s in levels if levels is not None else _CFG.air_severity:
        if aqi_value >= at:
            sev = s
    return sev


# table used for the real-time rolling mean of each sensor type
REALTIME_TABLE = {
    SensorType.PM25: "pm25_24h",
    SensorType.PM10: "pm10_24h",
    SensorType.SO2: "so2_1h",
    SensorType.NO2: "no2_1h",
    SensorType.CO: "co_1h",
    SensorType.O3: "o3_1h",
}


class AirQualityThreshold:
    """Rolling event-time means -> IAQI -> severity, with hysteresis.

    Per pollutant the averaging periods of thresholds.yaml (air.periods) are
    evaluated: the 1-hour mean (5-minute buckets) against the real-time table,
    longer ones (O3 8 h, 24 h) from hourly buckets against theirs; the IAQI
    reported is the largest over the periods whose window is covered by at
    least a quarter of data (so one hour of data is not a "24-hour mean").
    PM2.5/PM10 24-hour means are evidence only (their real-time index already
    uses the 24-hour table).

    An episode opens when the severity is at least IV; it updates when the
    severity changes; it clears only after the IAQI has stayed below 100 minus
    `clear_margin` for `clear_after` readings, so a value hovering at a
    boundary does not flap.
    """

    name = "aqi_threshold"
    version = "1.1.1"  # 1.1.1: state rounded as round(v * 10**k) / 10**k

    def __init__(
        self,
        window: timedelta = timedelta(hours=1),
        bucket: timedelta = timedelta(minutes=5),
        clear_margin: int | None = None,
        clear_after: int | None = None,
        config: DetectConfig | None = None,
    ) -> None:
        self.cfg = config or _CFG
        air = self.cfg.section("air")
        self.window_s = int(window.total_seconds())
        self.bucket_s = int(bucket.total_seconds())
        self.clear_margin = int(air["clear_margin"]) if clear_margin is None else clear_margin
        self.clear_after = int(air["clear_after"]) if clear_after is None else clear_after
        # the least severity that opens an episode (HJ 633 light pollution = IV by default);
        # an open episode follows the category down to IV before it clears
        self.open_from = Severity(str(air.get("open_from", "IV")))
        self.long_periods: dict[str, list[tuple[int, str]]] = {
            pol: [(w, t) for w, t in periods if w > self.window_s] for pol, periods in self.cfg.air_periods.items()
        }
        # hourly buckets each pollutant needs (O3 8 h; SO2/NO2/CO 24 h)
        self.hours_kept = {pol: max((w for w, _ in ps), default=0) // 3600 for pol, ps in self.long_periods.items()}

    def applies_to(self, reading: SensorReading) -> bool:
        return reading.sensor_type in REALTIME_TABLE

    def step(self, state: State | None, reading: SensorReading) -> tuple[State, list[Signal]]:
        st: State = state if state is not None else {"buckets": [], "hours": [], "episode": None}
        t = int(reading.ts.timestamp())
        b0 = t - t % self.bucket_s
        buckets: list[list[float]] = st["buckets"]
        new_bucket = not buckets or buckets[-1][0] != b0
        # buckets are [start, sum, count], oldest first; late readings fall into their own bucket
        _add(buckets, b0, reading.value)
        newest = buckets[-1][0]
        horizon = newest - self.window_s + self.bucket_s
        if buckets[0][0] < horizon:
            st["buckets"] = buckets = [b for b in buckets if b[0] >= horizon]
        total = 0.0
        count = 0
        for b in buckets:
            total += b[1]
            count += int(b[2])
        mean = total / count
        pol = str(reading.sensor_type)
        table = REALTIME_TABLE[reading.sensor_type]  # a StrEnum member, or its value: the same key
        index = iaqi(table, mean)
        long_seen: list[tuple[str, Any, Any, Any]] = []  # (table, window, mean, iaqi) for the evidence
        longs = self.long_periods.get(pol, [])
        if longs:
            # hourly buckets [hour index, sum, count]; long means re-evaluated once per short bucket
            hours: list[list[float]] = st.setdefault("hours", [])
            _add(hours, t // 3600, reading.value)
            h_newest = hours[-1][0]
            kept = self.hours_kept[pol]
            if hours[0][0] <= h_newest - kept:
                st["hours"] = hours = [h for h in hours if h[0] > h_newest - kept]
            if new_bucket or "long" not in st:
                long: dict[str, list[float]] = {}
                for w, tab in longs:
                    sel = [h for h in hours if h[0] > h_newest - w // 3600]
                    n = sum(h[2] for h in sel)
                    m = sum(h[1] for h in sel) / n
                    covered = len(sel) * 3600 >= w / 4
                    long[tab] = [w, round(m, 3), iaqi(tab, m) if covered else -1]
                st["long"] = long
            for tab, (w, m, v) in st["long"].items():
                long_seen.append((tab, w, m, v))
                if v >= 0 and not pol.startswith("pm") and v > index:
                    index, table = int(v), tab
        for b in (buckets[-1], st["hours"][-1]) if longs else (buckets[-1],):
            b[1] = round(b[1] * 1e4) / 1e4
        sev = severity_for_aqi(index, self.cfg.air_severity)

        def signal(kind: str, severity: Severity, episode_start: datetime) -> Signal:
            # the evidence is built only for a reading that signals (most do not)
            details: dict[str, object] = {"mean": round(mean, 3), "readings": count, "unit": reading.unit}
            for tab, w, m, v in long_seen:
                details[f"iaqi_{tab}_{int(w) // 3600}h"] = int(v) if v >= 0 else None
                details[f"mean_{int(w) // 3600}h"] = m
            w_start = datetime.fromtimestamp(buckets[0][0], UTC)
            w_end = datetime.fromtimestamp(newest + self.bucket_s, UTC)
            zh, en = category(index)
            return Signal(
                kind=kind,  # type: ignore[arg-type]
                rule=f"{self.name}:{reading.sensor_type}",
                subject=reading.sensor_id,
                category="air",
                sensor_type=str(reading.sensor_type),
                severity=severity,
                episode_start=episode_start,
                ts=reading.ts,
                location=reading.location,
                title=f"{reading.sensor_type.upper()} AQI {index} {zh} ({en})",
                evidence=Evidence(
                    detector=self.name,
                    detector_version=self.version,
                    statistic=f"{reading.sensor_type} rolling mean {self.window_s // 60} min -> IAQI ({table}, HJ 633-2012)",
                    value=index,
                    threshold=100,
                    window_start=w_start,
                    window_end=w_end,
                    details=details,
                ),
                sent_at=reading.sent_at,
            )

        ep = st["episode"]
        out: list[Signal] = []
        if ep is None:
            if sev is not None and sev.rank >= self.open_from.rank:
                start = reading.ts
                st["episode"] = {"start": start.isoformat(), "sev": sev.value, "below": 0}
                out.append(signal("open", sev, start))
            return st, out
        start = datetime.fromisoformat(ep["start"])
        if sev is not None and sev.value != ep["sev"]:
            ep["sev"] = sev.value
            ep["below"] = 0
            out.append(signal("update", sev, start))
        elif sev is None and index <= 100 - self.clear_margin:
            ep["below"] += 1
            if ep["below"] >= self.clear_after:
                st["episode"] = None
                out.append(signal("clear", Severity(ep["sev"]), start))
        else:
            ep["below"] = 0
        return st, out


def _add(buckets: list[list[float]], start: int, value: float) -> None:
    for b in reversed(buckets):
        if b[0] == start:
            b[1] += value
            b[2] += 1
            return
    buckets.append([start, value, 1])
    if len(buckets) > 1 and buckets[-2][0] > start:
        buckets.sort(key=lambda b: b[0])
