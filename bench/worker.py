"""`python -m bench.worker`: readings/s through one Faust worker on the real broker.

Each run records N readings of a simulated city (a rainstorm included, so
alerts, routing and the lifecycle are on the path) into a fresh
`bench<tag>.city.sensor.readings`, then starts one worker (`citybrain worker`,
its own app id and topic prefix) and follows its consumer group's committed
offsets until all N are committed. Throughput is measured between the first
and the last commit (start-up and table recovery excluded); the worker's CPU
seconds over the same span give its cost per reading, which the machine's
load changes far less than the wall-clock rate. `--profile DIR` runs the
worker under cProfile (slower; for finding where the time goes).

The last line is one JSON object {"bench": "worker", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from bench.common import ROOT, conditions, drop_topics, topics_on_broker
from citybrain.errors import ServiceError
from citybrain.kafka_admin import department_topics, ensure_topics, pipeline_topics
from citybrain.partitioner import CachedKeyPartitioner
from citybrain.supervisor import WORKER_READY, Supervisor
from citybrain.topics import Topics
from sim import Reading, build_city, generate, plan

START = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def sim_records(n: int, sensors: int, seed: int = 11) -> list[tuple[bytes, bytes]]:
    """About n readings (key sensor_id, native JSON as the connector writes it)."""
    city = build_city(seed, sensors=sensors)
    duration = timedelta(seconds=max(60.0, n / city.readings_per_second()))
    scenario = plan(city, START, duration, incidents=["rainstorm"], seed=seed, calls_per_hour=0)
    out: list[tuple[bytes, bytes]] = []
    for ev in generate(city, scenario):
        if isinstance(ev, Reading):
            out.append((ev.sensor.sensor_id.encode(), ev.model().to_json()))
            if len(out) >= n:
                break
    return out


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024,
                                partitioner=CachedKeyPartitioner(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futs = [await producer.send(topic, value, key=key) for key, value in records]
        await producer.flush()
        for f in futs:
            await f
    finally:
        await producer.stop()


async def committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(o.offset for tp, o in offsets.items() if isinstance(tp, TopicPartition) and tp.topic == topic
               and o.offset > 0)


async def one_run(args: argparse.Namespace, records: list[tuple[bytes, bytes]], env: dict[str, str],
                  run: int) -> dict[str, Any]:  # fmt: skip
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench{tag}."
    topics = Topics(prefix)
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    # the departments' topics too, as a deployment (citybrain demo) and the replay make them
    # before the worker starts: else the lifecycle creates each on its first alert, in the run
    from streams.routing import load_registry

    await ensure_topics(bootstrap, pipeline_topics(topics, args.partitions)
                        | department_topics(topics, load_registry().departments, args.partitions), timeout_s=300)
    await produce(bootstrap, topics.readings, records)
    app_id = f"bench-worker-{tag}"
    run_dir = ROOT / ".run" / "bench" / f"worker-{tag}"
    sup = Supervisor(run_dir, base_env=env | {
        "WORKER_TOPIC_PREFIX": prefix, "WORKER_APP_ID": app_id, "WORKER_DATA_DIR": str(run_dir / "faust"),
        "WORKER_PARTITIONS": str(args.partitions), "WORKER_ROLE": args.role,
    })  # fmt: skip
    argv = ["worker", "--log-level", "info"]  # info: the ready line
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        argv = ["-m", "cProfile", "-o", os.path.join(args.profile, f"worker-{run}.prof"), "-m", "citybrain.cli", *argv]
    sup.start("worker", argv)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    proc = psutil.Process(sup.children["worker"].pid)
    n = len(records)
    try:
        await asyncio.to_thread(sup.wait_for_log, "worker", WORKER_READY, 300)
        first: tuple[float, int, float] | None = None
        last = (time.monotonic(), 0, 0.0)
        peak_rss = 0
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            sup.check_alive()
            done = await committed(admin, app_id if args.role == "all" else f"{app_id}-{args.role}", topics.readings)
            cpu = sum(proc.cpu_times()[:2])
            peak_rss = max(peak_rss, proc.memory_info().rss)
            now = time.monotonic()
            if done > 0 and first is None:
                first = (now, done, cpu)
            last = (now, done, cpu)
            if done >= n:
                break
            await asyncio.sleep(0.25)
        if first is None or last[1] < n:
            raise ServiceError(f"the worker committed {last[1]} of {n} readings within {args.timeout:g} s")
        span = last[0] - first[0]
        counted = last[1] - first[1]
        return {
            "readings": n,
            "readings_per_s": round(counted / span) if span > 0 else None,
            "cpu_us_per_reading": round((last[2] - first[2]) / counted * 1e6, 1) if counted else None,
            "peak_rss_mb": round(peak_rss / 2**20, 1),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        await admin.close()
        sup.stop_all(timeout=90 if args.profile else 20)  # a profiled worker is slow to stop
        await drop_topics(bootstrap, prefix, app_id)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
        raise SystemExit("bench.worker: KAFKA_BOOTSTRAP_SERVERS is not set; run `make stack-up` "
                         "and source .run/stack.env")
    topics_before = await topics_on_broker(env["KAFKA_BOOTSTRAP_SERVERS"])
    if topics_before is not None and topics_before > 500:
        print(f"bench.worker: the broker holds {topics_before} topics (leftovers of test runs?); every metadata "
              "refresh decodes them all, so the figures are lower than on a clean cluster", file=sys.stderr)
    t = time.perf_counter()
    records = sim_records(args.readings, args.sensors)
    print(f"bench.worker: {len(records)} readings of {args.sensors} sensors generated in "
          f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
    runs = []
    for i in range(args.runs):
        r = await one_run(args, records, env, i)
        runs.append(r)
        print(f"run {i + 1}: {r['readings_per_s']} readings/s, {r['cpu_us_per_reading']} us CPU/reading, "
              f"peak RSS {r['peak_rss_mb']} MB, load {r['loadavg_1m']}")
    rates = [r["readings_per_s"] for r in runs if r["readings_per_s"]]
    cpus = [r["cpu_us_per_reading"] for r in runs if r["cpu_us_per_reading"]]
    return {
        "bench": "worker",
        "median_readings_per_s": statistics.median(rates) if rates else None,
        "median_cpu_us_per_reading": statistics.median(cpus) if cpus else None,
        "target_readings_per_s": 20_000,
        "runs": runs,
        "conditions": conditions() | {"readings": len(records), "sensors": args.sensors,
                                      "partitions": args.partitions, "role": args.role,
                                      "profiled": bool(args.profile),
                                      "topics_on_broker_before": topics_before},
    }


def main(argv: list[str] | None = None) -> int:
    import json

    from citybrain.cli import OneLineParser

    ap = OneLineParser(prog="python -m bench.worker", description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, default=50_000, help="readings per run (default %(default)s)")
    ap.add_argument("--sensors", type=int, default=1000, help="sensors in the simulated city (default %(default)s)")
    ap.add_argument("--partitions", type=int, default=4, help="partitions of the pipeline topics (default 4)")
    ap.add_argument("--runs", type=int, default=3, help="runs; medians are reported (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds a run may take (default %(default)s)")
    ap.add_argument("--role", choices=["all", "detect"], default="all",
                    help="the worker's WORKER_ROLE: every agent (default) or the detect half alone")
    ap.add_argument("--profile", metavar="DIR", help="run the worker under cProfile, profiles into DIR")
    args = ap.parse_args(argv)
    if args.readings < 1000 or args.sensors < 10 or args.runs < 1 or args.partitions < 1:
        ap.error("--readings must be at least 1000, --sensors at least 10, --runs and --partitions at least 1")
    result = asyncio.run(main_async(args))
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
