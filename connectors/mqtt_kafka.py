"""MQTT -> Kafka connector that loses nothing.

paho-mqtt's network thread hands raw messages over to the asyncio loop; the
loop decodes them in batches, produces every record with an idempotent,
acks=all producer, and only when Kafka has acknowledged every record of a
message (or its DLQ record) does it send the MQTT PUBACK (manual acks, QoS 1,
persistent session). A crash before that makes the broker redeliver; the
redelivered records carry the same event_id, and storage is idempotent.

Records are produced in batches built here: every record of one drained
batch of MQTT messages is appended to one Kafka record batch per partition
and submitted with `send_batch`, so a reading costs one C-level append
instead of a future, a partition lookup and an accumulator append of its own
(aiokafka's per-record `send`); each message is acknowledged once every batch
holding one of its records is acknowledged. A failed batch is re-sent per
message, record by record, the slow and simple way.

Back-pressure needs no buffer of ours: unacknowledged messages count against
the broker's in-flight window, so while Kafka is away the broker stops sending
and queues for us. Messages whose send failed are retried with backoff, in
order, before anything later is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import struct
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
from connectors.base import DecodeContext, Route, pick_route
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
    max_batch_bytes: int = 256 * 1024
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


Record = tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]


@dataclass(slots=True)
class _Pending:
    """One MQTT message on its way: the futures of the Kafka batches holding its records."""

    mid: int
    qos: int
    records: list[Record]
    futures: list[asyncio.Future[Any]] = field(default_factory=list)
    n_readings: int = 0


@dataclass(slots=True)
class _OpenBatch:
    """A Kafka record batch being filled for one partition, and the messages in it."""

    builder: Any  # aiokafka BatchBuilder
    members: list[_Pending] = field(default_factory=list)


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
        self._acks: asyncio.Queue[list[_Pending] | None] = asyncio.Queue()
        self._producer: AIOKafkaProducer | None = None
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._partitioner = CachedKeyPartitioner()
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
            partitioner=self._partitioner,
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
        """The next group: up to max_batch messages or max_batch_bytes of payload
        (at least one message). Bounded in bytes because a group is decoded
        without yielding to the event loop and held in memory whole: 2000
        packs of 100 readings would stall the loop (acks, Kafka I/O) for
        seconds and hold 200,000 readings at once."""
        budget = self.settings.max_batch_bytes
        out: list[mqtt.MQTTMessage] = []
        with self._inbox_lock:
            inbox = self._inbox
            for _ in range(min(len(inbox), self.settings.max_batch)):
                msg = inbox.popleft()
                out.append(msg)
                budget -= len(msg.payload)
                if budget <= 0:
                    break
        return out

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
            route = pick_route(self.routes, topic)
            if route.fast is not None:
                try:
                    encoded = route.fast(topic, payload, ctx)
                except Exception:  # a shortcut's bug costs speed, not the message: the decoder decides
                    log.exception("fast path failed on %s", topic)
                    encoded = None
                if encoded:  # the common shape, checked and encoded without building models
                    readings = self.topics.readings
                    self._check_speaks_for_itself(topic, [k for k, _ in encoded])
                    m.decoded.inc(len(encoded))
                    return _Pending(
                        msg.mid, msg.qos, [(readings, k, v, None) for k, v in encoded], n_readings=len(encoded)
                    )
            events = route.decoder(topic, payload, ctx)
            if not events:
                raise RejectedPayload("empty", "payload decoded to no events")
            self._check_speaks_for_itself(
                topic, [ev.sensor_id.encode() for ev in events if isinstance(ev, SensorReading)])
        except RejectedPayload as exc:
            return self._dead_letter(msg, payload, exc, ctx)
        except Exception as exc:  # a decoder bug must not stop ingestion: dead-letter it
            log.exception("decoder failed on %s", topic)
            return self._dead_letter(msg, payload, RejectedPayload("decoder_error", f"{type(exc).__name__}: {exc}"), ctx)
        records: list[Record] = []
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

    def _check_speaks_for_itself(self, topic: str, sensor_keys: list[bytes]) -> None:
        """A device's own topic (`city/sensors/<id>`, `city/senml/<id>`: the broker's
        ACL lets a device publish there and nowhere else) carries only that
        device's readings: a device claiming another sensor's readings is
        dead-lettered, not ingested. Gateways and the simulator publish on
        other topics (the `publisher` account), where no one device is implied."""
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != "city" or parts[1] not in ("sensors", "senml") or self.registry is None:
            return
        owner = parts[2]
        try:
            own = self.registry.by_sensor_id(owner).sensor_id.encode()
        except RejectedPayload:
            return  # not a registered device's topic
        foreign = sorted({k for k in sensor_keys if k != own})
        if foreign:
            raise RejectedPayload("foreign_sensor", f"device {owner!r} published readings of "
                                  f"{', '.join(k.decode(errors='replace') for k in foreign[:3])}: "
                                  "a device speaks only for itself")

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
        pendings = [self._records_for(msg, ctx) for msg in batch]
        await self._send_batched(pendings)
        await self._acks.put(pendings)

    async def _send_batched(self, pendings: list[_Pending]) -> None:
        """Every record of `pendings` into one record batch per partition (more
        when one fills up), in message order, so per-key order is kept."""
        producer = self._producer
        assert producer is not None
        partitions: dict[str, list[int]] = {}
        open_batches: dict[tuple[str, int], _OpenBatch] = {}
        for pending in pendings:
            pending.futures = []
            for topic, key, value, headers in pending.records:
                parts = partitions.get(topic)
                if parts is None:
                    parts = partitions[topic] = await self._partitions_of(topic)
                part = self._partitioner(key, parts, parts)
                ob = open_batches.get((topic, part))
                if ob is None:
                    ob = open_batches[(topic, part)] = _OpenBatch(producer.create_batch())
                if ob.builder.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
                    await self._submit(ob, topic, part)  # full: send it, start the next one
                    ob = open_batches[(topic, part)] = _OpenBatch(producer.create_batch())
                    if ob.builder.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
                        raise RuntimeError("a record does not fit an empty Kafka batch")
                if not ob.members or ob.members[-1] is not pending:
                    ob.members.append(pending)
        for (topic, part), ob in open_batches.items():
            await self._submit(ob, topic, part)

    async def _partitions_of(self, topic: str) -> list[int]:
        assert self._producer is not None
        known = self._producer.client.cluster.partitions_for_topic(topic)
        while not known:
            try:
                known = await self._producer.partitions_for(topic)
            except KafkaError as exc:
                log.warning("no Kafka metadata for %s (%s); retrying", topic, exc)
                await asyncio.sleep(0.5)
        # as aiokafka's own send: the partitioner indexes the sorted partition ids
        return sorted(known)

    async def _submit(self, ob: _OpenBatch, topic: str, part: int) -> None:
        assert self._producer is not None
        ob.builder.close()  # closed: drained at once, we did the batching
        while True:
            try:
                fut = await self._producer.send_batch(ob.builder, topic, partition=part)
                break
            except KafkaError as exc:  # queue full or producer not ready: wait, never drop
                log.warning("Kafka batch refused (%s); retrying", exc)
                await asyncio.sleep(0.5)
        for pending in ob.members:
            pending.futures.append(fut)

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
        """PUBACK in arrival order once every record of a message is in Kafka:
        a drained group at a time, in one write while they are all ready."""
        m = self.metrics
        while True:
            group = await self._acks.get()
            if group is None:
                return
            mids: list[int] = []
            produced = 0
            for pending in group:
                if not _all_done(pending.futures):
                    self._puback(mids)  # don't hold the ready ones while Kafka thinks
                    mids = []
                await self._settle(pending)
                produced += len(pending.records)
                if pending.qos == 1:
                    mids.append(pending.mid)
                elif pending.qos == 2:
                    self._client_ack(pending.mid, pending.qos)
            self._puback(mids)
            m.produced.inc(produced)
            m.acknowledged.inc(len(group))
            self.acked_messages += len(group)

    async def _settle(self, pending: _Pending) -> None:
        """Wait until Kafka has every record of `pending`; re-send what failed."""
        backoff = 0.5
        while True:
            futures = pending.futures
            if _all_done(futures):  # usual: acknowledged while the next group was decoded
                results = [f.exception() for f in futures]
            else:
                results = await asyncio.gather(*futures, return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if not failed:
                return
            log.warning("Kafka did not acknowledge (%s); re-sending in %.1f s", failed[0], backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10)
            await self._send(pending)

    def _client_ack(self, mid: int, qos: int) -> None:
        assert self._client is not None
        self._client.ack(mid, qos)

    def _puback(self, mids: list[int]) -> None:
        """PUBACK (QoS 1) these messages, in this order.

        paho's `ack()` queues one 4-byte packet per message and wakes its
        network thread for each (a syscall on each side); a group goes as one
        queued write instead: the same bytes on the wire, in the same order."""
        if not mids:
            return
        client = self._client
        assert client is not None
        queue = getattr(client, "_packet_queue", None)
        if queue is None or len(mids) == 1:  # a paho without it, or nothing to gain
            for mid in mids:
                client.ack(mid, 1)
            return
        queue(mqtt.PUBACK, b"".join([_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids]), 0, 1)


def _all_done(futures: list[asyncio.Future[Any]]) -> bool:
    return all(f.done() and not f.cancelled() for f in futures)


_PUBACK = struct.Struct("!BBH")  # MQTT 3.1.1 PUBACK: type, remaining length 2, packet id


def default_routes() -> list[Route]:
    """Every payload format the connector speaks, by MQTT topic."""
    from connectors.decoders import chirpstack, native, senml, tts

    return [
        Route("city/sensors/#", native.decode_readings, native.encode_readings),
        Route("city/hotline/#", native.decode_hotline),
        Route(senml.ROUTE_PATTERN, senml.decode, senml.encode),
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
