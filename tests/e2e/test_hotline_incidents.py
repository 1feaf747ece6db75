"""Hotline (接诉即办), its 三率, the hotline spike early warning (未诉先办) and
incidents on the real stack: connector, worker and writer as processes, real
Kafka, Mosquitto and PostgreSQL, each test with its own topic prefix."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from citybrain.dlq import H_REASON, H_STAGE, decode_headers
from citybrain.supervisor import WORKER_READY
from tests.e2e.conftest import MqttPublisher, Pipeline

BEIJING = ZoneInfo("Asia/Shanghai")
WANGJING = {"district": "朝阳区", "street": "望京街道", "lat": 39.996, "lon": 116.47}
ZGC = {"district": "海淀区", "street": "中关村街道", "lat": 39.984, "lon": 116.315}
H = timedelta(hours=1)
D = timedelta(days=1)


# MQTT topics of this module only: the connector must not ingest whatever else
# is published to the shared broker (a simulator or a benchmark of another run)
TOKEN = uuid.uuid4().hex[:8]


@pytest.fixture
def pipeline_env() -> dict[str, str]:
    return {
        "WORKER_TICK_EVERY_S": "1",  # deadline and incident ticks every second instead of every ten
        "CONNECTOR_SUBSCRIPTIONS": json.dumps([f"city/sensors/{TOKEN}/#", f"city/hotline/{TOKEN}/#"]),
    }


class Hotline:
    """Hotline events straight onto city.hotline.events, keyed by ticket_id
    like the connector does (the agent's own input, so its DLQ is exercised)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.n = 0
        self.sent: list[tuple[bytes, bytes]] = []

    def event(self, tid: str, at: datetime, kind: str = "created", status: str = "open", loc: dict[str, Any] = WANGJING,
              category: str = "flooding", sat: int | None = None) -> tuple[bytes, bytes]:
        self.n += 1
        d: dict[str, Any] = {
            "event_id": f"{self.p.run}-h{self.n}", "ticket_id": f"{self.p.run}-{tid}", "kind": kind,
            "category": category, "status": status, "ts": at.isoformat(), "location": loc,
            "description": "路口积水很深 请回电 13812345678", "caller_ref": "c0ffee" + tid,
        }  # fmt: skip
        if sat is not None:
            d["satisfaction"] = sat
        rec = (d["ticket_id"].encode(), orjson.dumps(d))
        self.sent.append(rec)
        return rec

    async def send(self, records: list[tuple[bytes, bytes]]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.p.env["KAFKA_BOOTSTRAP_SERVERS"], acks="all")
        await producer.start()
        try:
            for key, value in records:
                await producer.send_and_wait(self.p.topics.hotline, value, key=key)
        finally:
            await producer.stop()


async def worker_ready(pipeline: Pipeline, timeout: float = 180) -> None:
    """The worker's current process has joined its group and recovered its tables:
    on a loaded machine that can take a while, and the deadline timer runs on the wall clock."""
    await asyncio.to_thread(pipeline.sup.wait_for_log, "worker", WORKER_READY, timeout)


def latest_by_key(msgs: list[Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in msgs:
        out[m.key.decode()] = orjson.loads(m.value)
    return out


def past_month_start(run: str) -> datetime:
    """09:00 Beijing on the 2nd of a month of 2001..2020 picked by the run id:
    every deadline of the scenario is long past, every ticket is created in one
    month (the period), and the stored (scope, period) rows are this run's own."""
    n = int(run, 16)
    return datetime(2001 + n % 20, 1 + n // 20 % 12, 2, 9, 0, tzinfo=BEIJING).astimezone(UTC)


@pytest.fixture
def hotline(pipeline: Pipeline) -> Iterator[Hotline]:
    yield Hotline(pipeline)


async def test_three_rates_match_hand_computed_values_despite_redelivery_and_bad_events(
    pipeline: Pipeline, hotline: Hotline
) -> None:
    t0 = past_month_start(pipeline.run)
    period = t0.astimezone(BEIJING).strftime("%Y-%m")
    h = hotline
    recs = [
        # 望京 (chaoyang), routed to the street office and the water authority (first contact 2 h, resolve 7 d)
        h.event("t1", t0), h.event("t1", t0 + H, "status", "in_progress"),          # contact on time
        h.event("t1", t0 + 2 * D, "status", "resolved"),                             # resolved on time
        h.event("t1", t0 + 2 * D + H, "feedback", "resolved", sat=5),                # satisfied
        h.event("t2", t0), h.event("t2", t0 + 3 * H, "status", "in_progress"),      # contact late
        h.event("t2", t0 + 8 * D, "status", "resolved"),                             # resolved late
        h.event("t2", t0 + 8 * D + H, "feedback", "resolved", sat=2),                # unsatisfied
        h.event("t3", t0), h.event("t3", t0 + D, "status", "resolved"),              # first contact late, resolved on time
        h.event("t3", t0 + D + H, "feedback", "resolved", sat=4),
        h.event("t3", t0 + D + 2 * H, "feedback", "resolved", sat=3),                # replaces 4: unsatisfied
        h.event("t4", t0), h.event("t4", t0 + H / 2, "status", "in_progress"),      # contact on time, never resolved
        h.event("t5", t0 + 2 * D),                                                   # never contacted
        # 中关村 (haidian): the water authority's too
        h.event("t6", t0, loc=ZGC), h.event("t6", t0 + 1.5 * H, "status", "in_progress", loc=ZGC),
    ]
    # bad input in the stream, in t5's partition before its ticket: dead-lettered, the agent goes on
    t5_key = recs[14][0]
    malformed = (t5_key, b'{"event_id": "x", "ticket_id": ')
    invalid = (t5_key, orjson.dumps({**orjson.loads(recs[14][1]), "event_id": "bad-1", "category": "unicorns"}))
    await worker_ready(pipeline)
    await h.send([*recs[:14], malformed, invalid, *recs[14:]])
    await h.send(recs)  # every event redelivered: same event ids

    # hand-computed (every deadline has passed; missed ones are counted by the deadline timer):
    #   chaoyang  response   t1 ok, t2 late, t3 late (1 d), t4 ok, t5 missed -> 2/5
    #             resolution t1 ok, t2 late, t3 ok, t4 missed, t5 missed -> 2/5
    #             satisfaction t1 5, t2 2, t3 3 (replaced 4)              -> 1/3
    #   water     the same plus t6: response 3/6, resolution 2/6, satisfaction 1/3
    #   haidian   response 1/1, resolution 0/1, no feedback
    expected = {
        "district:chaoyang": {"response": [2, 5], "resolution": [2, 5], "satisfaction": [1, 3]},
        "street.chaoyang.wangjing": {"response": [2, 5], "resolution": [2, 5], "satisfaction": [1, 3]},
        "water": {"response": [3, 6], "resolution": [2, 6], "satisfaction": [1, 3]},
        "district:haidian": {"response": [1, 1], "resolution": [0, 1], "satisfaction": [0, 0]},
    }

    def reached(msgs: list[Any]) -> bool:
        snaps = latest_by_key(msgs)
        return all(snaps.get(k, {}).get("counts") == v for k, v in expected.items())

    msgs = await pipeline.consume(pipeline.topics.kpi, until=reached, timeout=120)
    snaps = latest_by_key(msgs)
    assert {k: snaps.get(k, {}).get("counts") for k in expected} == expected
    await asyncio.sleep(5)  # anything counted twice would show up after the expected values
    snaps = latest_by_key(await pipeline.consume(pipeline.topics.kpi, until=lambda m: False, timeout=5))
    assert {k: snaps[k]["counts"] for k in expected} == expected
    cy = snaps["district:chaoyang"]
    assert cy["period"] == period
    assert cy["response_rate"] == pytest.approx(2 / 5)
    assert cy["resolution_rate"] == pytest.approx(2 / 5)
    assert cy["satisfaction_rate"] == pytest.approx(1 / 3)
    assert snaps["district:haidian"]["satisfaction_rate"] is None

    dlq = await pipeline.consume(pipeline.topics.dlq, until=lambda got: len(got) >= 2, timeout=30)
    bad = [(m.value, decode_headers(m.headers)) for m in dlq if decode_headers(m.headers).get(H_STAGE) == "hotline"]
    assert sorted(v for v, _ in bad) == sorted([malformed[1], invalid[1]])
    assert {hd[H_REASON] for _, hd in bad} == {"invalid_hotline_event"}

    # tickets: dispatched through the routing with deadlines; each department sees only its own, no caller data
    tickets = latest_by_key(await pipeline.consume(pipeline.topics.hotline_tickets,
                                                   until=lambda m: len(latest_by_key(m)) >= 6, timeout=30))
    t1 = tickets[f"{pipeline.run}-t1"]
    assert t1["departments"] == ["street.chaoyang.wangjing", "water"]
    assert t1["first_contact_by"].startswith((t0 + 2 * H).strftime("%Y-%m-%dT%H:%M"))
    assert t1["status"] == "resolved" and t1["satisfaction"] == 5
    assert tickets[f"{pipeline.run}-t5"]["overdue"] == ["response", "resolution"]
    street = await pipeline.consume(pipeline.topics.hotline_dept("street.chaoyang.wangjing"),
                                    until=lambda m: len(latest_by_key(m)) >= 5, timeout=30)
    assert set(latest_by_key(street)) == {f"{pipeline.run}-t{i}" for i in range(1, 6)}  # not 中关村's t6
    water = await pipeline.consume(pipeline.topics.hotline_dept("water"),
                                   until=lambda m: len(latest_by_key(m)) >= 6, timeout=30)
    assert len(latest_by_key(water)) == 6
    for m in street + water:
        assert b"13812345678" not in m.value, "phone numbers are masked"
    # the street office calls citizens back (pseudonymous: the caller's keyed hash); the bureau gets no caller data
    assert all(orjson.loads(m.value).get("caller_ref") for m in street)
    assert not any("caller_ref" in orjson.loads(m.value) for m in water)

    # stored for the operations center: the latest ticket states and rates
    rows = await pipeline.wait_db(
        "SELECT scope, response_rate, resolution_rate, satisfaction_rate, counts FROM hotline_kpi "
        "WHERE period = $1 AND scope = ANY($2::text[])", period, list(expected),
        until=lambda r: {x["scope"]: orjson.loads(x["counts"]) for x in r} == expected, timeout=60)
    assert {r["scope"]: orjson.loads(r["counts"]) for r in rows} == expected
    rows = await pipeline.wait_db(
        "SELECT ticket_id, status, departments, overdue, satisfaction FROM hotline_tickets WHERE ticket_id LIKE $1",
        f"{pipeline.run}-t%", until=lambda r: len(r) == 6 and sum(x["status"] == "resolved" for x in r) == 3,
        timeout=60)
    stored = {r["ticket_id"].rsplit("-", 1)[1]: r for r in rows}
    assert stored["t1"]["status"] == "resolved" and stored["t1"]["satisfaction"] == 5
    assert stored["t6"]["departments"] == tickets[f"{pipeline.run}-t6"]["departments"]
    assert stored["t5"]["overdue"] == ["response", "resolution"]

    # a restarted worker recovers its ticket and 三率 states from the changelogs: the whole history
    # redelivered once more changes nothing, and a new feedback (t2: 2 -> 5) corrects the rate in place
    pipeline.sup.kill("worker", signal.SIGINT)
    pipeline.sup.restart("worker")
    await worker_ready(pipeline)  # the restarted process
    await h.send([*recs, h.event("t2", t0 + 9 * D, "feedback", "resolved", sat=5)])
    after = {k: {**v, "satisfaction": [2, 3]} if k != "district:haidian" else v for k, v in expected.items()}

    def corrected(msgs: list[Any]) -> bool:
        snaps = latest_by_key(msgs)
        return all(snaps.get(k, {}).get("counts") == v for k, v in after.items())

    msgs = await pipeline.consume(pipeline.topics.kpi, until=corrected, timeout=120)
    snaps = latest_by_key(msgs)
    assert {k: snaps.get(k, {}).get("counts") for k in after} == after
    pipeline.sup.check_alive()


async def test_hotline_burst_raises_one_early_warning_and_redelivered_calls_do_not_count(
    pipeline: Pipeline, hotline: Hotline
) -> None:
    now = datetime.now(UTC)
    h = hotline
    first = [h.event(f"n{i}", now - timedelta(minutes=10 - i), category="noise", loc=ZGC) for i in range(4)]
    await worker_ready(pipeline)
    await h.send(first + first)  # four calls, each delivered twice: not yet a burst (at least 6 calls)
    await pipeline.consume(pipeline.topics.hotline_tickets, until=lambda m: len(latest_by_key(m)) >= 4, timeout=60)
    await asyncio.sleep(5)  # the forwarded calls reach the spike detector
    early = await pipeline.consume(pipeline.topics.alerts, until=lambda m: False, timeout=3)
    assert [m for m in early if b"hotline_burst" in m.value] == [], "a redelivered call was counted twice"

    more = [h.event(f"n{i}", now - timedelta(minutes=5 - i), category="noise", loc=ZGC) for i in range(4, 7)]
    await h.send(more + more)

    def burst(msgs: list[Any]) -> list[dict[str, Any]]:
        return [a for a in (orjson.loads(m.value) for m in msgs) if a["rule"] == "hotline_burst:noise"]

    msgs = await pipeline.consume(pipeline.topics.alerts, until=lambda m: len(burst(m)) >= 1, timeout=60)
    alerts = burst(msgs)
    assert len({a["alert_id"] for a in alerts}) == 1, "one early warning, not one per call"
    a = alerts[0]
    assert a["subject"] == "noise:中关村街道"
    assert a["evidence"]["detector"] == "hotline_burst"
    # opened at the sixth or the seventh distinct call: which one depends on the wall clock
    # the calls are timed by (at busy hours of the city-wide rhythm, late in a 15-min
    # bucket, six are not yet a burst) and on the order the three later calls arrive in
    # (keyed by ticket, so over partitions); never above the seven distinct calls
    assert a["evidence"]["value"] in (6.0, 7.0)
    assert "uma" in a["departments"] and "street.haidian.zhongguancun" in a["departments"]
    pipeline.sup.check_alive()


def water_reading(run: str, i: int, value: float, at: datetime) -> dict[str, Any]:
    return {
        "event_id": f"wl-{run}-{i}", "sensor_id": f"wl-{run}", "sensor_type": "water_level", "value": value,
        "unit": "m", "ts": at.isoformat(), "location": {**WANGJING, "lat": 39.995, "lon": 116.468},
    }  # fmt: skip


async def test_flood_complaints_and_water_level_alerts_form_one_incident(
    pipeline: Pipeline, publisher: MqttPublisher
) -> None:
    await worker_ready(pipeline)
    run = pipeline.run
    now = datetime.now(UTC)
    # 积水 complaints in 望京 through the hotline intake (MQTT; name and phone become caller_ref)
    tickets = [f"{run}-f{i}" for i in range(3)]
    for i, tid in enumerate(tickets):
        call = {"event_id": f"{tid}-c", "ticket_id": tid, "kind": "created", "category": "flooding",
                "ts": (now - timedelta(minutes=6 - i)).isoformat(), "location": WANGJING,
                "description": "地下通道积水", "caller_name": "张三", "caller_phone": "13800000000"}
        publisher.publish(f"city/hotline/{TOKEN}/{tid}", json.dumps(call).encode())
    # a water-level gauge in the same street over its warning level, past the midway to guarantee (II)
    for i in range(8):
        r = water_reading(run, i, 3.7 + 0.01 * i, now - timedelta(seconds=30 * (8 - i)))
        publisher.publish(f"city/sensors/{TOKEN}/wl-{run}", json.dumps(r).encode())

    def flood(msgs: list[Any]) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in latest_by_key(msgs).items() if v["kind"] == "flood"}

    def complete(msgs: list[Any]) -> bool:
        return any(v["alert_ids"] and len(v["ticket_ids"]) == 3 for v in flood(msgs).values())

    msgs = await pipeline.consume(pipeline.topics.incidents, until=complete, timeout=90)
    incidents = flood(msgs)
    assert len(incidents) == 1, f"one incident, got {list(incidents)}"
    (iid, inc), = incidents.items()
    assert sorted(inc["ticket_ids"]) == sorted(tickets)
    alerts = latest_by_key(await pipeline.consume(pipeline.topics.alerts, until=lambda m: False, timeout=3))
    water = {k: a for k, a in alerts.items() if a["sensor_type"] == "water_level" and a["category"] != "sensor_health"}
    assert water and set(inc["alert_ids"]) <= set(water), "members are the gauge's alerts"
    assert any(water[k]["evidence"]["detector"] == "water_level" for k in inc["alert_ids"]), "the threshold alert"
    ranks = {"IV": 4, "III": 3, "II": 2, "I": 1}
    highest = min(ranks[water[k].get("peak_severity") or water[k]["severity"]] for k in inc["alert_ids"])
    assert ranks[inc["severity"]] == highest == 2, "the incident's severity is its highest member's (II)"
    assert inc["status"] == "open" and inc["location"]["district"] == "朝阳区"

    rows = await pipeline.wait_db("SELECT incident_id, severity, ticket_ids, alert_ids FROM incidents "
                                  "WHERE incident_id = $1", iid,
                                  until=lambda r: len(r) == 1 and len(r[0]["ticket_ids"]) == 3, timeout=60)
    assert rows and rows[0]["severity"] == "II" and sorted(rows[0]["ticket_ids"]) == sorted(tickets)
    pipeline.sup.check_alive()
