"""`citybrain dlq list` / `redrive` against the real broker."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from citybrain.cli import main
from citybrain.dlq import dlq_headers
from citybrain.kafka_admin import ensure_topics, pipeline_topics
from citybrain.topics import Topics


async def test_list_and_redrive(
    kafka_bootstrap: str, unique: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    topics = Topics(f"dlq{unique}.")
    await ensure_topics(kafka_bootstrap, pipeline_topics(topics, 1))
    now = datetime.now(UTC)
    good = {
        "event_id": f"dlq-{unique}",
        "sensor_id": "s-1",
        "sensor_type": "co",
        "value": 1.5,
        "unit": "mg/m3",
        "ts": now.isoformat(),
        "location": {"district": "西城区", "lat": 39.91, "lon": 116.37},
    }
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    common = {"component": "test", "stage": "decode", "at": now}
    # rejected by a decoder bug since fixed: decodes now
    await producer.send_and_wait(
        topics.dlq, json.dumps(good).encode(), key=b"k",
        headers=dlq_headers(reason="decoder_error", message="boom", source="mqtt:city/sensors/s-1", **common),
    )  # fmt: skip
    # genuinely malformed: stays rejected
    await producer.send_and_wait(
        topics.dlq, b"{nope", key=b"k",
        headers=dlq_headers(reason="malformed_json", message="bad", source="mqtt:city/sensors/s-2", **common),
    )  # fmt: skip
    await producer.stop()
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)

    assert await asyncio.to_thread(main, ["dlq", "list", "--topic-prefix", topics.prefix]) == 0
    out = capsys.readouterr().out
    assert "decoder_error" in out and "malformed_json" in out and "2 record(s)" in out

    assert await asyncio.to_thread(main, ["dlq", "redrive", "--reason", "decoder_error", "--topic-prefix", topics.prefix]) == 0
    assert "re-submitted 1 event(s)" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["dlq", "redrive", "--reason", "malformed_json", "--topic-prefix", topics.prefix]) == 1
    assert "1 still rejected" in capsys.readouterr().out

    consumer = AIOKafkaConsumer(topics.readings, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()
    values = [json.loads(m.value) for msgs in batch.values() for m in msgs]
    assert [v["event_id"] for v in values] == [f"dlq-{unique}"]


def test_bad_cli_argument_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["dlq", "list", "--limit", "many"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--limit" in err and "--help" in err
