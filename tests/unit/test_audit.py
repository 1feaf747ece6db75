"""Audit chain logic (pure), the Kafka ACL plan and client security settings."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import SecretStr

from citybrain.errors import ConfigError, InputError
from citybrain.kafka_security import KafkaSecurity, scram
from citybrain.security_cli import (
    Op,
    Pat,
    Res,
    bootstrap_plan,
    check_code,
    department_acls,
    device_password,
    ensure_secret,
    scram_credential,
    service_acls,
)
from citybrain.topics import Topics
from storage.audit import GENESIS, AuditEntry, check_link, entry_hash

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def chain(n: int) -> list[AuditEntry]:
    out: list[AuditEntry] = []
    prev = GENESIS
    for i in range(1, n + 1):
        at = T0 + timedelta(minutes=i)
        details = f'{{"i": {i}}}'
        h = entry_hash(i, at, "ops", "alert.ack", f"a{i}", details, prev)
        out.append(AuditEntry(i, at, "ops", "alert.ack", f"a{i}", details, prev, h))
        prev = h
    return out


def first_break(entries: list[AuditEntry]) -> tuple[int, str] | None:
    prev = None
    for e in entries:
        b = check_link(prev, e)
        if b is not None:
            return b.seq, b.problem
        prev = e
    return None


def test_intact_chain_verifies() -> None:
    assert first_break(chain(6)) is None


def test_hash_covers_every_field_and_the_previous_hash() -> None:
    e = chain(1)[0]
    base = entry_hash(e.seq, e.at, e.actor, e.kind, e.subject, e.details, e.prev_hash)
    assert base == e.hash and len(base) == 64
    variants = [
        (2, e.at, e.actor, e.kind, e.subject, e.details, e.prev_hash),
        (1, e.at + timedelta(microseconds=1), e.actor, e.kind, e.subject, e.details, e.prev_hash),
        (1, e.at, "mallory", e.kind, e.subject, e.details, e.prev_hash),
        (1, e.at, e.actor, "alert.resolve", e.subject, e.details, e.prev_hash),
        (1, e.at, e.actor, e.kind, "a2", e.details, e.prev_hash),
        (1, e.at, e.actor, e.kind, e.subject, '{"i": 2}', e.prev_hash),
        (1, e.at, e.actor, e.kind, e.subject, e.details, "1" * 64),
    ]
    assert len({entry_hash(*v) for v in variants} | {base}) == len(variants) + 1


def test_same_instant_in_another_zone_hashes_the_same() -> None:
    e = chain(1)[0]
    other = e.at.astimezone(timezone(timedelta(hours=8)))
    assert entry_hash(e.seq, other, e.actor, e.kind, e.subject, e.details, e.prev_hash) == e.hash


def test_naive_time_is_refused() -> None:
    with pytest.raises(InputError):
        entry_hash(1, datetime(2026, 1, 1), "a", "k", "s", "{}", GENESIS)  # noqa: DTZ001


@pytest.mark.parametrize("field", ["actor", "kind", "subject", "details", "at"])
def test_an_edited_entry_is_named(field: str) -> None:
    entries = chain(5)
    e = entries[2]
    new = {"actor": "mallory", "kind": "alert.close", "subject": "zz", "details": '{"i": 99}',
           "at": e.at + timedelta(hours=1)}[field]
    entries[2] = dataclasses.replace(e, **{field: new})
    assert first_break(entries) == (3, "edited")


def test_deleted_entries_are_named() -> None:
    entries = chain(6)
    assert first_break(entries[:2] + entries[4:]) == (3, "deleted")
    assert first_break(entries[1:]) == (1, "deleted")


def test_an_inserted_or_replaced_entry_breaks_the_link() -> None:
    entries = chain(5)
    # a forged entry 3 with a correct hash of its own, chained to entry 2: entry 4 no longer follows
    e = entries[2]
    forged_hash = entry_hash(3, e.at, "mallory", e.kind, e.subject, e.details, e.prev_hash)
    entries[2] = dataclasses.replace(e, actor="mallory", hash=forged_hash)
    assert first_break(entries) == (4, "inserted")
    # a first entry that does not start from the genesis hash
    first = chain(1)[0]
    h = entry_hash(1, first.at, first.actor, first.kind, first.subject, first.details, "2" * 64)
    assert first_break([dataclasses.replace(first, prev_hash="2" * 64, hash=h)]) == (1, "inserted")


# ------------------------------------------------------------------ Kafka ACL plan
def test_department_acl_plan_is_exactly_its_topic_groups_and_actions() -> None:
    t = Topics("x.")
    acls = department_acls("eeb", t)
    assert {a.principal for a in acls} == {"User:dept.eeb"}
    topics = {(a.name, a.pattern, a.op) for a in acls if a.resource is Res.TOPIC}
    assert topics == {("x.city.alerts.dept.eeb", Pat.LITERAL, Op.READ), ("x.city.alerts.dept.eeb", Pat.LITERAL, Op.DESCRIBE),
                      ("x.city.alert.actions", Pat.LITERAL, Op.WRITE), ("x.city.alert.actions", Pat.LITERAL, Op.DESCRIBE)}
    groups = {(a.name, a.pattern, a.op) for a in acls if a.resource is Res.GROUP}
    assert groups == {("dept.eeb.", Pat.PREFIXED, Op.READ)}
    assert not any(a.op is Op.ALL or a.resource is Res.CLUSTER for a in acls)


def test_service_plan_gives_the_worker_its_internal_topics_and_nobody_else_all() -> None:
    acls = service_acls(Topics(), app_id="citybrain-streams")
    worker_all = {(a.resource, a.name) for a in acls if a.principal == "User:worker" and a.op is Op.ALL}
    assert worker_all == {(Res.TOPIC, "citybrain-streams"), (Res.GROUP, "citybrain-streams"),
                          (Res.TRANSACTIONAL_ID, "citybrain-streams")}
    # ALL only for the worker's own prefix and the replay's (tests/unit/test_replay_security.py)
    assert all(a.principal in ("User:worker", "User:replay") for a in acls if a.op is Op.ALL)
    assert all(a.name.startswith(("replay.", "citybrain-replay-"))
               for a in acls if a.op is Op.ALL and a.principal == "User:replay")
    connector = {(a.name, a.op) for a in acls if a.principal == "User:connector" and a.resource is Res.TOPIC}
    assert ("city.sensor.readings", Op.WRITE) in connector
    assert not any(op is Op.READ for _, op in connector)


@pytest.mark.parametrize("code", ["", "a b", "a/b", "..", ".x", "x" * 101, "名"])
def test_bad_department_codes_are_config_errors(code: str) -> None:
    with pytest.raises(ConfigError):
        check_code(code)


def test_bootstrap_plan_creates_private_secrets_once(tmp_path: Path) -> None:
    plan = bootstrap_plan(tmp_path, Topics(), ["eeb", "district.chaoyang"])
    assert set(plan.users) == {"admin", "connector", "worker", "writer", "opscenter", "replay", "dept.eeb",
                               "dept.district.chaoyang"}
    f = tmp_path / "kafka-dept.eeb"
    assert f.stat().st_mode & 0o777 == 0o600
    again = bootstrap_plan(tmp_path, Topics(), ["eeb"])
    assert again.users["dept.eeb"] == plan.users["dept.eeb"] == ensure_secret(f)


def test_scram_salted_password_is_rfc5802_hi() -> None:
    salt = b"salt"
    assert scram_credential("pw", salt, 4096) == hashlib.pbkdf2_hmac("sha512", b"pw", salt, 4096)


def test_device_passwords_are_per_device_and_stable() -> None:
    a, b = device_password("m", "s-1"), device_password("m", "s-2")
    assert a != b and a == device_password("m", "s-1") and device_password("n", "s-1") != a
    assert len(a) == 32 and ":" not in a


# ------------------------------------------------------------------ client settings
def test_plaintext_gives_no_kwargs_and_sasl_gives_scram() -> None:
    assert KafkaSecurity(security_protocol="PLAINTEXT").aiokafka_kwargs() == {}
    kw = scram("dept.eeb", "pw").aiokafka_kwargs()
    assert kw == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                  "sasl_plain_username": "dept.eeb", "sasl_plain_password": "pw"}
    creds = scram("worker", "pw").faust_credentials()
    assert creds.username == "worker" and creds.mechanism.value == "SCRAM-SHA-512"


def test_sasl_without_credentials_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.delenv("KAFKA_SASL_USERNAME", raising=False)
    monkeypatch.delenv("KAFKA_SASL_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="KAFKA_SASL_USERNAME"):
        KafkaSecurity()
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "connector")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "pw")
    assert KafkaSecurity().aiokafka_kwargs()["sasl_plain_username"] == "connector"
    assert "pw" not in repr(KafkaSecurity())
    assert KafkaSecurity(sasl_password=SecretStr("x"), sasl_username="u", security_protocol="SASL_PLAINTEXT").sasl


def test_sasl_ssl_with_a_missing_ca_is_a_config_error(tmp_path: Path) -> None:
    sec = scram("u", "p", protocol="SASL_SSL", ca_file=str(tmp_path / "nope.crt"))
    with pytest.raises(ConfigError, match="KAFKA_SSL_CA_FILE"):
        sec.aiokafka_kwargs()
