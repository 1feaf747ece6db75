"""The one shape every connector has, and the decoder contract.

A connector is `setup()` (connect, subscribe), `run()` (until stopped),
`stop()` (flush, acknowledge what Kafka has, disconnect). What a payload
means is not the connector's business: decoders are plain functions

    decode(topic, payload, ctx) -> [SensorReading | HotlineEvent, ...]

that raise `RejectedPayload(reason, message)` for anything they refuse. The
same decoders serve the MQTT connector, `citybrain dlq redrive` and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from citybrain.errors import RejectedPayload
from schemas import HotlineEvent, SensorReading

Decoded = SensorReading | HotlineEvent


@dataclass(frozen=True, slots=True)
class DecodeContext:
    """What a decoder may know besides the message: the ingest clock (wall
    time, injected), the accepted event-time range, the device registry and
    the key that pseudonymises callers."""

    now: datetime
    max_future: timedelta = timedelta(minutes=5)
    max_past: timedelta = timedelta(days=7)
    registry: Any = None  # connectors.registry.DeviceRegistry when the format needs one
    pii_key: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)

    def check_time(self, ts: datetime) -> None:
        if ts > self.now + self.max_future:
            raise RejectedPayload("time_out_of_range", f"event time {ts.isoformat()} is in the future")
        if ts < self.now - self.max_past:
            raise RejectedPayload("time_out_of_range", f"event time {ts.isoformat()} is too far in the past")


Decoder = Callable[[str, bytes, DecodeContext], Sequence[Decoded]]

# The hot path of a format, optional: (Kafka key, SensorReading JSON) for each
# reading of a payload in the format's common shape, byte for byte what the
# decoder's readings would serialise to; None for anything else (the decoder
# then decides, and names the reason of a refusal). A shortcut, never a
# second opinion: it accepts nothing the decoder refuses.
FastEncoder = Callable[[str, bytes, DecodeContext], list[tuple[bytes, bytes]] | None]


class Connector(Protocol):
    name: str

    async def setup(self) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT wildcard match (+ one level, # the rest)."""
    p_parts = pattern.split("/")
    t_parts = topic.split("/")
    for i, p in enumerate(p_parts):
        if p == "#":
            return True
        if i >= len(t_parts):
            return False
        if p not in ("+", t_parts[i]):
            return False
    return len(p_parts) == len(t_parts)


@dataclass(frozen=True, slots=True)
class Route:
    pattern: str
    decoder: Decoder
    fast: FastEncoder | None = None


def pick_route(routes: Sequence[Route], topic: str) -> Route:
    for route in routes:
        if topic_matches(route.pattern, topic):
            return route
    raise RejectedPayload("unknown_topic", f"no decoder for MQTT topic {topic!r}")


def pick_decoder(routes: Sequence[Route], topic: str) -> Decoder:
    return pick_route(routes, topic).decoder
