"""The benchmarks' quick modes run in the suite to prove the harnesses work
(figures come from full runs, not from here)."""

from __future__ import annotations

import json
import subprocess
import sys


def run_bench(module: str, *args: str) -> dict:
    try:
        out = subprocess.run(
            [sys.executable, "-m", module, "--quick", *args], capture_output=True, text=True, timeout=240
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{module} --quick hung; output so far:\n{exc.stdout!r}\n{exc.stderr!r}") from exc
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    return json.loads(last)


def test_e2e_quick_loses_nothing_and_measures_alert_latency() -> None:
    r = run_bench("bench.e2e")
    assert r["bench"] == "e2e"
    step = r["steps"][0]
    assert step["acked"] > 0 and step["lost"] == 0 and step["db_duplicates"] == 0
    assert step["alerts"] > 0 and step["p99_alert_ms"] is not None
    assert {"connector", "worker", "writer"} <= step["processes"].keys()


def test_ingest_quick_loses_nothing() -> None:
    r = run_bench("bench.ingest")
    assert r["bench"] == "ingest" and r["lost"] == 0
    assert {s["mode"] for s in r["steps"]} == {"single", "batch100"}
    assert all(s["in_kafka"] == s["acked"] > 0 for s in r["steps"])
