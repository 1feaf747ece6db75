"""Issue 6 on the real stack: routing and fan-out, lifecycle actions, SLA
escalation (time compressed by the policy file, not by sleeping minutes),
rejected actions in the DLQ, per-department copies without citizen data, one
alert under a flood of concurrent readings, rules hot reload."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from citybrain.dlq import H_REASON, H_STAGE, decode_headers
from citybrain.supervisor import WORKER_READY
from streams.routing import DEFAULT_DEPARTMENTS, DEFAULT_RULES
from tests.e2e.conftest import MqttPublisher, Pipeline

WATER = "water"
EMA = "ema"
DISTRICT = "district.chaoyang"
STREET = "street.chaoyang.wangjing"
PHONE = re.compile(rb"1[3-9]\d{9}")

# yellow and blue alerts: SLAs of seconds, so an escalation happens within the
# test; orange and red ones keep long windows (no escalation during a test)
POLICY = """\
version: 1
escalation:
  sla:
    I:   {acknowledge: 1h, resolve: 2h}
    II:  {acknowledge: 1h, resolve: 2h}
    III: {acknowledge: 6s, resolve: 1h}
    IV:  {acknowledge: 6s, resolve: 1h}
  remind_fraction: 0.5
  raise:
    - {from: III, after: 1h}
"""

GOOD_CHANGE = """\
  - name: all-water-to-transport-too
    match: {source: sensor, category: water}
    departments: [traffic]
"""


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    d = tmp_path / "rules"
    d.mkdir()
    shutil.copy(DEFAULT_DEPARTMENTS, d / "departments.yaml")
    shutil.copy(DEFAULT_RULES, d / "routing.yaml")
    return d / "routing.yaml"


@pytest.fixture
def pipeline_env(tmp_path: Path, rules_file: Path) -> dict[str, str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    return {
        "WORKER_POLICY_FILE": str(policy),
        "WORKER_RULES_FILE": str(rules_file),
        "WORKER_RULES_POLL_S": "0.5",
        "WORKER_LIFECYCLE_TICK_S": "0.5",
    }


def water(run: str, sensor: str, i: int, level: float, street: str = "望京街道") -> dict[str, Any]:
    return {
        "event_id": f"lc-{run}-{sensor}-{i}",
        "sensor_id": f"lc-{run}-{sensor}",
        "sensor_type": "water_level",
        "value": level,
        "unit": "m",
        "ts": (datetime.now(UTC) - timedelta(seconds=30) + timedelta(milliseconds=10 * i)).isoformat(),
        "location": {"district": "朝阳区", "street": street, "lat": 39.99, "lon": 116.47},
    }


def send_levels(pub: MqttPublisher, run: str, sensor: str, levels: list[float]) -> None:
    for i, v in enumerate(levels):
        r = water(run, sensor, i, v)
        pub.publish(f"city/sensors/{r['sensor_id']}", json.dumps(r).encode())


def alerts_of(msgs: list[Any], subject: str) -> list[dict[str, Any]]:
    return [a for a in (orjson.loads(m.value) for m in msgs) if a["subject"] == subject]


async def dept_topics(p: Pipeline) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=p.env["KAFKA_BOOTSTRAP_SERVERS"])
    await admin.start()
    try:
        prefix = p.topics.dept("")
        return {t[len(prefix):] for t in await admin.list_topics() if t.startswith(prefix)}
    finally:
        await admin.close()


async def all_dept_topics(p: Pipeline, expected: set[str], timeout: float = 30) -> set[str]:
    """The department topics once `expected` exist (each is created by the
    worker's first send to it, just after city.alerts), plus any others."""
    deadline = time.monotonic() + timeout
    codes = await dept_topics(p)
    while not expected <= codes and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        codes = await dept_topics(p)
    return codes


async def settled(p: Pipeline, subject: str, quiet_s: float = 6, timeout: float = 120) -> list[dict[str, Any]]:
    """Every alert revision of `subject` on city.alerts, once at least one came
    and none for `quiet_s` (the worker may lag on a loaded machine)."""
    last_new = time.monotonic()
    seen = 0

    def done(got: list[Any]) -> bool:
        nonlocal last_new, seen
        n = len(alerts_of(got, subject))
        if n != seen:
            seen, last_new = n, time.monotonic()
        return n > 0 and time.monotonic() - last_new > quiet_s

    return alerts_of(await p.consume(p.topics.alerts, done, timeout=timeout), subject)


async def send_actions(p: Pipeline, actions: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=p.env["KAFKA_BOOTSTRAP_SERVERS"], acks="all",
                                enable_idempotence=True)
    await producer.start()
    try:
        for a in actions:
            await producer.send_and_wait(p.topics.actions, orjson.dumps(a), key=a["alert_id"].encode())
    finally:
        await producer.stop()


def action(alert_id: str, kind: str, actor_department: str, **kw: Any) -> dict[str, Any]:
    return {"event_id": f"act-{uuid.uuid4().hex}", "alert_id": alert_id, "action": kind, "actor": "tester",
            "actor_department": actor_department, "ts": datetime.now(UTC).isoformat(), **kw}


def worker_log(p: Pipeline) -> str:
    return p.sup.children["worker"].log_path.read_text(errors="replace")


async def wait_log(p: Pipeline, pattern: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, worker_log(p))
        if m:
            return m.group(0)
        p.sup.check_alive()
        await asyncio.sleep(0.2)
    raise AssertionError(f"worker log never matched {pattern!r}:\n{worker_log(p)[-3000:]}")


async def rainstorm_routed(p: Pipeline, publisher: MqttPublisher, timeout: float = 60) -> dict[str, Any]:
    """An orange water level in 望京: its alert, once it reached exactly 水务局, 应急管理局,
    the district and the street (their topics, and no other department's)."""
    subject = f"lc-{p.run}-underpass"
    send_levels(publisher, p.run, "underpass", [3.8, 3.9, 3.85, 3.9])  # orange: above midway of 3.0..4.0 m

    expected = {WATER, EMA, DISTRICT, STREET}
    msgs = await p.consume(p.topics.alerts, lambda got: any(
        set(a["departments"]) >= expected for a in alerts_of(got, subject)), timeout=timeout)
    alerts = alerts_of(msgs, subject)
    assert alerts, "the water-level alert reaches city.alerts"
    last = alerts[-1]
    assert last["severity"] == "II" and last["category"] == "water"
    assert set(last["departments"]) == expected, "orange water in 朝阳区: 水务局, 应急管理局, district, street"
    assert last["status"] == "dispatched"
    for code in sorted(expected):
        got = await p.consume(p.topics.dept(code), lambda g: len(g) >= 1, timeout=30)
        assert got and all(m.key.decode() == last["alert_id"] for m in got), code
    assert await all_dept_topics(p, expected) == expected, "no other department's topic got anything"
    return last


async def test_rainstorm_reaches_water_ema_district_street_and_no_one_else(
    pipeline: Pipeline, publisher: MqttPublisher
) -> None:
    last = await rainstorm_routed(pipeline, publisher)
    assert last["evidence"]["details"]["mode"]["mode"] == "normal", "the mode in force is in the evidence"
    stored = await pipeline.wait_db("SELECT DISTINCT status FROM alert_history WHERE alert_id = $1",
                                    last["alert_id"], until=lambda r: len(r) >= 1)
    assert {r["status"] for r in stored} == {"dispatched"}, "the lifecycle's revisions are stored"
    pipeline.sup.check_alive()


async def test_unacknowledged_alert_escalates_at_deadline_and_ack_stops_it(
    pipeline: Pipeline, publisher: MqttPublisher
) -> None:
    run = pipeline.run
    subject = f"lc-{run}-river"
    send_levels(publisher, run, "river", [3.2, 3.2, 3.25])  # yellow (III): only the water authority

    def escalated(got: list[Any]) -> bool:
        return any(DISTRICT in a["departments"] for a in alerts_of(got, subject))

    msgs = await pipeline.consume(pipeline.topics.alerts, escalated, timeout=60)
    alerts = alerts_of(msgs, subject)
    first = alerts[0]
    assert first["departments"] == [WATER] and first["status"] == "dispatched"
    ack_by = datetime.fromisoformat(first["evidence"]["details"]["lifecycle"]["ack_by"])
    up = next(a for a in alerts if DISTRICT in a["departments"])
    lc = up["evidence"]["details"]["lifecycle"]
    assert lc["rung"] == "district"
    esc = lc["escalations"][0]
    assert esc["from"] == "street" and esc["to"] == "district" and esc["department"] == DISTRICT
    assert "not acknowledged" in esc["reason"]
    at = datetime.fromisoformat(esc["at"])
    assert ack_by <= at < ack_by + timedelta(seconds=10), "escalated at its deadline, not before"
    dist = await pipeline.consume(pipeline.topics.dept(DISTRICT), lambda g: len(g) >= 1, timeout=30)
    assert dist and orjson.loads(dist[0].value)["alert_id"] == up["alert_id"], "the district hears of it"

    await send_actions(pipeline, [action(up["alert_id"], "ack", DISTRICT)])
    msgs = await pipeline.consume(pipeline.topics.alerts, lambda got: any(
        a["status"] == "acknowledged" for a in alerts_of(got, subject)), timeout=30)
    acked = next(a for a in alerts_of(msgs, subject) if a["status"] == "acknowledged")
    assert acked["evidence"]["details"]["lifecycle"]["ack_by"] is None, "acknowledgement stops the clock"
    assert acked["evidence"]["details"]["lifecycle"]["last"]["department"] == DISTRICT

    await asyncio.sleep(14)  # two more acknowledge windows: an unacknowledged alert would climb to ops
    msgs = await pipeline.consume(pipeline.topics.alerts, lambda got: False, timeout=5)
    after = alerts_of(msgs, subject)
    assert after[-1]["status"] == "acknowledged"
    assert max(a["revision"] for a in after) == acked["revision"], "no escalation after the acknowledgement"
    # (on a slow machine the ack may come after the district's own deadline: then ops
    # was added before it, which is right; what matters is that nothing follows the ack)
    pipeline.sup.check_alive()


async def test_illegal_and_unauthorised_actions_dead_lettered_alert_unchanged(
    pipeline: Pipeline, publisher: MqttPublisher
) -> None:
    run = pipeline.run
    subject = f"lc-{run}-ditch"
    send_levels(publisher, run, "ditch", [3.2, 3.2, 3.2])
    msgs = await pipeline.consume(pipeline.topics.alerts, lambda got: bool(alerts_of(got, subject)), timeout=60)
    alert = alerts_of(msgs, subject)[0]
    aid = alert["alert_id"]
    bad = [
        action(aid, "resolve", WATER),  # not acknowledged yet: illegal
        action(aid, "ack", "eeb"),  # the environment bureau is not routed this alert: unauthorised
        action(f"{aid}-nope", "ack", WATER),  # no such alert
    ]
    await send_actions(pipeline, bad)
    dlq = await pipeline.consume(pipeline.topics.dlq, lambda g: len(g) >= 3, timeout=30)
    reasons = {orjson.loads(m.value)["event_id"]: decode_headers(m.headers) for m in dlq}
    assert reasons[bad[0]["event_id"]][H_REASON] == "illegal_transition"
    assert "acknowledge it first" in reasons[bad[0]["event_id"]]["citybrain.errors.exception.message"]
    assert reasons[bad[1]["event_id"]][H_REASON] == "unauthorised"
    assert reasons[bad[2]["event_id"]][H_REASON] == "unknown_alert"
    assert {h[H_STAGE] for h in reasons.values()} == {"lifecycle"}

    ack = action(aid, "ack", WATER)
    await send_actions(pipeline, [ack, ack])  # a redelivered action applies once
    msgs = await pipeline.consume(pipeline.topics.alerts, lambda got: any(
        a["status"] == "acknowledged" for a in alerts_of(got, subject)), timeout=30)
    mine = alerts_of(msgs, subject)
    acked = [a for a in mine if a["status"] == "acknowledged"]
    before = [a for a in mine if a["status"] != "acknowledged"]
    assert max(a["revision"] for a in before) + 1 == acked[0]["revision"], "the rejected actions changed nothing"
    await asyncio.sleep(2)
    msgs = await pipeline.consume(pipeline.topics.alerts, lambda got: False, timeout=3)
    assert len([a for a in alerts_of(msgs, subject) if a["status"] == "acknowledged"]) == 1
    # what storage records as the alert's actions: the accepted ack, once; none of the refused ones
    applied = await pipeline.consume(pipeline.topics.actions_applied, lambda got: False, timeout=3)
    assert [orjson.loads(m.value)["event_id"] for m in applied] == [ack["event_id"]]
    pipeline.sup.check_alive()


async def test_department_consumers_see_only_their_alerts_and_no_phone_numbers(
    pipeline: Pipeline, publisher: MqttPublisher
) -> None:
    run = pipeline.run
    air_subject = f"lc-{run}-air"
    reading = {"event_id": f"lc-{run}-air-1", "sensor_id": air_subject, "sensor_type": "pm25", "value": 320.0,
               "unit": "ug/m3", "ts": (datetime.now(UTC) - timedelta(seconds=20)).isoformat(),
               "location": {"district": "朝阳区", "street": "望京街道", "lat": 39.99, "lon": 116.47}}
    publisher.publish(f"city/sensors/{air_subject}", json.dumps(reading).encode())  # red air: eeb + district
    # a hotline-derived alert (as the hotline path publishes it) carrying citizen data
    now = datetime.now(UTC)
    hot_id = f"hot-{run}"
    hotline_alert = {
        "alert_id": hot_id, "rule": "hotline_spike:flooding", "subject": f"朝阳区/望京街道/flooding/{run}",
        "category": "flooding", "severity": "III", "status": "dispatched", "title": "积水投诉激增 (13912345678)",
        "location": {"district": "朝阳区", "street": "望京街道", "lat": 39.99, "lon": 116.47},
        "first_seen": now.isoformat(), "last_seen": now.isoformat(), "count": 6, "revision": 1,
        "evidence": {"detector": "hotline_spike", "detector_version": "1", "statistic": "calls per hour",
                     "value": 6, "threshold": 2, "window_start": now.isoformat(), "window_end": now.isoformat(),
                     "details": {"phone": "13912345678", "caller_ref": "c-ab12", "caller_name": "张三",
                                 "summary": "地下通道积水, 回电 13912345678"}},
    }  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=pipeline.env["KAFKA_BOOTSTRAP_SERVERS"], acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(pipeline.topics.alerts_detected, orjson.dumps(hotline_alert),
                                     key=hot_id.encode())
    finally:
        await producer.stop()

    msgs = await pipeline.consume(pipeline.topics.alerts, lambda got: bool(alerts_of(got, air_subject)) and any(
        orjson.loads(m.value)["alert_id"] == hot_id for m in got), timeout=60)
    by_id = {orjson.loads(m.value)["alert_id"]: orjson.loads(m.value) for m in msgs}
    air_alert = alerts_of(msgs, air_subject)[-1]
    hot = by_id[hot_id]
    assert set(air_alert["departments"]) == {"eeb", DISTRICT}
    assert set(hot["departments"]) - {"ops"} == {STREET, WATER, DISTRICT}, "a flooding complaint: street, owner, district"

    codes = await all_dept_topics(pipeline, {"eeb", WATER, STREET, DISTRICT})
    assert codes == {"eeb", WATER, STREET, DISTRICT}
    for code in sorted(codes):
        got = await pipeline.consume(pipeline.topics.dept(code), lambda g: len(g) >= 1, timeout=30)
        await asyncio.sleep(1)
        got = await pipeline.consume(pipeline.topics.dept(code), lambda g: False, timeout=2)
        assert got, code
        for m in got:
            a = orjson.loads(m.value)
            assert code in a["departments"], f"{code} got an alert not routed to it: {a['alert_id']}"
            assert not PHONE.search(m.value), f"{code} saw a phone number: {m.value[:300]!r}"
            details = a["evidence"]["details"]
            assert "phone" not in details and "caller_name" not in details
        ids = {orjson.loads(m.value)["alert_id"] for m in got}
        assert (air_alert["alert_id"] in ids) == (code in air_alert["departments"])
        assert (hot_id in ids) == (code in hot["departments"])
    street_copy = orjson.loads((await pipeline.consume(pipeline.topics.dept(STREET), lambda g: len(g) >= 1))[0].value)
    water_copy = [orjson.loads(m.value) for m in await pipeline.consume(pipeline.topics.dept(WATER), lambda g: False,
                                                                          timeout=3)]
    assert street_copy["evidence"]["details"].get("caller_ref") == "c-ab12", "the street office may see a pseudonym"
    assert all("caller_ref" not in a["evidence"]["details"] for a in water_copy if a["alert_id"] == hot_id)
    pipeline.sup.check_alive()


async def test_flood_of_concurrent_readings_makes_one_alert(
    pipeline: Pipeline, publisher: MqttPublisher, mqtt_publish_url: str
) -> None:
    run = pipeline.run
    subject = f"lc-{run}-flooded"
    n_threads, per_thread = 4, 40
    errors: list[BaseException] = []

    def flood(k: int) -> None:
        pub = MqttPublisher(mqtt_publish_url, f"test-flood-{run}-{k}")
        try:
            for i in range(per_thread):
                # orange and red in turns: the detector updates the alert many times, concurrently
                r = water(run, "flooded", k * per_thread + i, 3.8 if (i // 5) % 2 == 0 else 4.3)
                pub.publish(f"city/sensors/{r['sensor_id']}", json.dumps(r).encode())
                if i % 5 == 0:  # and redeliveries of the same reading
                    pub.publish(f"city/sensors/{r['sensor_id']}", json.dumps(r).encode())
        except BaseException as exc:
            errors.append(exc)
        finally:
            pub.close()

    threads = [threading.Thread(target=flood, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors

    rows = await pipeline.wait_db("SELECT count(*) AS c FROM readings WHERE sensor_id = $1", subject,
                                  until=lambda r: r[0]["c"] >= n_threads * per_thread, timeout=90)
    assert rows[0]["c"] == n_threads * per_thread
    alerts = await settled(pipeline, subject)
    assert alerts
    assert len({a["alert_id"] for a in alerts}) == 1, "one open alert per (rule, subject)"
    revs = [a["revision"] for a in alerts]
    assert len(revs) > 1, "the flood updated the alert"
    assert len(revs) == len(set(revs)), "no duplicate revisions"
    assert max(a["count"] for a in alerts) <= n_threads * per_thread
    stored = await pipeline.wait_db("SELECT alert_id FROM alerts WHERE subject = $1", subject,
                                    until=lambda r: len(r) >= 1)
    assert len(stored) == 1
    pipeline.sup.check_alive()


async def test_bad_rules_file_rejected_with_its_line_old_rules_kept_good_change_applied(
    pipeline: Pipeline, publisher: MqttPublisher, rules_file: Path
) -> None:
    run = pipeline.run

    async def first_alert(sensor: str) -> dict[str, Any]:
        send_levels(publisher, run, sensor, [3.2, 3.2, 3.2])
        subject = f"lc-{run}-{sensor}"
        msgs = await pipeline.consume(pipeline.topics.alerts, lambda got: bool(alerts_of(got, subject)), 60)
        return alerts_of(msgs, subject)[0]

    assert (await first_alert("before"))["departments"] == [WATER]  # the worker runs with the file's rules
    good = rules_file.read_text(encoding="utf-8")
    broken = good + "  - name: broken-rule\n    match: {category: water}\n    departments: [no_such_dept]\n"
    bad_line = len(good.splitlines()) + 3
    rules_file.write_text(broken, encoding="utf-8")
    line = await wait_log(pipeline, r"routing rules rejected.*")
    assert f"{rules_file}:{bad_line}:" in line and "no_such_dept" in line, line
    assert (await first_alert("old"))["departments"] == [WATER], "the old rules stay in force"

    rules_file.write_text(good + GOOD_CHANGE, encoding="utf-8")
    await wait_log(pipeline, r"routing rules reloaded from .*")
    assert (await first_alert("new"))["departments"] == [WATER, "traffic"], "the good change is in force"
    got = await pipeline.consume(pipeline.topics.dept("traffic"), lambda g: len(g) >= 1, timeout=30)
    assert {orjson.loads(m.value)["subject"] for m in got} == {f"lc-{run}-new"}
    pipeline.sup.check_alive()


async def test_emergency_mode_routes_ema_and_is_recorded_in_the_evidence(
    pipeline: Pipeline, publisher: MqttPublisher
) -> None:
    run = pipeline.run
    switch = {"event_id": f"mode-{run}", "scope": "district:chaoyang", "mode": "emergency", "actor": "duty-officer",
              "actor_department": "ops", "ts": datetime.now(UTC).isoformat()}
    producer = AIOKafkaProducer(bootstrap_servers=pipeline.env["KAFKA_BOOTSTRAP_SERVERS"], acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(pipeline.topics.control_mode, orjson.dumps(switch), key=b"district:chaoyang")
    finally:
        await producer.stop()
    await wait_log(pipeline, r"mode: district:chaoyang is now emergency", timeout=60)

    subject = f"lc-{run}-gate"
    # 2.9 m is below the 3.0 m warning level (blue, IV, in normal mode); the emergency
    # profile scales water thresholds by 0.9, so it is yellow (III) here
    send_levels(publisher, run, "gate", [2.9, 2.9, 2.9])
    msgs = await pipeline.consume(pipeline.topics.alerts, lambda got: bool(alerts_of(got, subject)), timeout=60)
    a = alerts_of(msgs, subject)[0]
    mode = a["evidence"]["details"]["mode"]
    assert mode["mode"] == "emergency" and mode["scope"] == "district:chaoyang"
    assert a["severity"] == "III" and a["evidence"]["details"]["threshold_scale"] == 0.9
    assert set(a["departments"]) == {WATER, EMA, DISTRICT}, "平急转换: the emergency bureau and the district too"
    lc = a["evidence"]["details"]["lifecycle"]
    dispatched = datetime.fromisoformat(lc["last"]["at"])
    window = (datetime.fromisoformat(lc["ack_by"]) - dispatched).total_seconds()
    assert window == pytest.approx(3, abs=0.01), "the emergency profile halves the 6 s acknowledge window"
    pipeline.sup.check_alive()


async def acknowledged_culvert_alert(p: Pipeline, publisher: MqttPublisher, timeout: float = 60) -> dict[str, Any]:
    """An orange culvert alert (a long SLA: nothing due during a test), acknowledged by
    水务局; its acknowledged revision, once the changelog and offsets are on the broker."""
    subject = f"lc-{p.run}-culvert"
    send_levels(publisher, p.run, "culvert", [3.8, 3.8, 3.8])
    msgs = await p.consume(p.topics.alerts, lambda got: bool(alerts_of(got, subject)), timeout=timeout)
    aid = alerts_of(msgs, subject)[0]["alert_id"]
    await send_actions(p, [action(aid, "ack", WATER)])
    msgs = await p.consume(p.topics.alerts, lambda got: any(
        a["status"] == "acknowledged" for a in alerts_of(got, subject)), timeout=30)
    acked = next(a for a in alerts_of(msgs, subject) if a["status"] == "acknowledged")
    await asyncio.sleep(4)  # the changelog record and the offsets are on the broker
    return acked


def assert_timers_rebuilt(log_text: str) -> None:
    """The restarted process (after the first Ready) rebuilt its due-time index from the changelog."""
    recovered = re.search(r"lifecycle: (\d+) alerts with a pending timer after recovery",
                          log_text.split(WORKER_READY, 1)[1])
    assert recovered and int(recovered.group(1)) >= 1, "the due-time index was rebuilt from the changelog"


async def assert_culvert_alert_continues_acknowledged(p: Pipeline, publisher: MqttPublisher,
                                                      acked: dict[str, Any]) -> None:  # fmt: skip
    """A red level now: the same alert's next revision, still acknowledged."""
    subject = f"lc-{p.run}-culvert"
    more = [water(p.run, "culvert", 10 + i, 4.3) for i in range(3)]
    for r in more:
        r["ts"] = datetime.now(UTC).isoformat()
        publisher.publish(f"city/sensors/{r['sensor_id']}", json.dumps(r).encode())
    msgs = await p.consume(p.topics.alerts, lambda got: any(
        a["revision"] > acked["revision"] for a in alerts_of(got, subject)), timeout=90)
    later = [a for a in alerts_of(msgs, subject) if a["revision"] > acked["revision"]]
    assert later, "the condition continues after the restart"
    assert {a["alert_id"] for a in later} == {acked["alert_id"]}, "the same alert, not a new one"
    assert all(a["status"] == "acknowledged" for a in later), "the acknowledgement survived the kill"
    assert later[0]["revision"] == acked["revision"] + 1


async def test_lifecycle_state_survives_a_killed_worker(pipeline: Pipeline, publisher: MqttPublisher) -> None:
    acked = await acknowledged_culvert_alert(pipeline, publisher)
    pipeline.sup.kill("worker")  # SIGKILL: no clean shutdown
    pipeline.sup.restart("worker")
    await asyncio.to_thread(pipeline.sup.wait_for_log, "worker", WORKER_READY, 120)
    assert_timers_rebuilt(worker_log(pipeline))
    await assert_culvert_alert_continues_acknowledged(pipeline, publisher, acked)
    pipeline.sup.check_alive()
