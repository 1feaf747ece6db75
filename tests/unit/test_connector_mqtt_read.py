"""The connector parses QoS 1 PUBLISH packets itself and hands every other
packet to paho whole: however the bytes are split across reads, every message
comes out once, in order, with its topic, packet id and payload, and paho
still sees its packets (SUBACK, PINGRESP, a QoS 0 PUBLISH). Pure: a socketpair
plays the broker."""

from __future__ import annotations

import socket
import struct
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from connectors.mqtt_kafka import MqttKafkaConnector, MqttKafkaSettings, _ReadAhead, default_routes
from connectors.mqtt_wire import publish_packet as publish

SUBACK = bytes([0x90, 3]) + struct.pack("!H", 7) + b"\x01"
PINGRESP = b"\xd0\x00"


class Harness:
    def __init__(self) -> None:
        s = MqttKafkaSettings(mqtt_url="mqtt://u:p@127.0.0.1:1", kafka_bootstrap_servers="127.0.0.1:1",
                              topic_prefix="t.")  # type: ignore[call-arg, arg-type]
        self.connector = MqttKafkaConnector(s, default_routes(), clock=lambda: datetime.now(UTC))
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="t",
                             clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
        self.subacks: list[int] = []
        client.on_subscribe = lambda c, u, mid, rcs, props=None: self.subacks.append(mid)
        client.on_message = self.connector._on_message
        self.broker, mine = socket.socketpair()
        mine.setblocking(False)
        self.ahead = _ReadAhead(mine)
        client._sock = self.ahead  # as _on_socket_open does
        self.client = client
        self.connector._client = client

    def feed(self, data: bytes) -> None:
        self.broker.sendall(data)
        self.connector._on_readable_ahead(self.ahead)

    def messages(self) -> list[tuple[str, bytes, int, int]]:
        return [(m.topic, bytes(m.payload), m.mid if m.qos else 0, m.qos) for m in self.connector._inbox]

    def close(self) -> None:
        self.broker.close()
        self.ahead.sock.close()


messages_st = st.lists(
    st.tuples(
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FFF, exclude_characters="+#"), min_size=1,
                max_size=40),
        st.binary(max_size=300) | st.sampled_from([b"x" * 200, b"y" * 17000]),  # 2- and 3-byte lengths
        st.integers(1, 65535),
        st.sampled_from(["qos1", "qos1-dup", "qos0", "suback", "pingresp"]),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(messages_st, st.lists(st.integers(1, 400), min_size=1, max_size=50))
def test_every_message_once_in_order_however_the_stream_is_cut(
    packets: list[tuple[str, bytes, int, str]], cuts: list[int]
) -> None:
    h = Harness()
    try:
        stream = b""
        expected: list[tuple[str, bytes, int, int]] = []
        subacks = 0
        for topic, payload, mid, kind in packets:
            if kind == "suback":
                stream += SUBACK
                subacks += 1
            elif kind == "pingresp":
                stream += PINGRESP
            elif kind == "qos0":
                stream += publish(topic, payload, 0, qos=0)
                expected.append((topic, payload, 0, 0))
            else:
                stream += publish(topic, payload, mid, dup=kind == "qos1-dup")
                expected.append((topic, payload, mid, 1))
        pos = 0
        k = 0
        while pos < len(stream):
            step = cuts[k % len(cuts)]
            h.feed(stream[pos : pos + step])
            pos += step
            k += 1
        assert h.messages() == expected
        assert h.subacks == [7] * subacks
        assert h.client.socket() is h.ahead, "a well-formed stream never dropped the connection"
    finally:
        h.close()


def test_the_broker_closing_reaches_paho_as_a_lost_connection() -> None:
    h = Harness()
    disconnects: list[Any] = []
    h.client.on_disconnect = lambda *a: disconnects.append(a)
    h.feed(publish("city/sensors/a", b"{}", 5)[:4])  # half a packet, then the end of the stream
    h.broker.close()
    h.connector._on_readable_ahead(h.ahead)
    assert h.client.socket() is None and len(disconnects) == 1
    assert h.messages() == []


def test_a_malformed_length_drops_the_connection_instead_of_waiting() -> None:
    h = Harness()
    h.feed(b"\x32\xff\xff\xff\xff\x01" + b"z" * 10)  # five length bytes: not MQTT
    assert h.client.socket() is None
    assert h.messages() == []
