"""Incident replay on the real stack (issue 9, item 4).

A simulated rainstorm is recorded through the live pipeline (MQTT ->
connector -> Kafka -> worker -> writer -> PostgreSQL) into a storage schema
of this test's own, then `citybrain replay` re-runs the range through an
isolated worker: with unchanged rules it reproduces every recorded alert, with
a changed rules file it reports exactly the expected differences.

The live worker of the recording runs with `WORKER_CLOCK=event`, like the
replay worker: the simulator publishes 90 event minutes in seconds, so a wall
clock would see none of the SLA timers fall due that event time does. In a
city where readings arrive as they are measured the two clocks agree.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from citybrain.kafka_admin import ensure_topics, pipeline_topics
from citybrain.supervisor import Supervisor
from citybrain.topics import Topics
from sim import Reading, generate
from sim.mqtt import Publisher, PublishSettings, publish_events
from sim.scenarios import city
from storage.db import connect
from storage.migrate import migrate
from storage.replay import list_replay_topics
from storage.replay_partitions import spread_sensors
from streams import markers
from streams.routing import RULES_DIR
from tests.e2e.conftest import ROOT, wait_until_subscribed
from tests.services import _reachable, _require

# long: the machine is shared and loaded; these bound a hang, they measure nothing
RUN_TIMEOUT_S = 600
# The recording: one partition. Its live worker runs on the event clock (above), which is exact
# only when one partition hands it every record in event-time order; a city's wall clock has no
# such limit. The replays: four partitions shared by two workers, which must reproduce it exactly
# all the same (streams.markers: a timer fires once every partition is past it).
RECORDING_PARTITIONS = 1
REPLAY_PARTITIONS = 4
REPLAY_WORKERS = 2


def _schema_name() -> str:
    return f"t_replay_{uuid.uuid4().hex[:8]}"


async def _drop_schema(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def replay_schema(database_url: str) -> Iterator[str]:
    schema = _schema_name()
    asyncio.run(migrate(database_url, schema))
    yield schema
    asyncio.run(_drop_schema(database_url, schema))


def citybrain(args: list[str], env: dict[str, str], timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "citybrain.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


async def _fetch(database_url: str, schema: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await connect(database_url, schema, "test-replay")
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _wait_recorded(database_url: str, schema: str, n_readings: int, sup: Supervisor) -> list[asyncpg.Record]:
    """Every reading stored, then the alerts table unchanged for a while (the
    live worker's silence sweep runs on a 10 s timer)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        sup.check_alive()
        (row,) = await _fetch(database_url, schema, "SELECT count(*) AS n FROM readings")
        if row["n"] >= n_readings:
            break
        await asyncio.sleep(1)
    assert row["n"] == n_readings, f"{row['n']} of {n_readings} readings stored"
    seen: tuple[int, int] | None = None
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        sup.check_alive()
        (row,) = await _fetch(database_url, schema, "SELECT count(*) AS n, coalesce(sum(revision), 0) AS r FROM alerts")
        now = (row["n"], row["r"])
        if now != seen:
            seen, stable_since = now, time.monotonic()
        elif row["n"] > 0 and time.monotonic() - stable_since > 25:
            break
        await asyncio.sleep(1)
    return await _fetch(database_url, schema, "SELECT alert_id, rule, category, departments FROM alerts")


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


@dataclass
class Recording:
    schema: str
    start: str
    end: str
    alerts: list[asyncpg.Record]
    root: Path
    diffs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return self.schema.removeprefix("t_replay_")

    def env(self) -> dict[str, str]:
        return {**os.environ, "REPLAY_RUN_ROOT": str(self.root / "replay")}

    def replay(self, name: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        out = self.root / f"{name}.json"
        r = citybrain(["replay", "--from", self.start, "--to", self.end, "--schema", self.schema, "--json", str(out),
                       "--run", f"{name}_{self.tag}", "--partitions", str(REPLAY_PARTITIONS),
                       "--workers", str(REPLAY_WORKERS), "--quiet", *extra], self.env())
        assert r.returncode in (0, 1), r.stderr[-3000:] + r.stdout[-3000:]
        return r, json.loads(out.read_text())

    def unchanged(self) -> dict[str, Any]:
        """The replay with unchanged rules, run once for the tests that judge it."""
        if "same" not in self.diffs:
            r, diff = self.replay("same", "--fail-on-diff")
            assert r.returncode == 0, r.stderr[-3000:]
            diff["stdout"] = r.stdout
            self.diffs["same"] = diff
        return self.diffs["same"]


@pytest.fixture(scope="module")
def recording(kafka_bootstrap: str, mqtt_url: str, mqtt_publish_url: str, database_url: str,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    """A simulated rainstorm recorded through the live pipeline (connector,
    worker, writer, each with this module's topic prefix, app id, group and
    storage schema; the connector listens to this module's MQTT batch topic
    only), then the pipeline stopped: the replays have the machine to themselves."""
    root = tmp_path_factory.mktemp("replay")
    schema = _schema_name()
    tag = schema.removeprefix("t_replay_")
    asyncio.run(migrate(database_url, schema))
    prefix = f"t{tag}."
    env = dict(os.environ)
    env.update(
        CONNECTOR_TOPIC_PREFIX=prefix, CONNECTOR_CLIENT_ID=f"test-connector-{tag}",
        CONNECTOR_PII_KEY=env.get("CONNECTOR_PII_KEY") or "test-pii-key",
        CONNECTOR_SUBSCRIPTIONS=json.dumps([f"city/sensors/batch/rp{tag}"]),
        WORKER_TOPIC_PREFIX=prefix, WORKER_APP_ID=f"test-worker-{tag}", WORKER_DATA_DIR=str(root / "faust"),
        WORKER_CLOCK="event",
        WRITER_TOPIC_PREFIX=prefix, WRITER_GROUP_ID=f"test-writer-{tag}", WRITER_DB_SCHEMA=schema,
    )
    # one partition per topic for the recording (see RECORDING_PARTITIONS)
    asyncio.run(ensure_topics(kafka_bootstrap, dict.fromkeys(pipeline_topics(Topics(prefix), RECORDING_PARTITIONS),
                                                             RECORDING_PARTITIONS)))
    sup = Supervisor(root / "logs", base_env=env)
    try:
        sup.start("connector", ["connector", "--log-level", "info"])
        sup.start("worker", ["worker", "--log-level", "info"])
        sup.start("writer", ["writer"])
        wait_until_subscribed(sup)
        # event time two days back (the connector takes up to 7 days), on a minute boundary
        start = (datetime.now(UTC) - timedelta(days=2)).replace(second=0, microsecond=0)
        c, sc = city(start, timedelta(minutes=90), seed=3, sensors=60, districts=["chaoyang", "haidian"],
                     incidents=["rainstorm"], calls_per_hour=0, prefix=f"rp{tag}")
        readings = [ev for ev in generate(c, sc) if isinstance(ev, Reading)]
        pub = Publisher(PublishSettings(publisher=f"rp{tag}", client_id=f"rp-pub-{tag}"))  # type: ignore[call-arg]
        pub.connect()
        try:
            stats = publish_events(readings, pub, sc.start, None, 200)
        finally:
            pub.close()
        assert stats.readings == len(readings) and stats.acked == stats.messages
        alerts = asyncio.run(_wait_recorded(database_url, schema, len(readings), sup))
    finally:
        sup.stop_all()
        for child in sup.children.values():
            print(f"--- {child.name} log tail ---\n{child.log_path.read_text(errors='replace')[-3000:]}")
    try:
        yield Recording(schema, _iso(sc.start), _iso(sc.end), alerts, root)
    finally:
        asyncio.run(_drop_schema(database_url, schema))


def test_unchanged_rules_reproduce_every_recorded_alert(recording: Recording) -> None:
    recorded = recording.alerts
    assert len(recorded) >= 3 and any(a["category"] == "water" for a in recorded), \
        f"a rainstorm raises water alerts: {[a['rule'] for a in recorded]}"
    diff = recording.unchanged()
    assert diff["empty"] is True, diff["stdout"]
    assert not diff["missing"] and not diff["new"] and not diff["changed"]
    assert diff["summary"]["recorded"] == diff["summary"]["identical"] == len(recorded)
    assert set(diff["identical"]) == {a["alert_id"] for a in recorded}
    assert "no differences" in diff["stdout"]
    run_dir = recording.root / "replay" / f"same_{recording.tag}"
    assert (run_dir / "diff.json").read_text() == (recording.root / "same.json").read_text()
    topics = asyncio.run(list_replay_topics(os.environ["KAFKA_BOOTSTRAP_SERVERS"]))
    assert f"same_{recording.tag}" not in topics, "a finished run removes its topics unless --keep"
    audited = asyncio.run(_fetch(os.environ["DATABASE_URL"], recording.schema,
                                 "SELECT kind, details FROM audit_log WHERE subject = $1", f"same_{recording.tag}"))
    assert [r["kind"] for r in audited] == ["replay.run"], "every replay run is on the audit trail"


def test_changed_rules_report_the_expected_differences(recording: Recording) -> None:
    recorded = recording.alerts
    water = {a["alert_id"] for a in recorded if a["category"] == "water"}
    assert water
    # changed rules: water alerts also go to the transport commission
    rules = recording.root / "rules"
    shutil.copytree(RULES_DIR, rules, dirs_exist_ok=True)
    routing = yaml.safe_load((rules / "routing.yaml").read_text())
    for rule in routing["rules"]:
        if rule["name"] == "water-to-water-authority":
            rule["departments"] = ["water", "traffic"]
    (rules / "routing.yaml").write_text(yaml.safe_dump(routing, allow_unicode=True))
    r, diff = recording.replay("changed", "--rules", str(rules / "routing.yaml"), "--fail-on-diff")
    assert r.returncode == 1, r.stdout
    assert not diff["missing"] and not diff["new"]
    assert {c["alert_id"] for c in diff["changed"]} == water
    by_id = {a["alert_id"]: a for a in recorded}
    for c in diff["changed"]:
        assert set(c["changes"]) == {"departments"}, c
        before, after = c["changes"]["departments"]
        assert before == sorted(by_id[c["alert_id"]]["departments"])
        assert after == sorted({*before, "traffic"})
    assert diff["summary"]["identical"] == len(recorded) - len(water)
    assert "departments" in r.stdout and "traffic" in r.stdout

    listed = citybrain(["replay", "--list", "--schema", recording.schema], recording.env(), timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert f"changed_{recording.tag}" in listed.stdout


# --- runs over rows written straight into a schema: keys, order, --keep, --list, --clean, Ctrl-C

T0 = datetime(2026, 5, 4, 6, 0, tzinfo=UTC)
SENSORS = ("rk-a", "rk-b", "rk-c", "rk-d", "rk-e")


def _reading_rows(n_per_sensor: int, step_s: int, base: float = 20.0) -> list[tuple[Any, ...]]:
    rows = []
    for i in range(n_per_sensor):
        for k, sid in enumerate(SENSORS):
            ts = T0 + timedelta(seconds=i * step_s)  # same ts for all sensors: the tie-break decides the order
            rows.append((ts, f"r-{sid}-{i}", sid, "pm25", base + (i + k) % 7, "ug/m3", "朝阳区",
                         "望京街道", None, 39.99, 116.47, None, "test"))
    return rows


def _hotline_rows() -> list[tuple[Any, ...]]:
    return [(T0 + timedelta(seconds=30 * i + 1), f"h-tk{i}-created", f"tk{i}", "created", "noise", "open",
             "朝阳区", "望京街道", None, 39.99, 116.47, "工地夜间施工噪音", "normal", "phone", f"ref{i}", None, None)
            for i in range(3)]


async def _load(database_url: str, schema: str, readings: list[tuple[Any, ...]],
                hotline: list[tuple[Any, ...]]) -> None:
    conn = await connect(database_url, schema, "test-replay")
    try:
        probes = sorted({datetime(r[0].year, r[0].month, r[0].day, tzinfo=UTC) for r in readings + hotline})
        for table in ("readings", "hotline_events"):
            await conn.fetchval("SELECT cb_ensure_partitions($1::regclass, $2::timestamptz[])", table, probes)
        await conn.copy_records_to_table("readings", records=readings, columns=(
            "ts", "event_id", "sensor_id", "sensor_type", "value", "unit", "district", "street", "grid", "lat",
            "lon", "sent_at", "source"))
        await conn.copy_records_to_table("hotline_events", records=hotline, columns=(
            "ts", "event_id", "ticket_id", "kind", "category", "status", "district", "street", "grid", "lat", "lon",
            "description", "urgency", "channel", "caller_ref", "satisfaction", "department"))
    finally:
        await conn.close()


async def _drain(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    got: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(msgs)
    finally:
        await consumer.stop()
    return got


async def test_replay_topics_keys_order_keep_list_clean_and_ctrl_c(
    replay_schema: str, database_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    readings = _reading_rows(40, 30)
    hotline = _hotline_rows()
    await _load(database_url, replay_schema, readings, hotline)
    env = {**os.environ, "REPLAY_RUN_ROOT": str(tmp_path / "replay")}
    run = f"keep_{replay_schema.removeprefix('t_replay_')}"
    end = T0 + timedelta(minutes=30)
    kept = citybrain(["replay", "--from", T0.isoformat(), "--to", end.isoformat(), "--schema", replay_schema,
                      "--keep", "--run", run], env)
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert f"replay {run}: {len(readings)} readings, {len(hotline)} hotline events" in kept.stdout
    assert "published" in kept.stderr and "caught up" in kept.stderr  # progress on stderr

    # keyed by sensor over the live partition count, each sensor on the partition the engine placed it on
    # (storage.replay_partitions: by its readings in the range) and in event-time order,
    # with a progress marker per partition every 5 event minutes and a final one (streams.markers)
    n_marks = 4 * (3 + 1)
    sent = await _drain(kafka_bootstrap, f"replay.{run}.city.sensor.readings", len(readings) + n_marks)
    msgs = [m for m in sent if not markers.is_marker(m.value)]
    assert len(msgs) == len(readings)
    last = T0 + timedelta(seconds=30 * 39)
    for p in range(4):
        floor, seen = None, []
        for m in sorted((m for m in sent if m.partition == p), key=lambda m: m.offset):
            if markers.is_marker(m.value):
                _, floor, final = markers.decode(m.value)
                seen.append((floor, final))
            else:  # a marker promises that nothing earlier follows on its partition
                assert floor is None or datetime.fromisoformat(json.loads(m.value)["ts"]) >= floor
        assert seen == [(T0 + timedelta(minutes=k), False) for k in (5, 10, 15)] + [(last, True)]
    n_parts = 1 + max(m.partition for m in msgs)
    assert n_parts == 4
    placed = spread_sensors({s: 40 for s in SENSORS}, n_parts)
    per_sensor: dict[bytes, list[str]] = {}
    for m in sorted(msgs, key=lambda m: (m.partition, m.offset)):
        assert m.partition == placed[m.key]
        per_sensor.setdefault(m.key, []).append(json.loads(m.value)["ts"])
    per_partition = Counter(m.partition for m in msgs)  # equal loads: the sensors spread evenly
    assert max(per_partition.values()) - min(per_partition.values()) <= 40, per_partition
    assert set(per_sensor) == {s.encode() for s in SENSORS}
    assert all(ts == sorted(ts) and len(ts) == 40 for ts in per_sensor.values())
    calls = [m for m in await _drain(kafka_bootstrap, f"replay.{run}.city.hotline.events", len(hotline) + n_marks)
             if not markers.is_marker(m.value)]
    # every call on one partition in the recorded order: each area's burst detector sees them in event time
    assert [(m.partition, m.key) for m in sorted(calls, key=lambda m: m.offset)] == \
        [(0, b"tk0"), (0, b"tk1"), (0, b"tk2")]
    assert {json.loads(m.value)["caller_ref"] for m in calls} == {"ref0", "ref1", "ref2"}

    topics = await list_replay_topics(kafka_bootstrap)
    assert topics.get(run), "--keep keeps the run's topics"
    listed = citybrain(["replay", "--list", "--schema", replay_schema], env, timeout=120)
    assert listed.returncode == 0 and run in listed.stdout and "done" in listed.stdout, listed.stdout

    cleaned = citybrain(["replay", "--clean", run, "--schema", replay_schema], env, timeout=120)
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"replay {run}: {len(topics[run])} topics removed" in cleaned.stdout
    assert run not in await _wait_topics_gone(kafka_bootstrap, run)
    assert f"citybrain-replay-{run}" not in await _groups(kafka_bootstrap), "the worker's consumer group is gone"
    assert not (tmp_path / "replay" / run / "faust").exists()
    assert (tmp_path / "replay" / run / "diff.json").exists(), "the diff outlives the clean"

    # Ctrl-C: at 1x the 20 event minutes would take 20 wall minutes; interrupt once it is publishing
    slow_run = f"slow_{replay_schema.removeprefix('t_replay_')}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "citybrain.cli", "replay", "--from", T0.isoformat(), "--to", end.isoformat(),
         "--schema", replay_schema, "--speed", "1x", "--run", slow_run],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        status: list[asyncpg.Record] = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            status = await _fetch(database_url, replay_schema, "SELECT status FROM replay_runs WHERE run_id = $1",
                                  slow_run)
            if status and (await list_replay_topics(kafka_bootstrap)).get(slow_run):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # the worker has started and a few readings are out
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err
    (row,) = await _fetch(database_url, replay_schema, "SELECT status FROM replay_runs WHERE run_id = $1", slow_run)
    assert row["status"] == "interrupted"
    assert slow_run not in await _wait_topics_gone(kafka_bootstrap, slow_run)


def _burst_rows(n: int) -> list[tuple[Any, ...]]:
    """n noise complaints in 望京街道, 40 s apart (one 15-min bucket), tickets spread over the partitions."""
    return [(T0 + timedelta(seconds=40 * i + 1), f"h-bk{i}-created", f"bk{i}", "created", "noise", "open",
             "朝阳区", "望京街道", None, 39.99, 116.47, "夜间施工噪音", "normal", "phone", f"bref{i}", None, None)
            for i in range(n)]


def _expected_burst(rows: list[tuple[Any, ...]], watermark: datetime) -> tuple[str, float, datetime]:
    """The burst the detector opens on these calls taken in event-time order (its
    alert id and count) and when it clears by the time the tick reaches `watermark`."""
    from schemas import HotlineEvent, alert_id_for
    from streams.detectors.engine import DetectionEngine

    engine = DetectionEngine()
    st = None
    opened: tuple[str, float] | None = None
    for r in rows:
        ev = HotlineEvent.model_validate({
            "event_id": r[1], "ticket_id": r[2], "kind": r[3], "category": r[4], "status": r[5],
            "ts": r[0].isoformat(), "location": {"district": r[6], "street": r[7], "lat": r[9], "lon": r[10]},
        })  # fmt: skip
        st, signals = engine.step_hotline(st, ev)
        for sig in signals:
            if sig.kind == "open" and opened is None:
                opened = alert_id_for(sig.rule, sig.subject, sig.episode_start.isoformat()), sig.evidence.value
    assert opened is not None, "these calls make no burst"
    st, signals = engine.tick(st, watermark)
    clears = [sig.ts for sig in signals if sig.kind == "clear"]
    assert len(clears) == 1, "the burst clears once the calls stop"
    return opened[0], opened[1], clears[0]


async def test_a_replayed_call_burst_opens_where_event_time_order_opens_it(
    replay_schema: str, database_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Ten calls of one street over several ticket partitions, replayed by two
    workers: the early warning opens at the call it opens at in event-time order
    (the sixth), not at whichever the workers' interleaving delivered sixth;
    and once the calls stop (a reading three hours on moves event time) it
    clears at the bucket boundary where its window fell, in every run."""
    calls = _burst_rows(10)
    assert len({DefaultPartitioner()(r[2].encode(), list(range(4)), list(range(4))) for r in calls}) > 1
    later = T0 + timedelta(hours=3)
    readings = [*_reading_rows(4, 30), (later, "r-later", SENSORS[0], "pm25", 20.0, "ug/m3", "朝阳区", "望京街道",
                                        None, 39.99, 116.47, None, "test")]
    await _load(database_url, replay_schema, readings, calls)
    expected_id, count, cleared_at = _expected_burst(calls, later - timedelta(minutes=10))
    assert count == 6.0 and cleared_at.timestamp() % 900 == 0
    env = {**os.environ, "REPLAY_RUN_ROOT": str(tmp_path / "replay")}
    for attempt in range(2):  # two runs: the same alert each time
        run = f"burst{attempt}_{replay_schema.removeprefix('t_replay_')}"
        out = tmp_path / f"burst{attempt}.json"
        r = citybrain(["replay", "--from", T0.isoformat(), "--to", (later + timedelta(minutes=1)).isoformat(),
                       "--schema", replay_schema, "--run", run, "--workers", "2", "--json", str(out)], env)
        assert r.returncode == 0, r.stderr[-3000:]
        bursts = [a for a in json.loads(out.read_text())["new"] if a["rule"].startswith("hotline_burst:")]
        assert [(a["alert_id"], a["subject"]) for a in bursts] == [(expected_id, "noise:望京街道")], bursts
        # when the calls' bucket leaves the window, as the pure detector says (2026-12-07: T0 + 2 h)
        assert (bursts[0]["status"], bursts[0]["last_seen"]) == ("cleared", cleared_at.isoformat())


def _as_replay_principal(env: dict[str, str]) -> dict[str, str]:
    """`citybrain replay` on the SASL listener as the `replay` principal, as the
    operations center starts it there; a stack without them fails loudly."""
    sasl = _require("KAFKA_SASL_BOOTSTRAP")
    host, _, port = sasl.rpartition(":")
    _reachable("Kafka SASL listener", host, int(port))
    return {**env, "KAFKA_BOOTSTRAP_SERVERS": sasl, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "replay",
            "KAFKA_SASL_PASSWORD": _require("KAFKA_REPLAY_PASSWORD")}


async def test_replay_over_sasl_as_the_replay_principal(
    replay_schema: str, database_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The engine's clients and its worker with the `replay` principal's rights
    only: the run takes the live partition count, publishes, its worker detects
    and writes alerts, the diff is reported, and the run's topics and consumer
    group are removed."""
    from storage.replay import live_partitions

    readings = _reading_rows(12, 30, base=180.0)  # PM2.5 ~183: an II (orange) alert per sensor
    hotline = _hotline_rows()
    await _load(database_url, replay_schema, readings, hotline)
    env = _as_replay_principal({**os.environ, "REPLAY_RUN_ROOT": str(tmp_path / "replay")})
    run = f"sasl_{replay_schema.removeprefix('t_replay_')}"
    out = tmp_path / "diff.json"
    r = citybrain(["replay", "--from", T0.isoformat(), "--to", (T0 + timedelta(minutes=10)).isoformat(),
                   "--schema", replay_schema, "--run", run, "--json", str(out)], env)
    worker_log = tmp_path / "replay" / run / "worker.log"
    log_text = worker_log.read_text(errors="replace") if worker_log.exists() else ""
    assert r.returncode == 0, r.stderr[-3000:] + log_text[-3000:]
    assert "AuthorizationFailed" not in log_text and "not authorized" not in log_text, log_text[-3000:]
    assert f"replay {run}: {len(readings)} readings, {len(hotline)} hotline events" in r.stdout
    live = await live_partitions(kafka_bootstrap)
    workers = min(os.cpu_count() or 1, live)
    assert f"({live} partitions, {workers} worker{'s' if workers > 1 else ''})" in r.stderr, \
        "the live count, described as replay; one worker per core"
    diff = json.loads(out.read_text())
    assert f"diff: {tmp_path / 'replay' / run / 'diff.json'}" in r.stdout
    assert diff["summary"]["recorded"] == 0 and diff["summary"]["replayed"] == len(diff["new"]) >= len(SENSORS)
    pm = {a["subject"] for a in diff["new"] if a["rule"].endswith(":pm25")}
    assert pm == set(SENSORS), diff["new"]
    assert run not in await _wait_topics_gone(kafka_bootstrap, run), "removed as replay"
    assert f"citybrain-replay-{run}" not in await _groups(kafka_bootstrap), "its worker's group removed as replay"


async def _groups(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {g[0] for g in await admin.list_consumer_groups()}
    finally:
        await admin.close()


async def _wait_topics_gone(bootstrap: str, run: str, timeout: float = 60) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    topics = await list_replay_topics(bootstrap)
    while run in topics and time.monotonic() < deadline:
        await asyncio.sleep(1)
        topics = await list_replay_topics(bootstrap)
    return topics


@pytest.mark.parametrize("args, says", [
    (["--from", "yesterday", "--to", "2026-07-01T00:00:00Z"], "not an ISO 8601 time"),
    (["--from", "2026-07-01T08:00:00", "--to", "2026-07-01T09:00:00Z"], "has no time zone"),
    (["--from", "2026-07-01T09:00:00Z", "--to", "2026-07-01T08:00:00Z"], "is not before"),
    (["--from", "2026-07-01T08:00:00Z", "--to", "2026-07-01T09:00:00Z", "--speed", "fast"], "speed"),
    (["--from", "2026-07-01T08:00:00Z"], "needs --from and --to"),
    (["--from", "2026-07-01T08:00:00Z", "--to", "2026-07-01T09:00:00Z", "--rules", "/nonexistent.yaml"],
     "does not exist"),
    (["--clean", "../etc"], "must match"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_arguments_get_one_line_and_exit_2(args: list[str], says: str) -> None:
    r = citybrain(["replay", *args], dict(os.environ), timeout=120)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_bench_replay_quick_runs_the_whole_path() -> None:
    """The benchmark's harness works (its figures come from full runs, not from here)."""
    try:
        out = subprocess.run([sys.executable, "-m", "bench.replay", "--quick"], cwd=ROOT, capture_output=True,
                             text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"bench.replay --quick hung: {exc.stderr!r}") from exc
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["bench"] == "replay" and r["readings"] > 4000
    med = r["median"]
    assert med["readings"] == r["readings"] and med["alerts"] > 0
    assert med["published_per_s"] > 0 and med["detected_per_s"] > 0 and med["total_s"] >= med["detect_s"]
    # the rate from the first record leaves the set-up out: the workers were ready before detection ended
    assert 0 < med["ready_s"] < med["detect_s"] and med["detected_per_s_after_start"] > med["detected_per_s"]
