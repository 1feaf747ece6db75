"""Audit trail and secured listeners: appends per second (one writer and
several, serialised by the advisory lock), `verify` entries per second, and
the connection cost of SCRAM on Kafka and TLS on MQTT against the plain
loopback listeners.

Runs on the local stack (`.run/stack.env` sourced); the audit rows go to a
schema of their own, dropped afterwards. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

import asyncpg

from bench.common import conditions
from citybrain.errors import ConfigError
from storage.audit import append_audit, verify
from storage.db import connect
from storage.migrate import migrate


def _env(name: str) -> str:
    v = os.environ.get(name)
    if not v:
        raise ConfigError(f"{name} is not set: source .run/stack.env (deploy/local/stack.sh up)")
    return v


async def audit_figures(url: str, n: int, writers: int) -> dict[str, float]:
    schema = f"bench_audit_{uuid.uuid4().hex[:8]}"
    await migrate(url, schema)
    try:
        conn = await connect(url, schema, "bench-audit")
        t0 = time.perf_counter()
        for i in range(n):
            await append_audit(conn, actor="bench", kind="alert.ack", subject=f"a-{i}",
                               details={"i": i, "comment": "acknowledged, crew on the way"}, at=datetime.now(UTC))
        one = n / (time.perf_counter() - t0)
        conns = [await connect(url, schema, "bench-audit") for _ in range(writers)]

        async def w(c: asyncpg.Connection, k: int) -> None:
            for i in range(n // writers):
                await append_audit(c, actor=f"w{k}", kind="mode.switch", subject="city", details={"i": i},
                                   at=datetime.now(UTC))

        t0 = time.perf_counter()
        await asyncio.gather(*(w(c, k) for k, c in enumerate(conns)))
        many = (n // writers * writers) / (time.perf_counter() - t0)
        for c in conns:
            await c.close()
        total = await conn.fetchval("SELECT count(*) FROM audit_log")
        t0 = time.perf_counter()
        assert await verify(conn) is None
        ver = total / (time.perf_counter() - t0)
        await conn.close()
    finally:
        c = await asyncpg.connect(url)
        await c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await c.close()
    return {"appends_per_s_1_writer": round(one), f"appends_per_s_{writers}_writers": round(many),
            "verify_entries_per_s": round(ver), "entries_verified": int(total)}


async def kafka_connect_ms(bootstrap: str, kwargs: dict[str, object], runs: int) -> float:
    from aiokafka import AIOKafkaProducer

    times = []
    for _ in range(runs):
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, **kwargs)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        await p.start()
        times.append((time.perf_counter() - t0) * 1000)
        await p.stop()
    return round(statistics.median(times), 1)


def mqtt_connect_ms(url: str, ca: str | None, runs: int) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    u = urlparse(url)
    times = []
    for _ in range(runs):
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        c.username_pw_set(unquote(u.username or ""), unquote(u.password or ""))
        if ca:
            c.tls_set(ca_certs=ca)
        done = threading.Event()
        c.on_connect = lambda *a, _done=done, **k: _done.set()
        t0 = time.perf_counter()
        c.connect(u.hostname or "127.0.0.1", u.port or 1883)
        c.loop_start()
        if not done.wait(30):
            raise ConfigError(f"no CONNACK from {u.hostname}:{u.port}")
        times.append((time.perf_counter() - t0) * 1000)
        c.disconnect()
        c.loop_stop()
    return round(statistics.median(times), 1)


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    from citybrain.kafka_security import scram

    out: dict[str, object] = {"bench": "audit"}
    out.update(await audit_figures(_env("DATABASE_URL"), args.entries, args.writers))
    admin = Path(_env("CITYBRAIN_SECRETS_DIR")) / "kafka-admin"
    out["kafka_connect_ms_plaintext"] = await kafka_connect_ms(_env("KAFKA_BOOTSTRAP_SERVERS"), {}, args.runs)
    out["kafka_connect_ms_scram_sha512"] = await kafka_connect_ms(
        _env("KAFKA_SASL_BOOTSTRAP"), scram("admin", admin.read_text().strip()).aiokafka_kwargs(), args.runs)
    out["mqtt_connect_ms_plain"] = mqtt_connect_ms(_env("MQTT_URL"), None, args.runs)
    out["mqtt_connect_ms_tls"] = mqtt_connect_ms(_env("MQTT_TLS_URL"), _env("MQTT_CA_FILE"), args.runs)
    out.update(conditions())
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.audit", description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=2000, help="audit entries per phase")
    p.add_argument("--writers", type=int, default=8, help="concurrent writers in the second phase")
    p.add_argument("--runs", type=int, default=10, help="connections per listener")
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    for k, v in result.items():
        print(f"{k:32} {v}")
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
