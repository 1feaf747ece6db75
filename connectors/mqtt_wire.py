"""MQTT 3.1.1 packet encoding, for the peers that speak MQTT without paho:
the bench's publisher and the tests of the connector's own PUBLISH parser
(the connector only parses; see `MqttKafkaConnector._on_readable_ahead`)."""

from __future__ import annotations

import struct


def remaining_length(n: int) -> bytes:
    """MQTT 3.1.1 §2.2.3: 7 bits a byte, least significant first, high bit = more."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes, mid: int, qos: int = 1, dup: bool = False) -> bytes:
    """A PUBLISH packet (§3.3); the packet id only for QoS 1 and 2."""
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + (struct.pack("!H", mid) if qos else b"") + payload
    return bytes([0x30 | (qos << 1) | (0x08 if dup else 0)]) + remaining_length(len(body)) + body
