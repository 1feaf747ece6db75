"""Issue 2's slice on the real stack: MQTT -> connector -> Kafka -> worker ->
alert topics, and -> writer -> PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import orjson

from citybrain.dlq import H_REASON, decode_headers
from tests.e2e.conftest import MqttPublisher, Pipeline


def reading(run: str, i: int, value: float, sensor: str | None = None) -> dict:
    return {
        "event_id": f"slice-{run}-{i}",
        "sensor_id": sensor or f"slice-{run}-s{i % 5}",
        "sensor_type": "pm25",
        "value": value,
        "unit": "ug/m3",
        "ts": (datetime.now(UTC) - timedelta(seconds=60 - i)).isoformat(),
        "location": {"district": "朝阳区", "street": "望京街道", "lat": 39.99, "lon": 116.47},
    }


async def test_readings_stored_once_alert_fanned_out_bad_payload_dead_lettered(
    pipeline: Pipeline, publisher: MqttPublisher
) -> None:
    run = pipeline.run
    n = 40
    for i in range(n):
        publisher.publish(f"city/sensors/slice-{run}-s{i % 5}", json.dumps(reading(run, i, 20.0 + i % 7)).encode())
    # a malformed payload in the middle: dead-lettered, the connector keeps going
    publisher.publish(f"city/sensors/slice-{run}-bad", b'{"sensor_id": "x", "value": ')
    hot = reading(run, n, 320.0, sensor=f"slice-{run}-hot")
    publisher.publish(f"city/sensors/slice-{run}-hot", json.dumps(hot).encode())
    # a redelivery of the same reading must not create a second row or alert
    publisher.publish(f"city/sensors/slice-{run}-hot", json.dumps(hot).encode())
    for i in range(n + 1, n + 6):
        publisher.publish(f"city/sensors/slice-{run}-s0", json.dumps(reading(run, i, 30.0)).encode())

    rows = await pipeline.wait_db(
        "SELECT event_id, count(*) AS c FROM readings WHERE event_id LIKE $1 GROUP BY event_id",
        f"slice-{run}-%",
        until=lambda r: len(r) >= n + 6,
    )
    assert len(rows) == n + 6, "every published reading is stored"
    assert all(r["c"] == 1 for r in rows), "and exactly once"

    alerts = await pipeline.consume(pipeline.topics.alerts, until=lambda got: len(got) >= 1, timeout=30)
    dept = await pipeline.consume(pipeline.topics.dept("eeb"), until=lambda got: len(got) >= 1, timeout=30)
    assert len(alerts) == 1 and len(dept) == 1
    alert = orjson.loads(alerts[0].value)
    assert alert["subject"] == f"slice-{run}-hot"
    assert alert["severity"] == "I" and alert["colour"] == "red"
    assert alert["evidence"]["detector"] == "aqi_threshold"
    assert "eeb" in alert["departments"]
    assert orjson.loads(dept[0].value)["alert_id"] == alert["alert_id"] == alerts[0].key.decode()

    stored = await pipeline.wait_db(
        "SELECT alert_id FROM alerts WHERE alert_id = $1", alert["alert_id"], until=lambda r: len(r) == 1
    )
    assert len(stored) == 1

    dlq = await pipeline.consume(pipeline.topics.dlq, until=lambda got: len(got) >= 1, timeout=30)
    assert len(dlq) == 1
    headers = decode_headers(dlq[0].headers)
    assert headers[H_REASON] == "malformed_json"
    assert dlq[0].value == b'{"sensor_id": "x", "value": '
    pipeline.sup.check_alive()
