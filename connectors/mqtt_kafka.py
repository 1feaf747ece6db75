"""MQTT -> Kafka connector that loses nothing.

paho-mqtt runs on the asyncio loop itself (paho's external-loop mode: the
loop watches its socket and calls `loop_read` / `loop_write` / `loop_misc`),
not in a network thread of its own: a thread cost every message a `select`,
a hand-off to the loop and the GIL going back and forth, which made up most
of a single-reading message's CPU. Every message readable at once is read in
one go and decoded as one group; the loop produces every record with an idempotent,
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
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeAlias
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
    # Kafka record batches compressed (lz4: cheap in CPU; 200 simulated readings 63.9 kB -> 14.5 kB);
    # CONNECTOR_COMPRESSION=none to send them as they are
    compression: Literal["lz4", "zstd", "gzip", "snappy", "none"] = "lz4"
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
# an MQTT message: parsed by the connector (QoS 1 on a plain socket) or by paho
Message: TypeAlias = "_Message | mqtt.MQTTMessage"


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
        # filled by paho's on_message and drained by run(), both on the loop's thread
        self._inbox: deque[Message] = deque()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self._acks: asyncio.Queue[list[_Pending] | None] = asyncio.Queue()
        self._producer: AIOKafkaProducer | None = None
        self._client: mqtt.Client | None = None
        self._subscribed = asyncio.Event()
        self._mqtt_task: asyncio.Task[None] | None = None
        self._closing = False
        self._partitioner = CachedKeyPartitioner()
        self._route_cache: dict[str, Route] = {}
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
            compression_type=None if s.compression == "none" else s.compression,
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
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._client = client
        client.connect_async(host, port, keepalive=30)
        self._mqtt_task = asyncio.create_task(self._mqtt_connection(), name="connector-mqtt")
        try:
            await asyncio.wait_for(self._subscribed.wait(), 15)
        except TimeoutError:
            await self._end_mqtt()
            raise ConfigError(f"MQTT broker {host}:{port} did not accept the connection within 15 s") from None
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
                    await self._wake.wait()  # set by a read that brought messages, or by stop()
                    continue
                await self._process(batch)
        finally:
            await self._acks.put(None)
            await acker

    async def stop(self) -> None:
        """Stop taking messages, wait for Kafka to acknowledge what is in flight,
        PUBACK it, disconnect."""
        self._stopping.set()
        self._wake.set()
        if self._client is not None:
            self._client.unsubscribe(list(self.settings.subscriptions))

    async def close(self) -> None:
        await self._end_mqtt()
        if self._producer is not None:
            await self._producer.stop()

    async def _end_mqtt(self) -> None:
        """DISCONNECT (written out now: paho closes the socket once it is sent)
        and stop reconnecting."""
        self._closing = True
        client = self._client
        if client is not None and client.socket() is not None:
            client.disconnect()
            client.loop_write()
        if self._mqtt_task is not None:
            self._mqtt_task.cancel()
            try:
                await self._mqtt_task
            except asyncio.CancelledError:
                pass
        if client is not None and client.socket() is not None:
            self._on_socket_close(client, None, client.socket())

    # ------------------------------------------------------------ MQTT on the loop
    async def _mqtt_connection(self) -> None:
        """Connect, and reconnect with backoff while the connector runs (what
        paho's own thread did); keepalive pings between reads. The persistent
        session makes the broker redeliver whatever was not acknowledged."""
        client = self._client
        assert client is not None
        delay = 1.0
        while not self._closing:
            if client.socket() is None:
                try:
                    # blocking TCP connect on the loop: to a broker on the LAN it
                    # is quick, and a refusal is immediate; paho bounds it at
                    # its connect_timeout (5 s)
                    client.reconnect()
                except (OSError, ssl.SSLError) as exc:
                    log.warning("MQTT connection failed (%s); retrying in %.0f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                delay = 1.0
            else:
                client.loop_misc()  # keepalive: PINGREQ when due, drop a silent broker
            await asyncio.sleep(1.0)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        if isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket) and hasattr(client, "_sock"):
            # paho 2.2 (pinned) keeps its socket in `_sock`: it reads through
            # the read-ahead from now on, which hands it the packets it handles
            ahead = _ReadAhead(sock)
            client._sock = ahead
            self._loop.add_reader(sock, self._on_readable_ahead, ahead)
        else:  # TLS, or a paho without `_sock`: paho reads every packet itself
            self._loop.add_reader(sock, self._on_readable, sock)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, client.loop_write)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    def _on_readable(self, sock: Any) -> None:
        """Every packet already readable, in one go (paho's `loop_read` takes
        one packet a call here); the messages are then decoded as one group."""
        client = self._client
        assert client is not None
        for _ in range(self.settings.max_batch):
            if client.loop_read() != mqtt.MQTT_ERR_SUCCESS or client.socket() is not sock:
                break  # connection lost: paho closed the socket and called on_disconnect
            if not _more_to_read(sock):
                break
        if self._inbox:
            self._wake.set()

    def _on_readable_ahead(self, ahead: _ReadAhead) -> None:
        """Everything readable, in one read. QoS 1 PUBLISH packets, nearly all
        of the traffic, are parsed here (MQTT 3.1.1 §3.3: topic, packet id,
        payload): paho spent ~40-70 µs on each (four `recv`s, a message object
        with a lock and a condition, locks around the callback), as much as
        the rest of the connector's work on a single reading. Every other
        packet (CONNACK, SUBACK, PINGRESP, a QoS 0 or 2 PUBLISH ...) goes to
        paho whole, through `loop_read`, so the session, keepalive, PUBACKs
        and reconnection stay paho's."""
        client = self._client
        assert client is not None
        try:
            data = ahead.sock.recv(_READ_AHEAD)
        except BlockingIOError:
            return
        except OSError as exc:
            ahead.fail(exc)  # paho meets it on its next read and handles the disconnect
            client.loop_read()
            return
        if not data:
            ahead.fail(None)  # the broker closed: paho reads the end of the stream
            client.loop_read()
            return
        buf = ahead.take(data)
        end_of_data = len(buf)
        pos = 0
        inbox = self._inbox
        while pos + 2 <= end_of_data:
            first = buf[pos]
            # remaining length: 1-4 bytes, 7 bits each, least significant first
            length = shift = 0
            i = pos + 1
            complete = False
            while i < end_of_data and i <= pos + 4:
                b = buf[i]
                i += 1
                length |= (b & 0x7F) << shift
                if b < 0x80:
                    complete = True
                    break
                shift += 7
            if not complete:
                if i <= pos + 4:
                    break  # the length itself is not all here yet
                ahead.expose(buf, pos, end_of_data)  # malformed: paho refuses it and drops the connection
                client.loop_read()
                return
            end = i + length
            if end > end_of_data:
                break  # the rest of the packet is still on its way
            if first & 0xF6 == 0x32 and length >= 4:  # PUBLISH, QoS 1 (DUP and RETAIN either way)
                n = (buf[i] << 8) | buf[i + 1]
                j = i + 2 + n
                if j + 2 <= end:
                    inbox.append(_Message(buf[i + 2 : j].decode("utf-8", "replace"), buf[j + 2 : end],
                                          (buf[j] << 8) | buf[j + 1]))
                    pos = end
                    continue
            ahead.expose(buf, pos, end)  # exactly this packet, so paho's read ends at its end
            client.loop_read()
            if client.socket() is not ahead:
                return  # paho closed the connection (a refused CONNACK, a protocol error)
            pos = end
        ahead.keep(buf, pos)
        if inbox:
            self._wake.set()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.error("MQTT connect refused: %s", rc)
            return
        client.subscribe([(t, 1) for t in self.settings.subscriptions])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
        # ready only once the broker confirmed the subscription (SUBACK)
        self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not self._stopping.is_set():
            log.warning("MQTT disconnected (%s); reconnecting", rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.append(msg)

    # ------------------------------------------------------------ asyncio side
    def _drain(self) -> list[Message]:
        """The next group: up to max_batch messages or max_batch_bytes of payload
        (at least one message). Bounded in bytes because a group is decoded
        without yielding to the event loop and held in memory whole: 2000
        packs of 100 readings would stall the loop (acks, Kafka I/O) for
        seconds and hold 200,000 readings at once."""
        budget = self.settings.max_batch_bytes
        out: list[Message] = []
        inbox = self._inbox
        for _ in range(min(len(inbox), self.settings.max_batch)):
            msg = inbox.popleft()
            out.append(msg)
            budget -= len(msg.payload)
            if budget <= 0:
                break
        return out

    def _route(self, topic: str) -> Route:
        """The route of an MQTT topic, remembered: a sensor publishes on the same
        topic all day, and matching the patterns again cost more than a lookup."""
        route = self._route_cache.get(topic)
        if route is None:
            route = pick_route(self.routes, topic)  # raises unknown_topic: never cached
            if len(self._route_cache) >= 100_000:
                self._route_cache.clear()  # bounded; a cold cache only costs the matching again
            self._route_cache[topic] = route
        return route

    def _records_for(self, msg: Message, ctx: DecodeContext) -> _Pending:
        """A message's records (its readings, or its DLQ record). Counted as
        received by the caller, per group."""
        topic = msg.topic
        payload = msg.payload
        if type(payload) is not bytes:
            payload = bytes(payload)
        try:
            if len(payload) > self.settings.max_payload_bytes:
                raise RejectedPayload(
                    "oversized", f"payload of {len(payload)} bytes exceeds {self.settings.max_payload_bytes}"
                )
            route = self._route(topic)
            if route.fast is not None:
                try:
                    encoded = route.fast(topic, payload, ctx)
                except Exception:  # a shortcut's bug costs speed, not the message: the decoder decides
                    log.exception("fast path failed on %s", topic)
                    encoded = None
                if encoded:  # the common shape, checked and encoded without building models
                    readings = self.topics.readings
                    self._check_speaks_for_itself(topic, [k for k, _ in encoded])
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
        own = owner.encode()
        if all(k == own for k in sensor_keys):
            return  # the usual case: its own readings, whether registered or not
        entry = self.registry.find_sensor(owner)
        if entry is None:
            return  # not a registered device's topic
        own = entry.sensor_id.encode()
        foreign = sorted({k for k in sensor_keys if k != own})
        if foreign:
            raise RejectedPayload("foreign_sensor", f"device {owner!r} published readings of "
                                  f"{', '.join(k.decode(errors='replace') for k in foreign[:3])}: "
                                  "a device speaks only for itself")

    def _dead_letter(self, msg: Message, payload: bytes, exc: RejectedPayload, ctx: DecodeContext) -> _Pending:
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

    async def _process(self, batch: list[Message]) -> None:
        s = self.settings
        ctx = DecodeContext(
            now=self.clock(),
            max_future=timedelta(seconds=s.max_future_s),
            max_past=timedelta(seconds=s.max_past_s),
            registry=self.registry,
            pii_key=s.pii_key.get_secret_value().encode(),
        )
        self.metrics.received.inc(len(batch))
        pendings = [self._records_for(msg, ctx) for msg in batch]
        self.metrics.decoded.inc(sum(p.n_readings for p in pendings))
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
            if await self._group_stored(group):  # the usual case: one wait and one write for the group
                self._puback([p.mid for p in group])
                produced = sum(len(p.records) for p in group)
                m.produced.inc(produced)
                m.acknowledged.inc(len(group))
                self.acked_messages += len(group)
                continue
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

    @staticmethod
    async def _group_stored(group: list[_Pending]) -> bool:
        """Wait for the Kafka batches of a group of QoS 1 messages (a few,
        shared by all of them); whether every one succeeded. False sends the
        group down the message-by-message path, which re-sends what failed."""
        if any(p.qos != 1 for p in group):
            return False
        futures = {f for p in group for f in p.futures}
        waiting = [f for f in futures if not f.done()]
        if waiting:
            await asyncio.wait(waiting)
        return all(not f.cancelled() and f.exception() is None for f in futures)

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


_READ_AHEAD = 256 * 1024


@dataclass(slots=True)
class _Message:
    """A QoS 1 message as parsed by the connector: what paho's MQTTMessage
    carries that the connector uses."""

    topic: str
    payload: bytes
    mid: int
    qos: int = 1


class _ReadAhead:
    """paho's socket while the connector reads ahead: paho's `recv`s are served
    from the bytes the connector already read, and only up to the end of the
    packet it was given; everything else is the real socket's."""

    __slots__ = ("_buf", "_failure", "_limit", "_pos", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""
        self._pos = 0
        self._limit = 0
        self._failure: tuple[OSError | None] | None = None

    def take(self, data: bytes) -> bytes:
        """What is to be parsed: the unparsed tail of the last read, then `data`."""
        tail = self._buf[self._pos :]
        self._buf, self._pos, self._limit = b"", 0, 0
        return tail + data if tail else data

    def keep(self, buf: bytes, pos: int) -> None:
        """An incomplete packet at `pos`, to be continued by the next read."""
        self._buf, self._pos, self._limit = buf, pos, pos

    def expose(self, buf: bytes, start: int, end: int) -> None:
        self._buf, self._pos, self._limit = buf, start, end

    def fail(self, exc: OSError | None) -> None:
        """paho's next read meets this error, or the end of the stream (None)."""
        self._failure = (exc,)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self._failure is not None:
            exc = self._failure[0]
            if exc is not None:
                raise exc
            return b""
        pos = self._pos
        if pos >= self._limit:
            raise BlockingIOError  # nothing for paho beyond the packet it was given
        out = self._buf[pos : min(pos + bufsize, self._limit)]
        self._pos = pos + len(out)
        return out

    def __getattr__(self, name: str) -> Any:  # send, fileno, close, setblocking ...: the socket's
        return getattr(self.sock, name)


def _more_to_read(sock: Any) -> bool:
    """Whether another packet (or the end of the stream) is readable now."""
    if isinstance(sock, ssl.SSLSocket):
        # decrypted bytes already buffered raise no readiness event: read them now;
        # bytes still on the raw socket will, so the loop comes back for them
        return sock.pending() > 0
    try:
        sock.recv(1, socket.MSG_PEEK)  # b"" (the broker closed) counts: paho must see it
    except BlockingIOError:
        return False
    except OSError:
        pass  # let paho's read meet the error and handle the disconnect
    return True


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
