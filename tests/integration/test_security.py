"""Security on the real brokers and database: Mosquitto (no anonymous access,
per-device ACL, TLS with the local CA), Kafka (SASL/SCRAM listener, department
ACLs) and the audit trail's hash chain.

The SASL and TLS listeners come from `deploy/local/stack.sh up` (stack.env:
KAFKA_SASL_BOOTSTRAP, MQTT_TLS_URL, MQTT_CA_FILE, CITYBRAIN_SECRETS_DIR); a
stack started before they existed fails these tests loudly: run
`deploy/local/stack.sh up` again (it restarts what changed).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import asyncpg
import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)
from paho.mqtt.enums import CallbackAPIVersion

from citybrain.kafka_admin import ensure_topics
from citybrain.kafka_security import scram
from citybrain.security_cli import Plan, apply, device_password, replay_acls, service_acls
from citybrain.topics import LIVE, Topics
from connectors.mqtt_kafka import MqttKafkaConnector, MqttKafkaSettings, default_routes
from connectors.registry import DeviceRegistry
from storage.audit import append_audit, verify
from storage.db import connect
from storage.migrate import migrate
from tests.services import _reachable, _require

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0  # generous: the machine is shared


# ------------------------------------------------------------------ fixtures
@dataclass(frozen=True)
class Secured:
    sasl_bootstrap: str
    secrets_dir: Path
    mqtt_tls_url: str
    ca_file: str


@pytest.fixture(scope="session")
def secured() -> Secured:
    """What `stack.sh up` provides for the secured listeners; missing = fail."""
    sasl = _require("KAFKA_SASL_BOOTSTRAP")
    host, _, port = sasl.rpartition(":")
    _reachable("Kafka SASL listener", host, int(port))
    tls_url = _require("MQTT_TLS_URL")
    u = urlparse(tls_url)
    _reachable("Mosquitto TLS listener", u.hostname or "127.0.0.1", u.port or 8883)
    ca = _require("MQTT_CA_FILE")
    if not Path(ca).is_file():
        pytest.fail(f"MQTT_CA_FILE {ca} does not exist: run deploy/local/stack.sh up")
    secrets_dir = Path(_require("CITYBRAIN_SECRETS_DIR"))
    if not (secrets_dir / "mqtt-device-master").is_file():
        pytest.fail(f"{secrets_dir}/mqtt-device-master is missing: run deploy/local/stack.sh up")
    return Secured(sasl, secrets_dir, tls_url, ca)


# ------------------------------------------------------------------ MQTT helpers
@dataclass
class Mqtt:
    """A paho client (MQTT v5, so a refused publish says so in its PUBACK)."""

    client: mqtt.Client
    connack: Any = None
    connected: threading.Event = field(default_factory=threading.Event)
    subscribed: threading.Event = field(default_factory=threading.Event)
    published: dict[int, Any] = field(default_factory=dict)
    pub_done: threading.Condition = field(default_factory=threading.Condition)
    received: list[tuple[str, bytes]] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes) -> Any:
        """QoS 1; the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1)
        with self.pub_done:
            assert self.pub_done.wait_for(lambda: info.mid in self.published, WAIT), f"no PUBACK for {topic}"
            return self.published[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_connect(host: str, port: int, user: str | None, password: str | None, *, ca: str | None = None,
                 client_id: str | None = None) -> Mqtt:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                    client_id=client_id or f"sec-{uuid.uuid4().hex[:10]}")
    m = Mqtt(c)
    if user is not None:
        c.username_pw_set(user, password)
    if ca is not None:
        c.tls_set(ca_certs=ca)

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        m.connack = rc
        m.connected.set()

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
        m.subscribed.set()

    def on_publish(client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any = None) -> None:
        with m.pub_done:
            m.published[mid] = rc
            m.pub_done.notify_all()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        m.received.append((msg.topic, bytes(msg.payload)))

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_publish = on_publish
    c.on_message = on_message
    c.connect(host, port, keepalive=30)
    c.loop_start()
    assert m.connected.wait(WAIT), f"no CONNACK from {host}:{port}"
    return m


def url_parts(url: str) -> tuple[str, int, str, str]:
    u = urlparse(url)
    return u.hostname or "127.0.0.1", u.port or 1883, unquote(u.username or ""), unquote(u.password or "")


def devices(secured: Secured) -> list[tuple[str, str]]:
    master = (secured.secrets_dir / "mqtt-device-master").read_text().strip()
    ids = [e.sensor_id for e in DeviceRegistry.sample().entries[:2]]
    return [(i, device_password(master, i)) for i in ids]


# ------------------------------------------------------------------ MQTT
def test_mqtt_anonymous_and_wrong_password_refused(mqtt_url: str, secured: Secured) -> None:
    host, port, user, _ = url_parts(mqtt_url)
    anon = mqtt_connect(host, port, None, None)
    try:
        assert anon.connack.is_failure, f"anonymous connection accepted ({anon.connack})"
    finally:
        anon.close()
    bad = mqtt_connect(host, port, user, "not-the-password")
    try:
        assert bad.connack.is_failure, f"a wrong password was accepted ({bad.connack})"
    finally:
        bad.close()
    th, tp, _, _ = url_parts(secured.mqtt_tls_url)
    anon_tls = mqtt_connect(th, tp, None, None, ca=secured.ca_file)
    try:
        assert anon_tls.connack.is_failure, "anonymous connection accepted on the TLS listener"
    finally:
        anon_tls.close()


def test_device_publishes_only_under_its_own_topic(mqtt_url: str, secured: Secured) -> None:
    host, port, cuser, cpass = url_parts(mqtt_url)
    (a, a_pw), (b, _) = devices(secured)
    run = uuid.uuid4().hex[:8]
    # a subscriber with the connector's credentials (the connector's ACL)
    sub = mqtt_connect(host, port, cuser, cpass, client_id=f"sec-conn-{run}")
    dev = mqtt_connect(host, port, a, a_pw)
    try:
        assert not sub.connack.is_failure and not dev.connack.is_failure, (sub.connack, dev.connack)
        sub.client.subscribe([(f"city/sensors/{a}", 1), (f"city/sensors/{b}", 1)])
        assert sub.subscribed.wait(WAIT)
        # payloads no connector can turn into a reading: a live connector that
        # happens to see them dead-letters them
        forged = dev.publish(f"city/sensors/{b}", f'{{"security-test": "{run}-forged"}}'.encode())
        own = dev.publish(f"city/sensors/{a}", f'{{"security-test": "{run}-own"}}'.encode())
        assert forged.is_failure and forged.value == 0x87, f"publishing as {b} was not refused ({forged})"
        assert not own.is_failure, f"publishing on its own topic was refused ({own})"
        # the connector's subscription sees its own message and never the forged one
        for _ in range(int(WAIT * 10)):
            if any(run in p.decode() for _, p in sub.received):
                break
            threading.Event().wait(0.1)
        threading.Event().wait(1.0)  # a forged message, if any, would have arrived by now
        seen = [(t, p.decode()) for t, p in sub.received if run in p.decode()]
        assert seen == [(f"city/sensors/{a}", f'{{"security-test": "{run}-own"}}')], seen
        # a device cannot subscribe to anything, the connector cannot publish
        assert dev.publish("city/hotline/x", b"{}").is_failure
        conn_pub = sub.publish(f"city/sensors/{a}", f'{{"security-test": "{run}-conn"}}'.encode())
        assert conn_pub.is_failure, "the connector account could publish"
        conn_own = sub.publish("city/sensors/connector", b"{}")
        assert conn_own.is_failure, "the connector account could publish on the per-device pattern"
    finally:
        dev.close()
        sub.close()


def test_mqtt_tls_with_local_ca_and_untrusted_ca_fails(secured: Secured, tmp_path: Path) -> None:
    host, port, user, password = url_parts(secured.mqtt_tls_url)
    ok = mqtt_connect(host, port, user, password, ca=secured.ca_file)
    try:
        assert not ok.connack.is_failure, f"TLS connection with the local CA refused ({ok.connack})"
    finally:
        ok.close()
    other_ca = tmp_path / "other-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=someone else", "-keyout", str(tmp_path / "k"), "-out", str(other_ca)],
                   check=True, capture_output=True)
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)
    c.tls_set(ca_certs=str(other_ca))
    with pytest.raises(OSError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        c.connect(host, port, keepalive=10)


async def test_connector_ingests_over_tls(secured: Secured, kafka_bootstrap: str) -> None:
    """The connector's own client with `mqtts://` and CONNECTOR_MQTT_CA_FILE; a
    device's reading published over TLS reaches Kafka."""
    run = uuid.uuid4().hex[:8]
    topics = Topics(f"sec{run}.")
    await ensure_topics(kafka_bootstrap, {topics.readings: 1, topics.hotline: 1, topics.dlq: 1})
    settings = MqttKafkaSettings(
        mqtt_url=secured.mqtt_tls_url, kafka_bootstrap_servers=kafka_bootstrap, mqtt_ca_file=secured.ca_file,
        client_id=f"sec-tls-{run}", topic_prefix=topics.prefix, subscriptions=("city/sensors/#",))
    connector = MqttKafkaConnector(settings, default_routes(), clock=lambda: datetime.now(UTC),
                                   registry=DeviceRegistry.sample())
    await connector.setup()
    runner = asyncio.create_task(connector.run())
    consumer = AIOKafkaConsumer(topics.readings, topics.dlq, bootstrap_servers=kafka_bootstrap,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    (a, a_pw), _ = devices(secured)
    entry = DeviceRegistry.sample().by_sensor_id(a)
    host, port, _, _ = url_parts(secured.mqtt_tls_url)
    dev = mqtt_connect(host, port, a, a_pw, ca=secured.ca_file)
    try:
        event_id = f"sec-{run}"
        reading = {"event_id": event_id, "sensor_id": a, "sensor_type": entry.sensor_type.value, "value": 12.5,
                   "unit": entry.unit, "ts": datetime.now(UTC).isoformat(),
                   "location": entry.location.model_dump(mode="json", exclude_none=True)}
        assert not dev.publish(f"city/sensors/{a}", json.dumps(reading).encode()).is_failure
        found = None
        async with asyncio.timeout(WAIT * 2):
            while found is None:
                batch = await consumer.getmany(timeout_ms=1000)
                for recs in batch.values():
                    for r in recs:
                        if r.topic == topics.readings and json.loads(r.value)["event_id"] == event_id:
                            found = r
                        elif r.topic == topics.dlq and f"sec-{run}".encode() in r.value:
                            pytest.fail(f"the reading was dead-lettered: {dict(r.headers)}")
        assert found.key == a.encode()
    finally:
        dev.close()
        await consumer.stop()
        await connector.stop()
        await runner
        await connector.close()


# ------------------------------------------------------------------ Kafka
def add_department(code: str, prefix: str, secured: Secured, bootstrap: str) -> str:
    """The documented way: `citybrain security add-department`; returns the password."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_SECURITY", "KAFKA_SASL_U", "KAFKA_SASL_P"))}
    r = subprocess.run([sys.executable, "-m", "citybrain.cli", "security", "add-department", code,
                        "--topic-prefix", prefix, "--bootstrap", bootstrap, "--secrets-dir", str(secured.secrets_dir)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"User:dept.{code}" in r.stdout
    pw_file = secured.secrets_dir / f"kafka-dept.{code}"
    assert pw_file.stat().st_mode & 0o077 == 0, "a department's password file is readable by others"
    return pw_file.read_text().strip()


@pytest.fixture
async def dept_env(secured: Secured, kafka_bootstrap: str) -> AsyncIterator[dict[str, Any]]:
    run = uuid.uuid4().hex[:8]
    topics = Topics(f"sec{run}.")
    code, other = f"t{run}", f"u{run}"
    password = add_department(code, topics.prefix, secured, kafka_bootstrap)
    add_department(other, topics.prefix, secured, kafka_bootstrap)
    await ensure_topics(kafka_bootstrap, {topics.dept(code): 1, topics.dept(other): 1, topics.actions: 1,
                                          topics.alerts: 1, topics.readings: 1})
    p = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await p.start()
    try:
        await p.send_and_wait(topics.dept(code), b"for-" + code.encode(), key=b"a1")
        await p.send_and_wait(topics.dept(other), b"for-" + other.encode(), key=b"a2")
    finally:
        await p.stop()
    yield {"topics": topics, "code": code, "other": other, "sec": scram(f"dept.{code}", password),
           "sasl": secured.sasl_bootstrap}
    for f in (secured.secrets_dir / f"kafka-dept.{code}", secured.secrets_dir / f"kafka-dept.{other}"):
        f.unlink(missing_ok=True)


async def assert_read_denied(consumer: AIOKafkaConsumer, error: type[Exception]) -> None:
    """The broker refuses `consumer` (an authorisation error, not a time-out)."""
    with pytest.raises(error):
        try:
            await consumer.start()
            await asyncio.wait_for(consumer.getone(), WAIT)
        finally:
            await consumer.stop()


async def test_department_reads_only_its_own_topic(dept_env: dict[str, Any]) -> None:
    t, code, other, sec, sasl = (dept_env[k] for k in ("topics", "code", "other", "sec", "sasl"))
    own = AIOKafkaConsumer(t.dept(code), bootstrap_servers=sasl, group_id=f"dept.{code}.screen",
                           auto_offset_reset="earliest", **sec.aiokafka_kwargs())
    await own.start()
    try:
        msg = await asyncio.wait_for(own.getone(), WAIT * 2)
        assert msg.value == f"for-{code}".encode()
    finally:
        await own.stop()
    theirs = AIOKafkaConsumer(t.dept(other), bootstrap_servers=sasl, group_id=f"dept.{code}.peek",
                              auto_offset_reset="earliest", **sec.aiokafka_kwargs())
    await assert_read_denied(theirs, TopicAuthorizationFailedError)
    everything = AIOKafkaConsumer(t.alerts, bootstrap_servers=sasl, group_id=f"dept.{code}.all",
                                  auto_offset_reset="earliest", **sec.aiokafka_kwargs())
    await assert_read_denied(everything, TopicAuthorizationFailedError)
    foreign_group = AIOKafkaConsumer(t.dept(code), bootstrap_servers=sasl, group_id=f"dept.{other}.x",
                                     auto_offset_reset="earliest", **sec.aiokafka_kwargs())
    await assert_read_denied(foreign_group, GroupAuthorizationFailedError)


async def test_department_writes_only_actions(dept_env: dict[str, Any]) -> None:
    t, sec, sasl = dept_env["topics"], dept_env["sec"], dept_env["sasl"]
    p = AIOKafkaProducer(bootstrap_servers=sasl, acks="all", enable_idempotence=True, **sec.aiokafka_kwargs())
    await p.start()
    try:
        md = await asyncio.wait_for(p.send_and_wait(t.actions, b'{"action": "ack"}', key=b"a1"), WAIT)
        assert md.offset >= 0
        for forbidden in (t.alerts, t.readings, t.dept(dept_env["other"])):
            with pytest.raises(TopicAuthorizationFailedError):
                await asyncio.wait_for(p.send_and_wait(forbidden, b"x"), WAIT)
    finally:
        await p.stop()


async def test_sasl_listener_refuses_anonymous_and_wrong_password(dept_env: dict[str, Any]) -> None:
    sasl = dept_env["sasl"]
    anon = AIOKafkaProducer(bootstrap_servers=sasl, request_timeout_ms=10000)
    with pytest.raises(KafkaConnectionError):
        try:
            await asyncio.wait_for(anon.start(), WAIT * 2)
        finally:
            await anon.stop()
    wrong = scram(f"dept.{dept_env['code']}", "not-the-password")
    bad = AIOKafkaProducer(bootstrap_servers=sasl, request_timeout_ms=10000, **wrong.aiokafka_kwargs())
    with pytest.raises(KafkaConnectionError):
        try:
            await asyncio.wait_for(bad.start(), WAIT * 2)
        finally:
            await bad.stop()


async def test_service_principal_limited_to_its_topics(secured: Secured, kafka_bootstrap: str) -> None:
    """The connector's principal writes what it ingests and cannot read it back."""
    run = uuid.uuid4().hex[:8]
    topics = Topics(f"sec{run}.")
    password = (secured.secrets_dir / "kafka-connector").read_text().strip()
    await apply(kafka_bootstrap, Plan({}, service_acls(topics)))
    await ensure_topics(kafka_bootstrap, {topics.readings: 1, topics.alerts: 1})
    sec = scram("connector", password)
    p = AIOKafkaProducer(bootstrap_servers=secured.sasl_bootstrap, acks="all", enable_idempotence=True,
                         **sec.aiokafka_kwargs())
    await p.start()
    try:
        assert (await asyncio.wait_for(p.send_and_wait(topics.readings, b"{}", key=b"s"), WAIT)).offset >= 0
        with pytest.raises(TopicAuthorizationFailedError):
            await asyncio.wait_for(p.send_and_wait(topics.alerts, b"{}"), WAIT)
    finally:
        await p.stop()
    c = AIOKafkaConsumer(topics.readings, bootstrap_servers=secured.sasl_bootstrap, group_id=None,
                         auto_offset_reset="earliest", **sec.aiokafka_kwargs())
    await assert_read_denied(c, TopicAuthorizationFailedError)


def replay_password(secured: Secured) -> str:
    f = secured.secrets_dir / "kafka-replay"
    if not f.is_file():
        pytest.fail(f"{f} is missing (no `replay` principal): run deploy/local/stack.sh up")
    return f.read_text().strip()


async def test_replay_principal_owns_its_run_topics_and_nothing_live(secured: Secured, kafka_bootstrap: str) -> None:
    """As `replay` (storage.replay's own helpers where it has them): creates a
    run topic, produces, consumes and commits with the run's worker group,
    reads the live partition count, removes the run's topics and group; reading
    or writing a live topic, or joining another group, is refused."""
    from aiokafka.admin import AIOKafkaAdminClient

    from storage.replay import app_id, delete_run_kafka, list_replay_topics, live_partitions

    u = uuid.uuid4().hex[:8]
    run, live_like = f"sec{u}", Topics(f"sec{u}.")  # live_like: this test's stand-in for existing live topics
    rt, group = Topics.for_replay(run), app_id(run)
    await apply(kafka_bootstrap, Plan({}, replay_acls(LIVE) + replay_acls(live_like)))
    await ensure_topics(kafka_bootstrap, {live_like.readings: 1, live_like.alerts: 1})
    sec, sasl = scram("replay", replay_password(secured)), secured.sasl_bootstrap
    kw = sec.aiokafka_kwargs()
    plain = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await plain.start()
    try:
        await ensure_topics(sasl, {rt.readings: 1}, client_kwargs=kw)  # kafka_admin raises on any refusal
        p = AIOKafkaProducer(bootstrap_servers=sasl, acks="all", enable_idempotence=True, **kw)
        await p.start()
        try:
            assert (await asyncio.wait_for(p.send_and_wait(rt.readings, b"r1", key=b"s1"), WAIT)).offset == 0
            for live in (LIVE.readings, live_like.readings):  # the live name (absent here) and an existing one
                with pytest.raises(TopicAuthorizationFailedError):
                    await asyncio.wait_for(p.send_and_wait(live, b"forged", key=b"s1"), WAIT)
        finally:
            await p.stop()
        c = AIOKafkaConsumer(rt.readings, bootstrap_servers=sasl, group_id=group, auto_offset_reset="earliest",
                             enable_auto_commit=False, **kw)
        await c.start()
        try:
            assert (await asyncio.wait_for(c.getone(), WAIT * 2)).value == b"r1"
            await c.commit()
        finally:
            await c.stop()
        assert await live_partitions(sasl, kw) == await live_partitions(kafka_bootstrap)
        assert (await list_replay_topics(sasl, kw)).get(run) == [rt.readings]
        for live in (LIVE.alerts, live_like.alerts):
            spy = AIOKafkaConsumer(live, bootstrap_servers=sasl, group_id=f"{group}-spy", auto_offset_reset="earliest",
                                   **kw)
            await assert_read_denied(spy, TopicAuthorizationFailedError)
        stranger = AIOKafkaConsumer(rt.readings, bootstrap_servers=sasl, group_id="citybrain-streams-replay-test",
                                    auto_offset_reset="earliest", **kw)
        await assert_read_denied(stranger, GroupAuthorizationFailedError)
        assert await delete_run_kafka(sasl, run, client_kwargs=kw) == [rt.readings]
        assert group not in {g[0] for g in await plain.list_consumer_groups()}, "DeleteGroups as replay"
    finally:
        leftovers = [t for t in await plain.list_topics() if t.startswith((live_like.prefix, rt.prefix))]
        if leftovers:
            await plain.delete_topics(leftovers)
        await plain.close()


# ------------------------------------------------------------------ audit trail
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
async def audit_schema(database_url: str) -> AsyncIterator[str]:
    name = f"t_audit_{uuid.uuid4().hex[:10]}"
    await migrate(database_url, name)
    conn = await connect(database_url, name, "test-audit")
    try:
        for i in range(5):
            await append_audit(conn, actor=f"user{i}", kind="alert.ack", subject=f"alert-{i}",
                               details={"comment": f"step {i}", "n": i, "x": 1.5}, at=T0 + timedelta(minutes=i))
    finally:
        await conn.close()
    yield name
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


def audit_cli(database_url: str, schema: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "citybrain.cli", "audit", *args, "--schema", schema,
                           "--database-url", database_url], capture_output=True, text=True, cwd=ROOT, timeout=120)


async def test_audit_edit_is_named_by_verify(database_url: str, audit_schema: str) -> None:
    ok = audit_cli(database_url, audit_schema, "verify")
    assert ok.returncode == 0, ok.stderr
    assert "chain intact: 5 entries" in ok.stdout
    conn = await connect(database_url, audit_schema, "test-audit")
    try:
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
        # someone with the owner's rights goes around the trigger
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update")
        await conn.execute("""UPDATE audit_log SET details = jsonb_set(details, '{comment}', '"nothing happened"')
                              WHERE seq = 3""")
        problem = await verify(conn)
    finally:
        await conn.close()
    assert problem is not None and problem.seq == 3 and problem.problem == "edited", problem
    bad = audit_cli(database_url, audit_schema, "verify")
    assert bad.returncode == 1
    assert "audit entry 3: edited" in bad.stderr, bad.stderr


async def test_audit_delete_and_insert_are_named(database_url: str, audit_schema: str) -> None:
    conn = await connect(database_url, audit_schema, "test-audit")
    try:
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("DELETE FROM audit_log WHERE seq = 2")
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update")
        await conn.execute("DELETE FROM audit_log WHERE seq = 2")
        problem = await verify(conn)
        assert problem is not None and (problem.seq, problem.problem) == (2, "deleted"), problem
        # re-inserted with the right seq but made-up content: its hash cannot chain
        row = await conn.fetchrow("SELECT * FROM audit_log WHERE seq = 1")
        await conn.execute(
            "INSERT INTO audit_log (seq, at, actor, kind, subject, details, prev_hash, hash) "
            "VALUES (2, $1, 'mallory', 'alert.ack', 'alert-x', '{}'::jsonb, $2, $3)",
            T0, row["hash"], "f" * 64)
        problem = await verify(conn)
        assert problem is not None and (problem.seq, problem.problem) == (2, "edited"), problem
    finally:
        await conn.close()
    bad = audit_cli(database_url, audit_schema, "verify")
    assert bad.returncode == 1 and "audit entry 2" in bad.stderr, bad.stderr


async def test_audit_tail_head_and_truncation(database_url: str, audit_schema: str) -> None:
    tail = audit_cli(database_url, audit_schema, "tail", "-n", "2")
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.strip().splitlines()
    assert len(lines) == 3 and "alert-3" in lines[0] and "alert-4" in lines[1]
    head_hash = lines[-1].split()[-1]
    assert audit_cli(database_url, audit_schema, "verify", "--head", head_hash).returncode == 0
    conn = await connect(database_url, audit_schema, "test-audit")
    try:
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update")
        await conn.execute("DELETE FROM audit_log WHERE seq = 5")  # the newest: only the head shows it
        assert await verify(conn) is None
    finally:
        await conn.close()
    cut = audit_cli(database_url, audit_schema, "verify", "--head", head_hash)
    assert cut.returncode == 1 and "truncated" in cut.stderr, cut.stderr


async def test_concurrent_appends_keep_one_linear_chain(database_url: str, audit_schema: str) -> None:
    conns = [await connect(database_url, audit_schema, "test-audit") for _ in range(8)]
    try:
        async def writer(i: int, conn: asyncpg.Connection) -> None:
            for j in range(5):
                await append_audit(conn, actor=f"w{i}", kind="mode.switch", subject="city",
                                   details={"j": j}, at=datetime.now(UTC))

        await asyncio.gather(*(writer(i, c) for i, c in enumerate(conns)))
        assert await verify(conns[0]) is None
        seqs = [r["seq"] for r in await conns[0].fetch("SELECT seq FROM audit_log ORDER BY seq")]
        assert seqs == list(range(1, 5 + 8 * 5 + 1))
    finally:
        for c in conns:
            await c.close()


def test_audit_verify_on_unmigrated_schema_is_one_line(database_url: str) -> None:
    r = audit_cli(database_url, f"t_none_{uuid.uuid4().hex[:8]}", "verify")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "citybrain db migrate" in r.stderr, r.stderr


def test_opscenter_actions_and_mode_switches_are_audited(database_url: str, kafka_bootstrap: str) -> None:
    import httpx

    from citybrain.kafka_admin import pipeline_topics
    from opscenter.app import create_app
    from opscenter.auth import TokenStore
    from opscenter.settings import OpscenterSettings
    from opscenter.testing import ServerThread, drop_schema, make_alert, migrate_schema, store
    from storage.db import create_pool

    u = uuid.uuid4().hex[:10]
    schema, prefix, alert_id = f"t_opsaudit_{u}", f"sec{u}.", f"a-{u}"

    async def setup() -> tuple[str, str]:
        await migrate_schema(database_url, schema)
        await ensure_topics(kafka_bootstrap, {**pipeline_topics(Topics(prefix), 1), Topics(prefix).control_mode: 1})
        await store(database_url, schema, "alerts", [make_alert(alert_id, datetime.now(UTC) - timedelta(hours=1))])
        pool = await create_pool(database_url, schema, min_size=1, max_size=2)
        try:
            ts = TokenStore(pool)
            await ts.ensure_table()
            ops = await ts.issue("duty-officer", "ops", None, timedelta(hours=1))
            eeb = await ts.issue("eeb-desk", "department", "eeb", timedelta(hours=1))
            return ops.token, eeb.token
        finally:
            await pool.close()

    async def rows() -> list[asyncpg.Record]:
        conn = await connect(database_url, schema, "test-audit")
        try:
            assert await verify(conn) is None
            return list(await conn.fetch("SELECT seq, actor, kind, subject, details FROM audit_log ORDER BY seq"))
        finally:
            await conn.close()

    ops_token, eeb_token = asyncio.run(setup())
    settings = OpscenterSettings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap, db_schema=schema,
                                 topic_prefix=prefix, client_id=f"test-opsaudit-{u}")
    try:
        with ServerThread(create_app(settings)) as srv:
            eeb = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {eeb_token}"}, timeout=30)
            ops = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {ops_token}"}, timeout=30)
            r = eeb.post(f"/api/v1/alerts/{alert_id}/actions", json={"action": "ack", "comment": "on our way"})
            assert r.status_code == 202, r.text
            assert eeb.post("/api/v1/mode", json={"scope": "city", "mode": "emergency"}).status_code == 403
            r = ops.post("/api/v1/mode", json={"scope": "city", "mode": "emergency", "comment": "storm"})
            assert r.status_code == 202, r.text
        got = asyncio.run(rows())
    finally:
        asyncio.run(drop_schema(database_url, schema))
    assert [(r["seq"], r["actor"], r["kind"], r["subject"]) for r in got] == [
        (1, "eeb-desk", "alert.ack", alert_id), (2, "duty-officer", "mode.switch", "city")]
    ack = json.loads(got[0]["details"])
    assert ack["department"] == "eeb" and ack["comment"] == "on our way" and ack["topic"] == Topics(prefix).actions
    assert json.loads(got[1]["details"])["mode"] == "emergency"


async def test_open311_sink_writes_as_the_connector_principal(secured: Secured, kafka_bootstrap: str) -> None:
    from connectors.open311.sink import KafkaHotlineSink
    from schemas import HotlineEvent

    run = uuid.uuid4().hex[:8]
    topics = Topics(f"sec{run}.")
    await apply(kafka_bootstrap, Plan({}, service_acls(topics)))
    await ensure_topics(kafka_bootstrap, {topics.hotline: 1, topics.alerts: 1})
    sec = scram("connector", (secured.secrets_dir / "kafka-connector").read_text().strip())
    event = HotlineEvent.model_validate({
        "event_id": f"h-{run}", "ticket_id": f"o311-{run}", "kind": "created", "category": "flooding",
        "ts": datetime.now(UTC).isoformat(), "location": {"district": "朝阳区", "lat": 39.99, "lon": 116.47}})
    sink = KafkaHotlineSink(secured.sasl_bootstrap, topics.hotline, client_kwargs=sec.aiokafka_kwargs())
    await asyncio.wait_for(sink.start(), WAIT * 2)
    try:
        await asyncio.wait_for(sink(event), WAIT)
    finally:
        await sink.stop()
    wrong = KafkaHotlineSink(secured.sasl_bootstrap, topics.alerts, client_kwargs=sec.aiokafka_kwargs())
    await wrong.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await asyncio.wait_for(wrong(event), WAIT)
    finally:
        await wrong.stop()
    c = AIOKafkaConsumer(topics.hotline, bootstrap_servers=kafka_bootstrap, group_id=None, auto_offset_reset="earliest")
    await c.start()
    try:
        msg = await asyncio.wait_for(c.getone(), WAIT)
        assert json.loads(msg.value)["ticket_id"] == f"o311-{run}"
    finally:
        await c.stop()


async def test_connector_ingests_as_its_principal_over_sasl(secured: Secured, kafka_bootstrap: str,
                                                            mqtt_url: str) -> None:
    """Phase 2: the connector switched to the SASL listener by settings only."""
    run = uuid.uuid4().hex[:8]
    topics = Topics(f"sec{run}.")
    await apply(kafka_bootstrap, Plan({}, service_acls(topics)))
    await ensure_topics(kafka_bootstrap, {topics.readings: 1, topics.hotline: 1, topics.dlq: 1})
    sec = scram("connector", (secured.secrets_dir / "kafka-connector").read_text().strip())
    settings = MqttKafkaSettings(
        mqtt_url=mqtt_url, kafka_bootstrap_servers=secured.sasl_bootstrap, kafka_security=sec,
        client_id=f"sec-sasl-{run}", topic_prefix=topics.prefix, subscriptions=(f"city/sensors/{run}/#",))
    connector = MqttKafkaConnector(settings, default_routes(), clock=lambda: datetime.now(UTC),
                                   registry=DeviceRegistry.sample())
    await asyncio.wait_for(connector.setup(), WAIT * 2)
    runner = asyncio.create_task(connector.run())
    consumer = AIOKafkaConsumer(topics.readings, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                group_id=None)
    await consumer.start()
    host, port, _, _ = url_parts(os.environ["MQTT_PUBLISH_URL"])
    _, _, puser, ppass = url_parts(os.environ["MQTT_PUBLISH_URL"])
    pub = mqtt_connect(host, port, puser, ppass)
    try:
        reading = {"event_id": f"sasl-{run}", "sensor_id": f"{run}-s1", "sensor_type": "noise", "value": 55.0,
                   "unit": "dB(A)", "ts": datetime.now(UTC).isoformat(),
                   "location": {"district": "海淀区", "lat": 39.96, "lon": 116.30}}
        assert not pub.publish(f"city/sensors/{run}/s1", json.dumps(reading).encode()).is_failure
        msg = await asyncio.wait_for(consumer.getone(), WAIT * 2)
        assert json.loads(msg.value)["event_id"] == f"sasl-{run}"
    finally:
        pub.close()
        await consumer.stop()
        await connector.stop()
        await runner
        await connector.close()


async def test_connector_process_creates_only_its_topics_as_its_principal(
        secured: Secured, kafka_bootstrap: str, mqtt_url: str, tmp_path: Path) -> None:
    """`citybrain connector` on the SASL listener: at start it creates the topics
    it writes, as `connector`, and does not try (and fail) to create the others."""
    from aiokafka.admin import AIOKafkaAdminClient

    from citybrain.supervisor import CONNECTOR_SUBSCRIBED, Supervisor

    run = uuid.uuid4().hex[:8]
    topics = Topics(f"sec{run}.")
    await apply(kafka_bootstrap, Plan({}, service_acls(topics)))
    sup = Supervisor(tmp_path, base_env=os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": secured.sasl_bootstrap, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "connector",
        "KAFKA_SASL_PASSWORD": (secured.secrets_dir / "kafka-connector").read_text().strip(),
        "CONNECTOR_TOPIC_PREFIX": topics.prefix, "CONNECTOR_CLIENT_ID": f"sec-cli-{run}", "MQTT_URL": mqtt_url,
    })  # fmt: skip
    sup.start("connector", ["connector", "--log-level", "info"])
    try:
        await asyncio.to_thread(sup.wait_for_log, "connector", CONNECTOR_SUBSCRIBED, 60)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            mine = {t for t in await admin.list_topics() if t.startswith(topics.prefix)}
        finally:
            await admin.close()
        assert mine == {topics.readings, topics.hotline, topics.dlq}
        sup.check_alive()
    finally:
        sup.stop_all()


def test_opscenter_runs_as_its_principal_over_sasl(secured: Secured, database_url: str, kafka_bootstrap: str) -> None:
    """Phase 2: the operations center's publisher and live feed on the SASL listener."""
    import time

    import httpx

    from citybrain.kafka_admin import pipeline_topics
    from opscenter.app import create_app
    from opscenter.auth import TokenStore
    from opscenter.settings import OpscenterSettings
    from opscenter.testing import ServerThread, drop_schema, make_alert, migrate_schema, store
    from storage.db import create_pool

    u = uuid.uuid4().hex[:10]
    schema, topics, alert_id = f"t_opssasl_{u}", Topics(f"sec{u}."), f"a-{u}"

    async def setup() -> str:
        await apply(kafka_bootstrap, Plan({}, service_acls(topics)))
        await migrate_schema(database_url, schema)
        await ensure_topics(kafka_bootstrap, pipeline_topics(topics, 1))
        await store(database_url, schema, "alerts", [make_alert(alert_id, datetime.now(UTC) - timedelta(hours=1))])
        pool = await create_pool(database_url, schema, min_size=1, max_size=2)
        try:
            ts = TokenStore(pool)
            await ts.ensure_table()
            return (await ts.issue("duty-officer", "ops", None, timedelta(hours=1))).token
        finally:
            await pool.close()

    token = asyncio.run(setup())
    sec = scram("opscenter", (secured.secrets_dir / "kafka-opscenter").read_text().strip())
    settings = OpscenterSettings(database_url=database_url, kafka_bootstrap_servers=secured.sasl_bootstrap,
                                 kafka_security=sec, db_schema=schema, topic_prefix=topics.prefix,
                                 client_id=f"test-opssasl-{u}")
    app = create_app(settings)
    try:
        with ServerThread(app) as srv:
            st = app.state.ops
            deadline = time.monotonic() + WAIT * 2
            while not (st.hub and st.hub.ready.is_set()) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert st.hub and st.hub.ready.is_set(), "the live feed did not come up on the SASL listener"
            ops = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            r = ops.post(f"/api/v1/alerts/{alert_id}/actions", json={"action": "ack"})
            assert r.status_code == 202, r.text
            assert r.json()["topic"] == topics.actions
    finally:
        asyncio.run(drop_schema(database_url, schema))


async def test_writer_records_mode_switches_as_its_principal_over_sasl(
        secured: Secured, kafka_bootstrap: str, database_url: str) -> None:
    """The `writer` principal's ACLs cover the control topic: as `writer` on the
    SASL listener the writer makes it (compacted, one partition), reads it and
    records the switch in `mode_switches`."""
    from pydantic import SecretStr

    from citybrain.security_cli import DEFAULT_WRITER_GROUP
    from storage.writer import WriterMetrics, WriterSettings, run_writer

    run = uuid.uuid4().hex[:8]
    topics = Topics(f"sec{run}.")
    schema = f"t_sec_{run}"
    await apply(kafka_bootstrap, Plan({}, service_acls(topics)))
    await migrate(database_url, schema)
    password = (secured.secrets_dir / "kafka-writer").read_text().strip()
    settings = WriterSettings(  # type: ignore[call-arg]
        database_url=SecretStr(database_url), kafka_bootstrap_servers=secured.sasl_bootstrap,
        kafka_security=scram("writer", password), topic_prefix=topics.prefix, db_schema=schema,
        group_id=f"{DEFAULT_WRITER_GROUP}-{run}", client_id=f"w-{run}", batch_timeout_ms=200,
        maintenance_interval_s=0)
    stop = asyncio.Event()
    task = asyncio.create_task(run_writer(settings, stop, WriterMetrics()))
    conn = await connect(database_url, schema, "test")
    try:
        switch = {"event_id": f"mode-{run}", "scope": "city", "mode": "emergency", "actor": "duty",
                  "actor_department": "ops", "ts": datetime.now(UTC).isoformat()}
        sent = False
        deadline = asyncio.get_running_loop().time() + 90
        while asyncio.get_running_loop().time() < deadline:
            if task.done():
                task.result()
                raise AssertionError("writer exited early")
            if not sent and topics.control_mode in await _topic_names(kafka_bootstrap):
                p = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
                await p.start()
                try:
                    await p.send_and_wait(topics.control_mode, json.dumps(switch).encode(), key=b"city")
                finally:
                    await p.stop()
                sent = True
            if await conn.fetchval("SELECT count(*) FROM mode_switches") == 1:
                break
            await asyncio.sleep(0.5)
        assert await conn.fetchval("SELECT event_id FROM mode_switches") == f"mode-{run}"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def _topic_names(bootstrap: str) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()
