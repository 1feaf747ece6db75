"""`citybrain demo`: the live pipeline on the local stack, fed by the city
simulator, with alerts printed as they arrive. Ctrl-C stops everything."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from citybrain.kafka_admin import ensure_topics, pipeline_topics
from citybrain.supervisor import Supervisor
from citybrain.topics import LIVE
from schemas.common import COLOUR_ZH

ROOT = Path(__file__).resolve().parent.parent
ANSI = {"blue": "\033[34m", "yellow": "\033[33m", "orange": "\033[38;5;208m", "red": "\033[31m"}


async def _tail_alerts(bootstrap: str, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(LIVE.alerts, bootstrap_servers=bootstrap, auto_offset_reset="latest", group_id=None)
    await consumer.start()
    try:
        while not stop.is_set():
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                for m in msgs:
                    a = orjson.loads(m.value)
                    colour = a.get("colour", "")
                    loc = a["location"]
                    print(
                        f"{ANSI.get(colour, '')}[{a['severity']:>3} {COLOUR_ZH.get(colour, colour)}]\033[0m "
                        f"{a['status']:<10} {loc['district']}{loc.get('street') or ''} {a['title']} "
                        f"-> {', '.join(a['departments']) or '-'}  ({a['alert_id']} r{a['revision']})",
                        flush=True,
                    )
    finally:
        await consumer.stop()


async def _run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    await ensure_topics(bootstrap, pipeline_topics(LIVE, 4))
    await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "citybrain.cli", "db", "migrate"], env=env, check=True
    )
    sup = Supervisor(ROOT / ".run" / "demo", base_env=env)
    sup.start("connector", ["connector"])
    sup.start("worker", ["worker"])
    sup.start("writer", ["writer"])
    if args.dashboard:
        sup.start("opscenter", ["opscenter", "--port", str(args.port), "--demo"])
    sim_args = ["sim", "run", "--scenario", "demo", "--speed", str(args.speed), "--seed", str(args.seed)]
    if args.duration:
        sim_args += ["--duration", args.duration]
    sup.start("simulator", sim_args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        "City brain demo running. Where to look:\n"
        f"  dashboard : http://127.0.0.1:{args.port}/  (open the #token=... URL printed in .run/demo/opscenter.log)\n"
        f"  topics    : {LIVE.readings}, {LIVE.alerts}, {LIVE.dept('eeb')}, {LIVE.dlq}\n"
        "  database  : psql \"$DATABASE_URL\" -c 'SELECT alert_id, severity, status, title FROM alerts "
        "ORDER BY last_seen DESC LIMIT 10'\n"
        f"  logs      : {sup.log_dir}/\n"
        "Alerts as they arrive (Ctrl-C to stop):",
        flush=True,
    )
    tail = asyncio.create_task(_tail_alerts(bootstrap, stop))
    rc = 0
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=2)
            for child in sup.children.values():
                if child.name != "simulator" and child.proc is not None and child.proc.poll() is not None:
                    print(f"demo: {child.name} exited (code {child.proc.returncode}); see {child.log_path}")
                    stop.set()
                    rc = 1
    finally:
        print("stopping ...", flush=True)
        sup.stop_all()
        await tail
    return rc


def _cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the live pipeline fed by the simulated city (Ctrl-C stops)")
    p.add_argument("--port", type=int, default=8080, help="dashboard port")
    p.add_argument("--speed", type=float, default=60.0, help="simulated seconds per wall-clock second")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--duration", default="", help="simulated duration, e.g. 6h (default: the scenario's)")
    p.add_argument("--no-dashboard", dest="dashboard", action="store_false")
    p.set_defaults(func=_cmd_demo)
