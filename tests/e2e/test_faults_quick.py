"""The fault matrix's quick mode runs in the suite: connector kill -9,
worker kill -9, PostgreSQL immediate stop and every class of poison input,
each on the matrix's own private stack (it never touches the shared one),
with nothing acknowledged lost and nothing stored twice, and every case
recovering (lag back to 0, new rows) instead of hanging. The 30 s recovery
bound is the benchmark's verdict on full runs, not asserted here (a loaded
machine stretches it): the suite allows the recovery timeout."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

QUICK_CASES = {"connector_kill9", "worker_kill9", "postgres_immediate", "poison"}


@pytest.mark.timeout(1500)  # four cases, each with its own pipeline, on a private stack it starts itself
def test_fault_matrix_quick_loses_nothing_and_duplicates_nothing() -> None:
    cmd = [sys.executable, "-m", "bench.faults", "--quick", "--max-recovery-s", "180", "--recovery-timeout-s", "180"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the bench stops its private stack before exiting
        stdout, stderr = proc.communicate(timeout=180)
        raise AssertionError(f"bench.faults --quick hung; output so far:\n{stdout}\n{stderr[-3000:]}") from None
    finally:
        if proc.poll() is None:  # interrupted some other way: still let it stop its stack
            proc.terminate()
            proc.wait(timeout=180)
    out = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    lines = out.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{out.stderr[-3000:]}"
    r = json.loads(lines[-1])
    table = "\n".join(lines[:-1])
    assert r["bench"] == "faults"
    assert {c["case"] for c in r["results"]} == QUICK_CASES, table
    for c in r["results"]:
        assert "error" not in c, f"{c['case']}: {c.get('error')}\n{table}"
        assert c["acked"] > 0, f"{c['case']}: the publisher got no acknowledgement\n{table}"
        assert c["recovery_s"] is not None and c["final_lag_zero"], f"{c['case']} did not recover\n{table}"
    assert r["lost"] == 0, table
    assert r["db_duplicates"] == 0, table
    assert r["failed_cases"] == [], f"failed: {r['failed_cases']}\n{table}\n{out.stderr[-2000:]}"
    assert out.returncode == 0, out.stderr[-2000:]
    poison = next(c for c in r["results"] if c["case"] == "poison")
    assert set(poison["notes"]["dlq_reasons"]) >= {"malformed_json", "wrong_type", "unknown_device", "late"}
    worker = next(c for c in r["results"] if c["case"] == "worker_kill9")
    assert worker["notes"]["hot_alert_ids"] == 1, "a worker crash opened a second alert for one condition"


def test_bad_arguments_get_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.faults", "--cases", "no_such_case"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no_such_case" in out.stderr and "connector_kill9" in out.stderr
