"""The `replay` Kafka principal, pure parts: its ACL plan (its own prefixes,
nothing live but describing the readings topic), the replay engine's Kafka
settings and its worker's environment, and the environment the operations
center gives a replay child on the SASL listener."""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from citybrain.kafka_security import ENV_VARS, KafkaSecurity, scram, without_passwords
from citybrain.security_cli import SERVICES, Acl, Op, Pat, Res, _cmd_acls, replay_acls, service_acls
from citybrain.topics import Topics
from opscenter.replays import ReplayManager, ReplayPlan, Unavailable
from storage.replay import ReplayRequest, ReplaySettings, app_id, run_topic_prefixes, worker_env
from storage.replay_diff import Scope

REPLAY = "User:replay"
T0 = datetime(2026, 5, 4, 6, 0, tzinfo=UTC)
T1 = datetime(2026, 5, 4, 7, 0, tzinfo=UTC)


def _mine(acls: list[Acl]) -> set[tuple[Res, str, Pat, Op]]:
    return {(a.resource, a.name, a.pattern, a.op) for a in acls if a.principal == REPLAY}


# ------------------------------------------------------------------ ACL plan
def test_replay_plan_is_its_prefixes_and_a_look_at_the_live_readings() -> None:
    assert "replay" in SERVICES  # `security bootstrap` makes its user and its secret file kafka-replay
    assert _mine(service_acls(Topics())) == {
        (Res.TOPIC, "replay.", Pat.PREFIXED, Op.ALL),
        (Res.TOPIC, "citybrain-replay-", Pat.PREFIXED, Op.ALL),
        (Res.GROUP, "citybrain-replay-", Pat.PREFIXED, Op.ALL),
        (Res.TRANSACTIONAL_ID, "citybrain-replay-", Pat.PREFIXED, Op.ALL),
        (Res.TOPIC, "city.sensor.readings", Pat.LITERAL, Op.DESCRIBE),
        (Res.CLUSTER, "kafka-cluster", Pat.LITERAL, Op.IDEMPOTENT_WRITE),
    }


@pytest.mark.parametrize("prefix", ["", "t1."])
def test_replay_can_neither_read_nor_write_a_live_topic(prefix: str) -> None:
    topics = Topics(prefix)
    live = f"{prefix}city."
    for a in replay_acls(topics):
        if a.resource is not Res.TOPIC:
            continue
        assert not a.name.startswith(live) or a.op is Op.DESCRIBE, a
        if a.op in (Op.ALL, Op.READ, Op.WRITE, Op.CREATE, Op.DELETE, Op.ALTER):
            assert a.pattern is Pat.PREFIXED and a.name in ("replay.", "citybrain-replay-"), a
    assert _mine(replay_acls(topics)) >= {(Res.TOPIC, f"{prefix}city.sensor.readings", Pat.LITERAL, Op.DESCRIBE)}


def test_replay_prefixes_cover_what_the_engine_names() -> None:
    """The plan and storage.replay agree: every topic of a run, its worker's
    internal topics, its consumer group and transactional ids fall under them."""
    acls = replay_acls(Topics())
    prefixes = {res: {a.name for a in acls if a.resource is res and a.op is Op.ALL and a.pattern is Pat.PREFIXED}
                for res in (Res.TOPIC, Res.GROUP, Res.TRANSACTIONAL_ID)}
    run = "r20260504x1"
    run_topics = Topics.for_replay(run)
    for name in (*run_topic_prefixes(run), run_topics.readings, run_topics.control_mode, run_topics.dept("eeb"),
                 f"{app_id(run)}-detect-table-changelog", f"{app_id(run)}-__assignor-__leader"):
        assert any(name.startswith(p) for p in prefixes[Res.TOPIC]), name
    assert any(app_id(run).startswith(p) for p in prefixes[Res.GROUP])
    assert any(f"{app_id(run)}-0".startswith(p) for p in prefixes[Res.TRANSACTIONAL_ID])
    assert not any(p.startswith("city.") or "city.".startswith(p) for p in prefixes[Res.TOPIC])


def test_security_acls_prints_the_replay_principal(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cmd_acls(argparse.Namespace(topic_prefix="", department=None)) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(f"{REPLAY} ")]
    assert sorted(lines) == sorted(str(a) for a in service_acls(Topics()) if a.principal == REPLAY)
    assert f"{REPLAY} ALL TOPIC:PREFIXED:replay." in lines
    assert f"{REPLAY} DESCRIBE TOPIC:LITERAL:city.sensor.readings" in lines


# ------------------------------------------------------------------ the engine's settings and its worker
def _settings(**over: object) -> ReplaySettings:
    return ReplaySettings(database_url=SecretStr("postgresql://x@h/db"), kafka_bootstrap_servers="h:9094",
                          **over)  # type: ignore[arg-type]


def test_replay_settings_read_the_kafka_identity_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "replay")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "pw-r")
    kw = _settings().kafka_security.aiokafka_kwargs()
    assert kw["security_protocol"] == "SASL_PLAINTEXT" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("replay", "pw-r")
    monkeypatch.delenv("KAFKA_SECURITY_PROTOCOL")
    assert _settings().kafka_security.aiokafka_kwargs() == {}


def test_the_replay_worker_runs_with_the_engines_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    req = ReplayRequest(run="r20260504x2", scope=Scope(T0, T1))
    base = {"PATH": "/bin", "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "opscenter",
            "KAFKA_SASL_PASSWORD": "pw-o", "WORKER_APP_ID": "citybrain-streams", "KAFKA_SSL_CA_FILE": "/x.crt"}
    env = worker_env(base, _settings(kafka_security=scram("replay", "pw-r")), req, 2, tmp_path)
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT" and env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert (env["KAFKA_SASL_USERNAME"], env["KAFKA_SASL_PASSWORD"]) == ("replay", "pw-r")
    assert "KAFKA_SSL_CA_FILE" not in env and env["PATH"] == "/bin"
    assert env["WORKER_APP_ID"] == "citybrain-replay-r20260504x2" == app_id(req.run)
    assert env["WORKER_TOPIC_PREFIX"] == "replay.r20260504x2." and env["KAFKA_BOOTSTRAP_SERVERS"] == "h:9094"
    assert env["WORKER_STANDBY_REPLICAS"] == "0"  # a run's worker that dies fails the run: none to fail over to
    assert float(env["WORKER_HEARTBEAT_INTERVAL_S"]) <= 0.5  # a joining worker's rebalance is heard at once
    plain = worker_env(base, _settings(kafka_security=KafkaSecurity(security_protocol="PLAINTEXT")), req, 2,
                       tmp_path)
    assert plain["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert not {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CA_FILE"} & set(plain)
    # what the worker (WorkerSettings.kafka_security) reads back from it: the same principal
    for k, v in env.items():
        if k.startswith("KAFKA_"):
            monkeypatch.setenv(k, v)
    kw = KafkaSecurity().aiokafka_kwargs()
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("replay", "pw-r")


# ------------------------------------------------------------------ the operations center's replay child
def _manager(base_env: dict[str, str] | None) -> ReplayManager:
    return ReplayManager(database_url=SecretStr("postgresql://u:dbpw@h/db"), bootstrap="127.0.0.1:9094",
                         schema="public", run_root="/tmp/replay-root", base_env=base_env, partitions=0,
                         max_running=1, clock=lambda: T0)


SASL_OPS = {"PATH": "/bin", "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "opscenter", "KAFKA_SASL_PASSWORD": "pw-o", "KAFKA_OPSCENTER_PASSWORD": "pw-o",
            "KAFKA_ADMIN_PASSWORD": "pw-a", "KAFKA_WORKER_PASSWORD": "pw-w", "KAFKA_REPLAY_PASSWORD": "pw-r"}


def test_on_sasl_a_replay_child_runs_as_the_replay_principal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    m = _manager(dict(SASL_OPS))
    assert m.unavailable() is None
    env = m.child_env()
    assert (env["KAFKA_SASL_USERNAME"], env["KAFKA_SASL_PASSWORD"]) == ("replay", "pw-r")
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT" and env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:9094" and env["DATABASE_URL"] == "postgresql://u:dbpw@h/db"
    # no other principal's password reaches the child (nor its worker)
    assert {k for k in env if k.endswith("_PASSWORD")} == {"KAFKA_SASL_PASSWORD"}
    assert m.base_env is not None and m.base_env["KAFKA_SASL_USERNAME"] == "opscenter"  # the opscenter's stays
    assert not any("pw-" in r.getMessage() for r in caplog.records)


def test_plaintext_replay_child_keeps_the_environment() -> None:
    base = {"PATH": "/bin", "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    env = _manager(base).child_env()
    assert env["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT" and "KAFKA_SASL_USERNAME" not in env
    assert _manager({"PATH": "/bin"}).child_env()["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:9094"


@pytest.mark.parametrize("password", [None, "", "  "])
def test_sasl_without_the_replay_password_refuses_before_starting(
        password: str | None, caplog: pytest.LogCaptureFixture) -> None:
    base = {k: v for k, v in SASL_OPS.items() if k != "KAFKA_REPLAY_PASSWORD"}
    if password is not None:
        base["KAFKA_REPLAY_PASSWORD"] = password
    caplog.set_level(logging.WARNING, logger="citybrain.opscenter.replays")
    m = _manager(base)
    why = m.unavailable()
    assert why is not None and "KAFKA_REPLAY_PASSWORD" in why and "replay" in why and "\n" not in why
    assert any("KAFKA_REPLAY_PASSWORD" in r.getMessage() for r in caplog.records), "said once at start"
    assert not any("pw-" in r.getMessage() for r in caplog.records)
    with pytest.raises(Unavailable, match="KAFKA_REPLAY_PASSWORD"):
        m.child_env()
    with pytest.raises(Unavailable):  # nothing is started (no event loop needed: it fails first)
        m.start(ReplayPlan("r20260504x3", Scope(T0, T1), None, timedelta(0)), "test")
    assert m.local == {}


def test_without_a_replay_environment_the_reason_is_the_old_one() -> None:
    assert _manager(None).unavailable() == "this opscenter was started without replay support"


# ------------------------------------------------------------------ the shared environment helpers
def test_to_env_reads_back_as_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for sec in (scram("replay", "pw-r", protocol="SASL_SSL", ca_file="/ca.crt"), KafkaSecurity()):
        for var in ENV_VARS:
            monkeypatch.delenv(var, raising=False)
        for k, v in sec.to_env().items():
            monkeypatch.setenv(k, v)
        assert KafkaSecurity() == sec


def test_without_passwords_drops_every_principals_password_only() -> None:
    env = {"KAFKA_ADMIN_PASSWORD": "a", "KAFKA_SASL_PASSWORD": "b", "KAFKA_SASL_USERNAME": "u",
           "KAFKA_BOOTSTRAP_SERVERS": "h:1", "DATABASE_URL": "postgresql://u:p@h/db"}
    assert without_passwords(env) == {"KAFKA_SASL_USERNAME": "u", "KAFKA_BOOTSTRAP_SERVERS": "h:1",
                                      "DATABASE_URL": "postgresql://u:p@h/db"}
