"""Helpers shared by the opscenter's tests and its benchmark: a migrated schema
of one's own, storing wire models through storage's own merge, alert
factories, and the app served by uvicorn in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import uvicorn

from schemas import Alert
from storage.db import connect, current_flavor
from storage.rows import SPECS


async def migrate_schema(database_url: str, schema: str) -> None:
    from storage.migrate import migrate

    await migrate(database_url, schema)


async def drop_schema(database_url: str, schema: str) -> None:
    conn = await connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def store(database_url: str, schema: str, kind: str, models: Iterable[Any], chunk: int = 20000) -> int:
    """Write wire models (kind: readings, hotline, alerts, actions, incidents)
    exactly as the storage writer does."""
    from storage.writer import write_rows

    spec = SPECS[kind]
    assert spec.to_row is not None
    conn = await connect(database_url, schema, "citybrain-opscenter-seed")
    try:
        await conn.execute(spec.stage_ddl())
        flavor = await current_flavor(conn)
        rows = [spec.to_row(m) for m in models]
        n = 0
        for i in range(0, len(rows), chunk):
            n += await write_rows(conn, spec, rows[i:i + chunk], flavor)
        return n
    finally:
        await conn.close()


def make_alert(alert_id: str, first_seen: datetime, **over: Any) -> Alert:
    base: dict[str, Any] = {
        "alert_id": alert_id,
        "rule": "pm25-iaqi",
        "subject": "aq-chaoyang-001",
        "category": "air",
        "sensor_type": "pm25",
        "severity": "III",
        "status": "new",
        "title": "PM2.5 24h IAQI above 150",
        "location": {"district": "朝阳区", "street": "望京街道", "grid": "g-1", "lat": 39.996, "lon": 116.47},
        "departments": ["eeb"],
        "first_seen": first_seen,
        "last_seen": first_seen + timedelta(minutes=10),
        "revision": 1,
        "evidence": {
            "detector": "aqi", "detector_version": "1", "statistic": "pm25 1h mean", "value": 160.0,
            "threshold": 150.0, "window_start": first_seen - timedelta(hours=1), "window_end": first_seen,
            "details": {"baseline": 60.0},
        },
    }
    for k, v in over.items():
        if k == "evidence":
            base["evidence"] = {**base["evidence"], **v}
        else:
            base[k] = v
    return Alert.model_validate(base)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """uvicorn in a thread of its own (its own event loop)."""

    def __init__(self, app: Any, port: int | None = None, timeout: float = 30) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, name="opscenter-test-server", daemon=True)
        self.timeout = timeout

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("opscenter test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
