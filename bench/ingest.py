"""Ingestion benchmark: publishers on loopback -> Mosquitto -> connector ->
Kafka, counting unique event_ids consumed back from Kafka.

    python -m bench.ingest [--mode single|batch|both] [--duration 15]
                           [--single-rates 2000,5000,10000,15000]
                           [--batch-rates 10000,20000,30000,40000] [--batch 100]
                           [--batch-format senml|native|both]

Single messages are one native JSON reading each; batched messages are SenML
packs (RFC 8428: a base name and base time, then one record per sensor,
resolved through a device registry the bench writes for the connector) or
native `{"readings": [...]}` batches. Reports per offered rate: readings/s
that reached Kafka, lost (acknowledged by Mosquitto, absent from Kafka),
p50/p99 publish -> Kafka latency (the reading's sent_at, or for SenML its
time, which is the publish time, to the moment the consumer holds it),
connector CPU (seconds, and microseconds per reading) and peak RSS. The
highest passing step (0 lost, >= 95 % of offered) is the sustained rate.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import socket
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bench.common import ROOT, ProcStats, conditions, drop_topics, percentile, service_pids
from bench.faults_stack import free_port
from citybrain.kafka_admin import ensure_topics, pipeline_topics
from citybrain.supervisor import Supervisor
from citybrain.topics import Topics
from connectors.decoders.senml import event_id as senml_event_id
from connectors.mqtt_kafka import parse_mqtt_url
from connectors.mqtt_sessions import forget_session
from connectors.mqtt_wire import remaining_length

SENSORS = 5000
LOG_APPEND_TIME = 1  # Kafka record timestamp type
LATENCY_SAMPLE = 5  # every 5th reading's latency
WINDOW = 20000
STALL_S = 30  # the step ends when nothing new reached Kafka for this long  # QoS 1 messages the publisher has unacknowledged at most
LOCATION = {"district": "朝阳区", "lat": 39.92, "lon": 116.44}


KEEPALIVE_S = 60


def _connect_packet(client_id: str, user: str | None, password: str | None, keepalive: int) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session."""
    def field(v: str) -> bytes:
        b = v.encode()
        return len(b).to_bytes(2, "big") + b

    flags = 0x02 | (0x80 if user else 0) | (0x40 if user and password is not None else 0)
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + keepalive.to_bytes(2, "big") + field(client_id)
    if user:
        body += field(user)
        if password is not None:
            body += field(password)
    return b"\x10" + remaining_length(len(body)) + body


def registry_entries(tag: str) -> list[dict[str, Any]]:
    """The bench's SenML sensors, for the connector's device registry."""
    return [
        {"sensor_id": f"ingest-{tag}-{k}", "sensor_type": "noise", "unit": "dB(A)", "location": LOCATION}
        for k in range(SENSORS)
    ]


class RatePublisher:
    """Publishes at a fixed rate, QoS 1, from one thread that also reads the
    broker's PUBACKs. It speaks MQTT 3.1.1 itself (CONNECT, PUBLISH, PUBACK,
    PINGREQ: the few packets a publisher needs): paho's publish path cost this
    machine ~100-160 µs per message (a message object with a lock and a
    condition, a wake-up of its network thread, four `recv`s per PUBACK),
    more than the connector spends on a single reading, so paho, not the
    connector, set the single-message figure. A message counts as delivered
    when the broker's PUBACK for its packet id arrives."""

    def __init__(
        self,
        url: str,
        run: str,
        batch: int,
        rate: int,
        duration: float,
        expected: set[str],
        fmt: str = "native",
        tag: str = "",
    ) -> None:
        host, port, user, password, _ = parse_mqtt_url(url)
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(_connect_packet(f"ingest-pub-{run}", user, password, KEEPALIVE_S))
        connack = b""
        while len(connack) < 4:
            chunk = self.sock.recv(4 - len(connack))
            if not chunk:
                raise SystemExit(f"bench.ingest: {host}:{port} closed the publisher's connection")
            connack += chunk
        if connack[0] != 0x20 or connack[3] != 0:
            raise SystemExit(f"bench.ingest: the broker refused the publisher (CONNACK {connack.hex()})")
        self.sock.setblocking(False)
        self.out = bytearray()
        self.inbuf = b""
        self.last_out = time.monotonic()
        self.next_mid = 0
        self.run, self.batch, self.rate, self.duration = run, batch, rate, duration
        self.expected = expected  # every id published, shared with the consumer
        self.fmt, self.tag = fmt, tag
        self.last_bt = 0.0
        self.pending: dict[int, list[str]] = {}
        self.acked: list[str] = []
        self.published = 0
        self.elapsed = 0.0

    def _publish(self, topic: bytes, payload: bytes, ids: list[str]) -> None:
        mid = self.next_mid
        while True:  # a free packet id: one still in flight is never reused
            mid = mid % 65535 + 1
            if mid not in self.pending:
                break
        self.next_mid = mid
        body_len = 2 + len(topic) + 2 + len(payload)
        self.out += b"\x32" + remaining_length(body_len) + len(topic).to_bytes(2, "big") + topic
        self.out += mid.to_bytes(2, "big") + payload
        self.pending[mid] = ids
        if len(self.out) > 64 * 1024:
            self._flush()

    def _flush(self) -> None:
        if not self.out:
            return
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        del self.out[:sent]
        self.last_out = time.monotonic()

    def _pump(self, timeout: float) -> None:
        """Write what is queued, read PUBACKs, keep the connection alive."""
        self._flush()
        if self.out:
            readable, _, _ = select.select([self.sock], [self.sock], [], timeout)
        else:
            readable, _, _ = select.select([self.sock], [], [], timeout)
        if readable:
            try:
                data = self.sock.recv(256 * 1024)
            except BlockingIOError:
                data = None
            if data == b"":
                raise SystemExit("bench.ingest: the broker closed the publisher's connection")
            if data:
                self._read(self.inbuf + data if self.inbuf else data)
        self._flush()
        if time.monotonic() - self.last_out > KEEPALIVE_S / 2:
            self.out += b"\xc0\x00"  # PINGREQ
            self._flush()

    def _read(self, buf: bytes) -> None:
        pos, n = 0, len(buf)
        pending, acked = self.pending, self.acked
        while pos + 2 <= n:
            kind, length = buf[pos], buf[pos + 1]  # PUBACK / PINGRESP: one length byte
            if length & 0x80:
                raise SystemExit(f"bench.ingest: unexpected packet {kind:#x} from the broker")
            if pos + 2 + length > n:
                break
            if kind == 0x40:  # PUBACK
                ids = pending.pop(int.from_bytes(buf[pos + 2 : pos + 4], "big"), None)
                if ids is not None:
                    acked.extend(ids)
            pos += 2 + length
        self.inbuf = buf[pos:]

    def _reading(self, seq: int, now: str) -> dict[str, Any]:
        return {
            "event_id": f"i-{self.run}-{seq}",
            "sensor_id": f"ingest-{self.run}-{seq % 5000}",
            "sensor_type": "noise",
            "value": 50.0 + seq % 20,
            "unit": "dB(A)",
            "ts": now,
            "sent_at": now,
            "location": LOCATION,
        }

    def _senml_pack(self, seq: int) -> tuple[bytes, list[str]]:
        """One pack: base name and base time, a record per sensor. Base times
        grow by >= 1 ms per pack so (name, time), the SenML event id, is unique."""
        bt = self.last_bt = max(round(time.time(), 3), round(self.last_bt + 0.001, 3))
        bn = f"ingest-{self.tag}-"
        records: list[dict[str, Any]] = [{"n": str((seq + k) % SENSORS), "v": 50.0 + k % 20} for k in range(self.batch)]
        records[0] |= {"bn": bn, "bt": bt, "bu": "dB"}
        ts = datetime.fromtimestamp(bt, tz=UTC)  # as the connector resolves bt + t (t = 0)
        iso = ts.isoformat()  # the ids the connector will give them (senml.event_id is stable_id, spelt out)
        return orjson.dumps(records), [senml_event_id(bn + r["n"], iso) for r in records]

    def run_loop(self) -> None:
        msgs_per_s = self.rate / self.batch
        t0 = time.monotonic()
        sent = 0
        seq = 0
        while (elapsed := time.monotonic() - t0) < self.duration:
            due = int(elapsed * msgs_per_s) - sent
            if due <= 0:
                self._pump(0.001)
                continue
            now = datetime.now(UTC).isoformat()
            for _ in range(due):
                if self.batch == 1:
                    d = self._reading(seq, now)
                    payload = orjson.dumps(d)
                    topic = f"city/sensors/{d['sensor_id']}"
                    ids = [d["event_id"]]
                elif self.fmt == "senml":
                    payload, ids = self._senml_pack(seq)
                    topic = f"city/senml/{self.run}"
                else:
                    items = [self._reading(seq + k, now) for k in range(self.batch)]
                    payload = orjson.dumps({"readings": items})
                    topic = f"city/sensors/batch/{self.run}"
                    ids = [d["event_id"] for d in items]
                seq += len(ids)
                self.expected.update(ids)
                while len(self.pending) >= WINDOW:  # packet ids are 16 bits: never reuse one in flight
                    self._pump(0.0005)
                self._publish(topic.encode(), payload, ids)
                self.published += len(ids)
                sent += 1
            self._pump(0)  # PUBACKs read as they come: the broker's replies never back up
        self.elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 60
        while self.pending and time.monotonic() < deadline:
            self._pump(0.05)
        self.out += b"\xe0\x00"  # DISCONNECT
        self.sock.setblocking(True)
        self.sock.sendall(self.out)
        self.sock.close()


async def consume(
    bootstrap: str, topic: str, expected: set[str], seen: dict[str, float], stop: asyncio.Event
) -> list[float]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    lat: list[float] = []
    try:
        while not stop.is_set():
            for msgs in (await consumer.getmany(timeout_ms=200, max_records=10000)).values():
                now = time.time()
                for m in msgs:
                    # the id without parsing the record: this process shares the CPU with the connector
                    start = m.value.find(b'"event_id":"') + 12
                    eid = m.value[start : m.value.find(b'"', start)].decode()
                    if eid in expected and eid not in seen:  # this step's, first copy
                        # the broker's append time: when it reached Kafka, however late we read it
                        at = m.timestamp / 1000 if m.timestamp_type == LOG_APPEND_TIME else now
                        seen[eid] = at
                        if len(seen) % LATENCY_SAMPLE == 0:
                            d = orjson.loads(m.value)
                            sent = datetime.fromisoformat(d.get("sent_at") or d["ts"]).timestamp()
                            lat.append((at - sent) * 1000)
    finally:
        await consumer.stop()
    return lat


async def step(
    rate: int,
    batch: int,
    duration: float,
    env: dict[str, str],
    topics: Topics,
    pids: dict[str, int],
    fmt: str = "native",
    tag: str = "",
) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    seen: dict[str, float] = {}
    expected: set[str] = set()
    stop = asyncio.Event()
    consumer = asyncio.create_task(consume(env["KAFKA_BOOTSTRAP_SERVERS"], topics.readings, expected, seen, stop))
    await asyncio.sleep(1.0)
    stats = ProcStats(pids)
    pub = RatePublisher(env["MQTT_PUBLISH_URL"], run, batch, rate, duration, expected, fmt, tag)
    thread = threading.Thread(target=pub.run_loop)
    t0_wall = time.time()
    thread.start()
    while thread.is_alive():
        stats.sample()
        await asyncio.sleep(0.5)
    acked = set(pub.acked)
    last = time.monotonic()
    n = 0
    while len(seen.keys() & acked) < len(acked) and time.monotonic() - last < STALL_S:
        if len(seen) != n:
            n, last = len(seen), time.monotonic()
        stats.sample()
        await asyncio.sleep(0.25)
    done = max(seen.values()) if seen else time.time()
    took = max(pub.elapsed, done - t0_wall)
    stop.set()
    lat = await consumer
    got = len(seen.keys() & acked)
    counters = await asyncio.to_thread(connector_counters, env.get("CONNECTOR_METRICS_PORT", ""))
    processes = stats.report()
    if "connector" in processes and got:
        processes["connector"]["cpu_us_per_reading"] = round(processes["connector"]["cpu_s"] / got * 1e6, 1)
    return {
        "mode": "single" if batch == 1 else f"batch{batch}",
        "format": "native" if batch == 1 else fmt,
        "offered_per_s": rate,
        "published": pub.published,
        "publish_rate": round(pub.published / max(pub.elapsed, 1e-9), 1),
        "acked": len(acked),
        "in_kafka": got,
        "lost": len(acked) - got,
        "kafka_per_s": round(got / max(took, 1e-9), 1),
        "p50_ms": _r(percentile(lat, 50)),
        "p99_ms": _r(percentile(lat, 99)),
        "processes": processes,
        # the connector's own loss accounting since it started (all steps so far):
        # received / acknowledged MQTT messages, decoded readings, produced records
        "connector_counters": counters,
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def connector_counters(port: str) -> dict[str, float]:
    """The connector's Prometheus counters (loss accounting per hop)."""
    if not port:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("citybrain_connector_") and "_total{" in line:
            name = line.split("{", 1)[0].removeprefix("citybrain_connector_").removesuffix("_total")
            out[name] = out.get(name, 0) + float(line.rsplit(" ", 1)[1])
    return out


async def log_append_time(bootstrap: str, topic: str) -> None:
    """Stamp the bench's readings topic with the broker's append time, so the
    figures measure arrival in Kafka, not how fast this process reads back."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"message.timestamp.type": "LogAppendTime"})]
        )
    finally:
        await admin.close()


def passed(s: dict[str, Any]) -> bool:
    return s["lost"] == 0 and s["kafka_per_s"] >= 0.95 * s["offered_per_s"] and s["publish_rate"] >= 0.95 * s["offered_per_s"]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "MQTT_URL", "MQTT_PUBLISH_URL"):
        if not env.get(var):
            raise SystemExit(f"bench.ingest: {var} is not set; run `make stack-up` and source .run/stack.env")
    tag = uuid.uuid4().hex[:6]
    topics = Topics(prefix=f"ingest{tag}.")
    run_dir = ROOT / ".run" / "bench" / f"ingest-{tag}"
    run_dir.mkdir(parents=True, exist_ok=True)
    registry = run_dir / "registry.json"
    registry.write_bytes(orjson.dumps(registry_entries(tag)))
    env.update(
        CONNECTOR_TOPIC_PREFIX=topics.prefix,
        CONNECTOR_CLIENT_ID=f"ingest-connector-{tag}",
        CONNECTOR_PII_KEY=env.get("CONNECTOR_PII_KEY", "bench"),
        CONNECTOR_REGISTRY_FILE=str(registry),
        CONNECTOR_METRICS_PORT=str(free_port()),
    )
    await ensure_topics(env["KAFKA_BOOTSTRAP_SERVERS"], pipeline_topics(topics, 4))
    await log_append_time(env["KAFKA_BOOTSTRAP_SERVERS"], topics.readings)
    sup = Supervisor(run_dir, base_env=env)
    sup.start("connector", ["connector"])
    await asyncio.sleep(4)
    sup.check_alive()
    pids = {"connector": sup.children["connector"].pid, "bench": os.getpid()} | service_pids()
    # (result key, readings per message, payload format, offered rates)
    plans: list[tuple[str, int, str, list[int]]] = []
    if args.mode in ("single", "both"):
        plans.append(("single", 1, "native", args.single_rates))
    if args.mode in ("batch", "both"):
        if args.batch_format in ("senml", "both"):
            plans.append(("batch", args.batch, "senml", args.batch_rates))
        if args.batch_format in ("native", "both"):
            key = "batch" if args.batch_format == "native" else "batch_native"
            plans.append((key, args.batch, "native", args.batch_rates))
    results: dict[str, Any] = {"bench": "ingest"}
    steps: list[dict[str, Any]] = []
    try:
        for key, batch, fmt, rates in plans:
            best = None
            for rate in rates:
                s = await step(rate, batch, args.duration, env, topics, pids, fmt, tag)
                steps.append(s)
                c = s["processes"].get("connector", {})
                print(
                    f"{s['mode']:<9} {fmt:<6} offered {rate:>6}/s  published {s['publish_rate']:>9.1f}/s  "
                    f"kafka {s['kafka_per_s']:>9.1f}/s  lost {s['lost']:>5}  p50 {s['p50_ms']} ms  "
                    f"p99 {s['p99_ms']} ms  connector cpu {c.get('cpu_s')} s "
                    f"({c.get('cpu_us_per_reading')} us/reading) rss {c.get('peak_rss_mb')} MB  "
                    f"connector counters {s['connector_counters']}",
                    flush=True,
                )
                sup.check_alive()
                if not passed(s):
                    break
                best = s
            results[f"{key}_sustained_readings_per_s"] = best["kafka_per_s"] if best else 0
            results[f"{key}_p99_ms"] = best["p99_ms"] if best else None
            results[f"{key}_connector_cpu_us_per_reading"] = (
                best["processes"].get("connector", {}).get("cpu_us_per_reading") if best else None
            )
    finally:
        sup.stop_all()
        await asyncio.to_thread(forget_session, env["MQTT_URL"], env["CONNECTOR_CLIENT_ID"])
        await drop_topics(env["KAFKA_BOOTSTRAP_SERVERS"], topics.prefix)
    results["lost"] = sum(s["lost"] for s in steps)
    results["steps"] = steps
    results["conditions"] = conditions() | {
        "duration_s": args.duration,
        "batch": args.batch,
        "batch_format": args.batch_format,
    }
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ingest")
    p.add_argument("--mode", choices=["single", "batch", "both"], default="both")
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--single-rates", default="2000,5000,8000,12000,16000")
    p.add_argument("--batch-rates", default="10000,20000,30000,40000,50000")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--batch-format", choices=["senml", "native", "both"], default="senml")
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
