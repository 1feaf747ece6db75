"""The connector's MQTT client runs on its asyncio loop (no paho network
thread): it must still reconnect by itself when the broker drops it, and the
persistent session must bring back everything it had not acknowledged.
Real Mosquitto, real Kafka."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaConsumer
from paho.mqtt.enums import CallbackAPIVersion

from citybrain.kafka_admin import ensure_topics
from citybrain.topics import Topics
from connectors.mqtt_kafka import (
    MqttKafkaConnector,
    MqttKafkaSettings,
    _more_to_read,
    default_routes,
    parse_mqtt_url,
)
from connectors.mqtt_sessions import forget_session
from connectors.registry import DeviceRegistry
from tests.e2e.conftest import MqttPublisher
from tests.integration.conftest import noise_reading as reading


def take_over_session(url: str, client_id: str) -> bool:
    """Connect with the connector's client id and persistent session, which makes
    the broker drop the connector's connection; acknowledge nothing and leave.
    Returns the CONNACK's session-present flag (the connector's session)."""
    host, port, user, password, _ = parse_mqtt_url(url)
    thief = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                        clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
    if user:
        thief.username_pw_set(user, password)
    connack: dict[str, Any] = {}
    thief.on_connect = lambda c, u, flags, rc, props=None: connack.update(flags=flags, rc=rc)
    thief.connect(host, port, keepalive=10)
    deadline = time.monotonic() + 30
    while "rc" not in connack and time.monotonic() < deadline:
        thief.loop(timeout=0.2)  # reads CONNACK; messages the session delivers are never acknowledged
    sock = thief.socket()
    if sock is not None:  # (the connector may already have taken its session back)
        sock.close()  # gone without DISCONNECT or PUBACK: the session keeps every message for the connector
    assert "rc" in connack, "the broker did not answer the takeover"
    assert not connack["rc"].is_failure, connack
    return bool(connack["flags"].session_present)


async def test_broker_drops_the_connector_it_reconnects_and_loses_nothing(
    kafka_bootstrap: str, mqtt_url: str, mqtt_publish_url: str
) -> None:
    run = uuid.uuid4().hex[:8]
    topics = Topics(f"ml{run}.")
    await ensure_topics(kafka_bootstrap, {topics.readings: 4, topics.hotline: 1, topics.dlq: 1})
    client_id = f"ml-conn-{run}"
    settings = MqttKafkaSettings(
        mqtt_url=mqtt_url, kafka_bootstrap_servers=kafka_bootstrap, client_id=client_id,
        topic_prefix=topics.prefix, subscriptions=(f"city/sensors/{run}/#",))  # type: ignore[call-arg, arg-type]
    connector = MqttKafkaConnector(settings, default_routes(), clock=lambda: datetime.now(UTC),
                                   registry=DeviceRegistry.sample())
    await connector.setup()
    runner = asyncio.create_task(connector.run())
    pub = MqttPublisher(mqtt_publish_url, f"ml-pub-{run}")
    acked: set[str] = set()
    stop = threading.Event()

    def publish_until_stopped() -> None:
        i = 0
        while not stop.is_set():
            d = reading(run, i)
            pub.publish(f"city/sensors/{run}/x", json.dumps(d).encode(), timeout=60)
            acked.add(d["event_id"])
            i += 1
            time.sleep(0.002)

    publisher = threading.Thread(target=publish_until_stopped, daemon=True)
    consumer = AIOKafkaConsumer(topics.readings, bootstrap_servers=kafka_bootstrap,
                                auto_offset_reset="earliest", group_id=None)
    try:
        publisher.start()
        await asyncio.sleep(1.5)
        before = connector.acked_messages
        assert before > 0, "the connector acknowledged nothing before the takeover"
        session_present = await asyncio.to_thread(take_over_session, mqtt_url, client_id)
        assert session_present, "the connector's persistent session was not there to take over"
        # messages published from now on need the connector to have reconnected
        after_takeover = connector.acked_messages
        for _ in range(300):  # up to 60 s on a loaded machine; reconnecting takes about 1 s
            if connector.acked_messages >= after_takeover + 200:
                break
            await asyncio.sleep(0.2)
        assert connector.acked_messages >= after_takeover + 200, "the connector did not reconnect and resume"
    finally:
        stop.set()
        await asyncio.to_thread(publisher.join, 90)
        pub.close()
    seen: set[str] = set()
    await consumer.start()
    try:
        deadline = time.monotonic() + 90
        while not acked <= seen and time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                seen.update(json.loads(r.value)["event_id"] for r in recs)
    finally:
        await consumer.stop()
        await connector.stop()
        await runner
        await connector.close()
        await asyncio.to_thread(forget_session, mqtt_url, client_id)
    missing = acked - seen
    assert not missing, f"{len(missing)} of {len(acked)} readings the broker acknowledged are not in Kafka"
    assert connector.metrics.snapshot()["received"] >= len(acked)


def test_more_to_read_sees_data_and_the_end_of_the_stream_but_does_not_consume() -> None:
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        assert not _more_to_read(a)
        b.sendall(b"\x30\x02xy")
        time.sleep(0.05)
        assert _more_to_read(a)
        assert a.recv(16) == b"\x30\x02xy", "peeking consumed bytes"
        assert not _more_to_read(a)
        b.close()
        assert _more_to_read(a), "the peer's close must be read by paho, not waited on"
    finally:
        a.close()
