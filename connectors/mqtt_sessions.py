"""Ending a persistent MQTT session (clean_session=False) that nobody will resume.

Why: the broker keeps a persistent session's subscriptions and queues every
matching QoS 1 message for it until the client comes back. A connector
client id that is retired (a benchmark's, a test's, a decommissioned
instance's) would otherwise hold a growing queue of every sensor message on
the shared broker. Connecting once with the same client id and
clean_session=True makes the broker drop it.
"""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from citybrain.errors import ServiceError
from connectors.mqtt_kafka import parse_mqtt_url


def forget_session(url: str, client_id: str, timeout_s: float = 10.0) -> None:
    """Drop `client_id`'s persistent session on the broker at `url` (mqtt:// or mqtts://,
    credentials in the URL). Raises ServiceError when the broker does not accept the connection."""
    host, port, user, password, tls = parse_mqtt_url(url)
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=True, protocol=mqtt.MQTTv311)
    if user:
        client.username_pw_set(user, password)
    if tls:
        client.tls_set()
    answered = threading.Event()
    refused: list[str] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object = None) -> None:
        if getattr(reason, "is_failure", False):
            refused.append(str(reason))
        answered.set()

    client.on_connect = on_connect
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        # the CONNACK: by then the broker has dropped the old session
        if not answered.wait(timeout_s):
            raise ServiceError(f"MQTT broker {host}:{port} did not answer within {timeout_s:g} s")
        if refused:
            raise ServiceError(f"MQTT broker {host}:{port} refused {client_id!r}: {refused[0]}")
    finally:
        client.disconnect()
        client.loop_stop()
