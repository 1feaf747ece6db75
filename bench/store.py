"""`python -m bench.store`: storage writer throughput through the idempotent
path (COPY into a staging table, INSERT .. ON CONFLICT DO NOTHING, rollup
dirty-marking, partition check) into PostgreSQL, and the cost of re-writing a
batch that is already stored.

Two measurements, each the median of several runs:
  db     rows already decoded, written by `storage.writer.write_rows` in
         batches, each batch split by (simulated) Kafka partition into
         `--conns` parts merged concurrently as the writer does (the database
         side of the writer alone);
  kafka  the whole writer (`run_writer`): consume JSON from Kafka, validate,
         COPY + merge, commit offsets; timed from the first row stored to the
         last (group join excluded).
Event ids are hashes of (sensor, time), as the connector derives them: the
key's distribution decides where inserts land in the index, so sequential
ids would flatter a key that leads with event_id.
Prints a table, then one JSON line (last line) `{"bench": "store", ...}`.
Needs DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS (`. .run/stack.env`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.common import conditions, drop_topics
from citybrain.kafka_admin import ensure_topics, pipeline_topics
from citybrain.topics import Topics
from schemas import SensorReading, reading_event_id
from storage.db import connect
from storage.migrate import migrate
from storage.rows import SPECS, Row, reading_row
from storage.writer import (
    WriterMetrics,
    WriterSettings,
    prepare_connection,
    run_writer,
    split_by_partition,
    write_rows,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def make_readings(run: int, n: int, sensors: int = 500) -> list[SensorReading]:
    out = []
    for i in range(n):
        sid = f"s-{i % sensors:04d}"
        ts = (T0 + timedelta(hours=run, milliseconds=i * 36_000_00 // n)).isoformat()
        out.append(SensorReading.model_validate({
            "event_id": reading_event_id(sid, ts), "sensor_id": sid, "sensor_type": "pm25",
            "value": float((i * 7) % 400), "unit": "ug/m3", "ts": ts,
            "location": {"district": f"d{i % 16}", "street": f"st{i % 97}", "lat": 39.9, "lon": 116.4},
        }))
    return out


async def write_batch(conns: list[asyncpg.Connection], parts: list[list[Row]]) -> int:
    """One batch as the writer merges it: its parts concurrently, one connection each."""
    spec = SPECS["readings"]
    got = await asyncio.gather(*(write_rows(c, spec, p, "plain") for c, p in zip(conns, parts, strict=False)))
    return sum(got)


def split_batch(rows: list[Row], conns: int, partitions: int) -> list[list[Row]]:
    # the Kafka partition a reading would come from: its key is the sensor id
    keys = [("readings", zlib.crc32(r[2].encode()) % partitions) for r in rows]
    return [[rows[i] for i in group] for group in split_by_partition(keys, conns, WriterSettings.model_fields[
        "split_min_rows"].default)]


async def bench_db(conns: list[asyncpg.Connection], runs: int, n: int, batch: int,
                   partitions: int) -> dict[str, list[float]]:
    new_rates: list[float] = []
    dup_rates: list[float] = []
    loads: list[float] = []
    for run in range(runs):
        rows: list[Row] = [reading_row(r) for r in make_readings(run, n)]
        batches = [split_batch(rows[k:k + batch], len(conns), partitions) for k in range(0, n, batch)]
        t = time.perf_counter()
        written = sum([await write_batch(conns, b) for b in batches])
        new_rates.append(n / (time.perf_counter() - t))
        assert written == n, (written, n)
        t = time.perf_counter()
        again = sum([await write_batch(conns, b) for b in batches])
        dup_rates.append(n / (time.perf_counter() - t))
        assert again == 0
        loads.append(os.getloadavg()[0])
    return {"new": new_rates, "dup": dup_rates, "load": loads}


async def bench_kafka(database_url: str, bootstrap: str, schema: str, runs: int, n: int, batch: int,
                      conns: int, partitions: int) -> list[float]:
    from aiokafka import AIOKafkaProducer

    rates: list[float] = []
    for run in range(runs):
        tag = uuid.uuid4().hex[:8]
        topics = Topics(prefix=f"bench.{tag}.")
        await ensure_topics(bootstrap, pipeline_topics(topics, partitions))
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                    max_batch_size=1024 * 1024, compression_type=None)
        await producer.start()
        try:
            futs = [await producer.send(topics.readings, r.to_json(), key=r.sensor_id.encode())
                    for r in make_readings(1000 + run, n)]
            await asyncio.gather(*futs)
        finally:
            await producer.stop()
        settings = WriterSettings(database_url=database_url, kafka_bootstrap_servers=bootstrap,  # type: ignore[arg-type]
                                  topic_prefix=topics.prefix, db_schema=schema, group_id=f"bench-{tag}",
                                  client_id=f"bench-{tag}", batch_size=batch, batch_timeout_ms=200,
                                  db_connections=conns,
                                  maintenance_interval_s=0, kinds=("readings",))
        metrics = WriterMetrics()
        stop = asyncio.Event()
        task = asyncio.create_task(run_writer(settings, stop, metrics))
        first: float | None = None
        while metrics.total("rows_written") < n:
            if task.done():
                task.result()
                raise RuntimeError("writer exited")
            if first is None and metrics.total("rows_written") > 0:
                first = time.perf_counter()
            await asyncio.sleep(0.01)
        last = time.perf_counter()
        stop.set()
        await task
        await drop_topics(bootstrap, topics.prefix)
        # the first batch is inside the window's start: count rows after it
        first_batch = min(batch, n)
        rates.append((n - first_batch) / (last - (first or last)) if first and last > first else float("nan"))
    return rates


def _fmt(rates: list[float]) -> str:
    return f"{statistics.median(rates):>10,.0f}  (runs: {', '.join(f'{r:,.0f}' for r in rates)})"


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    database_url = os.environ.get("DATABASE_URL")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not database_url:
        raise SystemExit("DATABASE_URL is not set: `. .run/stack.env` first")
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    await migrate(database_url, schema)
    conns = [await connect(database_url, schema, "bench-store") for _ in range(args.conns)]
    conn = conns[0]
    before = conditions()
    try:
        for c in conns:
            await prepare_connection(c)
        server = await conn.fetchval("SHOW server_version")
        db = await bench_db(conns, args.runs, args.rows, args.batch, args.partitions)
        kafka: list[float] = []
        if not args.no_kafka:
            if not bootstrap:
                raise SystemExit("KAFKA_BOOTSTRAP_SERVERS is not set (or pass --no-kafka)")
            kafka = await bench_kafka(database_url, bootstrap, schema, args.kafka_runs, args.kafka_rows, args.batch,
                                      args.conns, args.partitions)
        total = await conn.fetchval("SELECT count(*) FROM readings")
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        for c in conns:
            await c.close()
    load_end = os.getloadavg()[0]

    print("bench.store: writer idempotent path into PostgreSQL")
    print(f"  conditions: PostgreSQL {server} (plain partitions, daily), {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, batch {args.batch} rows in up to {args.conns} concurrent parts "
          f"(by {args.partitions} Kafka partitions), table grows to {total:,} rows; "
          f"PostgreSQL, Kafka and the benchmark share the machine")
    print(f"  load average (1 min): {before['loadavg_1m']} at start, "
          f"{', '.join(f'{x:.2f}' for x in db['load'])} after each db run, {load_end:.2f} at the end")
    print(f"  {'measure':<34}{'median rows/s':>14}")
    print(f"  {'db: new rows (COPY+merge)':<34}{_fmt(db['new'])}")
    print(f"  {'db: duplicate batch (all skipped)':<34}{_fmt(db['dup'])}")
    if kafka:
        print(f"  {'kafka->db: whole writer':<34}{_fmt(kafka)}")
    result: dict[str, object] = {
        "bench": "store",
        "rows_per_run": args.rows, "runs": args.runs, "batch": args.batch, "conns": args.conns,
        "partitions": args.partitions,
        "db_new_rows_per_s": round(statistics.median(db["new"])),
        "db_duplicate_rows_per_s": round(statistics.median(db["dup"])),
        "duplicate_cost_ratio": round(statistics.median(db["new"]) / statistics.median(db["dup"]), 3),
        "target_rows_per_s": 100_000,
        "meets_target": statistics.median(db["new"]) >= 100_000,
        "postgres": server, "cpus": os.cpu_count(),
        "loadavg_1m_start": before["loadavg_1m"], "loadavg_1m_end": round(load_end, 2),
    }
    if kafka:
        result.update({"kafka_rows_per_run": args.kafka_rows, "kafka_runs": args.kafka_runs,
                       "kafka_writer_rows_per_s": round(statistics.median(kafka))})
    return result


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000, help="rows per db run")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--conns", type=int, default=WriterSettings.model_fields["db_connections"].default,
                   help="concurrent merge connections (the writer's WRITER_DB_CONNECTIONS)")
    p.add_argument("--partitions", type=int, default=4, help="Kafka partitions of the readings topic")
    p.add_argument("--kafka-rows", type=int, default=100_000)
    p.add_argument("--kafka-runs", type=int, default=3)
    p.add_argument("--no-kafka", action="store_true")
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
