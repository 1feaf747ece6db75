"""Sensor health: stuck/flatline, out of physical range, and silence.

Signals have category "sensor_health" (rules `health:stuck`, `health:range`,
`health:silence`) so a dying sensor is never confused with an incident.

- **stuck**: the same value repeated for at least `stuck_min_readings`
  readings spanning `stuck_min_s`, and for at least 20 x the run length this
  sensor usually shows (learned: a quantised or often-idle series repeats
  legitimately); values listed in `stuck_ignore` for the type (0 mm/h of rain,
  0 %LEL) never count.
- **range**: outside the catalogue's physical range or a narrower plausible
  range from `health.range` (per type, or per site via `range_low/range_high`).
- **silence**: by event-time progress: `tick(state, watermark)` opens it when
  the watermark (max event time seen on the partition minus the allowed
  lateness) is more than max(silence_factor x the expected interval,
  silence_min_s) past the last reading; the next reading clears it. The
  expected interval is learned (EWMA of observed gaps) from the catalogue's.
  The signal is dated at the event time the limit was crossed (last reading +
  limit), never at the tick's watermark, and a reading that ends a gap longer
  than the limit the tick did not see (ticks run on the wall clock: a replay
  at full speed ticks rarely) opens and clears it at once: whatever the tick
  timing, the same input gives the same silence alerts (deterministic replay).

`bad(state)` tells the engine whether the current reading is untrustworthy
(out of range, or inside a stuck run) so other detectors skip it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas import CATALOGUE, Evidence, Location, SensorReading, SensorType, Severity
from streams.detectors.base import SENSOR_HEALTH, PerSensor, Signal, State
from streams.detectors.config import DetectConfig, default_config

NAME = "sensor_health"
VERSION = "1.0.1"  # 1.0.1: state rounded as round(v * 10**k) / 10**k


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class SensorHealth:
    name = NAME
    version = VERSION

    def __init__(self, config: DetectConfig | None = None) -> None:
        self.cfg = config or default_config()
        h = self.cfg.section("health")
        self.silence_factor = float(h["silence_factor"])
        self.silence_min_s = float(h["silence_min_s"])
        self.stuck_n = int(h["stuck_min_readings"])
        self.stuck_s = float(h["stuck_min_s"])
        self.ignore = {str(k): {float(v) for v in vs} for k, vs in (h.get("stuck_ignore") or {}).items()}
        self.ranges = {str(k): (float(v[0]), float(v[1])) for k, v in (h.get("range") or {}).items()}
        self._ranges: PerSensor[tuple[str, str], tuple[float, float]] = PerSensor(lambda k: self._range_of(*k))

    def applies_to(self, reading: SensorReading) -> bool:
        return True

    def _range_of(self, sensor_id: str, sensor_type: str) -> tuple[float, float]:
        spec = CATALOGUE[SensorType(sensor_type)]
        lo, hi = self.ranges.get(sensor_type, (spec.low, spec.high))
        site = self.cfg.site(sensor_id)
        return float(site.get("range_low", lo)), float(site.get("range_high", hi))

    def _signal(self, st: State, kind: str, rule: str, start: float, t: float, severity: Severity,
                title: str, statistic: str, value: float, threshold: float | None,
                details: dict[str, Any], sent_at: datetime | None = None) -> Signal:  # fmt: skip
        return Signal(
            kind=kind,  # type: ignore[arg-type]
            rule=f"health:{rule}",
            subject=st["id"],
            category=SENSOR_HEALTH,
            sensor_type=st["ty"],
            severity=severity,
            episode_start=_dt(start),
            ts=_dt(t),
            location=Location(**st["loc"]),
            title=title,
            evidence=Evidence(
                detector=self.name, detector_version=self.version, statistic=statistic, value=value,
                threshold=threshold, window_start=_dt(start), window_end=_dt(t), details=details,
            ),
            sent_at=sent_at,
        )

    def step(self, state: State | None, reading: SensorReading) -> tuple[State, list[Signal]]:
        t = reading.ts.timestamp()
        x = reading.value
        ty = str(reading.sensor_type)
        out: list[Signal] = []
        if state is None:
            spec = CATALOGUE[reading.sensor_type]
            st: State = {
                "id": reading.sensor_id, "ty": ty, "loc": reading.location.model_dump(exclude_none=True),
                "t": t, "x": x, "n": 1, "dt": float(spec.interval_s), "run": 1, "rs": t, "rep": 0.0,
                "stuck": None, "silent": None, "range": None, "bad": False,
            }  # fmt: skip
        else:
            st = state
            st["n"] += 1
            gap = t - st["t"]
            if st["silent"] is None and gap > self.silence_after(st):
                out.append(self._silence_open(st))
            if st["silent"] is not None:
                start = st["silent"]
                st["silent"] = None
                out.append(self._signal(
                    st, "clear", "silence", start, t, Severity.IV, f"传感器恢复 sensor {st['id']} reporting again",
                    "seconds without a reading", gap, None, {"last_reading": _dt(st["t"]).isoformat()},
                    reading.sent_at,
                ))  # fmt: skip
            if gap > 0:
                d = st["dt"]
                st["dt"] = round((d + 0.05 * (min(gap, 4 * d) - d)) * 100.0) / 100.0  # round(v, 2), cheaper
            if gap >= 0:
                st["t"] = t
            same = x == st["x"]
            if st["stuck"] is None:
                st["rep"] = round((st["rep"] + 0.01 * ((1.0 if same else 0.0) - st["rep"])) * 1e5) / 1e5
            if same:
                st["run"] += 1
            else:
                st["run"] = 1
                st["rs"] = t
            st["x"] = x
        sent = reading.sent_at
        # range
        lo, hi = self._ranges((reading.sensor_id, ty))
        outside = not lo <= x <= hi
        if outside and st["range"] is None:
            st["range"] = t
            out.append(self._signal(
                st, "open", "range", t, t, Severity.III, f"传感器读数异常 {ty} {x:g} {reading.unit} outside [{lo:g}, {hi:g}]",
                "value vs plausible range", x, hi if x > hi else lo, {"low": lo, "high": hi}, sent,
            ))  # fmt: skip
        elif not outside and st["range"] is not None:
            start = st["range"]
            st["range"] = None
            out.append(self._signal(
                st, "clear", "range", start, t, Severity.III, f"{ty} back in range", "value vs plausible range",
                x, None, {"low": lo, "high": hi}, sent,
            ))  # fmt: skip
        # stuck
        run = st["run"]
        rep = min(st["rep"], 0.99)
        need = max(self.stuck_n, int(20.0 / (1.0 - rep)))
        stuck_now = (run >= need and t - st["rs"] >= self.stuck_s
                     and x not in self.ignore.get(ty, ()))  # fmt: skip
        if stuck_now and st["stuck"] is None:
            st["stuck"] = st["rs"]
            out.append(self._signal(
                st, "open", "stuck", st["rs"], t, Severity.IV,
                f"传感器数值卡滞 sensor {st['id']} stuck at {x:g} {reading.unit}",
                "identical consecutive readings", float(run), float(need),
                {"span_s": t - st["rs"], "usual_repeat_share": round(rep, 4)}, sent,
            ))  # fmt: skip
        elif st["stuck"] is not None and run == 1:
            start = st["stuck"]
            st["stuck"] = None
            out.append(self._signal(
                st, "clear", "stuck", start, t, Severity.IV, f"sensor {st['id']} values changing again",
                "identical consecutive readings", 1.0, float(need), {}, sent,
            ))  # fmt: skip
        st["bad"] = outside or st["stuck"] is not None
        return st, out

    def bad(self, state: State | None) -> bool:
        return bool(state and state.get("bad"))

    def silence_after(self, st: State) -> float:
        return max(self.silence_factor * float(st["dt"]), self.silence_min_s)

    def tick(self, state: State | None, watermark: datetime) -> tuple[State | None, list[Signal]]:
        if state is None or state["silent"] is not None:
            return state, []
        if watermark.timestamp() - state["t"] <= self.silence_after(state):
            return state, []
        return state, [self._silence_open(state)]

    def _silence_open(self, st: State) -> Signal:
        """Opens silence; every field comes from the sensor's own state, so the
        tick and a late-noticing reading produce the same signal."""
        limit = self.silence_after(st)
        st["silent"] = st["t"]
        return self._signal(
            st, "open", "silence", st["t"], st["t"] + limit, Severity.IV,
            f"传感器离线 sensor {st['id']} silent for more than {limit / 60:.0f} min",
            "seconds without a reading (event time)", limit, limit,
            {"expected_interval_s": round(float(st["dt"]), 1), "last_reading": _dt(st["t"]).isoformat()},
        )
