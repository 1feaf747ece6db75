"""`citybrain demo`: the live pipeline on the local stack, fed by the city
simulator, with alerts printed as they arrive. Ctrl-C stops everything.

On the local stack every process speaks to Kafka on the authenticated
listener as its own principal (connector, worker, writer, opscenter; the
Open311 intake writes hotline events as `connector`), with the ACLs of
`citybrain security bootstrap`: the demo depends on no open broker. Services
given from outside (KAFKA_BOOTSTRAP_SERVERS without the local stack's SASL
listener) are used with the security settings of the environment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from citybrain.kafka_admin import department_topics, ensure_topics, pipeline_topics
from citybrain.kafka_security import KafkaSecurity, scram, without_passwords
from citybrain.supervisor import Supervisor
from citybrain.topics import LIVE
from schemas.common import COLOUR_ZH

ROOT = Path(__file__).resolve().parent.parent
ANSI = {"blue": "\033[34m", "yellow": "\033[33m", "orange": "\033[38;5;208m", "red": "\033[31m"}


# the processes the demo starts, and the Kafka principal each runs as
PRINCIPALS = {"connector": "connector", "open311": "connector", "worker": "worker", "alerts": "worker",
              "writer": "writer", "opscenter": "opscenter"}


def kafka_env(env: dict[str, str], principal: str) -> dict[str, str]:
    """The environment overrides that put a process on the local stack's SASL
    listener as `principal` ({} when the stack has no such listener: Kafka was
    given from outside, with its own settings)."""
    sec = _principal(env, principal)
    return {} if sec is None else {"KAFKA_BOOTSTRAP_SERVERS": env["KAFKA_SASL_BOOTSTRAP"], **sec.to_env()}


def _principal(env: dict[str, str], principal: str) -> KafkaSecurity | None:
    sasl = env.get("KAFKA_SASL_BOOTSTRAP")
    password = env.get(f"KAFKA_{principal.upper()}_PASSWORD")
    return scram(principal, password) if sasl and password else None


def kafka_client(env: dict[str, str], principal: str) -> tuple[str, dict[str, Any]]:
    """(bootstrap, aiokafka kwargs) for the demo's own clients, as `principal`."""
    sec = _principal(env, principal)
    if sec is None:
        return env["KAFKA_BOOTSTRAP_SERVERS"], KafkaSecurity().aiokafka_kwargs()
    return env["KAFKA_SASL_BOOTSTRAP"], sec.aiokafka_kwargs()


async def _tail_alerts(env: dict[str, str], stop: asyncio.Event) -> None:
    bootstrap, kwargs = kafka_client(env, "opscenter")  # what the operations center may read
    consumer = AIOKafkaConsumer(LIVE.alerts, bootstrap_servers=bootstrap, auto_offset_reset="latest", group_id=None,
                                **kwargs)
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
    bootstrap, admin_kwargs = kafka_client(env, "admin")
    from streams.routing import load_registry  # the default rules' departments, as the worker loads them

    wanted = pipeline_topics(LIVE, 4) | department_topics(LIVE, load_registry().departments, 4)
    await ensure_topics(bootstrap, wanted, client_kwargs=admin_kwargs)
    await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "citybrain.cli", "db", "migrate"], env=env, check=True
    )
    # the children's common environment carries no Kafka password: each gets its own principal's
    base = without_passwords(env)
    sup = Supervisor(ROOT / ".run" / "demo", base_env=base)

    def start(name: str, args_: list[str], extra: dict[str, str] | None = None) -> None:
        sup.start(name, args_, env={**kafka_env(env, PRINCIPALS[name]), **(extra or {})})

    start("connector", ["connector"])
    # the worker in two halves: an alert's way to its departments never queues behind
    # the readings' detection (streams/README.md; bench.e2e measures it)
    start("worker", ["worker"], {"WORKER_ROLE": "detect"})
    start("alerts", ["worker"], {"WORKER_ROLE": "alerts"})
    start("writer", ["writer"])
    open311_key = secrets.token_urlsafe(12)
    start("open311", ["open311", "--port", str(args.open311_port)],
          {"OPEN311_API_KEYS": open311_key, "OPEN311_PII_KEY": env.get("CONNECTOR_PII_KEY", "")})
    if args.dashboard:
        # replays started from the dashboard run as the `replay` principal (opscenter.replays)
        replay_pw = {"KAFKA_REPLAY_PASSWORD": env["KAFKA_REPLAY_PASSWORD"]} if "KAFKA_REPLAY_PASSWORD" in env else {}
        start("opscenter", ["opscenter", "--port", str(args.port), "--demo"], replay_pw)
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
        f"  open311   : http://127.0.0.1:{args.open311_port}/open311/v2/services.json  (api_key={open311_key})\n"
        f"              curl -d api_key={open311_key} -d service_code=noise -d lat=39.92 -d long=116.44 "
        f"-d 'description=工地夜间施工' http://127.0.0.1:{args.open311_port}/open311/v2/requests.json\n"
        f"  topics    : {LIVE.readings}, {LIVE.alerts}, {LIVE.dept('eeb')}, {LIVE.dlq}\n"
        "  database  : psql \"$DATABASE_URL\" -c 'SELECT alert_id, severity, status, title FROM alerts "
        "ORDER BY last_seen DESC LIMIT 10'\n"
        f"  logs      : {sup.log_dir}/\n"
        "Alerts as they arrive (Ctrl-C to stop):",
        flush=True,
    )
    tail = asyncio.create_task(_tail_alerts(env, stop))
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
    p.add_argument("--open311-port", type=int, default=8311, help="Open311 intake port")
    p.add_argument("--speed", type=float, default=60.0, help="simulated seconds per wall-clock second")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--duration", default="", help="simulated duration, e.g. 6h (default: the scenario's)")
    p.add_argument("--no-dashboard", dest="dashboard", action="store_false")
    p.set_defaults(func=_cmd_demo)
