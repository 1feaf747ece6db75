"""forget_session against the real Mosquitto: a retired client id's persistent
session (its subscriptions and queued messages) is gone afterwards."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from citybrain.errors import ServiceError
from connectors.mqtt_kafka import parse_mqtt_url
from connectors.mqtt_sessions import forget_session


def connect_persistent(url: str, client_id: str) -> tuple[mqtt.Client, bool]:
    """Connect with clean_session=False; returns the client and whether the broker had a session for it."""
    host, port, user, password, _ = parse_mqtt_url(url)
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                    protocol=mqtt.MQTTv311)
    if user:
        c.username_pw_set(user, password)
    present: list[bool] = []
    done = threading.Event()

    def on_connect(_c: mqtt.Client, _u: object, flags: object, _r: object, _p: object = None) -> None:
        present.append(bool(getattr(flags, "session_present", False)))
        done.set()

    c.on_connect = on_connect
    c.connect(host, port, keepalive=10)
    c.loop_start()
    assert done.wait(10), "no CONNACK"
    return c, present[0]


def test_a_forgotten_session_is_not_resumed(mqtt_url: str) -> None:
    client_id = f"forget-{uuid.uuid4().hex[:8]}"
    c, present = connect_persistent(mqtt_url, client_id)
    assert not present
    c.subscribe(f"city/sensors/{client_id}/#", qos=1)
    c.disconnect()
    c.loop_stop()
    c, present = connect_persistent(mqtt_url, client_id)
    assert present, "the broker keeps a persistent session (the case forget_session exists for)"
    c.disconnect()
    c.loop_stop()

    forget_session(mqtt_url, client_id)

    c, present = connect_persistent(mqtt_url, client_id)
    try:
        assert not present, "the session survived forget_session"
    finally:
        c.disconnect()
        c.loop_stop()
        forget_session(mqtt_url, client_id)


def test_wrong_credentials_are_a_clear_error(mqtt_url: str) -> None:
    host, port, *_ = parse_mqtt_url(mqtt_url)
    with pytest.raises(ServiceError, match="refused"):
        forget_session(f"mqtt://nobody:wrong@{host}:{port}", "forget-denied")
