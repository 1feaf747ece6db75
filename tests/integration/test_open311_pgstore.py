"""The Open311 intake's PostgreSQL store against the real database: the clear
PII is kept there (and only there), GET answers from it without PII."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from connectors.open311 import Open311Settings, create_app
from connectors.open311.store import PostgresStore
from schemas import HotlineEvent

pytestmark = pytest.mark.integration
NOW = datetime(2025, 1, 15, 8, 0, 5, tzinfo=UTC)


@pytest.fixture
async def conn(database_url: str, unique: str) -> AsyncIterator[Any]:
    c = await asyncpg.connect(database_url)
    schema = f"test_open311_{unique}"
    await c.execute(f"CREATE SCHEMA {schema}")
    await c.execute(f"SET search_path TO {schema}")
    try:
        yield c
    finally:
        await c.execute(f"DROP SCHEMA {schema} CASCADE")
        await c.close()


async def test_postgres_store_round_trip(conn: Any) -> None:
    store = PostgresStore(conn)
    await store.create_schema()
    await store.create_schema()  # idempotent
    events: list[HotlineEvent] = []

    async def sink(event: HotlineEvent) -> None:
        events.append(event)

    settings = Open311Settings(api_keys=(SecretStr("k"),), pii_key=SecretStr("p"))
    app = create_app(settings, sink, store=store, clock=lambda: NOW)
    body = {
        "api_key": "k", "service_code": "garbage", "lat": "39.9302", "long": "116.4171",
        "description": "垃圾桶满了三天没人清运", "first_name": "芳", "last_name": "赵",
        "phone": "13566667777", "email": "zhao.fang@example.cn", "media_url": "https://img.example.cn/1.jpg",
    }  # fmt: skip
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t/open311/v2") as c:
        ids = []
        for hours_ago in (1, 50):
            when = (NOW - timedelta(hours=hours_ago)).isoformat()
            r = await c.post("/requests.json", data={**body, "requested_datetime": when})
            assert r.status_code == 201, r.text
            ids.append(r.json()[0]["service_request_id"])

        (one,) = (await c.get(f"/requests/{ids[0]}.json")).json()
        assert one["service_code"] == "garbage" and one["media_url"] == "https://img.example.cn/1.jpg"
        assert "13566667777" not in str(one) and "赵" not in str(one)
        listed = (await c.get("/requests.json")).json()
        assert [r["service_request_id"] for r in listed] == ids  # newest first
        recent = (await c.get("/requests.json", params={"start_date": (NOW - timedelta(hours=2)).isoformat()})).json()
        assert [r["service_request_id"] for r in recent] == [ids[0]]
        assert (await c.get("/requests.json", params={"status": "closed"})).json() == []
        assert len((await c.get("/requests.json", params={"status": "open"})).json()) == 2
        assert len((await c.get("/requests.json", params={"service_request_id": ",".join(ids)})).json()) == 2
        assert (await c.get("/requests.json", params={"service_code": "noise"})).json() == []

    row = await conn.fetchrow("SELECT phone, last_name, event FROM open311_requests WHERE service_request_id = $1", ids[0])
    assert row["phone"] == "13566667777" and row["last_name"] == "赵"
    assert "13566667777" not in row["event"]
    stored = await store.get(ids[0])
    assert stored is not None and stored.event == events[0]
    assert "13566667777" not in repr(stored.caller)
