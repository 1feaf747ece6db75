"""`python -m bench.detect`: per-reading cost of every detector, pure Python.

For each detector: the median over `--runs` runs of (time for N readings / N),
in microseconds, on synthetic data with a daily rhythm and noise (one sensor,
readings built beforehand so pydantic parsing is not counted). Also the state
size per sensor after a week of readings: the bytes the worker stores for it
(its record in the sensor-state table and changelog: the reading processor's
state, engine and open alerts, as orjson writes it), and each detector's
share. The last line is one JSON object {"bench": "detect", ...}.

Then, when the local stack is up (`KAFKA_BOOTSTRAP_SERVERS` set, as in
`.run/stack.env`), readings/s through one Faust worker on the real broker:
`bench.worker`'s measurement, 3 runs, of the worker that reads the readings:
by default the detect half (`WORKER_ROLE=detect`), as `citybrain demo` runs
it beside the alerts half; `--worker-role all` for every agent in one
process. `--worker-readings 0` skips it; `python -m bench.worker` for more.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from schemas import HotlineEvent, SensorReading
from streams.detectors.aqi import AirQualityThreshold
from streams.detectors.engine import DetectionEngine
from streams.detectors.health import SensorHealth
from streams.detectors.hotline import HotlineBurst
from streams.detectors.stats import RateOfChange, RobustSeasonal
from streams.detectors.thresholds import GasThreshold, NoiseThreshold, WaterLevelThreshold
from streams.detectors.traffic import TrafficCongestion
from streams.pipeline import ReadingProcessor
from streams.routing import load_rules

T0 = datetime(2025, 7, 1, tzinfo=UTC)
LOC = {"district": "朝阳区", "street": "望京街道", "grid": "g-1", "lat": 39.99, "lon": 116.47}
TYPES = {
    "pm25": ("ug/m3", 60, lambda i, r: max(0.0, 60 + 25 * math.sin(i / 229.0) + r.gauss(0, 4))),
    "o3": ("ug/m3", 60, lambda i, r: max(0.0, 80 + 40 * math.sin(i / 229.0) + r.gauss(0, 5))),
    "noise": ("dB(A)", 10, lambda i, r: 55 + 8 * math.sin(i / 1375.0) + r.gauss(0, 1.5)),
    "water_level": ("m", 30, lambda i, r: 1.5 + 0.02 * math.sin(i / 458.0) + r.gauss(0, 0.01)),
    "manhole_gas": ("%LEL", 30, lambda i, r: max(0.0, round(0.8 + r.gauss(0, 0.25), 1))),
    "traffic_flow": ("veh/h", 60, lambda i, r: max(0.0, round(1800 + 900 * math.sin(i / 229.0) + r.gauss(0, 100)))),
    "traffic_speed": ("km/h", 60, lambda i, r: max(3.0, round(55 + 15 * math.sin(i / 229.0) + r.gauss(0, 2), 1))),
}


def readings(ty: str, n: int, seed: int = 1) -> list[SensorReading]:
    unit, interval, f = TYPES[ty]
    rng = random.Random(seed)
    return [
        SensorReading.model_construct(
            event_id=f"e-{i}", sensor_id=f"{ty}-1", sensor_type=ty, value=float(f(i, rng)), unit=unit,
            ts=T0 + timedelta(seconds=interval * i), location=_LOC, sent_at=None, source=None, schema_version=1,
        )
        for i in range(n)
    ]


_LOC = SensorReading.model_validate({
    "event_id": "x", "sensor_id": "x", "sensor_type": "pm25", "value": 1.0, "unit": "ug/m3",
    "ts": T0.isoformat(), "location": LOC,
}).location  # fmt: skip


def timed(fn: Callable[[], int], runs: int) -> tuple[float, list[float]]:
    per = []
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        n = fn()
        per.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(per), per


def bench_core(core: RobustSeasonal | RateOfChange, xs: list[tuple[float, float]]) -> Callable[[], int]:
    def go() -> int:
        st: Any = None
        upd = core.update
        for t, x in xs:
            st, _ = upd(st, t, x)
        return len(xs)

    return go


def bench_step(det: Any, rs: list[Any]) -> Callable[[], int]:
    def go() -> int:
        st: Any = None
        step = det.step
        for r in rs:
            st, _ = step(st, r)
        return len(rs)

    return go


def bench_engine(eng: DetectionEngine, rs: list[SensorReading]) -> Callable[[], int]:
    def go() -> int:
        st: Any = None
        step = eng.step_reading
        for r in rs:
            st, _ = step(st, r)
        return len(rs)

    return go


def one_worker(readings: int, role: str = "detect") -> dict[str, Any] | None:
    """bench.worker's measurement of a worker with `role`; None when skipped."""
    if not readings:
        return None
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        print("one Faust worker: skipped, KAFKA_BOOTSTRAP_SERVERS is not set "
              "(make stack-up, then set -a; . .run/stack.env; set +a)")
        return None
    from bench import worker as bench_worker

    print(f"one Faust worker on the real broker (bench.worker, WORKER_ROLE={role}): {readings} readings x 3 runs")
    args = argparse.Namespace(readings=readings, sensors=1000, partitions=4, runs=3, timeout=600.0, role=role,
                              profile=None)  # fmt: skip
    got = asyncio.run(bench_worker.main_async(args))
    print(f"  median {got['median_readings_per_s']} readings/s, {got['median_cpu_us_per_reading']} us CPU a reading")
    return {"role": role} | {k: got[k] for k in ("median_readings_per_s", "median_cpu_us_per_reading", "runs",
                                                 "conditions")}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from citybrain.cli import OneLineParser

    ap = OneLineParser(prog="python -m bench.detect", description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=20_000, help="readings per run (default %(default)s)")
    ap.add_argument("--runs", type=int, default=5, help="runs per detector; the median is reported")
    ap.add_argument("--worker-readings", type=int, default=100_000,
                    help="readings through one Faust worker on the real broker, 3 runs (default %(default)s; "
                         "0 skips it; needs KAFKA_BOOTSTRAP_SERVERS, as in .run/stack.env)")
    ap.add_argument("--worker-role", choices=["detect", "all"], default="detect",
                    help="that worker's WORKER_ROLE: the detect half, as the demo runs it (default), or every agent")
    args = ap.parse_args(argv)
    if args.worker_readings and args.worker_readings < 1000:
        ap.error("--worker-readings must be 0 (skip) or at least 1000")
    n, runs = args.readings, args.runs
    eng = DetectionEngine()
    pm = readings("pm25", n)
    tf = readings("traffic_flow", n)
    xs = [(r.ts.timestamp(), r.value) for r in tf]
    cases: list[tuple[str, Callable[[], int]]] = [
        ("robust_seasonal", bench_core(eng.stat.core, xs)),
        ("rate_of_change", bench_core(eng.roc.core, xs)),
        ("sensor_health", bench_step(SensorHealth(), tf)),
        ("aqi_threshold", bench_step(AirQualityThreshold(), pm)),
        ("noise_gb3096", bench_step(NoiseThreshold(), readings("noise", n))),
        ("water_level", bench_step(WaterLevelThreshold(), readings("water_level", n))),
        ("manhole_gas", bench_step(GasThreshold(), readings("manhole_gas", n))),
        ("traffic_congestion", bench_step(TrafficCongestion(), readings("traffic_speed", n))),
        ("engine_pm25", bench_engine(eng, pm)),
        ("engine_traffic_flow", bench_engine(eng, tf)),
    ]
    hot = [
        HotlineEvent.model_validate({
            "event_id": f"h-{i}", "ticket_id": f"t-{i}", "kind": "created", "category": "noise",
            "ts": (T0 + timedelta(seconds=97 * i)).isoformat(), "location": LOC,
        })
        for i in range(min(n, 20_000))
    ]
    cases.append(("hotline_burst", bench_step(HotlineBurst(), hot)))
    results: dict[str, float] = {}
    print(f"detector benchmark: {n} readings x {runs} runs, median us/reading (pure Python, one core)")
    for name, fn in cases:
        med, per = timed(fn, runs)
        results[name] = round(med, 2)
        print(f"  {name:22s} {med:8.2f} us/reading   runs: {', '.join(f'{p:.2f}' for p in per)}")

    # state bytes per sensor after a week at the catalogue interval, as the worker stores them
    # (streams.detect_agent: orjson, compact; the processor's state with its open alerts)
    sizes: dict[str, int] = {}
    processor = ReadingProcessor(load_rules(), engine=eng)
    for ty, (_, interval, _) in TYPES.items():
        rs = readings(ty, 7 * 86400 // interval, seed=2)
        st: Any = None
        for r in rs:
            st, _ = processor.step(st, r)
        st["p"] = 0
        sizes[ty] = len(orjson.dumps(st))
        for k, v in st["det"].items():
            if not k.startswith("_"):
                sizes[f"{ty}.{k}"] = len(orjson.dumps(v))
    hst: Any = None
    for ev in hot:
        hst, _ = eng.step_hotline(hst, ev)
    sizes["hotline_key"] = len(orjson.dumps(hst))
    print("state bytes per sensor (as stored: orjson of the sensor's record, after a week):")
    for k, v in sizes.items():
        print(f"  {k:32s} {v:6d}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    conditions = {
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "machine": platform.machine(), "cpus": os.cpu_count(), "loadavg_1m": load,
        "readings_per_run": n, "runs": runs,
    }  # fmt: skip
    print(f"conditions: {json.dumps(conditions)}")
    worker = one_worker(args.worker_readings, args.worker_role)
    print(json.dumps({
        "bench": "detect", "unit": "us/reading (median of runs)", "us_per_reading": results,
        "state_bytes": {k: v for k, v in sizes.items() if "." not in k},
        "state_bytes_by_detector": {k: v for k, v in sizes.items() if "." in k},
        "worker": worker, "target_us_statistical": 10, "target_state_bytes": 2048,
        "target_worker_readings_per_s": 20_000, "conditions": conditions,
    }, ensure_ascii=False))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
