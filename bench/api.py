"""`python -m bench.api`: the operations center under load.

100,000 alerts in a PostgreSQL schema of the bench's own; the opscenter runs
as its own process (`citybrain opscenter`, uvicorn, one worker). 50 concurrent
clients ask for alert lists (filters varied, 50 a page) and alert details
(random ids); p50/p99 of each. Then a connected live-feed client (SSE) and
alerts produced to the bench's prefixed city.alerts: delivery latency from
before the produce call to the event parsed by the client. Last line one JSON
object. Targets: p99 <= 100 ms (list, detail), feed p99 <= 200 ms.

The 50 clients are closed-loop (each sends its next request as soon as the
previous answer arrived, no think time), so the figure is bounded by the
throughput the machine gives the opscenter: mean latency = clients / rps.
They run in this process on aiohttp (the lighter HTTP client installed): on
a 2-core machine the load generator's own CPU is taken from the server. The
opscenter's CPU per request is reported (`server_cpu_ms_per_request`).
`--rate R` makes them open-loop instead: together they offer R requests/s
(each client on its own schedule, a late answer does not delay the next
request), which shows the latency below saturation.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import httpx
import psutil
import uvloop
from aiokafka import AIOKafkaProducer

from bench.common import ROOT, conditions, drop_topics, percentile
from citybrain.kafka_admin import ensure_topics, pipeline_topics
from citybrain.topics import Topics
from opscenter.auth import TokenStore
from opscenter.testing import drop_schema, free_port, make_alert, migrate_schema, store
from storage.db import create_pool

DISTRICTS = [("朝阳区", 39.95, 116.48), ("海淀区", 39.98, 116.3), ("东城区", 39.93, 116.41), ("丰台区", 39.86, 116.29),
             ("通州区", 39.9, 116.66), ("大兴区", 39.73, 116.34)]
RULES = [("pm25-iaqi", "air", "pm25", ["eeb"]), ("water-level", "water", "water_level", ["water", "ema"]),
         ("noise-night", "noise", "noise", ["uma"]), ("traffic-jam", "traffic", "traffic_speed", ["traffic"])]


def alerts(n: int, u: str, now: datetime) -> list[Any]:
    rnd = random.Random(7)
    out = []
    for i in range(n):
        d, lat, lon = DISTRICTS[i % len(DISTRICTS)]
        rule, cat, st, depts = RULES[i % len(RULES)]
        first = now - timedelta(seconds=rnd.randint(60, 30 * 86400))
        out.append(make_alert(
            f"a-{u}-{i:06d}", first, rule=rule, category=cat, sensor_type=st, subject=f"s-{u}-{i % 5000}",
            severity=rnd.choice(["I", "II", "III", "IV"]), status=rnd.choice(["new", "acknowledged", "resolved", "closed"]),
            departments=depts, location={"district": d, "street": None, "lat": lat, "lon": lon}))
    return out


async def load(url: str, token: str, ids: list[str], clients: int, seconds: float,
               rate: float = 0) -> dict[str, list[float]]:
    lat: dict[str, list[float]] = {"list": [], "detail": []}
    errors = 0
    filters = [{}, {"severity": "I"}, {"status": "new"}, {"district": "chaoyang"}, {"department": "water"},
               {"rule": "noise-night", "severity": "I,II"}, {"open": "true"}]
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base_url=url, headers={"Authorization": f"Bearer {token}"},
                                     connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(kind: str, path: str, params: dict[str, str]) -> None:
            nonlocal errors
            t = time.perf_counter()
            async with session.get(path, params=params) as r:
                await r.read()
                ok = r.status == 200
            if ok:
                lat[kind].append((time.perf_counter() - t) * 1000)
            else:
                errors += 1

        def pick(rnd: random.Random) -> tuple[str, str, dict[str, str]]:
            if rnd.random() < 0.5:
                return "list", "/api/v1/alerts", {**rnd.choice(filters), "limit": "50"}
            return "detail", f"/api/v1/alerts/{rnd.choice(ids)}", {}

        async def open_client(k: int) -> None:
            rnd = random.Random(k)
            every = clients / rate
            due = time.monotonic() + rnd.random() * every
            pending: set[asyncio.Task[None]] = set()
            while due < deadline:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                task = asyncio.create_task(one(*pick(rnd)))
                pending.add(task)
                task.add_done_callback(pending.discard)
                due += every
            await asyncio.gather(*pending)

        async def client(k: int) -> None:
            rnd = random.Random(k)
            while time.monotonic() < deadline:
                await one(*pick(rnd))

        await asyncio.gather(*((open_client(k) if rate > 0 else client(k)) for k in range(clients)))
    lat["errors"] = [float(errors)]
    return lat


async def feed_latency(url: str, token: str, bootstrap: str, topic: str, u: str, n: int) -> list[float]:
    sent: dict[str, float] = {}
    got: list[float] = []
    ready = asyncio.Event()

    async def listen() -> None:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c, \
                c.stream("GET", "/api/v1/feed", params={"kinds": "alert"}) as r:
            kind = ""
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    if kind == "hello":
                        ready.set()
                        continue
                    aid = json.loads(line[6:]).get("alert_id")
                    if aid in sent:
                        got.append((time.perf_counter() - sent[aid]) * 1000)
                        if len(got) >= n:
                            return

    task = asyncio.create_task(listen())
    await asyncio.wait_for(ready.wait(), 30)
    await asyncio.sleep(1)
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0)
    await p.start()
    now = datetime.now(UTC)
    try:
        for i in range(n):
            a = make_alert(f"a-{u}-feed-{i}", now, severity="II")
            body = a.to_json()
            sent[a.alert_id] = time.perf_counter()
            await p.send_and_wait(topic, body, key=a.alert_id.encode())
            await asyncio.sleep(0.05)
        await asyncio.wait_for(task, 30)
    finally:
        await p.stop()
        task.cancel()
    return got


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    db, bootstrap = os.environ["DATABASE_URL"], os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    u = uuid.uuid4().hex[:8]
    schema, prefix = f"bench_api_{u}", f"bench{u}."
    now = datetime.now(UTC)
    proc = None
    try:
        await migrate_schema(db, schema)
        await ensure_topics(bootstrap, pipeline_topics(Topics(prefix), 4))
        t = time.monotonic()
        models = alerts(args.alerts, u, now)
        await store(db, schema, "alerts", models)
        seed_s = time.monotonic() - t
        pool = await create_pool(db, schema, min_size=1, max_size=2)
        try:
            await pool.execute("ANALYZE alerts")
            ts = TokenStore(pool)
            await ts.ensure_table()
            token = (await ts.issue("bench", "ops", None, timedelta(hours=2))).token
        finally:
            await pool.close()
        port = free_port()
        env = dict(os.environ, OPSCENTER_DB_SCHEMA=schema, OPSCENTER_TOPIC_PREFIX=prefix,
                   OPSCENTER_CLIENT_ID=f"bench-opscenter-{u}", OPSCENTER_POOL_MAX=str(args.pool))
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "citybrain.cli", "opscenter", "--port",
                                                    str(port), "--log-level", "warning", env=env, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                async with httpx.AsyncClient(timeout=2) as hc:
                    if (await hc.get(url + "/healthz")).json().get("live_feed"):
                        break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.returncode is not None:
                raise RuntimeError("opscenter did not start")
            await asyncio.sleep(0.3)
        ids = [m.alert_id for m in random.Random(1).sample(models, 5000)]
        # The 100k seeded models would stay alive through the load and every full
        # collection of this (client) process walked them: up to 0.4 s pauses that
        # landed in the measured latencies of whatever requests were in flight.
        del models
        gc.collect()
        gc.freeze()
        await load(url, token, ids, args.clients, 3)  # warm-up
        server, me = psutil.Process(proc.pid), psutil.Process()
        cpu0, mine0 = sum(server.cpu_times()[:2]), sum(me.cpu_times()[:2])
        load0 = os.getloadavg()[0]
        lat = await load(url, token, ids, args.clients, args.seconds, args.rate)
        server_cpu = sum(server.cpu_times()[:2]) - cpu0
        client_cpu = sum(me.cpu_times()[:2]) - mine0
        load1 = os.getloadavg()[0]
        feed = await feed_latency(url, token, bootstrap, Topics(prefix).alerts, u, args.feed_events)

        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        n_req = len(lat["list"]) + len(lat["detail"])
        return {
            "bench": "api", "alerts_in_db": args.alerts, "clients": args.clients, "seconds": args.seconds,
            "mode": f"open loop, {args.rate:g} requests/s offered" if args.rate > 0 else "closed loop",
            "seed_s": round(seed_s, 1), "requests": n_req, "rps": round(n_req / args.seconds),
            "errors": int(lat["errors"][0]),
            "server_cpu_ms_per_request": round(server_cpu * 1000 / max(n_req, 1), 2),
            "server_cpu_share": round(server_cpu / args.seconds, 2),
            # the load generator shares the 2 cores with the server and PostgreSQL
            "client_cpu_share": round(client_cpu / args.seconds, 2),
            "loadavg_1m_during": [round(load0, 2), round(load1, 2)],
            "list_p50_ms": r(percentile(lat["list"], 50)), "list_p99_ms": r(percentile(lat["list"], 99)),
            "detail_p50_ms": r(percentile(lat["detail"], 50)), "detail_p99_ms": r(percentile(lat["detail"], 99)),
            "feed_events": len(feed), "feed_p50_ms": r(percentile(feed, 50)), "feed_p99_ms": r(percentile(feed, 99)),
            "targets": {"list_detail_p99_ms": 100, "feed_p99_ms": 200},
            "conditions": conditions(),
        }
    finally:
        if proc is not None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
        if not args.keep:
            await drop_schema(db, schema)
            await drop_topics(bootstrap, prefix)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.splitlines()[0])
    p.add_argument("--alerts", type=int, default=100_000)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--feed-events", type=int, default=200)
    p.add_argument("--rate", type=float, default=0,
                   help="open loop: requests/s offered by all clients together (default: closed loop)")
    p.add_argument("--pool", type=int, default=20, help="opscenter database pool size")
    p.add_argument("--keep", action="store_true", help="keep the bench schema")
    args = p.parse_args(argv)
    # uvloop: the load generator's own event loop costs less of the cores the server needs
    result = uvloop.run(main_async(args))
    print(json.dumps(result, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
