"""MQTT -> Kafka connector that loses nothing.

paho-mqtt's network thread hands raw messages over to the asyncio loop; the
loop decodes them in batches, produces every record with an idempotent,
acks=all producer, and only when Kafka has acknowledged every record of a
message (or its DLQ record) does it send the MQTT PUBACK (manual acks, QoS 1,
persistent session). A crash before that makes the broker redeliver; the
redelivered records carry the same event_id, and storage is idempotent.

Back-pressure needs no buffer of ours: unacknowledged messages count against
the broker's in-flight window, so while Kafka is away the broker stops sending
and queues for us. Messages whose send failed are retried with backoff, in
order, before anything later is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from citybrain.dlq import dlq_headers
from citybrain.errors import ConfigError, RejectedPayload
from citybrain.kafka_security import KafkaSecurity
from citybrain.partitioner import CachedKeyPartitioner
from citybrain.topics import Topics
from connectors.base import DecodeContext, Route, pick_decoder
from connectors.metrics import ConnectorMetrics
from schemas import HotlineEvent, SensorReading

log = logging.getLogger("citybrain.connector")


class MqttKafkaSettings(BaseSettings):
    """One frozen settings object; read from the environment at the entry point only."""

    model_config = SettingsConfigDict(frozen=True, env_prefix="CONNECTOR_", extra="ignore")

    name: str = "mqtt-ingest"
    mqtt_url: SecretStr = Field(validation_alias="MQTT_URL")
    # CA for an mqtts:// URL (CONNECTOR_MQTT_CA_FILE); default: the system's trust store
    mqtt_ca_file: str | None = None
    kafka_bootstrap_servers: str = Field(validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    # KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_*: SASL as the `connector` principal (citybrain.kafka_security)
    kafka_security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    client_id: str = "citybrain-connector"
    subscriptions: tuple[str, ...] = (
        "city/sensors/#",
        "city/hotline/#",
        "city/senml/#",
        "application/+/device/+/event/up",
        "v3/+/devices/+/up",
    )
    topic_prefix: str = ""
    max_payload_bytes: int = 256 * 1024
    max_batch: int = 2000
    max_future_s: int = 300
    max_past_s: int = 7 * 24 * 3600
    metrics_port: int = 0
    pii_key: SecretStr = SecretStr("")
    compression: str | None = None
    # device registry for SenML / ChirpStack / TTS payloads; default: the shipped sample
    registry_file: str | None = None
    linger_ms: int = 5


def parse_mqtt_url(url: str) -> tuple[str, int, str | None, str | None, bool]:
    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError(f"MQTT URL scheme {u.scheme!r} is not mqtt:// or mqtts://")
    tls = u.scheme in ("mqtts", "ssl")
    return (
        u.hostname or "127.0.0.1",
        u.port or (8883 if tls else 1883),
        unquote(u.username) if u.username else None,
        unquote(u.password) if u.password else None,
        tls,
    )


@dataclass(slots=True)
class _Pending:
    """One MQTT message on its way: the futures of its Kafka records."""

    mid: int
    qos: int
    records: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]]
    futures: list[asyncio.Future[Any]] = field(default_factory=list)
    n_readings: int = 0


class MqttKafkaConnector:
    """setup / run / stop; decoders injected as routes (pattern -> function)."""

    def __init__(
        self,
        settings: MqttKafkaSettings,
        routes: Sequence[Route],
        clock: Callable[[], datetime],
        registry: Any = None,
        metrics: ConnectorMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.routes = list(routes)
        self.clock = clock
        self.registry = registry
        self.metrics = metrics or ConnectorMetrics(settings.name)
        self.topics = Topics(prefix=settings.topic_prefix)
        self._inbox: deque[mqtt.MQTTMessage] = deque()
        self._inbox_lock = threading.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self._acks: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._producer: AIOKafkaProducer | None = None
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self.acked_messages = 0

    # ------------------------------------------------------------ lifecycle
    async def setup(self) -> None:
        self._loop = asyncio.get_running_loop()
        s = self.settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=s.linger_ms,
            max_batch_size=512 * 1024,
            compression_type=s.compression,
            request_timeout_ms=30000,
            client_id=f"{s.client_id}-producer",
            **s.kafka_security.aiokafka_kwargs(),
            partitioner=CachedKeyPartitioner(),
        )
        await self._start_producer()
        host, port, user, password, tls = parse_mqtt_url(s.mqtt_url.get_secret_value())
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=False,  # persistent session: the broker queues while we are away
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if user:
            client.username_pw_set(user, password)
        if tls:
            client.tls_set(ca_certs=s.mqtt_ca_file)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        self._client = client
        client.connect_async(host, port, keepalive=30)
        client.loop_start()
        if not await asyncio.to_thread(self._connected.wait, 15):
            client.loop_stop()
            raise ConfigError(f"MQTT broker {host}:{port} did not accept the connection within 15 s")
        log.info("connector %s: MQTT %s:%s, Kafka %s", self.name, host, port, s.kafka_bootstrap_servers)

    async def _start_producer(self) -> None:
        assert self._producer is not None
        delay = 0.5
        while True:
            try:
                await self._producer.start()
                return
            except KafkaError as exc:
                log.warning("Kafka not reachable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def run(self) -> None:
        acker = asyncio.create_task(self._ack_loop(), name="connector-acks")
        try:
            while not self._stopping.is_set():
                batch = self._drain()
                if not batch:
                    self._wake.clear()
                    if self._inbox:
                        continue
                    waiter = asyncio.create_task(self._wake.wait())
                    stopper = asyncio.create_task(self._stopping.wait())
                    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    stopper.cancel()
                    continue
                await self._process(batch)
        finally:
            await self._acks.put(None)
            await acker

    async def stop(self) -> None:
        """Stop taking messages, wait for Kafka to acknowledge what is in flight,
        PUBACK it, disconnect."""
        self._stopping.set()
        if self._client is not None:
            self._client.unsubscribe(list(self.settings.subscriptions))

    async def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        if self._producer is not None:
            await self._producer.stop()

    # ------------------------------------------------------------ paho thread
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.error("MQTT connect refused: %s", rc)
            return
        client.subscribe([(t, 1) for t in self.settings.subscriptions])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
        # ready only once the broker confirmed the subscription (SUBACK)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not self._stopping.is_set():
            log.warning("MQTT disconnected (%s); paho reconnects", rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._inbox_lock:
            self._inbox.append(msg)
            first = len(self._inbox) == 1
        if first and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    # ------------------------------------------------------------ asyncio side
    def _drain(self) -> list[mqtt.MQTTMessage]:
        with self._inbox_lock:
            n = min(len(self._inbox), self.settings.max_batch)
            return [self._inbox.popleft() for _ in range(n)]

    def _records_for(self, msg: mqtt.MQTTMessage, ctx: DecodeContext) -> _Pending:
        m = self.metrics
        m.received.inc()
        topic = msg.topic
        payload = bytes(msg.payload)
        try:
            if len(payload) > self.settings.max_payload_bytes:
                raise RejectedPayload(
                    "oversized", f"payload of {len(payload)} bytes exceeds {self.settings.max_payload_bytes}"
                )
            events = pick_decoder(self.routes, topic)(topic, payload, ctx)
            if not events:
                raise RejectedPayload("empty", "payload decoded to no events")
        except RejectedPayload as exc:
            return self._dead_letter(msg, payload, exc, ctx)
        except Exception as exc:  # a decoder bug must not stop ingestion: dead-letter it
            log.exception("decoder failed on %s", topic)
            return self._dead_letter(msg, payload, RejectedPayload("decoder_error", f"{type(exc).__name__}: {exc}"), ctx)
        records: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]] = []
        n = 0
        for ev in events:
            if isinstance(ev, SensorReading):
                records.append((self.topics.readings, ev.sensor_id.encode(), ev.to_json(), None))
                n += 1
            elif isinstance(ev, HotlineEvent):
                records.append((self.topics.hotline, ev.ticket_id.encode(), ev.to_json(), None))
                n += 1
        m.decoded.inc(n)
        return _Pending(msg.mid, msg.qos, records, n_readings=n)

    def _dead_letter(self, msg: mqtt.MQTTMessage, payload: bytes, exc: RejectedPayload, ctx: DecodeContext) -> _Pending:
        self.metrics.rejected.labels(exc.reason).inc()
        headers = dlq_headers(
            reason=exc.reason,
            message=exc.message,
            source=f"mqtt:{msg.topic}",
            component=self.name,
            stage="decode",
            at=ctx.now,
        )
        return _Pending(msg.mid, msg.qos, [(self.topics.dlq, msg.topic.encode(), payload, headers)])

    async def _process(self, batch: list[mqtt.MQTTMessage]) -> None:
        s = self.settings
        ctx = DecodeContext(
            now=self.clock(),
            max_future=timedelta(seconds=s.max_future_s),
            max_past=timedelta(seconds=s.max_past_s),
            registry=self.registry,
            pii_key=s.pii_key.get_secret_value().encode(),
        )
        for msg in batch:
            pending = self._records_for(msg, ctx)
            await self._send(pending)
            await self._acks.put(pending)

    async def _send(self, pending: _Pending) -> None:
        assert self._producer is not None
        pending.futures = []
        for topic, key, value, headers in pending.records:
            while True:
                try:
                    fut = await self._producer.send(topic, value=value, key=key, headers=headers)
                    break
                except KafkaError as exc:  # buffer full or producer not ready: wait, never drop
                    log.warning("Kafka send refused (%s); retrying", exc)
                    await asyncio.sleep(0.5)
            pending.futures.append(fut)

    async def _ack_loop(self) -> None:
        """PUBACK in arrival order once every record of a message is in Kafka."""
        assert self._client is not None
        m = self.metrics
        backoff = 0.5
        while True:
            pending = await self._acks.get()
            if pending is None:
                return
            while True:
                results = await asyncio.gather(*pending.futures, return_exceptions=True)
                failed = [r for r in results if isinstance(r, BaseException)]
                if not failed:
                    break
                log.warning("Kafka did not acknowledge (%s); re-sending in %.1f s", failed[0], backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)
                await self._send(pending)
            backoff = 0.5
            m.produced.inc(len(pending.records))
            if pending.qos > 0:
                self._client.ack(pending.mid, pending.qos)
            m.acknowledged.inc()
            self.acked_messages += 1


def default_routes() -> list[Route]:
    """Every payload format the connector speaks, by MQTT topic."""
    from connectors.decoders import chirpstack, native, senml, tts

    return [
        Route("city/sensors/#", native.decode_readings),
        Route("city/hotline/#", native.decode_hotline),
        Route(senml.ROUTE_PATTERN, senml.decode),
        Route(chirpstack.ROUTE_PATTERN, chirpstack.decode),
        Route(tts.ROUTE_PATTERN, tts.decode),
    ]


async def run_connector(connector: MqttKafkaConnector, stop: asyncio.Event) -> None:
    """Run until `stop` is set, then drain and close cleanly."""
    await connector.setup()
    runner = asyncio.create_task(connector.run())
    await stop.wait()
    await connector.stop()
    await runner
    await connector.close()
