"""The Open311 intake served by uvicorn on loopback, driven by a plain HTTP
client, handing events to the real Kafka broker; a real consumer reads them back."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from citybrain.kafka_admin import ensure_topics
from citybrain.topics import Topics
from connectors.open311 import Open311Settings, create_app
from connectors.open311.sink import KafkaHotlineSink
from schemas import HotlineCategory, HotlineEvent

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def intake(kafka_bootstrap: str, unique: str) -> AsyncIterator[tuple[str, str]]:
    topic = Topics(prefix=f"test.open311.{unique}.").hotline
    await ensure_topics(kafka_bootstrap, {topic: 1})
    settings = Open311Settings(
        api_keys=(SecretStr(f"key-{unique}"),),
        pii_key=SecretStr("integration-pii-key"),
        kafka_bootstrap_servers=kafka_bootstrap,
    )
    sink = KafkaHotlineSink(kafka_bootstrap, topic)
    await sink.start()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, sink), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(100):
            if server.started:
                break
            await asyncio.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}/open311/v2", topic
    finally:
        server.should_exit = True
        await task
        await sink.stop()


async def test_create_list_fetch_and_read_back_from_kafka(
    intake: tuple[str, str], kafka_bootstrap: str, unique: str
) -> None:
    base, topic = intake
    form = {
        "api_key": f"key-{unique}",
        "service_code": "gas_smell",
        "lat": "39.9203",
        "long": "116.4624",
        "description": "楼道里燃气味很重，请尽快处理，电话13700001111",
        "first_name": "敏",
        "last_name": "张",
        "phone": "13700001111",
        "email": "zhang.min@example.cn",
    }
    async with httpx.AsyncClient(base_url=base, timeout=20) as client:
        services = (await client.get("/services.json")).json()
        assert "gas_smell" in {s["service_code"] for s in services}

        created = await client.post("/requests.json", data=form)
        assert created.status_code == 201, created.text
        rid = created.json()[0]["service_request_id"]

        (fetched,) = (await client.get(f"/requests/{rid}.json")).json()
        assert fetched["service_code"] == "gas_smell" and fetched["status"] == "open"
        assert "13700001111" not in fetched["description"]
        listed = (await client.get("/requests.json", params={"service_code": "gas_smell"})).json()
        assert [r["service_request_id"] for r in listed] == [rid]

        bad = await client.post("/requests.json", data={**form, "lat": "not-a-number"})
        assert bad.status_code == 400 and bad.json()[0]["code"] == 400 and "lat" in bad.json()[0]["description"]
        forbidden = await client.post("/requests.json", data={**form, "api_key": "wrong"})
        assert forbidden.status_code == 403 and forbidden.json() == [
            {"code": 403, "description": "api_key is not valid"}
        ]

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"test-open311-{unique}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=15_000, max_records=10)
        records = [r for rs in batches.values() for r in rs]
        for _ in range(5):
            if records:
                break
            batches = await consumer.getmany(timeout_ms=3_000, max_records=10)
            records = [r for rs in batches.values() for r in rs]
    finally:
        await consumer.stop()

    assert len(records) == 1, "exactly the one accepted request reached Kafka"
    rec = records[0]
    assert rec.key == rid.encode()
    raw = rec.value.decode()
    for pii in ("13700001111", "张", "zhang.min"):
        assert pii not in raw
    event = HotlineEvent.from_json(rec.value)
    assert event.ticket_id == rid and event.kind == "created" and event.channel == "open311"
    assert event.category is HotlineCategory.GAS_SMELL and event.urgency == "urgent"
    assert event.location.district == "朝阳区" and event.location.street == "呼家楼街道"
    assert event.caller_ref and event.caller_ref.startswith("c-")
    assert abs((event.ts - datetime.now(UTC)).total_seconds()) < 120
