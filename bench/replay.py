"""`python -m bench.replay [--readings N] [--quick]`: incident replay end to end.

Records N readings of a simulated city (a rainstorm included, so detection
has work to do) straight into a storage schema of its own (COPY; the replay
reads the database, how the rows got there does not matter), then times
`storage.replay.run_replay` over that range at `--speed max`:
  published   rows read from PostgreSQL (server-side cursor) and acknowledged by Kafka, per second;
  detection   readings committed by the isolated replay worker, per second, from the start of the
              run (worker start-up included) until its consumer lag is 0; and from the first
              published record (once every worker is in the group), without the run's set-up;
  total       wall time of the whole run (including the proof that the workers are done,
              stopping them, reading the recorded alerts and the diff).
Issue target: 1,000,000 readings in <= 60 s. Prints figures and conditions,
last line one JSON object `{"bench": "replay", ...}`. Needs DATABASE_URL and
KAFKA_BOOTSTRAP_SERVERS (`. .run/stack.env`). The schema is dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from bench.common import conditions
from sim import Reading, build_city, generate, plan
from storage.db import connect
from storage.migrate import migrate
from storage.replay import ReplayRequest, ReplaySettings, run_replay
from storage.replay_diff import Scope
from storage.rows import READING_COLUMNS, Row

START = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def sim_rows(n: int, sensors: int, seed: int = 7) -> tuple[list[Row], datetime, datetime]:
    """About n readings of a `sensors`-strong city over as much event time as that takes."""
    # a small fleet over all 16 districts may lack the rain gauge a rainstorm needs
    city = build_city(seed, sensors=sensors, districts=("chaoyang", "haidian") if sensors < 300 else None)
    duration = timedelta(seconds=max(60.0, n / city.readings_per_second()))
    scenario = plan(city, START, duration, incidents=["rainstorm"], seed=seed, calls_per_hour=0)
    rows: list[Row] = []
    for ev in generate(city, scenario):
        if not isinstance(ev, Reading):
            continue
        s = ev.sensor
        loc = s.location
        rows.append((datetime.fromtimestamp(ev.t, UTC), ev.event_id, s.sensor_id, s.sensor_type.value,
                     float(ev.value), s.unit, loc.district, loc.street, loc.grid, loc.lat, loc.lon, None, "sim"))
        if len(rows) >= n:
            break
    return rows, START, rows[-1][0] + timedelta(seconds=1)


async def record(database_url: str, schema: str, rows: list[Row]) -> float:
    await migrate(database_url, schema)
    conn = await connect(database_url, schema, "bench-replay")
    t = time.perf_counter()
    try:
        days = sorted({r[0].date() for r in rows})
        probes = [datetime(d.year, d.month, d.day, tzinfo=UTC) for d in days]
        await conn.fetchval("SELECT cb_ensure_partitions('readings'::regclass, $1::timestamptz[])", probes)
        for k in range(0, len(rows), 50_000):
            await conn.copy_records_to_table("readings", records=rows[k:k + 50_000], columns=READING_COLUMNS)
    finally:
        await conn.close()
    return time.perf_counter() - t


async def drop_schema(database_url: str, schema: str) -> None:
    conn = await connect(database_url, "public", "bench-replay")
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


async def one_run(settings: ReplaySettings, start: datetime, end: datetime) -> dict[str, float]:
    run = f"bench{uuid.uuid4().hex[:10]}"
    req = ReplayRequest(run=run, scope=Scope(start, end), speed=None)
    out = await run_replay(settings, req, stop=asyncio.Event(), base_env=dict(os.environ),
                           now=lambda: datetime.now(UTC), progress=progress)
    assert out.diff is not None and out.status == "done"
    return {"readings": out.readings, "publish_s": round(out.publish_s, 2), "detect_s": round(out.detect_s, 2),
            "total_s": round(out.total_s, 2), "published_per_s": round(out.readings / out.publish_s),
            "detected_per_s": round(out.readings / out.detect_s), "ready_s": round(out.ready_s, 2),
            # from the first published record: the detection rate without the run's set-up
            "detected_per_s_after_start": round(out.readings / max(out.detect_s - out.ready_s, 1e-9)),
            "alerts": out.diff.replayed, "workers": out.workers}


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    database_url = os.environ.get("DATABASE_URL")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not database_url or not bootstrap:
        sys.exit("bench.replay: DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS must be set (. .run/stack.env)")
    n = 5_000 if args.quick else args.readings
    sensors = min(args.sensors, max(50, n // 100))
    t = time.perf_counter()
    rows, start, end = sim_rows(n, sensors)
    gen_s = time.perf_counter() - t
    schema = f"bench_replay_{uuid.uuid4().hex[:8]}"
    try:
        copy_s = await record(database_url, schema, rows)
        print(f"recorded {len(rows)} readings of {sensors} sensors ({start:%Y-%m-%d %H:%M} .. {end:%H:%M} UTC) "
              f"into schema {schema}: generated in {gen_s:.1f} s, COPY in {copy_s:.1f} s", file=sys.stderr)
        settings = ReplaySettings(database_url=SecretStr(database_url), kafka_bootstrap_servers=bootstrap,
                                  db_schema=schema, run_root="/tmp/citybrain-bench-replay",
                                  quiet_s=args.quiet_s, workers=args.workers)
        runs = []
        for i in range(args.runs):
            r = await one_run(settings, start, end)
            print(f"run {i + 1}: {r}", file=sys.stderr)
            runs.append(r)
    finally:
        if not args.keep_schema:
            await drop_schema(database_url, schema)
    med = sorted(runs, key=lambda r: r["detect_s"])[len(runs) // 2]
    return {"bench": "replay", "readings": len(rows), "sensors": sensors, "runs": len(runs), "median": med,
            "all": runs, "target": {"readings": 1_000_000, "total_s": 60},
            "conditions": {**conditions(), "quick": bool(args.quick), "quiet_s": args.quiet_s,
                           "workers": args.workers or f"auto ({med['workers']})",
                           "partitions": "as live (default 4)", "speed": "max"}}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.split("\n")[0])
    p.add_argument("--readings", type=int, default=1_000_000)
    p.add_argument("--sensors", type=int, default=1000)
    p.add_argument("--runs", type=int, default=1, help="replays of the same recording; the median is reported")
    p.add_argument("--quick", action="store_true", help="5,000 readings, one run: a smoke test of the path")
    p.add_argument("--quiet-s", type=float, default=0.0,
                   help="an extra wait once the end of a run is proven (default 0)")
    p.add_argument("--workers", type=int, default=0,
                   help="replay worker processes (one consumer group; default 0: as `citybrain replay`, one per "
                        "core, at most one per partition)")
    p.add_argument("--keep-schema", action="store_true")
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    med = result["median"]
    assert isinstance(med, dict)
    print(f"replay of {result['readings']} readings ({result['sensors']} sensors), median of {result['runs']}: "
          f"published {med['published_per_s']:,}/s in {med['publish_s']} s; through detection "
          f"{med['detected_per_s']:,}/s ({med['detect_s']} s incl. worker start-up; "
          f"{med['detected_per_s_after_start']:,}/s from the first record, {med['ready_s']} s in); "
          f"total {med['total_s']} s; "
          f"{med['alerts']} alerts")
    print(f"conditions: {result['conditions']}")
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
