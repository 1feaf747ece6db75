"""Ingestion benchmark: publishers on loopback -> Mosquitto -> connector ->
Kafka, counting unique event_ids consumed back from Kafka.

    python -m bench.ingest [--mode single|batch|both] [--duration 15]
                           [--single-rates 2000,5000,10000,15000]
                           [--batch-rates 10000,20000,30000,40000] [--batch 100]

Reports per offered rate: readings/s that reached Kafka, lost (acknowledged
by Mosquitto, absent from Kafka), p50/p99 publish -> Kafka latency (reading's
sent_at to the moment the consumer holds it), connector CPU and peak RSS.
The highest passing step (0 lost, >= 95 % of offered) is the sustained rate.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaConsumer
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import ROOT, ProcStats, conditions, percentile, service_pids
from citybrain.kafka_admin import ensure_topics, pipeline_topics
from citybrain.supervisor import Supervisor
from citybrain.topics import Topics
from connectors.mqtt_kafka import parse_mqtt_url


class RatePublisher:
    """One paho client publishing at a fixed rate from its own thread."""

    def __init__(self, url: str, run: str, batch: int, rate: int, duration: float) -> None:
        host, port, user, password, _ = parse_mqtt_url(url)
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"ingest-pub-{run}", protocol=mqtt.MQTTv311
        )
        if user:
            self.client.username_pw_set(user, password)
        self.client.max_inflight_messages_set(5000)
        self.client.max_queued_messages_set(0)
        self.client.on_publish = self._on_publish
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        self.run, self.batch, self.rate, self.duration = run, batch, rate, duration
        self.pending: dict[int, list[str]] = {}
        self.early: dict[int, bool] = {}
        self.acked: list[str] = []
        self.lock = threading.Lock()
        self.published = 0
        self.elapsed = 0.0

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self.lock:
            ids = self.pending.pop(mid, None)
            if ids is None:  # acked before publish() returned and we recorded it
                self.early[mid] = not rc.is_failure
                return
        if not rc.is_failure:
            self.acked.extend(ids)

    def _reading(self, seq: int, now: str) -> dict[str, Any]:
        return {
            "event_id": f"i-{self.run}-{seq}",
            "sensor_id": f"ingest-{self.run}-{seq % 5000}",
            "sensor_type": "noise",
            "value": 50.0 + seq % 20,
            "unit": "dB(A)",
            "ts": now,
            "sent_at": now,
            "location": {"district": "朝阳区", "lat": 39.92, "lon": 116.44},
        }

    def run_loop(self) -> None:
        msgs_per_s = self.rate / self.batch
        t0 = time.monotonic()
        sent = 0
        seq = 0
        while (elapsed := time.monotonic() - t0) < self.duration:
            due = int(elapsed * msgs_per_s) - sent
            if due <= 0:
                time.sleep(0.001)
                continue
            now = datetime.now(UTC).isoformat()
            for _ in range(due):
                if self.batch == 1:
                    d = self._reading(seq, now)
                    payload = orjson.dumps(d)
                    topic = f"city/sensors/{d['sensor_id']}"
                    ids = [d["event_id"]]
                else:
                    items = [self._reading(seq + k, now) for k in range(self.batch)]
                    payload = orjson.dumps({"readings": items})
                    topic = f"city/sensors/batch/{self.run}"
                    ids = [d["event_id"] for d in items]
                seq += len(ids)
                # never call paho while holding our lock: paho may hold its own
                # mutex while it calls on_publish, which takes ours
                info = self.client.publish(topic, payload, qos=1)
                with self.lock:
                    early = self.early.pop(info.mid, None)
                    if early is None:
                        self.pending[info.mid] = ids
                if early:
                    self.acked.extend(ids)
                self.published += len(ids)
                sent += 1
        self.elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 60
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()


async def consume(bootstrap: str, topic: str, run: str, seen: dict[str, float], stop: asyncio.Event) -> list[float]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    lat: list[float] = []
    prefix = f'"event_id":"i-{run}-'.encode()
    try:
        while not stop.is_set():
            for msgs in (await consumer.getmany(timeout_ms=200, max_records=10000)).values():
                now = time.time()
                for m in msgs:
                    if prefix not in m.value:
                        continue
                    d = orjson.loads(m.value)
                    if d["event_id"] not in seen:
                        seen[d["event_id"]] = now
                        lat.append((now - datetime.fromisoformat(d["sent_at"]).timestamp()) * 1000)
    finally:
        await consumer.stop()
    return lat


async def step(rate: int, batch: int, duration: float, env: dict[str, str], topics: Topics, pids: dict[str, int]) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    seen: dict[str, float] = {}
    stop = asyncio.Event()
    consumer = asyncio.create_task(consume(env["KAFKA_BOOTSTRAP_SERVERS"], topics.readings, run, seen, stop))
    await asyncio.sleep(1.0)
    stats = ProcStats(pids)
    pub = RatePublisher(env["MQTT_PUBLISH_URL"], run, batch, rate, duration)
    thread = threading.Thread(target=pub.run_loop)
    t0_wall = time.time()
    thread.start()
    while thread.is_alive():
        stats.sample()
        await asyncio.sleep(0.5)
    acked = set(pub.acked)
    last = time.monotonic()
    n = 0
    while len(seen.keys() & acked) < len(acked) and time.monotonic() - last < 15:
        if len(seen) != n:
            n, last = len(seen), time.monotonic()
        stats.sample()
        await asyncio.sleep(0.25)
    done = max(seen.values()) if seen else time.time()
    took = max(pub.elapsed, done - t0_wall)
    stop.set()
    lat = await consumer
    got = len(seen.keys() & acked)
    return {
        "mode": "single" if batch == 1 else f"batch{batch}",
        "offered_per_s": rate,
        "published": pub.published,
        "publish_rate": round(pub.published / max(pub.elapsed, 1e-9), 1),
        "acked": len(acked),
        "in_kafka": got,
        "lost": len(acked) - got,
        "kafka_per_s": round(got / max(took, 1e-9), 1),
        "p50_ms": _r(percentile(lat, 50)),
        "p99_ms": _r(percentile(lat, 99)),
        "processes": stats.report(),
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def passed(s: dict[str, Any]) -> bool:
    return s["lost"] == 0 and s["kafka_per_s"] >= 0.95 * s["offered_per_s"] and s["publish_rate"] >= 0.95 * s["offered_per_s"]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "MQTT_URL", "MQTT_PUBLISH_URL"):
        if not env.get(var):
            raise SystemExit(f"bench.ingest: {var} is not set; run `make stack-up` and source .run/stack.env")
    tag = uuid.uuid4().hex[:6]
    topics = Topics(prefix=f"ingest{tag}.")
    env.update(
        CONNECTOR_TOPIC_PREFIX=topics.prefix,
        CONNECTOR_CLIENT_ID=f"ingest-connector-{tag}",
        CONNECTOR_PII_KEY=env.get("CONNECTOR_PII_KEY", "bench"),
    )
    await ensure_topics(env["KAFKA_BOOTSTRAP_SERVERS"], pipeline_topics(topics, 4))
    sup = Supervisor(ROOT / ".run" / "bench" / f"ingest-{tag}", base_env=env)
    sup.start("connector", ["connector"])
    await asyncio.sleep(4)
    sup.check_alive()
    pids = {"connector": sup.children["connector"].pid} | service_pids()
    plans: list[tuple[int, list[int]]] = []
    if args.mode in ("single", "both"):
        plans.append((1, args.single_rates))
    if args.mode in ("batch", "both"):
        plans.append((args.batch, args.batch_rates))
    results: dict[str, Any] = {"bench": "ingest"}
    steps: list[dict[str, Any]] = []
    try:
        for batch, rates in plans:
            best = None
            for rate in rates:
                s = await step(rate, batch, args.duration, env, topics, pids)
                steps.append(s)
                c = s["processes"].get("connector", {})
                print(
                    f"{s['mode']:<9} offered {rate:>6}/s  published {s['publish_rate']:>9.1f}/s  "
                    f"kafka {s['kafka_per_s']:>9.1f}/s  lost {s['lost']:>5}  p50 {s['p50_ms']} ms  "
                    f"p99 {s['p99_ms']} ms  connector cpu {c.get('cpu_s')} s rss {c.get('peak_rss_mb')} MB",
                    flush=True,
                )
                sup.check_alive()
                if not passed(s):
                    break
                best = s
            key = "single" if batch == 1 else "batch"
            results[f"{key}_sustained_readings_per_s"] = best["kafka_per_s"] if best else 0
            results[f"{key}_p99_ms"] = best["p99_ms"] if best else None
    finally:
        sup.stop_all()
    results["lost"] = sum(s["lost"] for s in steps)
    results["steps"] = steps
    results["conditions"] = conditions() | {"duration_s": args.duration, "batch": args.batch}
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ingest")
    p.add_argument("--mode", choices=["single", "batch", "both"], default="both")
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--single-rates", default="2000,5000,8000,12000,16000")
    p.add_argument("--batch-rates", default="10000,20000,30000,40000,50000")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--quick", action="store_true", help="one short low-rate step per mode (test suite)")
    args = p.parse_args(argv)
    try:
        args.single_rates = [int(x) for x in args.single_rates.split(",") if x]
        args.batch_rates = [int(x) for x in args.batch_rates.split(",") if x]
    except ValueError:
        p.error("--single-rates/--batch-rates take comma-separated integers")
    if args.quick:
        args.single_rates, args.batch_rates, args.duration = [300], [2000], 3.0
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    result = asyncio.run(main_async(parse_args(argv)))
    print(json.dumps(result, ensure_ascii=False))
    return result


if __name__ == "__main__":
    main()
