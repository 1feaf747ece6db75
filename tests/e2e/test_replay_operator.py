"""Replay of what people did (issue 9): operator actions and emergency mode
switches recorded live are replayed at their event time, so a period in
which an operator acknowledged an alert (it did not escalate) and a district
was switched to emergency mode (lower water thresholds) replays with an
empty diff under unchanged rules.

The live side is the worker and the writer on this test's own topics (one
partition), app id, group and storage schema, with the readings, the action
and the switch produced straight to Kafka in phases, as they would arrive in
a city: each phase is handled before the next is sent. Both workers run on
the event clock (`WORKER_CLOCK=event`) with SLAs of minutes of event time.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from citybrain.dlq import H_REASON, decode_headers
from citybrain.kafka_admin import ensure_topics, pipeline_topics
from citybrain.supervisor import Supervisor
from citybrain.topics import Topics
from storage.migrate import migrate
from storage.replay import list_replay_topics
from tests.e2e.test_replay import RUN_TIMEOUT_S, _drop_schema, _fetch, _wait_topics_gone, citybrain

# blue and yellow alerts must be acknowledged within 3 event minutes (emergency: half), else they escalate
POLICY = """\
version: 1
escalation:
  sla:
    I:   {acknowledge: 2h, resolve: 4h}
    II:  {acknowledge: 2h, resolve: 4h}
    III: {acknowledge: 3m, resolve: 2h}
    IV:  {acknowledge: 3m, resolve: 2h}
  remind_fraction: 0.5
  raise:
    - {from: III, after: 2h}
"""

STEP = timedelta(seconds=30)
SPAN = timedelta(minutes=20)
ACK_AT = timedelta(minutes=2)
SWITCH_AT = timedelta(minutes=6)


def level(tag: str, sensor: str, t: datetime, value: float, district: str, street: str) -> tuple[bytes, bytes]:
    sid = f"ro-{tag}-{sensor}"
    body = {"event_id": f"{sid}-{int(t.timestamp())}", "sensor_id": sid, "sensor_type": "water_level",
            "value": value, "unit": "m", "ts": t.isoformat(),
            "location": {"district": district, "street": street, "lat": 39.98, "lon": 116.4}}
    return sid.encode(), orjson.dumps(body)


def readings(tag: str, t0: datetime, start: timedelta, end: timedelta) -> list[tuple[bytes, bytes]]:
    """Two water gauges every 30 s: `acked` in 朝阳区 at 3.2 m (over the 3.0 m
    warning level: a yellow alert), `gate` in 海淀区 at 2.4 m (below the blue
    level, 85 % of the warning level, 2.55 m, in normal mode; the emergency
    profile scales water thresholds by 0.9: 2.295 m)."""
    out = []
    t = t0 + start
    while t < t0 + end:
        wobble = 0.01 * (int((t - t0) / STEP) % 3)  # never the same value for long: no `health:stuck`
        out.append(level(tag, "acked", t, 3.2 + wobble, "朝阳区", "望京街道"))
        out.append(level(tag, "gate", t, 2.4 - wobble, "海淀区", "中关村街道"))
        t += STEP
    return out


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, until: Callable[[list[Any]], bool], timeout: float = 120) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                metadata_max_age_ms=1000)
    await consumer.start()
    got: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while not until(got) and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(msgs)
    finally:
        await consumer.stop()
    return got


def alerts_of(msgs: list[Any], subject: str) -> list[dict[str, Any]]:
    """The water level alert revisions of `subject` (not its sensor-health ones)."""
    return [a for a in (orjson.loads(m.value) for m in msgs)
            if a["subject"] == subject and a["category"] == "water"]


async def worker_caught_up(bootstrap: str, group: str, topics: list[str], sup: Supervisor,
                           timeout: float = 120) -> None:
    """Until the worker's committed offsets reach the end of `topics` (one partition each)."""
    tps = [TopicPartition(t, 0) for t in topics]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            sup.check_alive()
            ends = await consumer.end_offsets(tps)
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
            if all(committed.get(tp) is not None and committed[tp].offset >= ends[tp] for tp in tps):
                return
            assert time.monotonic() < deadline, f"worker behind: {committed} of {ends}"
            await asyncio.sleep(0.5)
    finally:
        await consumer.stop()
        await admin.close()


async def wait_rows(database_url: str, schema: str, sql: str, want: int, sup: Supervisor) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        sup.check_alive()
        (row,) = await _fetch(database_url, schema, sql)
        if row["n"] >= want:
            return
        assert time.monotonic() < deadline, f"{sql}: {row['n']} of {want}"
        await asyncio.sleep(1)


async def settled_alerts(database_url: str, schema: str, sup: Supervisor, quiet_s: float = 20) -> list[Any]:
    seen: tuple[int, int] | None = None
    since = time.monotonic()
    deadline = since + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        sup.check_alive()
        (row,) = await _fetch(database_url, schema,
                              "SELECT count(*) AS n, coalesce(sum(revision), 0) AS r FROM alerts")
        if (row["n"], row["r"]) != seen:
            seen, since = (row["n"], row["r"]), time.monotonic()
        elif time.monotonic() - since > quiet_s:
            break
        await asyncio.sleep(1)
    return await _fetch(database_url, schema,
                        "SELECT alert_id, rule, subject, category, status, departments, payload FROM alerts")


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(POLICY, encoding="utf-8")
    return p


@pytest.fixture
def recorded(kafka_bootstrap: str, database_url: str, tmp_path: Path, policy_file: Path) -> Iterator[dict[str, Any]]:
    tag = uuid.uuid4().hex[:8]
    schema = f"t_replay_{tag}"
    asyncio.run(migrate(database_url, schema))
    prefix = f"t{tag}."
    topics = Topics(prefix)
    app = f"test-worker-{tag}"
    env = dict(os.environ)
    env.update(WORKER_TOPIC_PREFIX=prefix, WORKER_APP_ID=app, WORKER_DATA_DIR=str(tmp_path / "faust"),
               WORKER_CLOCK="event", WORKER_POLICY_FILE=str(policy_file), WORKER_LIFECYCLE_TICK_S="0.5",
               WRITER_TOPIC_PREFIX=prefix, WRITER_GROUP_ID=f"test-writer-{tag}", WRITER_DB_SCHEMA=schema)
    asyncio.run(ensure_topics(kafka_bootstrap, dict.fromkeys(pipeline_topics(topics, 1), 1)))
    t0 = (datetime.now(UTC) - timedelta(days=1)).replace(second=0, microsecond=0)
    sup = Supervisor(tmp_path / "logs", base_env=env)
    acked_subject = f"ro-{tag}-acked"

    async def record() -> None:
        # 1. the first readings: the 朝阳区 gauge raises a blue alert, the 海淀区 one nothing
        await produce(kafka_bootstrap, topics.readings, readings(tag, t0, timedelta(0), ACK_AT))
        msgs = await consume(kafka_bootstrap, topics.alerts, lambda g: bool(alerts_of(g, acked_subject)))
        (first, *_) = alerts_of(msgs, acked_subject)
        # 2. the water authority acknowledges it at ACK_AT, inside its 3 min window
        ack = {"event_id": f"ack-{tag}", "alert_id": first["alert_id"], "action": "ack", "actor": "duty-water",
               "actor_department": "water", "ts": (t0 + ACK_AT).isoformat(), "comment": "班组已出发"}
        await produce(kafka_bootstrap, topics.actions, [(first["alert_id"].encode(), orjson.dumps(ack))])
        msgs = await consume(kafka_bootstrap, topics.alerts, lambda g: any(
            a["status"] == "acknowledged" for a in alerts_of(g, acked_subject)))
        assert any(a["status"] == "acknowledged" for a in alerts_of(msgs, acked_subject))
        # 3. readings up to the switch, handled before it
        await produce(kafka_bootstrap, topics.readings, readings(tag, t0, ACK_AT, SWITCH_AT))
        await worker_caught_up(kafka_bootstrap, app, [topics.readings, topics.alerts_detected], sup)
        # 4. 平急转换: 海淀区 to emergency mode, as the opscenter publishes it
        switch = {"event_id": f"mode-{tag}", "scope": "district:haidian", "mode": "emergency",
                  "actor": "duty-officer", "actor_department": "ops", "ts": (t0 + SWITCH_AT).isoformat()}
        await produce(kafka_bootstrap, topics.control_mode, [(b"district:haidian", orjson.dumps(switch))])
        await asyncio.to_thread(sup.wait_for_log, "worker", "mode: district:haidian is now emergency", 60)
        # 5. the rest of the period
        await produce(kafka_bootstrap, topics.readings, readings(tag, t0, SWITCH_AT, SPAN))
        n = len(readings(tag, t0, timedelta(0), SPAN))
        await wait_rows(database_url, schema, "SELECT count(*) AS n FROM readings", n, sup)
        await wait_rows(database_url, schema, "SELECT count(*) AS n FROM alert_actions", 1, sup)
        await wait_rows(database_url, schema, "SELECT count(*) AS n FROM mode_switches", 1, sup)

    try:
        sup.start("worker", ["worker", "--log-level", "info"])
        sup.start("writer", ["writer"])
        asyncio.run(record())
        alerts = asyncio.run(settled_alerts(database_url, schema, sup))
    finally:
        sup.stop_all()
        for child in sup.children.values():
            print(f"--- {child.name} log tail ---\n{child.log_path.read_text(errors='replace')[-3000:]}")
    try:
        yield {"schema": schema, "tag": tag, "t0": t0, "alerts": alerts, "root": tmp_path}
    finally:
        asyncio.run(_drop_schema(database_url, schema))


async def test_recorded_ack_and_mode_switch_replay_with_an_empty_diff(
        recorded: dict[str, Any], kafka_bootstrap: str, database_url: str, policy_file: Path) -> None:
    tag, t0, root = recorded["tag"], recorded["t0"], recorded["root"]
    assert {a["category"] for a in recorded["alerts"]} == {"water"}, [a["rule"] for a in recorded["alerts"]]
    by_subject = {a["subject"]: a for a in recorded["alerts"]}
    assert len(by_subject) == len(recorded["alerts"]) == 2, [a["rule"] for a in recorded["alerts"]]
    acked, gate = by_subject[f"ro-{tag}-acked"], by_subject[f"ro-{tag}-gate"]
    # live: the acknowledged alert kept its departments (no escalation) ...
    assert acked["status"] == "acknowledged"
    acked_payload = json.loads(acked["payload"])
    assert acked_payload["evidence"]["details"]["lifecycle"]["escalations"] == []
    # ... although the lifecycle's event clock passed its 3 min acknowledge-by (the other alert's
    # detection at the switch moved it): without the ack it would have escalated then
    gate_payload = json.loads(gate["payload"])
    assert datetime.fromisoformat(gate_payload["first_seen"]) > datetime.fromisoformat(
        acked_payload["first_seen"]) + timedelta(minutes=3)
    # and that one exists only because of the switch: 2.4 m under the emergency profile
    assert gate_payload["evidence"]["details"]["mode"]["mode"] == "emergency"
    assert gate_payload["first_seen"] >= (t0 + SWITCH_AT).isoformat()

    run = f"ops_{tag}"
    out = root / "diff.json"
    env = {**os.environ, "REPLAY_RUN_ROOT": str(root / "replay"), "WORKER_POLICY_FILE": str(policy_file)}
    r = await asyncio.to_thread(citybrain, [
        "replay", "--from", t0.isoformat(), "--to", (t0 + SPAN).isoformat(), "--schema", recorded["schema"],
        "--partitions", "1", "--run", run, "--json", str(out), "--keep", "--fail-on-diff"], env)
    worker_log = root / "replay" / run / "worker.log"
    log_tail = worker_log.read_text(errors="replace")[-3000:] if worker_log.exists() else ""
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + log_tail
    assert "1 operator actions, 1 mode switches" in r.stdout
    diff = json.loads(out.read_text())
    assert diff["empty"] is True and set(diff["identical"]) == {acked["alert_id"], gate["alert_id"]}, diff
    assert diff["actions"] == 1 and diff["modes"] == 1

    # the replayed alert's lifecycle shows the ack, at its recorded time, by its recorded actor
    prefix = Topics.for_replay(run)
    msgs = await consume(kafka_bootstrap, prefix.alerts, lambda g: len(alerts_of(g, acked["subject"])) >= 2, 60)
    revisions = alerts_of(msgs, acked["subject"])
    lasts = [a["evidence"]["details"]["lifecycle"].get("last", {}) for a in revisions]
    ack = next(x for x in lasts if x.get("action") == "ack")
    assert (ack["actor"], ack["department"], ack["at"]) == ("duty-water", "water", (t0 + ACK_AT).isoformat())
    assert revisions[-1]["status"] == "acknowledged"
    applied = await consume(kafka_bootstrap, prefix.actions_applied, lambda g: len(g) >= 1, 30)
    assert [orjson.loads(m.value)["event_id"] for m in applied] == [f"ack-{tag}"]
    dead = await consume(kafka_bootstrap, prefix.dlq, lambda g: False, 5)
    assert [decode_headers(m.headers).get(H_REASON) for m in dead] == [], "no action refused in the replay"

    cleaned = await asyncio.to_thread(citybrain, ["replay", "--clean", run, "--schema", recorded["schema"]], env,
                                      120)
    assert cleaned.returncode == 0, cleaned.stderr
    assert run not in await _wait_topics_gone(kafka_bootstrap, run)
    assert run not in await list_replay_topics(kafka_bootstrap)
