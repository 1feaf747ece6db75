"""One entry point for the Faust agent, replay and the CLI.

    engine = DetectionEngine()                       # thresholds.yaml defaults
    states, signals = engine.step_reading(states, reading)   # per sensor_id
    states, signals = engine.step_hotline(states, event)     # per hotline_key(event)
    states, signals = engine.tick(states, watermark)         # per subject, on event-time progress

`states` is one subject's dict of per-detector states (plain JSON data; None
to start), so the agent keeps it in a changelog-backed table keyed like the
topic. Readings older than the subject's latest event time minus
`lateness_s` raise `LateEvent` (a `RejectedPayload` with reason "late") for
the agent to dead-letter. The order of detectors is fixed and nothing reads
the wall clock, so the same input gives byte-identical signals.

Order per reading: sensor health first; a reading it marks untrustworthy (out
of range, inside a stuck run) is kept away from the other detectors, so a
fault never becomes an incident nor teaches a baseline. Then the standards
threshold for the type (AQI, noise, water level, gas) and the generic
statistical detectors (robust seasonal baseline, rate of change).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from schemas import CATALOGUE, Evidence, HotlineEvent, SensorReading, SensorType, Severity
from streams.detectors.aqi import AirQualityThreshold
from streams.detectors.base import SENSOR_HEALTH, LateEvent, Signal, State
from streams.detectors.config import DetectConfig, default_config
from streams.detectors.health import SensorHealth
from streams.detectors.hotline import HotlineBurst, hotline_key
from streams.detectors.localtime import LocalClock
from streams.detectors.stats import RateOfChange, RobustSeasonal, Scored, StatParams
from streams.detectors.thresholds import GasThreshold, NoiseThreshold, RainfallThreshold, WaterLevelThreshold
from streams.detectors.traffic import TrafficCongestion

__all__ = ["DetectionEngine", "LateEvent", "hotline_key", "stat_params"]

States = dict[str, Any]


def stat_params(cfg: DetectConfig) -> StatParams:
    s = cfg.section("statistical")
    return StatParams(
        warmup=int(s["warmup"]), open_score=float(s["open_score"]), open_hold=int(s["open_hold"]),
        instant_score=float(s["instant_score"]), clear_score=float(s["clear_score"]),
        clear_hold=int(s["clear_hold"]),
    )  # fmt: skip


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class StatAdapter:
    """A `Scored`-producing core (RobustSeasonal / RateOfChange) as a Detector."""

    """A `Scored`-producing core (RobustSeasonal / RateOfChange) as a Detector.

    With `confirm` > 1 an episode is reported only once `confirm` of its
    readings scored at least `open_score`: an excursion that ends before that
    (one to a few readings far off, then back) is a sensor spike, reported as
    sensor health (`health:spike`, opened and cleared at once), not as an
    incident. The offline CLI uses the core directly and flags spikes."""

    def __init__(self, core: RobustSeasonal | RateOfChange, statistic: str, open_score: float,
                 confirm: int = 1, report_spikes: bool = True) -> None:  # fmt: skip
        self.report_spikes = report_spikes
        self.core = core
        self.name = core.name
        self.version = core.version
        self.statistic = statistic
        self.open_score = open_score
        self.confirm = confirm

    def applies_to(self, reading: SensorReading) -> bool:
        return True

    def step(self, state: State | None, reading: SensorReading, t: float | None = None) -> tuple[State, list[Signal]]:
        """`t`: the reading's event time in epoch seconds, if the caller has it."""
        if t is None:
            t = reading.ts.timestamp()
        st, r = self.core.update(state, t, reading.value)
        if self.confirm <= 1:
            if r.event is None:
                return st, []
            return st, [self.signal(r, reading, t)]
        pd = st.get("pd")  # pending episode: [high readings, peak z, peak value, baseline] or "ok"
        if r.event == "open":
            st["pd"] = pd = [0, r.z, reading.value, r.predicted]
        if pd is None:
            return st, []
        if r.event == "clear":
            st["pd"] = None
            if pd == "ok":
                return st, [self.signal(r, reading, t)]
            return st, (self.spike(r, reading, t, pd) if self.report_spikes else [])
        if pd != "ok" and r.alert:
            if r.score >= self.open_score:
                pd[0] += 1
                if r.z > pd[1]:
                    pd[1], pd[2], pd[3] = r.z, reading.value, r.predicted
            if pd[0] >= self.confirm:
                st["pd"] = "ok"
                return st, [self.signal(r._replace(event="open"), reading, t)]
        return st, []

    def spike(self, r: Scored, reading: SensorReading, t: float, pd: list[Any]) -> list[Signal]:
        start = r.episode_start if r.episode_start is not None else t
        ty = str(reading.sensor_type)
        out = []
        for kind in ("open", "clear"):
            out.append(Signal(
                kind=kind,  # type: ignore[arg-type]
                rule="health:spike",
                subject=reading.sensor_id,
                category=SENSOR_HEALTH,
                sensor_type=ty,
                severity=Severity.IV,
                episode_start=_ts(start),
                ts=reading.ts,
                location=reading.location,
                title=f"传感器尖峰 {ty} spike to {pd[2]:g} {reading.unit} (usual {pd[3]:.4g}), back within {pd[0]} readings",
                evidence=Evidence(
                    detector=self.name, detector_version=self.version, statistic=self.statistic + " (short excursion)",
                    value=round(pd[1], 4), threshold=float(self.confirm), window_start=_ts(start), window_end=reading.ts,
                    details={"peak": pd[2], "baseline": round(pd[3], 6), "high_readings": pd[0]},
                ),
                sent_at=reading.sent_at,
            ))
        return out

    def signal(self, r: Scored, reading: SensorReading, t: float) -> Signal:
        start = r.episode_start if r.episode_start is not None else t
        ty = str(reading.sensor_type)
        what = "anomaly" if self.name == "robust_seasonal" else "sudden change"
        verb = "ended" if r.event == "clear" else "detected"
        return Signal(
            kind=r.event,  # type: ignore[arg-type]
            rule=f"{self.name}:{ty}",
            subject=reading.sensor_id,
            category=CATALOGUE[reading.sensor_type].category,
            sensor_type=ty,
            severity=Severity.IV,
            episode_start=_ts(start),
            ts=reading.ts,
            location=reading.location,
            title=f"异常 {ty} {what} {verb}: {reading.value:g} {reading.unit} vs usual {r.predicted:.4g}",
            evidence=Evidence(
                detector=self.name, detector_version=self.version, statistic=self.statistic,
                value=round(r.z, 4), threshold=None, window_start=_ts(start), window_end=reading.ts,
                score=min(1.0, max(0.0, round(r.score, 9))),
                details={"reading": reading.value, "baseline": round(r.predicted, 6), "sigma": round(r.sigma, 6),
                         "model": r.model, "open_score": self.open_score},
            ),
            sent_at=reading.sent_at,
        )


class DetectionEngine:
    def __init__(
        self,
        config: DetectConfig | None = None,
        sites: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if config is None:
            config = default_config()
        if sites:
            config = dataclasses.replace(config, sites={**config.sites, **sites})
        self.cfg = config
        self.lateness_s = config.lateness_s
        clock = LocalClock(config.tz)
        sp = stat_params(config)
        roc_score = float(config.section("statistical")["roc_score"])
        self.health = SensorHealth(config)
        self.thresholds: dict[SensorType, Any] = {}
        air = AirQualityThreshold(config=config)
        for ty in (SensorType.PM25, SensorType.PM10, SensorType.SO2, SensorType.NO2, SensorType.CO, SensorType.O3):
            self.thresholds[ty] = air
        self.thresholds[SensorType.NOISE] = NoiseThreshold(config)
        self.thresholds[SensorType.WATER_LEVEL] = WaterLevelThreshold(config)
        self.thresholds[SensorType.MANHOLE_GAS] = GasThreshold(config)
        self.thresholds[SensorType.RAINFALL] = RainfallThreshold(config)
        self.thresholds[SensorType.TRAFFIC_SPEED] = TrafficCongestion(config)
        confirm = int(config.section("statistical").get("confirm_readings", 1))
        self.stat = StatAdapter(RobustSeasonal(sp, clock), "robust z of the reading vs seasonal baseline", sp.open_score,
                                confirm)  # fmt: skip
        # a rate-of-change episode is reported when the rapid change goes on for `confirm`
        # readings; a lone jump is the seasonal detector's (spike or level change)
        self.roc = StatAdapter(RateOfChange(open_score=roc_score, warmup=sp.warmup), "robust z of |change| between readings",
                               roc_score, confirm, report_spikes=False)  # fmt: skip
        # per sensor type: the same detectors with the type's meaningful resolution as a scale floor
        self.stat_by_type: dict[SensorType, tuple[StatAdapter, StatAdapter]] = {}
        for ty_name, m in (config.section("statistical").get("min_sigma") or {}).items():
            ty = SensorType(ty_name)
            spt = dataclasses.replace(sp, min_sigma=float(m))
            self.stat_by_type[ty] = (
                StatAdapter(RobustSeasonal(spt, clock), self.stat.statistic, sp.open_score, confirm),
                StatAdapter(RateOfChange(open_score=roc_score, warmup=sp.warmup, min_sigma=float(m)),
                            self.roc.statistic, roc_score, confirm, report_spikes=False),
            )  # fmt: skip
        skip = config.section("statistical").get("skip_types") or []
        self.stat_skip = {SensorType(s) for s in skip}
        self.hotline = HotlineBurst(config)

    @property
    def detector_names(self) -> list[str]:
        names = [self.health.name]
        for d in self.thresholds.values():
            if d.name not in names:
                names.append(d.name)
        return [*names, self.stat.name, self.roc.name, self.hotline.name]

    def _check_late(self, states: States, t: float, subject: str, ts: datetime) -> None:
        latest = states.get("_t")
        if latest is not None:
            if t < latest - self.lateness_s:
                raise LateEvent(subject, ts, _ts(latest), self.lateness_s)
            if t > latest:
                states["_t"] = t
        else:
            states["_t"] = t

    def step_reading(self, states: States | None, reading: SensorReading,
                     scale: float = 1.0) -> tuple[States, list[Signal]]:  # fmt: skip
        """`scale`: the emergency profile's factor for this sensor type's level
        thresholds (1.0 in normal mode); statistical detectors ignore it."""
        st: States = states if states is not None else {}
        t = reading.ts.timestamp()
        self._check_late(st, t, reading.sensor_id, reading.ts)
        hs, signals = self.health.step(st.get(self.health.name), reading)
        st[self.health.name] = hs
        if hs["bad"]:
            return st, signals
        thr = self.thresholds.get(reading.sensor_type)
        if thr is not None:
            if scale != 1.0 and getattr(thr, "scalable", False):
                s, out = thr.step(st.get(thr.name), reading, scale)
            else:
                s, out = thr.step(st.get(thr.name), reading)
            st[thr.name] = s
            signals.extend(out)
        if reading.sensor_type not in self.stat_skip:
            for det in self.stat_by_type.get(reading.sensor_type) or (self.stat, self.roc):
                s, out = det.step(st.get(det.name), reading, t)
                st[det.name] = s
                signals.extend(out)
        return st, signals

    def step_hotline(self, states: States | None, event: HotlineEvent) -> tuple[States, list[Signal]]:
        st: States = states if states is not None else {}
        if not self.hotline.applies_to(event):
            return st, []
        t = event.ts.timestamp()
        self._check_late(st, t, hotline_key(event), event.ts)
        s, signals = self.hotline.step(st.get(self.hotline.name), event)
        st[self.hotline.name] = s
        return st, signals

    def tick(self, states: States | None, watermark: datetime) -> tuple[States | None, list[Signal]]:
        """Event-time progress for one subject: silence, closing hotline windows."""
        if states is None:
            return states, []
        signals: list[Signal] = []
        if self.health.name in states:
            s, out = self.health.tick(states[self.health.name], watermark)
            states[self.health.name] = s
            signals.extend(out)
        if self.hotline.name in states:
            s, out = self.hotline.tick(states[self.hotline.name], watermark)
            states[self.hotline.name] = s
            signals.extend(out)
        return states, signals

    def tick_all(self, table: dict[str, States], watermark: datetime) -> list[Signal]:
        """Tick every subject of a table (sorted, so the order is deterministic)."""
        out: list[Signal] = []
        for key in sorted(table):
            states, signals = self.tick(table[key], watermark)
            if states is not None:
                table[key] = states
            out.extend(signals)
        return out
