"""End-to-end benchmark: MQTT publisher -> connector -> Kafka -> Faust worker
-> department topic, and -> writer -> PostgreSQL, on the real local stack.

    python -m bench.e2e [--rates 2000,5000,10000,20000] [--duration 20]
                        [--sensors 10000] [--batch 50] [--quick] [--cold-departments]
                        [--one-worker]

For each offered rate (stepped upwards) it publishes sequenced readings at a
fixed rate with QoS 1; the oracle is what Mosquitto acknowledged. It reports
readings/s actually stored, readings lost (acknowledged but not in the
database, by event_id), duplicates in the database, p50/p95/p99 latency from
publish to alert on the department topic (from readings built to trigger an
alert, which carry their publish time), and CPU seconds and peak RSS per
process. The highest step with 0 lost, stored >= 95 % of offered and p99
alert latency < 1 s is the maximum sustained rate. Last line: one JSON object.

The departments' topics are made before the run, as `citybrain demo` makes
them before it starts the worker (`--cold-departments`: the worker makes
each on its department's first alert, inside the measured step, and the
alerts behind that one wait).

The worker runs as its two halves, as `citybrain demo` runs it: `worker`
(WORKER_ROLE=detect) and `alerts` (WORKER_ROLE=alerts: lifecycle, fan-out,
hotline, incidents); `--one-worker` runs every agent in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaConsumer
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import ProcStats, conditions, drop_topics, percentile, service_pids
from citybrain.errors import ServiceError
from citybrain.supervisor import WORKER_READY, Supervisor
from citybrain.topics import Topics
from connectors.mqtt_kafka import parse_mqtt_url
from schemas import CATALOGUE, SensorType

ROOT = Path(__file__).resolve().parent.parent
DISTRICTS = [("朝阳区", 39.92, 116.44), ("海淀区", 39.96, 116.30), ("丰台区", 39.86, 116.29), ("东城区", 39.93, 116.42)]
TYPES = [t for t in SensorType]


@dataclass
class Publisher:
    """Publishes batched readings at an offered rate; records what the broker acked."""

    url: str
    run: str
    sensors: int
    batch: int
    acked_ids: list[str] = field(default_factory=list)
    published: int = 0
    _pending: dict[int, list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _early: dict[int, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        host, port, user, password, _ = parse_mqtt_url(self.url)
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{self.run}", protocol=mqtt.MQTTv311
        )
        if user:
            self.client.username_pw_set(user, password)
        self.client.max_inflight_messages_set(2000)
        self.client.on_publish = self._on_publish
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        self.seq = 0
        self.trig = 0

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._lock:
            ids = self._pending.pop(mid, None)
            if ids is None:  # acked before publish() returned and we recorded it
                self._early[mid] = not rc.is_failure
                return
        if not rc.is_failure:
            self.acked_ids.extend(ids)

    def _reading(self, sensor: int, value_override: float | None = None, trigger: bool = False) -> dict[str, Any]:
        st = SensorType.PM25 if trigger else TYPES[sensor % len(TYPES)]
        spec = CATALOGUE[st]
        name, lat, lon = DISTRICTS[sensor % len(DISTRICTS)]
        now = datetime.now(UTC)
        self.seq += 1
        sid = f"bench-{self.run}-trig-{self.trig}" if trigger else f"bench-{self.run}-s{sensor}"
        value = value_override if value_override is not None else spec.low + (spec.high - spec.low) * 0.02
        d: dict[str, Any] = {
            "event_id": f"b-{self.run}-{self.seq}",
            "sensor_id": sid,
            "sensor_type": st.value,
            "value": value,
            "unit": spec.unit,
            "ts": now.isoformat(),
            "location": {"district": name, "lat": lat, "lon": lon},
        }
        if trigger:
            d["sent_at"] = now.isoformat()
        return d

    def publish_batch(self, n: int, trigger: bool) -> None:
        items = [self._reading((self.seq + i) % self.sensors) for i in range(n)]
        if trigger:
            self.trig += 1
            items.append(self._reading(0, value_override=400.0, trigger=True))
        payload = orjson.dumps({"readings": items})
        ids = [d["event_id"] for d in items]
        # never call paho while holding our lock: paho may hold its own mutex
        # while it calls on_publish, which takes ours
        info = self.client.publish(f"city/sensors/batch/bench-{self.run}", payload, qos=1)
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = ids
        if early:
            self.acked_ids.extend(ids)
        self.published += len(ids)

    def wait_acks(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def alert_latencies(bootstrap: str, topic: str, run: str, sink: list[float], stop: asyncio.Event,
                          stamps: dict[str, int] | None = None) -> None:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None, metadata_max_age_ms=1000
    )
    await consumer.start()
    prefix = f"bench-{run}-trig-"
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            now = time.time()
            for msgs in batches.values():
                for m in msgs:
                    a = orjson.loads(m.value)
                    if a.get("subject", "").startswith(prefix) and a.get("revision") == 1 and a.get("trigger_sent_at"):
                        sent = datetime.fromisoformat(a["trigger_sent_at"]).timestamp()
                        sink.append((now - sent) * 1000)
                        if stamps is not None:
                            stamps[a["alert_id"]] = m.timestamp
    finally:
        await consumer.stop()


async def detection_stamps(bootstrap: str, topic: str, run: str, sink: dict[str, int], stop: asyncio.Event) -> None:
    """Kafka timestamps of each trigger alert's first detection revision (the
    worker's producer stamps both topics: the difference is the lifecycle and
    routing stage, detection -> department topic)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None, metadata_max_age_ms=1000
    )
    await consumer.start()
    prefix = f"bench-{run}-trig-"
    try:
        while not stop.is_set():
            for msgs in (await consumer.getmany(timeout_ms=200)).values():
                for m in msgs:
                    a = orjson.loads(m.value)
                    if a.get("subject", "").startswith(prefix) and a.get("revision") == 1:
                        sink.setdefault(a["alert_id"], m.timestamp)
    finally:
        await consumer.stop()


async def count_stored(db_url: str, run: str, since: datetime) -> tuple[int, int]:
    """This step's readings in the database. `since`: when its publishing began (the
    readings' event time is their publish time): without it every poll scanned every
    reading earlier runs left, seconds of a core inside the measured drain."""
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM readings WHERE ts >= $2 AND event_id LIKE $1",
            f"b-{run}-%", since,
        )
        return int(row["n"]), int(row["d"])
    finally:
        await conn.close()


async def run_step(
    rate: int, duration: float, args: argparse.Namespace, env: dict[str, str], pids: dict[str, int]
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    topics = Topics(prefix=env.get("WORKER_TOPIC_PREFIX", ""))
    latencies: list[float] = []
    dept_ts: dict[str, int] = {}
    detected_ts: dict[str, int] = {}
    stop = asyncio.Event()
    consumer = asyncio.create_task(
        alert_latencies(env["KAFKA_BOOTSTRAP_SERVERS"], topics.dept("eeb"), run, latencies, stop, dept_ts)
    )
    detected = asyncio.create_task(
        detection_stamps(env["KAFKA_BOOTSTRAP_SERVERS"], topics.alerts_detected, run, detected_ts, stop)
    )
    await asyncio.sleep(1.5)  # consumer assigned before the first trigger
    pub = Publisher(env["MQTT_PUBLISH_URL"], run, args.sensors, args.batch)
    stats = ProcStats(pids)
    since = datetime.now(UTC) - timedelta(seconds=5)  # margin for clock steps; still prunes earlier runs
    t0 = time.monotonic()
    msgs_per_s = rate / args.batch
    sent_msgs = 0
    last_trigger = 0.0
    while (elapsed := time.monotonic() - t0) < duration:
        due = int(elapsed * msgs_per_s) - sent_msgs
        for _ in range(max(0, due)):
            trigger = elapsed - last_trigger >= args.trigger_every
            if trigger:
                last_trigger = elapsed
            pub.publish_batch(args.batch, trigger)
            sent_msgs += 1
        stats.sample()
        await asyncio.sleep(0.005)
    publish_s = time.monotonic() - t0
    await asyncio.to_thread(pub.wait_acks, 60)
    acked = set(pub.acked_ids)
    # drain: wait until every acknowledged reading is stored, or no progress for 20 s
    stored = distinct = 0
    last_change = time.monotonic()
    while True:
        n, d = await count_stored(env["DATABASE_URL"], run, since)
        stats.sample()
        if d != distinct:
            last_change = time.monotonic()
        stored, distinct = n, d
        if distinct >= len(acked) or time.monotonic() - last_change > 20:
            break
        await asyncio.sleep(0.5)
    drain_s = time.monotonic() - t0
    await asyncio.sleep(1.0)
    stop.set()
    await consumer
    await detected
    pub.close()
    routing_ms = [float(dept_ts[k] - detected_ts[k]) for k in dept_ts if k in detected_ts]
    return {
        "offered_per_s": rate,
        "published": pub.published,
        "acked": len(acked),
        "stored": distinct,
        "lost": len(acked) - distinct,
        "db_duplicates": stored - distinct,
        "stored_per_s": round(distinct / max(drain_s, publish_s), 1),
        "publish_s": round(publish_s, 2),
        "drain_s": round(drain_s, 2),
        "alerts": len(latencies),
        "p50_alert_ms": _r(percentile(latencies, 50)),
        "p95_alert_ms": _r(percentile(latencies, 95)),
        "p99_alert_ms": _r(percentile(latencies, 99)),
        "p50_detect_to_dept_ms": _r(percentile(routing_ms, 50)),
        "p99_detect_to_dept_ms": _r(percentile(routing_ms, 99)),
        "processes": stats.report(),
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def passed(step: dict[str, Any]) -> bool:
    return (
        step["lost"] == 0
        and step["stored_per_s"] >= 0.95 * step["offered_per_s"]
        and step["p99_alert_ms"] is not None
        and step["p99_alert_ms"] < 1000
    )


async def _create_department_topics(bootstrap: str, topics: Topics) -> None:
    """As `citybrain demo` (a deployment) does before it starts the worker."""
    from citybrain.kafka_admin import department_topics, ensure_topics
    from streams.routing import load_registry

    wanted = department_topics(topics, load_registry().departments, 4)
    t0 = time.monotonic()
    await ensure_topics(bootstrap, wanted, timeout_s=300)
    print(f"bench.e2e: {len(wanted)} department topics created in {time.monotonic() - t0:.1f} s", flush=True)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "MQTT_URL", "MQTT_PUBLISH_URL", "DATABASE_URL"):
        if not env.get(var):
            raise SystemExit(f"bench.e2e: {var} is not set; run `make stack-up` and source .run/stack.env")
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench{tag}."
    env.update(
        CONNECTOR_TOPIC_PREFIX=prefix,
        WORKER_TOPIC_PREFIX=prefix,
        WRITER_TOPIC_PREFIX=prefix,
        WORKER_APP_ID=f"bench-{tag}",
        WRITER_GROUP_ID=f"bench-writer-{tag}",
        CONNECTOR_CLIENT_ID=f"bench-connector-{tag}",
        CONNECTOR_PII_KEY=env.get("CONNECTOR_PII_KEY", "bench"),
        WORKER_DATA_DIR=str(ROOT / ".run" / "bench" / tag),
    )
    sup = Supervisor(ROOT / ".run" / "bench" / tag, base_env=env)
    await asyncio.to_thread(_migrate, env)
    if not (args.cold_departments or args.quick):
        await _create_department_topics(env["KAFKA_BOOTSTRAP_SERVERS"], Topics(prefix=prefix))
    sup.start("connector", ["connector"])
    halves = {"worker": "all"} if args.one_worker else {"worker": "detect", "alerts": "alerts"}
    for name, role in halves.items():
        sup.start(name, ["worker", "--log-level", "info"], env={"WORKER_ROLE": role})
    sup.start("writer", ["writer"])
    await asyncio.sleep(args.warmup)
    for name in halves:
        await _worker_ready(sup, name)
    sup.check_alive()
    pids = {n: c.pid for n, c in sup.children.items()} | service_pids()
    steps = []
    try:
        for rate in args.rates:
            step = await run_step(rate, args.duration, args, env, pids)
            steps.append(step)
            _print_step(step)
            sup.check_alive()
            if not passed(step):
                break
    finally:
        sup.stop_all()
        await drop_topics(env["KAFKA_BOOTSTRAP_SERVERS"], prefix, f"bench-{tag}")
    good = [s for s in steps if passed(s)]
    best = max(good, key=lambda s: s["stored_per_s"]) if good else None
    at_10k = next((s for s in steps if s["offered_per_s"] == 10000), None)
    return {
        "bench": "e2e",
        "max_sustained_readings_per_s": best["stored_per_s"] if best else 0,
        "max_sustained_offered_per_s": best["offered_per_s"] if best else 0,
        "lost": sum(s["lost"] for s in steps),
        "db_duplicates": sum(s["db_duplicates"] for s in steps),
        "p99_alert_ms": best["p99_alert_ms"] if best else None,
        "p99_alert_ms_at_10k": at_10k["p99_alert_ms"] if at_10k else None,
        # lifecycle + routing + fan-out: first detection revision -> department topic
        "p99_detect_to_dept_ms": best["p99_detect_to_dept_ms"] if best else None,
        "p99_detect_to_dept_ms_at_10k": at_10k["p99_detect_to_dept_ms"] if at_10k else None,
        "steps": steps,
        "conditions": conditions() | {"duration_s": args.duration, "sensors": args.sensors, "batch": args.batch,
                                      "one_worker": args.one_worker,
                                      "department_topics_made_before": not (args.cold_departments or args.quick)},
    }


async def _worker_ready(sup: Supervisor, name: str, timeout: float = 180) -> None:
    """A loaded machine may take longer than the warm-up to start the worker
    (one changelog table per agent module); readings sent before it is ready
    wait in Kafka and their alerts would land after the step's window."""
    try:
        await asyncio.to_thread(sup.wait_for_log, name, WORKER_READY, timeout)
    except ServiceError as exc:
        raise SystemExit(f"bench.e2e: {exc}") from None


def _migrate(env: dict[str, str]) -> None:
    import subprocess

    subprocess.run([sys.executable, "-m", "citybrain.cli", "db", "migrate"], env=env, check=True)


def _print_step(s: dict[str, Any]) -> None:
    print(
        f"offered {s['offered_per_s']:>7}/s  stored {s['stored_per_s']:>9.1f}/s  lost {s['lost']:>5}  "
        f"dup {s['db_duplicates']:>4}  alerts {s['alerts']:>4}  p50 {s['p50_alert_ms']} ms  "
        f"p95 {s['p95_alert_ms']} ms  p99 {s['p99_alert_ms']} ms  "
        f"detect->dept p50 {s['p50_detect_to_dept_ms']} ms p99 {s['p99_detect_to_dept_ms']} ms",
        flush=True,
    )
    for name, p in s["processes"].items():
        print(f"    {name:<10} cpu {p['cpu_s']:>7.2f} s  peak rss {p['peak_rss_mb']:>7.1f} MB", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="2000,5000,10000,15000,20000,30000", help="offered readings/s, stepped")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per step")
    p.add_argument("--sensors", type=int, default=10000)
    p.add_argument("--batch", type=int, default=50, help="readings per MQTT message")
    p.add_argument("--trigger-every", type=float, default=0.1, help="seconds between alert-triggering readings")
    p.add_argument("--warmup", type=float, default=8.0, help="seconds for the pipeline to start")
    p.add_argument("--quick", action="store_true", help="one short low-rate step (used by the test suite)")
    p.add_argument("--one-worker", action="store_true",
                   help="every agent in one worker process (default: the detect and alerts halves apart)")
    p.add_argument("--cold-departments", action="store_true",
                   help="do not create the departments' topics before the run as `citybrain demo` does: the worker"
                        " then creates each on the department's first alert, inside the measured step")
    args = p.parse_args(argv)
    try:
        args.rates = [int(r) for r in args.rates.split(",") if r]
    except ValueError:
        p.error(f"--rates takes comma-separated integers, got {args.rates!r}")
    if args.quick:
        args.rates, args.duration, args.sensors = [500], 4.0, 200
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = asyncio.run(main_async(args))
    print(json.dumps(result, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
