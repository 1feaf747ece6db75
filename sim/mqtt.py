"""Publish a run to MQTT (QoS 1) in the wire formats the connectors accept.

- readings: one per message on `<root>/sensors/<sensor_id>`, or batches of
  `{"readings": [...]}` on `<root>/sensors/batch/<publisher>` (`batch` > 1);
- calls: `<root>/hotline/<ticket_id>`, caller name and phone in clear (the
  intake pseudonymises them).

Pacing maps event time onto the wall clock: an event at `t` is published at
`wall0 + (t - start) / speed`, so speed 60 plays an event hour in a minute;
speed None publishes as fast as the broker acknowledges. Every reading carries
`sent_at`, the wall-clock time it was handed to the client, for latency
measurement. At most `max_outstanding` messages wait for their PUBACK, so a
slow broker slows the publisher instead of filling memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote, urlparse

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from citybrain.errors import ConfigError, ServiceError
from sim.generate import Event, Reading


class PublishSettings(BaseSettings):
    """Read from the environment at the entry point only, then passed down."""

    model_config = SettingsConfigDict(frozen=True, env_prefix="SIM_", extra="ignore")

    mqtt_url: SecretStr = Field(validation_alias="MQTT_PUBLISH_URL")
    client_id: str = "citybrain-sim"
    topic_root: str = "city"
    publisher: str = "sim"  # suffix of the batch topic
    max_outstanding: int = 2000
    connect_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Broker:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool


def parse_url(url: str) -> Broker:
    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError(f"MQTT URL scheme {u.scheme!r} is not mqtt:// or mqtts://")
    tls = u.scheme in ("mqtts", "ssl")
    return Broker(u.hostname or "127.0.0.1", u.port or (8883 if tls else 1883),
                  unquote(u.username) if u.username else None, unquote(u.password) if u.password else None, tls)


def wall_iso() -> str:
    return datetime.now(UTC).isoformat()


class Publisher:
    """A connected paho client with PUBACK accounting."""

    def __init__(self, settings: PublishSettings) -> None:
        self.settings = settings
        self.broker = parse_url(settings.mqtt_url.get_secret_value())
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._connect_rc: object = None
        self.published = 0
        self.acked = 0
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                        protocol=mqtt.MQTTv311)
        if self.broker.username is not None:
            c.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            c.tls_set()
        c.max_inflight_messages_set(200)
        c.on_connect = self._on_connect
        c.on_publish = self._on_publish
        self.client = c

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        self._connect_rc = rc
        self._connected.set()

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, rc: object, props: object) -> None:
        with self._cond:
            self.acked += 1
            self._cond.notify_all()

    def connect(self) -> None:
        try:
            self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        except OSError as exc:
            raise ServiceError(f"cannot reach MQTT broker {self.broker.host}:{self.broker.port}: {exc}") from None
        self.client.loop_start()
        if not self._connected.wait(self.settings.connect_timeout_s):
            self.close()
            raise ServiceError(f"MQTT broker {self.broker.host}:{self.broker.port} did not answer CONNECT")
        if getattr(self._connect_rc, "is_failure", False):
            self.close()
            raise ServiceError(f"MQTT broker refused the connection: {self._connect_rc}")

    def publish(self, topic: str, payload: bytes | str) -> None:
        with self._cond:
            while self.published - self.acked >= self.settings.max_outstanding:
                self._cond.wait(1.0)
            self.published += 1
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            # NO_CONN: paho keeps the message queued and sends it on reconnect
            raise ServiceError(f"MQTT publish failed: {mqtt.error_string(info.rc)}")

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every published message is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.acked < self.published:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass(slots=True)
class RunStats:
    readings: int = 0
    calls: int = 0
    messages: int = 0
    acked: int = 0
    wall_s: float = 0.0


def publish_events(
    events: Iterable[Event],
    publisher: Publisher,
    start: int,
    speed: float | None,
    batch: int = 1,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now_iso: Callable[[], str] = wall_iso,
    on_event: Callable[[Event], None] | None = None,
) -> RunStats:
    """Publish `events` paced by `speed` (None: as fast as possible)."""
    s = publisher.settings
    root = s.topic_root
    batch_topic = f"{root}/sensors/batch/{s.publisher}"
    stats = RunStats()
    pending: list[Reading] = []
    wall0 = monotonic()

    def flush() -> None:
        if not pending:
            return
        sent = now_iso()
        if batch <= 1:
            for r in pending:
                publisher.publish(f"{root}/sensors/{r.sensor.sensor_id}", r.json(sent))
        else:
            publisher.publish(batch_topic, '{"readings":[' + ",".join(r.json(sent) for r in pending) + "]}")
        stats.messages += len(pending) if batch <= 1 else 1
        pending.clear()

    for ev in events:
        if speed:
            wait = wall0 + (ev.t - start) / speed - monotonic()
            if wait > 0:
                flush()
                sleep(wait)
        if on_event is not None:
            on_event(ev)
        if isinstance(ev, Reading):
            stats.readings += 1
            pending.append(ev)
            if len(pending) >= batch:
                flush()
        else:
            flush()  # keep the stream in event-time order across topics
            publisher.publish(f"{root}/hotline/{ev.ticket_id}", orjson.dumps(ev.payload()))
            stats.calls += 1
            stats.messages += 1
    flush()
    publisher.drain()
    stats.acked = publisher.acked
    stats.wall_s = monotonic() - wall0
    return stats
