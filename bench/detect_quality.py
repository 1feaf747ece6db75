"""`python -m bench.detect_quality`: detection quality on the simulator's labelled data.

Two runs of the same city through `DetectionEngine` (the code the stream runs,
default thresholds, site metadata from the simulated fleet as the sensor
registry would give it), ticking every minute of event time with the
watermark = max event time - allowed lateness:

1. **incidents and faults**: `--days` (default 8; the first day is warm-up,
   nothing is placed in it) with `--reps` of every incident kind at random
   times (heating outages only in the heating season: the default start is
   a Monday in January so all kinds occur) and `--reps` of every fault kind.
2. **clean**: the same city and length with no incidents and no faults, for
   false alerts per sensor-week (the warm-up day excluded).

Readings outside the physical range (the out_of_range fault's sentinels) are
rejected before detection, as the ingestion does (they go to the DLQ); they
count as that fault detected.

Scoring (documented, simple, strict):
- An alert is the opening of an episode (an `open` signal) of any detector
  except sensor health. It **matches** an incident label when its subject is
  one of the label's sensors (a hotline burst: its area is one of the label's
  streets) and it opens within [start - 10 min, end + 30 min].
- **recall** per kind: incidents with at least one matching alert / incidents.
  **delay**: first matching alert - label start (clamped at 0), median.
- **precision** per kind: matching alerts / (matching alerts + unmatched
  alerts on sensor types that kind moves). **F1** from the two.
- **faults**: per kind, detected when a sensor_health signal (or the
  ingestion's range check) fires on the sensor within [start - 5 min,
  end + 1 h]; `as_incident` counts non-health alerts on the faulted sensor
  during the fault (the target is 0).
- **false alerts per sensor-week** on the clean run: alerts (non-health) per
  sensor per 7 days; health alerts are reported apart.

The last line is one JSON object {"bench": "detect_quality", ...}.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import CATALOGUE, HotlineEvent, SensorReading
from sim import FaultSpec, IncidentSpec, Reading, build_city, generate, plan
from sim.scenario import FAULT_KINDS, INCIDENT_KINDS
from streams.detectors.base import SENSOR_HEALTH, LateEvent, Signal
from streams.detectors.config import DetectConfig, load_config
from streams.detectors.engine import DetectionEngine
from streams.detectors.hotline import hotline_key

DAY = 86400
START = datetime(2025, 1, 5, 16, 0, tzinfo=UTC)  # Monday 2025-01-06 00:00 Beijing


@dataclass
class Alert:
    rule: str
    subject: str
    category: str
    sensor_type: str | None
    t: float
    health: bool


@dataclass
class RunResult:
    alerts: list[Alert] = field(default_factory=list)
    rejected: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    readings: int = 0
    calls: int = 0
    late: int = 0
    seconds: float = 0.0


def run(city: Any, scenario: Any, tick_s: int = 60, config: DetectConfig | None = None) -> RunResult:
    eng = DetectionEngine(config, sites={s.sensor_id: s.site for s in city.sensors})
    lateness = eng.lateness_s
    res = RunResult()
    states: dict[str, Any] = {}
    hot: dict[str, Any] = {}
    max_t = 0.0
    next_tick = scenario.start + tick_s
    t0 = time.process_time()

    def collect(sigs: Iterable[Signal]) -> None:
        for s in sigs:
            if s.kind == "open":
                res.alerts.append(Alert(s.rule, s.subject, s.category, s.sensor_type, s.ts.timestamp(),
                                        s.category == SENSOR_HEALTH))  # fmt: skip

    for ev in generate(city, scenario):
        t = ev.t
        if t > max_t:
            max_t = t
        if t >= next_tick:
            wm = datetime.fromtimestamp(max_t - lateness, UTC)
            collect(eng.tick_all(states, wm))
            collect(eng.tick_all(hot, wm))
            next_tick = t - t % tick_s + tick_s
        if isinstance(ev, Reading):
            s = ev.sensor
            spec = CATALOGUE[s.sensor_type]
            if not spec.low <= ev.value <= spec.high:  # the ingestion rejects it (DLQ)
                res.rejected[s.sensor_id].append(float(t))
                continue
            r = SensorReading.model_construct(
                event_id=ev.event_id, sensor_id=s.sensor_id, sensor_type=s.sensor_type, value=float(ev.value),
                unit=s.unit, ts=datetime.fromtimestamp(t, UTC), location=s.location, sent_at=None, source="sim",
                schema_version=1,
            )  # fmt: skip
            res.readings += 1
            try:
                states[s.sensor_id], sigs = eng.step_reading(states.get(s.sensor_id), r)
            except LateEvent:
                res.late += 1
                continue
            collect(sigs)
        else:
            h: HotlineEvent = ev.model()
            res.calls += 1
            key = hotline_key(h)
            try:
                hot[key], sigs = eng.step_hotline(hot.get(key), h)
            except LateEvent:
                res.late += 1
                continue
            collect(sigs)
    res.seconds = time.process_time() - t0
    return res


def incident_plan(city: Any, days: int, reps: int, seed: int) -> Any:
    rng = random.Random(f"{seed}/quality")
    specs: list[IncidentSpec] = []
    for kind in INCIDENT_KINDS:
        for _ in range(reps):
            if kind == "night_construction":  # 22:00 Beijing on a random day after warm-up
                d = rng.randint(1, days - 1)
                specs.append(IncidentSpec(kind, start=timedelta(days=d, hours=22)))
            else:
                specs.append(IncidentSpec(kind, start=timedelta(seconds=rng.randint(DAY + 3600, days * DAY - 14 * 3600))))
    faults = [FaultSpec(k, start=timedelta(seconds=rng.randint(DAY + 3600, days * DAY - 8 * 3600)))
              for k in FAULT_KINDS for _ in range(reps)]  # fmt: skip
    return plan(city, START, timedelta(days=days), incidents=specs, faults=faults, seed=seed)


def score(city: Any, scenario: Any, res: RunResult) -> dict[str, Any]:
    type_of = {s.sensor_id: s.sensor_type.value for s in city.sensors}
    incidents = [lb for lb in scenario.labels if lb.category == "incident"]
    faults = [lb for lb in scenario.labels if lb.category == "fault"]
    kind_types: dict[str, set[str]] = defaultdict(set)
    for lb in incidents:
        kind_types[lb.kind].update(lb.signals)
    warm = START.timestamp() + DAY  # nothing is placed in the warm-up day: its alerts are not scored
    alerts = [a for a in res.alerts if not a.health and a.t >= warm]
    health = [a for a in res.alerts if a.health]

    def matches(a: Alert, lb: Any) -> bool:
        if not lb.start - 600 <= a.t <= lb.end + 1800:
            return False
        if a.sensor_type is None:  # hotline burst: subject "category:area"
            return a.subject.split(":", 1)[1] in lb.streets
        return a.subject in lb.sensor_ids

    # an alert may match labels of several kinds (a rainstorm also slows the traffic a jam does)
    matched_kinds: list[set[str]] = [{lb.kind for lb in incidents if matches(a, lb)} for a in alerts]
    per: dict[str, Any] = {}
    all_det = all_n = 0
    delays_all: list[float] = []
    for kind in sorted({lb.kind for lb in incidents}):
        labels = [lb for lb in incidents if lb.kind == kind]
        det, delays = 0, []
        for lb in labels:
            hits = [a.t for a in alerts if matches(a, lb)]
            if hits:
                det += 1
                delays.append(max(0.0, min(hits) - lb.start))
        tp = sum(1 for ks in matched_kinds if kind in ks)
        fp = sum(1 for a, ks in zip(alerts, matched_kinds, strict=True)
                 if not ks and (a.sensor_type in kind_types[kind] or
                                (a.sensor_type is None and kind in ("heating_outage",))))  # fmt: skip
        recall = det / len(labels)
        precision = tp / (tp + fp) if tp + fp else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per[kind] = {
            "incidents": len(labels), "detected": det, "recall": round(recall, 3), "precision": round(precision, 3),
            "f1": round(f1, 3), "median_delay_s": round(statistics.median(delays)) if delays else None,
            "alerts_matched": tp, "alerts_unmatched_same_signals": fp,
        }  # fmt: skip
        all_det += det
        all_n += len(labels)
        delays_all += delays
    unmatched = [a for a, ks in zip(alerts, matched_kinds, strict=True) if not ks]
    all_tp = len(alerts) - len(unmatched)
    overall_p = all_tp / (all_tp + len(unmatched)) if alerts else 0.0
    overall_r = all_det / all_n if all_n else 0.0
    fault_out: dict[str, Any] = {}
    for kind in FAULT_KINDS:
        labels = [lb for lb in faults if lb.kind == kind]
        if not labels:
            continue
        det = as_inc = 0
        delays = []
        for lb in labels:
            sid = lb.sensor_ids[0]
            hits = [a.t for a in health if a.subject == sid and lb.start - 300 <= a.t <= lb.end + 3600]
            hits += [t for t in res.rejected.get(sid, []) if lb.start <= t <= lb.end]
            if hits:
                det += 1
                delays.append(max(0.0, min(hits) - lb.start))
            as_inc += sum(1 for a in alerts if a.subject == sid and lb.start - 300 <= a.t <= lb.end + 600)
        fault_out[kind] = {"faults": len(labels), "detected_as_health": det, "recall": round(det / len(labels), 3),
                           "median_delay_s": round(statistics.median(delays)) if delays else None,
                           "reported_as_incident": as_inc}  # fmt: skip
    fp_by_rule = Counter(a.rule for a in unmatched)
    return {
        "per_incident": per,
        "overall": {"recall": round(overall_r, 3), "precision": round(overall_p, 3),
                    "f1": round(2 * overall_p * overall_r / (overall_p + overall_r), 3) if overall_p + overall_r else 0.0,
                    "median_delay_s": round(statistics.median(delays_all)) if delays_all else None,
                    "alerts": len(alerts), "unmatched_alerts": len(unmatched)},
        "faults": fault_out,
        "unmatched_by_rule": dict(fp_by_rule.most_common(12)),
        "sensor_types": dict(Counter(type_of.values())),
    }  # fmt: skip


def clean_rate(city: Any, res: RunResult, days: int) -> dict[str, Any]:
    after = START.timestamp() + DAY
    alerts = [a for a in res.alerts if a.t >= after]
    weeks = (days - 1) / 7
    n = len(city.sensors)
    inc = [a for a in alerts if not a.health and a.sensor_type is not None]
    hot = [a for a in alerts if a.sensor_type is None]
    hl = [a for a in alerts if a.health]
    by_type = Counter(a.sensor_type for a in inc)
    per_type_n = Counter(s.sensor_type.value for s in city.sensors)
    return {
        "false_alerts_per_sensor_week": round(len(inc) / (n * weeks), 4),
        "false_alerts_per_sensor_week_by_type": {t: round(by_type[t] / (per_type_n[t] * weeks), 4) for t in sorted(per_type_n)},
        "false_alerts_by_rule": dict(Counter(a.rule for a in inc).most_common(10)),
        "health_alerts_per_sensor_week": round(len(hl) / (n * weeks), 4),
        "hotline_false_bursts_per_week": round(len(hot) / weeks, 2),
        "sensor_weeks": round(n * weeks, 2),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.detect_quality", description=__doc__.splitlines()[0])
    ap.add_argument("--sensors", type=int, default=300)
    ap.add_argument("--days", type=int, default=8, help="including one warm-up day (default %(default)s)")
    ap.add_argument("--reps", type=int, default=3, help="incidents and faults of each kind (default %(default)s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--districts", default="东城区,西城区,朝阳区,海淀区",
                    help="comma-separated districts (default: four central ones, so incidents hit sensors)")
    ap.add_argument("--air-open-from", choices=["IV", "III", "II", "I"], default=None,
                    help="override thresholds.yaml air.open_from (default: the file's, III)")
    args = ap.parse_args(argv)
    config = load_config(overrides={"air": {"open_from": args.air_open_from}}) if args.air_open_from else None
    if args.days < 2:
        ap.error("--days must be at least 2 (one warm-up day)")
    districts = [d for d in args.districts.split(",") if d]
    city = build_city(seed=args.seed, sensors=args.sensors, districts=districts)
    scenario = incident_plan(city, args.days, args.reps, args.seed)
    print(f"city: {len(city.sensors)} sensors in {', '.join(city.districts)}; {args.days} days from "
          f"{START.isoformat()} (first day warm-up); {len(scenario.labels)} labels")  # fmt: skip
    res = run(city, scenario, config=config)
    print(f"incident run: {res.readings} readings, {res.calls} calls, {len(res.alerts)} alert openings, "
          f"{res.late} late, {sum(map(len, res.rejected.values()))} rejected; {res.seconds:.0f} s CPU")  # fmt: skip
    q = score(city, scenario, res)
    print(f"{'incident':20s} {'n':>3s} {'recall':>7s} {'prec':>7s} {'F1':>6s} {'delay_s':>8s}")
    for kind, v in q["per_incident"].items():
        print(f"{kind:20s} {v['incidents']:3d} {v['recall']:7.3f} {v['precision']:7.3f} {v['f1']:6.3f} "
              f"{v['median_delay_s'] if v['median_delay_s'] is not None else '-':>8}")  # fmt: skip
    o = q["overall"]
    print(f"{'overall':20s} {'':3s} {o['recall']:7.3f} {o['precision']:7.3f} {o['f1']:6.3f} {o['median_delay_s']!s:>8}")
    print(f"unmatched alerts by rule: {q['unmatched_by_rule']}")
    print(f"{'fault':14s} {'n':>3s} {'health recall':>14s} {'delay_s':>8s} {'as incident':>12s}")
    for kind, v in q["faults"].items():
        print(f"{kind:14s} {v['faults']:3d} {v['recall']:14.3f} {v['median_delay_s']!s:>8} {v['reported_as_incident']:12d}")
    clean_sc = plan(city, START, timedelta(days=args.days), incidents=[], faults=0, seed=args.seed + 1000)
    clean = run(city, clean_sc, config=config)
    c = clean_rate(city, clean, args.days)
    print(f"clean run: {clean.readings} readings; false alerts per sensor-week {c['false_alerts_per_sensor_week']} "
          f"(health {c['health_alerts_per_sensor_week']}, hotline bursts/week {c['hotline_false_bursts_per_week']}); "
          f"by rule {c['false_alerts_by_rule']}; {clean.seconds:.0f} s CPU")  # fmt: skip
    print(json.dumps({
        "bench": "detect_quality", "sensors": len(city.sensors), "days": args.days, "reps": args.reps,
        "seed": args.seed, "start": START.isoformat(), "air_open_from": (config or load_config()).raw["air"]["open_from"], "per_incident": q["per_incident"], "overall": q["overall"],
        "faults": q["faults"], "clean": c,
        "targets": {"f1": 0.9, "false_alerts_per_sensor_week": 1.0, "faults_reported_as_incident": 0},
        "cpu_seconds": round(res.seconds + clean.seconds, 1),
    }, ensure_ascii=False))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
