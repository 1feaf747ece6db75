"""Kafka principals and ACLs, MQTT device credentials: `citybrain security ...`.

Principals (SCRAM-SHA-512 users on the SASL listener):

    admin                 super user (server.properties `super.users`)
    connector             writes readings, hotline events, the DLQ
    worker                the Faust app: reads and writes `city.*`, owns `<app id>-*`
    writer                reads `city.*`, writes the DLQ, groups `citybrain-storage*`
    opscenter             reads `city.*`, writes actions and mode switches
    replay                the replay engine and its worker: owns `replay.*` and
                          `citybrain-replay-*` (topics, groups, transactional ids),
                          describes the live readings topic; reads and writes no live topic
    dept.<code>           reads only `city.alerts.dept.<code>` with groups `dept.<code>.*`,
                          writes only `city.alert.actions`; nothing else

The ACL plan is data (`service_acls`, `department_acls`); `apply` sends it with
the Kafka admin protocol (CreateAcls, AlterUserScramCredentials) through
aiokafka's connection, so no Kafka command-line tools are needed. Passwords
live one per file under the secrets directory (mode 600), created on first use.

MQTT devices: a device's username is its sensor id and its password is derived
from one master secret (HMAC), so the broker's password file can be rebuilt
from the device registry at any time and a device can be provisioned alone
(`citybrain security device-password SENSOR_ID`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from citybrain.errors import ConfigError, ServiceError
from citybrain.topics import Topics

SERVICES = ("connector", "worker", "writer", "opscenter", "replay")
ADMIN = "admin"
SCRAM_ITERATIONS = 8192
SCRAM_SHA_512 = 2  # AlterUserScramCredentials mechanism id
DEFAULT_APP_ID = "citybrain-streams"
DEFAULT_WRITER_GROUP = "citybrain-storage"
# storage.replay: a run's topics are `replay.<run>.*` (Topics.for_replay) and its
# worker's Faust app id `citybrain-replay-<run>` (its group, internal topics and
# transactional ids); both independent of the deployment's topic prefix
REPLAY_TOPIC_PREFIX = "replay."
REPLAY_APP_PREFIX = "citybrain-replay-"
_CODE_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class Res(IntEnum):
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5


class Pat(IntEnum):
    LITERAL = 3
    PREFIXED = 4


class Op(IntEnum):
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    DESCRIBE_CONFIGS = 10
    IDEMPOTENT_WRITE = 12


ALLOW = 3


@dataclass(frozen=True, slots=True, order=True)
class Acl:
    principal: str  # "User:<name>"
    resource: Res
    name: str
    pattern: Pat
    op: Op

    def __str__(self) -> str:
        return f"{self.principal} {self.op.name} {self.resource.name}:{self.pattern.name}:{self.name}"


def user(name: str) -> str:
    return f"User:{name}"


def department_user(code: str) -> str:
    return f"dept.{code}"


def check_code(code: str) -> str:
    if not code or len(code) > 100 or not set(code) <= _CODE_OK or code.startswith(".") or ".." in code:
        raise ConfigError(f"department code {code!r} must be letters, digits, '.', '_' or '-' (at most 100)")
    return code


def _topic(principal: str, name: str, pattern: Pat, *ops: Op) -> list[Acl]:
    return [Acl(principal, Res.TOPIC, name, pattern, op) for op in ops]


def department_acls(code: str, topics: Topics) -> list[Acl]:
    """Its own alert topic and consumer groups, and the action topic: nothing else
    (the broker denies whatever no ACL allows)."""
    p = user(department_user(check_code(code)))
    return [
        *_topic(p, topics.dept(code), Pat.LITERAL, Op.READ, Op.DESCRIBE),
        Acl(p, Res.GROUP, f"dept.{code}.", Pat.PREFIXED, Op.READ),
        *_topic(p, topics.actions, Pat.LITERAL, Op.WRITE, Op.DESCRIBE),
    ]


def replay_acls(topics: Topics) -> list[Acl]:
    """`citybrain replay` and the isolated worker it starts (storage.replay):
    everything on its own run topics and on the worker's app-id prefix (create,
    write, read, commit, delete topics and groups), DESCRIBE on the live readings
    topic only (the run takes its partition count, `live_partitions`), and no
    READ or WRITE on any live topic."""
    r = user("replay")
    return [
        *_topic(r, REPLAY_TOPIC_PREFIX, Pat.PREFIXED, Op.ALL),
        *_topic(r, REPLAY_APP_PREFIX, Pat.PREFIXED, Op.ALL),
        Acl(r, Res.GROUP, REPLAY_APP_PREFIX, Pat.PREFIXED, Op.ALL),
        Acl(r, Res.TRANSACTIONAL_ID, REPLAY_APP_PREFIX, Pat.PREFIXED, Op.ALL),
        *_topic(r, topics.readings, Pat.LITERAL, Op.DESCRIBE),
    ]


def service_acls(topics: Topics, app_id: str = DEFAULT_APP_ID,
                 writer_group: str = DEFAULT_WRITER_GROUP) -> list[Acl]:
    city = f"{topics.prefix}city."
    cluster = "kafka-cluster"
    out: list[Acl] = []
    c = user("connector")
    for t in (topics.readings, topics.hotline, topics.dlq):
        out += _topic(c, t, Pat.LITERAL, Op.WRITE, Op.DESCRIBE, Op.CREATE)
    w = user("worker")
    out += _topic(w, city, Pat.PREFIXED, Op.READ, Op.WRITE, Op.DESCRIBE, Op.CREATE, Op.DESCRIBE_CONFIGS)
    # the Faust app's own topics (changelogs, repartitions), group and transactions
    out += _topic(w, app_id, Pat.PREFIXED, Op.ALL)
    out += [Acl(w, Res.GROUP, app_id, Pat.PREFIXED, Op.ALL),
            Acl(w, Res.TRANSACTIONAL_ID, app_id, Pat.PREFIXED, Op.ALL)]
    wr = user("writer")
    out += _topic(wr, city, Pat.PREFIXED, Op.READ, Op.DESCRIBE, Op.CREATE)
    out += _topic(wr, topics.dlq, Pat.LITERAL, Op.WRITE)
    out.append(Acl(wr, Res.GROUP, writer_group, Pat.PREFIXED, Op.READ))
    o = user("opscenter")
    out += _topic(o, city, Pat.PREFIXED, Op.READ, Op.DESCRIBE, Op.CREATE, Op.DESCRIBE_CONFIGS)
    for t in (topics.actions, topics.control_mode):
        out += _topic(o, t, Pat.LITERAL, Op.WRITE)
    out.append(Acl(o, Res.GROUP, "citybrain-opscenter", Pat.PREFIXED, Op.READ))
    out += replay_acls(topics)
    for svc in SERVICES:
        out.append(Acl(user(svc), Res.CLUSTER, cluster, Pat.LITERAL, Op.IDEMPOTENT_WRITE))
    return out


# ------------------------------------------------------------------ secrets
def secret_file(secrets_dir: Path, name: str) -> Path:
    return secrets_dir / f"kafka-{name}"


def ensure_secret(path: Path) -> str:
    """The secret in `path`, created (24 random characters, mode 600) if absent."""
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def device_password(master: str, sensor_id: str) -> str:
    mac = hmac.new(master.encode(), f"mqtt-device:{sensor_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode()[:32]


def scram_credential(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> bytes:
    """SCRAM's SaltedPassword: PBKDF2-HMAC-SHA512 (RFC 5802 Hi())."""
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)


# ------------------------------------------------------------------ admin protocol
def _protocol() -> tuple[type, type]:
    """Request classes aiokafka does not ship (AlterUserScramCredentials v0) and a
    batched CreateAcls v1; built lazily so importing this module stays cheap."""
    from aiokafka.protocol.admin import CreateAclsRequest_v1
    from aiokafka.protocol.api import Request, RequestStruct, Response
    from aiokafka.protocol.types import (
        CompactArray,
        CompactBytes,
        CompactString,
        Int8,
        Int16,
        Int32,
        Schema,
        TaggedFields,
    )

    class AlterScramResponse_v0(Response):
        API_KEY = 51
        API_VERSION = 0
        SCHEMA = Schema(
            ("throttle_time_ms", Int32),
            ("results", CompactArray(("user", CompactString("utf-8")), ("error_code", Int16),
                                     ("error_message", CompactString("utf-8")), ("tags", TaggedFields))),
            ("tags", TaggedFields),
        )

    class AlterScramRequest_v0(RequestStruct):
        FLEXIBLE_VERSION = True
        API_KEY = 51
        API_VERSION = 0
        RESPONSE_TYPE = AlterScramResponse_v0
        SCHEMA = Schema(
            ("deletions", CompactArray(("name", CompactString("utf-8")), ("mechanism", Int8), ("tags", TaggedFields))),
            ("upsertions", CompactArray(("name", CompactString("utf-8")), ("mechanism", Int8),
                                        ("iterations", Int32), ("salt", CompactBytes),
                                        ("salted_password", CompactBytes), ("tags", TaggedFields))),
            ("tags", TaggedFields),
        )

    class AlterScram(Request[AlterScramRequest_v0]):
        API_KEY = 51

        def __init__(self, upsertions: list[tuple[Any, ...]]) -> None:
            self.upsertions = upsertions

        def build(self, request_struct_class: type[AlterScramRequest_v0]) -> AlterScramRequest_v0:
            return request_struct_class([], self.upsertions, {})

    class CreateAcls(Request[CreateAclsRequest_v1]):
        API_KEY = 30

        def __init__(self, creations: list[tuple[Any, ...]]) -> None:
            self.creations = creations

        def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
            return request_struct_class(self.creations)

    return AlterScram, CreateAcls


@dataclass(frozen=True, slots=True)
class Plan:
    users: dict[str, str]  # name -> password
    acls: list[Acl]


async def apply(bootstrap: str, plan: Plan, client_kwargs: dict[str, Any] | None = None,
                timeout_s: float = 60) -> None:
    """Upsert every SCRAM user and create every ACL (both idempotent)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaConnectionError, for_code

    AlterScram, CreateAcls = _protocol()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="citybrain-security",
                                    request_timeout_ms=20000, **(client_kwargs or {}))
        try:
            await admin.start()
            break
        except KafkaConnectionError as exc:
            await admin.close()
            if loop.time() > deadline:
                raise ServiceError(f"Kafka at {bootstrap} unreachable: {exc}") from None
            await asyncio.sleep(1)
    try:
        if plan.users:
            ups: list[tuple[Any, ...]] = []
            for name, password in sorted(plan.users.items()):
                salt = secrets.token_bytes(32)
                ups.append((name, SCRAM_SHA_512, SCRAM_ITERATIONS, salt,
                            scram_credential(password, salt), {}))
            resp = await admin._send_request(AlterScram(ups))
            for u, code, msg, _ in resp.results:
                if code:
                    raise ServiceError(f"SCRAM user {u}: {for_code(code).__name__}: {msg}")
        if plan.acls:
            rows = [(int(a.resource), a.name, int(a.pattern), a.principal, "*", int(a.op), ALLOW)
                    for a in plan.acls]
            resp = await admin._send_request(CreateAcls(rows))
            for a, (code, msg) in zip(plan.acls, resp.creation_responses, strict=True):
                if code:
                    raise ServiceError(f"ACL {a}: {for_code(code).__name__}: {msg}")
    finally:
        await admin.close()


def bootstrap_plan(secrets_dir: Path, topics: Topics, departments: Iterable[str],
                   app_id: str = DEFAULT_APP_ID, writer_group: str = DEFAULT_WRITER_GROUP) -> Plan:
    users = {name: ensure_secret(secret_file(secrets_dir, name)) for name in (ADMIN, *SERVICES)}
    acls = service_acls(topics, app_id, writer_group)
    for code in departments:
        name = department_user(check_code(code))
        users[name] = ensure_secret(secret_file(secrets_dir, name))
        acls += department_acls(code, topics)
    return Plan(users, acls)


def department_plan(secrets_dir: Path, code: str, topics: Topics) -> Plan:
    name = department_user(check_code(code))
    return Plan({name: ensure_secret(secret_file(secrets_dir, name))}, department_acls(code, topics))


def default_departments() -> list[str]:
    """City and district departments get principals up front; streets on demand."""
    from streams.routing import load_registry

    reg = load_registry()
    return sorted(c for c, d in reg.departments.items() if d.level in ("city", "district"))


# ------------------------------------------------------------------ MQTT devices
def mqtt_device_lines(registry_file: Path | None, master: str) -> list[str]:
    """`username:password` lines (plain; mosquitto_passwd -U hashes them) for
    every sensor of the registry."""
    from connectors.registry import DeviceRegistry

    reg = DeviceRegistry.from_file(registry_file) if registry_file else DeviceRegistry.sample()
    out = []
    for e in reg.entries:
        if any(ch in e.sensor_id for ch in "+#/:"):
            raise ConfigError(f"sensor id {e.sensor_id!r} cannot be an MQTT username (no + # / :)")
        out.append(f"{e.sensor_id}:{device_password(master, e.sensor_id)}")
    return out


# ------------------------------------------------------------------ CLI
def _secrets_dir(args: argparse.Namespace) -> Path:
    d = args.secrets_dir or os.environ.get("CITYBRAIN_SECRETS_DIR")
    if not d:
        raise ConfigError("no secrets directory: pass --secrets-dir or set CITYBRAIN_SECRETS_DIR (stack.env)")
    return Path(d)


def _bootstrap_servers(args: argparse.Namespace) -> str:
    b = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not b:
        raise ConfigError("no Kafka: pass --bootstrap or set KAFKA_BOOTSTRAP_SERVERS")
    return str(b)


def _client_kwargs() -> dict[str, Any]:
    from citybrain.kafka_security import KafkaSecurity

    return KafkaSecurity().aiokafka_kwargs()


def _cmd_bootstrap(args: argparse.Namespace) -> int:
    depts = args.department or default_departments()
    plan = bootstrap_plan(_secrets_dir(args), Topics(args.topic_prefix), depts, args.app_id, args.writer_group)
    asyncio.run(apply(_bootstrap_servers(args), plan, _client_kwargs()))
    print(f"kafka security: {len(plan.users)} SCRAM users, {len(plan.acls)} ACLs")
    return 0


def _cmd_add_department(args: argparse.Namespace) -> int:
    sdir = _secrets_dir(args)
    plan = department_plan(sdir, args.code, Topics(args.topic_prefix))
    asyncio.run(apply(_bootstrap_servers(args), plan, _client_kwargs()))
    name = department_user(args.code)
    print(f"department {args.code}: principal User:{name} (SCRAM-SHA-512), password in "
          f"{secret_file(sdir, name)}; reads {Topics(args.topic_prefix).dept(args.code)} with groups "
          f"'dept.{args.code}.*', writes {Topics(args.topic_prefix).actions}")
    return 0


def _cmd_acls(args: argparse.Namespace) -> int:
    topics = Topics(args.topic_prefix)
    acls = department_acls(args.department, topics) if args.department else service_acls(topics)
    for a in sorted(acls):
        print(a)
    return 0


def _cmd_device_password(args: argparse.Namespace) -> int:
    master = ensure_secret(_secrets_dir(args) / "mqtt-device-master")
    print(device_password(master, args.sensor_id))
    return 0


def _cmd_mqtt_devices(args: argparse.Namespace) -> int:
    master = ensure_secret(_secrets_dir(args) / "mqtt-device-master")
    registry = args.registry or os.environ.get("CITYBRAIN_DEVICE_REGISTRY")
    sys.stdout.write("".join(line + "\n" for line in mqtt_device_lines(Path(registry) if registry else None, master)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("security", help="Kafka principals and ACLs, MQTT device credentials")
    s = p.add_subparsers(dest="security_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser, kafka: bool = True) -> None:
        q.add_argument("--secrets-dir", help="where passwords live (default $CITYBRAIN_SECRETS_DIR)")
        if kafka:
            q.add_argument("--bootstrap", help="admin bootstrap (default $KAFKA_BOOTSTRAP_SERVERS; "
                                               "KAFKA_SECURITY_PROTOCOL etc. for SASL)")
            q.add_argument("--topic-prefix", default="", help="topic prefix of the deployment (default none)")

    b = s.add_parser("bootstrap", help="SCRAM users and ACLs for every service and the city/district departments")
    common(b)
    b.add_argument("--department", action="append", help="only these departments (repeatable)")
    b.add_argument("--app-id", default=DEFAULT_APP_ID, help="the Faust app id (its internal topic prefix)")
    b.add_argument("--writer-group", default=DEFAULT_WRITER_GROUP, help="the storage writer's group prefix")
    b.set_defaults(func=_cmd_bootstrap)
    a = s.add_parser("add-department", help="a department's principal and ACLs (its topic, groups, actions)")
    a.add_argument("code", type=check_code, help="department code, e.g. eeb or street.chaoyang.wangjing")
    common(a)
    a.set_defaults(func=_cmd_add_department)
    l_ = s.add_parser("acls", help="print the ACL plan (services, or one department)")
    l_.add_argument("--department")
    l_.add_argument("--topic-prefix", default="")
    l_.set_defaults(func=_cmd_acls)
    d = s.add_parser("device-password", help="an MQTT device's password (derived from the master secret)")
    d.add_argument("sensor_id")
    common(d, kafka=False)
    d.set_defaults(func=_cmd_device_password)
    m = s.add_parser("mqtt-devices", help="username:password lines for every registry device (for mosquitto_passwd -U)")
    m.add_argument("--registry", help="device registry JSON (default $CITYBRAIN_DEVICE_REGISTRY or the sample)")
    common(m, kafka=False)
    m.set_defaults(func=_cmd_mqtt_devices)


def main(argv: Sequence[str] | None = None) -> int:
    from citybrain.cli import main as cli_main

    return cli_main(["security", *(argv or sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
