"""`python -m bench.lifecycle`: CPU cost of the lifecycle stage per record,
pure Python, no broker: what the lifecycle agents do between consuming a
detection revision (or an action) and handing alerts to the producer.

Measured per record (microseconds; median, p99 over the records of the best
of `--runs` runs): LifecycleCore.apply for a new alert and for a continuing
revision (parse, routing, state transition, index, JSON state), an ack action,
department copies (PII policy) and Alert.to_json for each routed department,
and a tick of due timers. Also the state size per alert. Kafka hops
(detected topic -> lifecycle -> department topic) are measured by bench.e2e.
The last line is one JSON object {"bench": "lifecycle", ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

from bench.common import conditions, percentile
from schemas import Alert, AlertStatus, Evidence, Location, Severity
from streams.lifecycle import Lifecycle, load_policy
from streams.lifecycle_agent import LifecycleCore
from streams.routing import department_copy, load_rules

T0 = datetime(2026, 7, 20, 8, 0, tzinfo=UTC)
STREETS = ("望京街道", "三里屯街道", "建外街道", "劲松街道")


def alert(i: int, rev: int) -> bytes:
    t = T0 + timedelta(seconds=i + rev)
    return Alert(
        alert_id=f"a-{i}", rule="water_level", subject=f"wl-{i}", category="water", sensor_type="water_level",
        severity=Severity.II, status=AlertStatus.DISPATCHED, title="水位预警 II",
        location=Location(district="朝阳区", street=STREETS[i % len(STREETS)], lat=39.99, lon=116.47),
        first_seen=T0, last_seen=t, count=rev, revision=rev,
        evidence=Evidence(detector="water_level", detector_version="1.0.0", statistic="median of last 3",
                          value=3.8, threshold=3.5, window_start=T0, window_end=t,
                          details={"mode": {"mode": "normal", "scope": "city"}, "site": {"warning_level": 3.0}}),
    ).to_json()  # fmt: skip


def ack(i: int) -> bytes:
    return json.dumps({"event_id": f"ack-{i}", "alert_id": f"a-{i}", "action": "ack", "actor": "duty",
                       "actor_department": "water", "ts": (T0 + timedelta(minutes=1)).isoformat()}).encode()


def run_once(n: int) -> dict[str, list[float]]:
    rules = load_rules()
    core = LifecycleCore(Lifecycle(rules, load_policy()), {})
    t: dict[str, list[float]] = {"new": [], "revision": [], "ack": [], "fanout": [], "tick": []}
    news = [alert(i, 1) for i in range(n)]
    revs = [alert(i, 2) for i in range(n)]
    acks = [ack(i) for i in range(n)]
    now = T0 + timedelta(seconds=5)
    for i in range(n):
        s = time.perf_counter()
        out, _ = core.apply("detected", f"a-{i}".encode(), news[i], now, i % 4)
        t["new"].append(time.perf_counter() - s)
        s = time.perf_counter()
        for a in out.alerts:
            a.to_json()
            for code in a.departments:
                department_copy(a, code, rules.registry).to_json()
        t["fanout"].append(time.perf_counter() - s)
    for i in range(n):
        s = time.perf_counter()
        core.apply("detected", f"a-{i}".encode(), revs[i], now, i % 4)
        t["revision"].append(time.perf_counter() - s)
    for i in range(n // 2):  # half acknowledged; the other half escalates on the tick below
        s = time.perf_counter()
        core.apply("action", f"a-{i}".encode(), acks[i], now, i % 4)
        t["ack"].append(time.perf_counter() - s)
    s = time.perf_counter()
    ticked = core.tick(T0 + timedelta(minutes=16))
    t["tick"].append((time.perf_counter() - s) / max(1, len(ticked)))
    t["state_bytes"] = [float(statistics.median(len(v) for v in core.store.values()))]
    return t


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(prog="bench.lifecycle", description=__doc__.splitlines()[0])
    p.add_argument("--alerts", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="200 alerts, 1 run (the suite's harness check)")
    args = p.parse_args(argv)
    if args.quick:
        args.alerts, args.runs = 200, 1
    best: dict[str, list[float]] | None = None
    for _ in range(args.runs):
        r = run_once(args.alerts)
        if best is None or statistics.median(r["new"]) < statistics.median(best["new"]):
            best = r
    assert best is not None
    us = {k: round(statistics.median(v) * 1e6, 1) for k, v in best.items() if k != "state_bytes"}
    p99 = {k: round((percentile(v, 99) or 0) * 1e6, 1) for k, v in best.items() if k not in ("state_bytes", "tick")}
    for k in us:
        print(f"{k:>9}: median {us[k]:>8.1f} us" + (f"  p99 {p99[k]:>8.1f} us" if k in p99 else "  (per ticked alert)"))
    print(f"state per alert: {int(best['state_bytes'][0])} bytes (JSON)")
    result: dict[str, object] = {
        "bench": "lifecycle", "alerts": args.alerts, "median_us": us, "p99_us": p99,
        "state_bytes_per_alert": int(best["state_bytes"][0]),
        "conditions": conditions() | {"runs": args.runs},
    }  # fmt: skip
    print(json.dumps(result, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
