"""A device speaks only for itself: on its own topic (the broker's ACL lets a
device write `city/sensors/<its id>` and nothing else) the connector accepts
that device's readings and dead-letters readings claiming another sensor.
Pure: the connector's decoding step, no broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import pytest

from citybrain.dlq import H_REASON, decode_headers
from connectors.base import DecodeContext
from connectors.mqtt_kafka import MqttKafkaConnector, MqttKafkaSettings, default_routes
from connectors.registry import DeviceRegistry

NOW = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
OWN = "bj-cy-aq-0001-pm25"
OTHER = "bj-cy-aq-0001-pm10"


def reading(sensor_id: str, ty: str = "pm25") -> dict:
    return {"event_id": f"e-{sensor_id}", "sensor_id": sensor_id, "sensor_type": ty, "value": 42.0,
            "unit": "ug/m3", "ts": NOW.isoformat(), "location": {"district": "朝阳区", "lat": 39.99, "lon": 116.47}}


@pytest.fixture
def connector() -> MqttKafkaConnector:
    s = MqttKafkaSettings(mqtt_url="mqtt://u:p@127.0.0.1:1", kafka_bootstrap_servers="127.0.0.1:1",
                          topic_prefix="t.")  # type: ignore[call-arg]
    return MqttKafkaConnector(s, default_routes(), clock=lambda: NOW, registry=DeviceRegistry.sample())


def records(c: MqttKafkaConnector, topic: str, payload: object) -> list[tuple[str, bytes | None, str | None]]:
    msg = mqtt.MQTTMessage(mid=1, topic=topic.encode())
    msg.payload = json.dumps(payload).encode()
    pending = c._records_for(msg, DecodeContext(now=NOW, registry=c.registry))
    return [(t, k, decode_headers(h).get(H_REASON) if h else None) for t, k, _, h in pending.records]


def test_a_device_on_its_own_topic_is_ingested(connector: MqttKafkaConnector) -> None:
    assert records(connector, f"city/sensors/{OWN}", reading(OWN)) == [("t.city.sensor.readings", OWN.encode(), None)]


@pytest.mark.parametrize("payload", [reading(OTHER, "pm10"), {"readings": [reading(OWN), reading(OTHER, "pm10")]}])
def test_a_device_claiming_another_sensor_is_dead_lettered(connector: MqttKafkaConnector, payload: object) -> None:
    (rec,) = records(connector, f"city/sensors/{OWN}", payload)
    assert rec[0] == "t.city.dlq" and rec[2] == "foreign_sensor"


def test_other_topics_imply_no_device(connector: MqttKafkaConnector) -> None:
    # the simulator / a gateway publishes batches of many sensors under its own topics
    got = records(connector, "city/sensors/gateway-7", {"readings": [reading(OWN), reading(OTHER, "pm10")]})
    assert [r[1] for r in got] == [OWN.encode(), OTHER.encode()] and all(r[2] is None for r in got)
