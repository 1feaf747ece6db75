"""The fault matrix: break one part of the pipeline at a time and show that
nothing acknowledged is lost, nothing is stored twice, and the pipeline
recovers.

    python -m bench.faults [--quick] [--cases a,b] [--outage-s S]
                           [--unreachable-s S] [--rate R] [--keep]

It starts a private stack (its own Kafka, Mosquitto and PostgreSQL under a
temporary run directory, on free loopback ports: the shared stack is never
touched) and, per case, a fresh pipeline (connector, worker, writer with
their own topic prefix and groups). A publisher sends sequenced readings
over MQTT QoS 1 in bursts; the oracle is what Mosquitto acknowledged
(PUBACK). One sensor is held in alert the whole case. The case injects its
fault, ends it, and the bench measures:

* lost: acknowledged readings not in the database (by event_id);
* db duplicates: rows beyond one per event_id, plus (rule, subject) pairs
  with more than one alert_id (each case is one episode per condition);
* recovery: from the end of the fault (restart issued) until both consumer
  groups (worker, writer) have lag 0 on what they consume and a reading
  published after the fault end is stored.

A case passes with 0 lost, 0 duplicates, recovery <= 30 s, final lag 0, no
process exiting on its own, and its own check (poison in the DLQ with its
reason, memory bounded while Kafka is unreachable, one alert id across a
worker crash). Prints a table; the last line is one JSON object; the exit
code is 1 when a case failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.common import conditions
from bench.faults_load import Db, LagProbe, Load, reading, readings_tps, writer_tps
from bench.faults_stack import PrivateStack, free_port, port_open
from citybrain.cli import OneLineParser
from citybrain.errors import CityBrainError, ServiceError
from citybrain.supervisor import CONNECTOR_SUBSCRIBED, Supervisor
from citybrain.topics import Topics

PASS_RECOVERY_S = 30.0  # the bound; --max-recovery-s changes it (the test suite is generous)
RSS_BOUND_MB = 400.0


@dataclass
class Settings:
    rate: float
    outage_s: float
    unreachable_s: float
    flood_s: float
    before_s: float
    after_s: float
    recovery_timeout_s: float
    max_recovery_s: float = PASS_RECOVERY_S


@dataclass
class CaseRun:
    """One case's pipeline, load and findings."""

    name: str
    cfg: Settings
    stack: PrivateStack
    sup: Supervisor
    env: dict[str, str]
    topics: Topics
    run: str
    load: Load
    db: Db
    lag: LagProbe
    metrics_port: int
    t_end_mono: float = 0.0
    t_end_wall: datetime = field(default_factory=lambda: datetime.now(UTC))
    expected_down: set[str] = field(default_factory=set)
    died: dict[str, int | None] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)

    def mark_end(self) -> None:
        self.t_end_mono = time.monotonic()
        self.t_end_wall = datetime.now(UTC)

    def watch(self) -> None:
        """Record children that exited without being killed by the case."""
        for name, child in self.sup.children.items():
            if name in self.expected_down or child.proc is None:
                continue
            rc = child.proc.poll()
            if rc is not None and name not in self.died:
                self.died[name] = rc

    async def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.expected_down.add(name)
        await asyncio.to_thread(self.sup.kill, name, sig)

    def restart(self, name: str) -> None:
        self.sup.restart(name)
        self.expected_down.discard(name)

    def pid(self, name: str) -> int:
        return self.sup.children[name].pid


def _dump_worker_stacks(c: CaseRun) -> None:
    """A worker that did not recover writes every thread's and task's stack to
    its log (mode's SIGUSR1 handler), so the kept logs show where it waits."""
    for name, child in c.sup.children.items():
        if name.startswith("worker") and child.proc is not None and child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGUSR1)
    time.sleep(2)


# ---------------------------------------------------------------- the faults
async def connector_kill9(c: CaseRun) -> None:
    await c.kill("connector")
    await asyncio.sleep(c.cfg.outage_s)  # the broker queues for the persistent session meanwhile
    c.mark_end()
    c.restart("connector")


async def _kafka_signal_restart(c: CaseRun, sig: int) -> None:
    c.notes["shutdown_s"] = round(await asyncio.to_thread(c.stack.kafka_signal, sig), 1)
    await asyncio.sleep(c.cfg.outage_s)
    t0 = time.monotonic()
    up = asyncio.create_task(asyncio.to_thread(c.stack.up, "kafka"))
    # the fault ends when the broker listens again; its own boot time is not the pipeline's
    await wait_for(lambda: _listening(up, c.stack.kafka_port), 300, every=0.1)
    c.mark_end()
    await up
    c.notes["kafka_start_s"] = round(c.t_end_mono - t0, 1)


async def _listening(up: asyncio.Task[None], port: int) -> bool:
    return up.done() or port_open(port)


async def kafka_sigkill(c: CaseRun) -> None:
    await _kafka_signal_restart(c, signal.SIGKILL)


async def kafka_sigterm(c: CaseRun) -> None:
    await _kafka_signal_restart(c, signal.SIGTERM)


async def worker_kill9(c: CaseRun) -> None:
    # the hot sensor's alert is open and its 1-hour window half full: a worker
    # that lost its state would open a second alert id for the same condition
    await c.kill("worker")
    await asyncio.sleep(c.cfg.outage_s)
    c.mark_end()
    c.restart("worker")


async def worker_pair_kill(c: CaseRun) -> None:
    await c.kill("worker2")
    c.mark_end()  # no restart: the survivor must take the partitions over


async def postgres_immediate(c: CaseRun) -> None:
    await asyncio.to_thread(c.stack.pg_stop_immediate)
    await asyncio.sleep(c.cfg.outage_s)
    t0 = time.monotonic()
    await asyncio.to_thread(c.stack.up, "postgres")  # returns once it accepts connections (pg_ctl -w)
    c.mark_end()
    c.notes["pg_start_s"] = round(c.t_end_mono - t0, 1)


async def kafka_unreachable(c: CaseRun) -> None:
    """The broker frozen (SIGSTOP): connections stay open and nothing answers,
    the harder variant of unreachable. The connector must hold back (the MQTT
    broker queues) with bounded memory, and nobody may crash."""
    proc = psutil.Process(c.pid("connector"))
    base = proc.memory_info().rss
    peak = base
    c.stack.kafka_freeze()
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < c.cfg.unreachable_s:
            try:
                peak = max(peak, proc.memory_info().rss)
            except psutil.Error:
                break
            c.watch()
            await asyncio.sleep(1)
    finally:
        c.mark_end()
        c.stack.kafka_thaw()
    c.notes["connector_rss_mb"] = {"before": round(base / 2**20, 1), "peak": round(peak / 2**20, 1)}
    c.checks["memory_bounded"] = peak / 2**20 <= RSS_BOUND_MB


async def flood_10x(c: CaseRun) -> None:
    normal = c.load.rate
    c.load.rate = normal * 10
    await asyncio.sleep(c.cfg.flood_s)
    c.load.rate = normal
    c.mark_end()
    c.notes["flood_readings_per_s"] = normal * 10


def poison_payloads(run: str) -> dict[str, tuple[str, bytes]]:
    """class -> (MQTT topic, payload). Each class's DLQ reason is its name."""
    def r(**over: Any) -> dict[str, Any]:
        d = reading(f"{run}-poison", f"{run}-px", 20.0)
        d.update(over)
        return d

    missing = r()
    del missing["sensor_type"]
    topic = f"city/sensors/{run}"
    return {
        "malformed_json": (f"{topic}/malformed_json", b'{"sensor_id": '),
        "bad_encoding": (f"{topic}/bad_encoding", b"\xff\xfe\xfd"),
        "non_finite": (f"{topic}/non_finite", b'{"value": NaN}'),
        "wrong_type": (f"{topic}/wrong_type", orjson.dumps(r(value="55"))),
        "missing_field": (f"{topic}/missing_field", orjson.dumps(missing)),
        "out_of_range": (f"{topic}/out_of_range", orjson.dumps(r(sensor_type="noise", unit="dB(A)", value=500.0))),
        "time_out_of_range": (f"{topic}/time_out_of_range", orjson.dumps(r(ts="2031-01-01T00:00:00+00:00"))),
        "oversized": (f"{topic}/oversized", orjson.dumps(r(pad="x" * 300_000))),
        "unknown_device": (
            f"city/senml/{run}/unknown_device",
            orjson.dumps([{"bn": f"urn:dev:{run}:", "n": "pm25", "u": "ug/m3", "v": 12}]),
        ),
    }


async def poison(c: CaseRun) -> None:
    """Every class of bad input, each followed by a good reading: the bad ones
    go to the DLQ with their reason, the good ones all arrive. A reading far
    behind its sensor's latest (valid, so stored) is dead-lettered by the
    worker as late."""
    run, load = c.run, c.load
    for i, (cls, (topic, payload)) in enumerate(poison_payloads(run).items()):
        load.publish(topic, payload, [])
        ok = reading(f"{run}-p{i}", f"{run}-s{i}", 15.0)
        load.publish(f"city/sensors/{run}/ok", orjson.dumps(ok), [ok["event_id"]])
        c.notes.setdefault("poison", []).append(cls)
    now = datetime.now(UTC)
    fresh = reading(f"{run}-late0", f"{run}-late", 15.0, now)
    late = reading(f"{run}-late1", f"{run}-late", 15.0, now - timedelta(hours=1))
    load.publish(f"city/sensors/{run}/late", orjson.dumps(fresh), [fresh["event_id"]])
    load.publish(f"city/sensors/{run}/late", orjson.dumps(late), [late["event_id"]])
    c.mark_end()


async def check_poison(c: CaseRun) -> None:
    expected = {cls: f"mqtt:{topic}" for cls, (topic, _) in poison_payloads(c.run).items()}
    deadline = time.monotonic() + 60
    found: dict[str, str] = {}
    while time.monotonic() < deadline:
        found = {}
        for source, reason, stage in await c.db.dlq(c.topics.dlq):
            cls = next((k for k, s in expected.items() if s == source), None)
            if cls is not None:
                found[cls] = reason
            elif reason == "late" and stage == "detect":
                found["late"] = reason
        if len(found) == len(expected) + 1:
            break
        await asyncio.sleep(1)
    wanted = {**{k: k for k in expected}, "late": "late"}
    c.notes["dlq_reasons"] = found
    c.checks["dlq_every_class_with_reason"] = found == wanted


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def check_flood(c: CaseRun) -> None:
    """Drops, if any, by reason: connector rejections, MQTT broker drops, DLQ."""
    drops: dict[str, int] = {}
    try:
        text = await asyncio.to_thread(_get, f"http://127.0.0.1:{c.metrics_port}/metrics")
        for line in text.splitlines():
            if line.startswith("citybrain_connector_rejected_total{"):
                reason = line.split('reason="', 1)[1].split('"', 1)[0]
                drops[f"connector:{reason}"] = int(float(line.rsplit(" ", 1)[1]))
    except OSError as exc:
        c.notes["metrics_error"] = str(exc)
    log = c.stack.mosquitto_log()
    if log.exists():
        n = sum("dropped" in line.lower() for line in log.read_text(errors="replace").splitlines())
        if n:
            drops["mosquitto:dropped_log_lines"] = n
    for _, reason, stage in await c.db.dlq(c.topics.dlq):
        drops[f"dlq:{stage}:{reason}"] = drops.get(f"dlq:{stage}:{reason}", 0) + 1
    c.notes["drops"] = drops


async def check_hot_alert(c: CaseRun) -> None:
    n = await c.db.hot_alert_ids(c.load.hot_sensor)
    c.notes["hot_alert_ids"] = n
    c.checks["one_alert_id_for_hot_sensor"] = n == 1


@dataclass(frozen=True)
class Case:
    name: str
    inject: Callable[[CaseRun], Awaitable[None]]
    check: Callable[[CaseRun], Awaitable[None]] | None = None
    workers: int = 1
    quick: bool = False


CASES = [
    Case("connector_kill9", connector_kill9, quick=True),
    Case("kafka_sigkill", kafka_sigkill),
    Case("kafka_sigterm", kafka_sigterm),
    Case("worker_kill9", worker_kill9, check_hot_alert, quick=True),
    Case("worker_pair_kill", worker_pair_kill, workers=2),
    Case("postgres_immediate", postgres_immediate, quick=True),
    Case("kafka_unreachable", kafka_unreachable),
    Case("flood_10x", flood_10x, check_flood),
    Case("poison", poison, check_poison, quick=True),
]
BY_NAME = {c.name: c for c in CASES}


# ---------------------------------------------------------------- one case
def wait_subscribed(sup: Supervisor, timeout: float = 60) -> None:
    """Messages published before the connector's first subscription have no
    session to be queued in; it logs once the broker confirmed it."""
    sup.wait_for_log("connector", CONNECTOR_SUBSCRIBED, timeout)


async def wait_for(pred: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.25) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await pred():
            return time.monotonic() - t0
        await asyncio.sleep(every)
    return None


async def run_case(case: Case, cfg: Settings, stack: PrivateStack, services: dict[str, str]) -> dict[str, Any]:
    run = "f" + uuid.uuid4().hex[:8]
    prefix = f"{run}."
    metrics_port = free_port(30000, 32000)
    log_dir = stack.run_dir / "logs" / case.name
    env = {**stack.env, **services}
    env.update(
        CONNECTOR_TOPIC_PREFIX=prefix,
        CONNECTOR_CLIENT_ID=f"faults-connector-{run}",
        CONNECTOR_SUBSCRIPTIONS=json.dumps(
            [f"city/sensors/batch/{run}", f"city/sensors/{run}/#", f"city/senml/{run}/#"]
        ),
        CONNECTOR_METRICS_PORT=str(metrics_port),
        WORKER_TOPIC_PREFIX=prefix,
        WORKER_APP_ID=f"faults-worker-{run}",
        WRITER_TOPIC_PREFIX=prefix,
        WRITER_GROUP_ID=f"faults-writer-{run}",
    )
    topics = Topics(prefix)
    sup = Supervisor(log_dir, base_env=env)
    sup.start("connector", ["connector", "--log-level", "info"])
    for w in range(case.workers):
        name = "worker" if w == 0 else f"worker{w + 1}"
        sup.start(name, ["worker", "--log-level", "info"], env={"WORKER_DATA_DIR": str(log_dir / f"faust-{name}")})
    sup.start("writer", ["writer"])
    db, lag = Db(services["DATABASE_URL"]), LagProbe(services["KAFKA_BOOTSTRAP_SERVERS"])
    result: dict[str, Any] = {"case": case.name, "run": run}
    load: Load | None = None
    c: CaseRun | None = None
    try:
        await asyncio.to_thread(wait_subscribed, sup)
        load = Load(services["MQTT_PUBLISH_URL"], run, rate=cfg.rate).start()
        c = CaseRun(case.name, cfg, stack, sup, env, topics, run, load, db, lag, metrics_port)
        # ready: the hot sensor's alert is stored (connector, worker and writer all work)
        ready = await wait_for(lambda: db.has_alert(load.hot_sensor), 120, every=0.5)
        if ready is None:
            c.watch()
            raise ServiceError(f"pipeline not ready within 120 s (exited: {c.died or 'none'})")
        await asyncio.sleep(cfg.before_s)
        c.watch()
        t_fault = time.monotonic()
        await case.inject(c)
        c.notes["fault_s"] = round(c.t_end_mono - t_fault, 1)
        w_tps, s_tps = readings_tps(topics), writer_tps(topics)
        groups = [(env["WORKER_APP_ID"], w_tps), (env["WRITER_GROUP_ID"], s_tps)]

        last: dict[str, Any] = {}

        async def recovered() -> bool:
            c.watch()
            last["fresh"] = await c.db.fresh(c.run, c.t_end_wall)
            if last["fresh"] and "rows_after_s" not in c.notes:
                c.notes["rows_after_s"] = round(time.monotonic() - c.t_end_mono, 1)  # new rows, before lag 0
            last["lag"] = [await lag.lag(group, tps) for group, tps in groups]
            for who, n in zip(("worker_lag0_s", "writer_lag0_s"), last["lag"], strict=True):
                if n == 0 and who not in c.notes:  # which consumer group took the time
                    c.notes[who] = round(time.monotonic() - c.t_end_mono, 1)
            return bool(last["fresh"]) and last["lag"] == [0, 0]

        waited = await wait_for(recovered, cfg.recovery_timeout_s, every=0.5)
        recovery = None if waited is None else round(time.monotonic() - c.t_end_mono, 1)
        if recovery is None:
            c.notes["not_recovered"] = {"rows_fresh": last.get("fresh"), "lag_worker_writer": last.get("lag"),
                                        "lag_by_partition": {g: lag.detail.get(g) for g, _ in groups}}
            _dump_worker_stacks(c)
        await asyncio.sleep(cfg.after_s)
        load.stop()
        unacked = await asyncio.to_thread(load.wait_acks, 60)
        stored, rows = await _drain(c)

        async def final_lag_zero() -> bool:
            c.watch()
            return all([await lag.lag(g, t) == 0 for g, t in groups])

        final_zero = await wait_for(final_lag_zero, 60, every=0.5) is not None
        if case.check is not None:
            await case.check(c)
        alert_dups = await db.alert_duplicates(run)
        c.watch()
        acked = load.acked
        lost = acked - stored
        result.update(
            published=load.published,
            acked=len(acked),
            unacked_msgs=unacked,
            stored=len(stored & acked),
            lost=len(lost),
            db_duplicates=rows - len(stored),
            alert_duplicates=sum(n - 1 for _, _, n in alert_dups),
            recovery_s=recovery,
            final_lag_zero=final_zero,
            died=c.died,
            checks=c.checks,
            notes=c.notes,
        )
        if lost:
            result["lost_sample"] = sorted(lost)[:5]
        if alert_dups:
            result["alert_duplicate_sample"] = alert_dups[:3]
    except (CityBrainError, OSError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if load is not None:
            load.stop()
            load.close()
        await lag.close()
        await db.close()
        await asyncio.to_thread(sup.stop_all)
    result["passed"] = passed(result, cfg.max_recovery_s)
    return result


async def _drain(c: CaseRun, idle_s: float = 30, cap_s: float = 240) -> tuple[set[str], int]:
    """Wait until every acknowledged reading is stored, or no progress for `idle_s`."""
    t0 = last_change = time.monotonic()
    stored, rows = await c.db.stored(c.run)
    while not c.load.acked <= stored and time.monotonic() - last_change < idle_s and time.monotonic() - t0 < cap_s:
        await asyncio.sleep(1)
        c.watch()
        new, rows = await c.db.stored(c.run)
        if len(new) != len(stored):
            last_change = time.monotonic()
        stored = new
    return stored, rows


def passed(r: dict[str, Any], max_recovery_s: float) -> bool:
    return (
        "error" not in r
        and r["acked"] > 0
        and r["lost"] == 0
        and r["db_duplicates"] == 0
        and r["alert_duplicates"] == 0
        and r["recovery_s"] is not None
        and r["recovery_s"] <= max_recovery_s
        and r["final_lag_zero"]
        and not r["died"]
        and all(r["checks"].values())
    )


# ---------------------------------------------------------------- the matrix
def print_row(r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"{r['case']:<20} ERROR {r['error']}", flush=True)
        return
    rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}"
    extra = {k: v for k, v in r["notes"].items() if k not in ("poison",)}
    if r["died"]:
        extra["died"] = r["died"]
    if not r["final_lag_zero"]:
        extra["final_lag_zero"] = False
    failed = [k for k, ok in r["checks"].items() if not ok]
    if failed:
        extra["failed_checks"] = failed
    print(
        f"{r['case']:<20} {r['acked']:>7} {r['stored']:>7} {r['lost']:>5} {r['db_duplicates']:>4} "
        f"{r['alert_duplicates']:>6} {rec:>9}  {'pass' if r['passed'] else 'FAIL':<4}  "
        f"{json.dumps(extra, ensure_ascii=False)}",
        flush=True,
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    cfg = Settings(
        rate=args.rate, outage_s=args.outage_s, unreachable_s=args.unreachable_s, flood_s=args.flood_s,
        before_s=args.before_s, after_s=args.after_s, recovery_timeout_s=args.recovery_timeout_s,
        max_recovery_s=args.max_recovery_s,
    )  # fmt: skip
    stack = PrivateStack(Path(args.run_dir) if args.run_dir else None)
    print(f"private stack in {stack.run_dir}: kafka :{stack.kafka_port}, mqtt :{stack.mqtt_port}, "
          f"postgres :{stack.pg_port}", flush=True)
    results: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        await asyncio.to_thread(stack.up)
        services = stack.settings()
        await asyncio.to_thread(_migrate, {**stack.env, **services})
        print(f"{'case':<20} {'acked':>7} {'stored':>7} {'lost':>5} {'dups':>4} {'a-dups':>6} "
              f"{'recovery':>9}  result  notes", flush=True)
        for case in args.cases:
            r = await run_case(case, cfg, stack, services)
            results.append(r)
            print_row(r)
    finally:
        try:
            await asyncio.to_thread(stack.down)
        except ServiceError as exc:
            print(f"bench.faults: {exc}", file=sys.stderr)
    ok = all(r["passed"] for r in results)
    if ok and not args.keep:
        shutil.rmtree(stack.run_dir, ignore_errors=True)
    else:
        print(f"logs kept in {stack.run_dir}/logs", flush=True)
    recoveries = [r["recovery_s"] for r in results if r.get("recovery_s") is not None]
    return {
        "bench": "faults",
        "cases": len(results),
        "lost": sum(r.get("lost", 0) for r in results),
        "db_duplicates": sum(r.get("db_duplicates", 0) + r.get("alert_duplicates", 0) for r in results),
        "max_recovery_s": max(recoveries) if recoveries else None,
        "failed_cases": [r["case"] for r in results if not r["passed"]],
        "results": results,
        "conditions": conditions() | {
            "wall_s": round(time.monotonic() - t0, 1), "rate_per_s": cfg.rate, "outage_s": cfg.outage_s,
            "unreachable_s": cfg.unreachable_s, "flood_s": cfg.flood_s, "quick": args.quick,
            "max_recovery_s_to_pass": cfg.max_recovery_s,
        },
    }  # fmt: skip


def _migrate(env: dict[str, str]) -> None:
    import subprocess

    out = subprocess.run([sys.executable, "-m", "citybrain.cli", "db", "migrate"], env=env, capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        raise ServiceError(f"db migrate failed: {out.stderr.strip()[-300:]}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m bench.faults", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a short subset with small volumes and short outages (the test suite runs it)")
    p.add_argument("--cases", help=f"comma-separated subset of: {','.join(BY_NAME)}")
    p.add_argument("--outage-s", type=float, default=None, help="seconds a killed/stopped service stays down")
    p.add_argument("--unreachable-s", type=float, default=60.0, help="seconds Kafka is unreachable (frozen)")
    p.add_argument("--flood-s", type=float, default=15.0, help="seconds of the 10x flood")
    p.add_argument("--rate", type=float, default=None, help="normal offered readings/s")
    p.add_argument("--before-s", type=float, default=None, help="seconds of load before the fault")
    p.add_argument("--after-s", type=float, default=5.0, help="seconds of load after recovery")
    p.add_argument("--max-recovery-s", type=float, default=PASS_RECOVERY_S,
                   help="a case passes only if it recovers within this many seconds")
    p.add_argument("--recovery-timeout-s", type=float, default=120.0, help="give up waiting for recovery after this")
    p.add_argument("--run-dir", help="directory for the private stack (default: a new temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the run directory (logs) even when every case passed")
    args = p.parse_args(argv)
    if args.cases:
        names = [n.strip() for n in args.cases.split(",") if n.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown or not names:
            p.error(f"--cases: unknown case {','.join(unknown) or '(none given)'}; choose from {','.join(BY_NAME)}")
        args.cases = [BY_NAME[n] for n in names]
    else:
        args.cases = [c for c in CASES if c.quick] if args.quick else list(CASES)
    for name in ("outage_s", "unreachable_s", "flood_s", "rate", "before_s", "after_s", "recovery_timeout_s",
                 "max_recovery_s"):
        v = getattr(args, name)
        if v is not None and not v > 0:
            p.error(f"--{name.replace('_', '-')} must be a positive number, got {v}")
    quick = args.quick
    args.outage_s = args.outage_s or (3.0 if quick else 10.0)
    args.rate = args.rate or (30.0 if quick else 50.0)
    args.before_s = args.before_s or (2.0 if quick else 5.0)
    if quick:
        args.after_s = min(args.after_s, 2.0)
    return args


def _term(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not interrupt the clean-up
    raise KeyboardInterrupt  # so the private stack is stopped by the finally blocks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _term)
    try:
        result = asyncio.run(main_async(args))
    except (CityBrainError, OSError) as exc:
        print(f"bench.faults: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False, default=str))
    return 1 if result["failed_cases"] else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
