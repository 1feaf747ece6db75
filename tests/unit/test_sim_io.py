"""The simulator's outputs: files, MQTT pacing and batching (with a fake
client, no broker), the CLI."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import mean

import orjson
import pytest
from pydantic import ValidationError

from citybrain.cli import main
from citybrain.errors import ConfigError
from schemas import HotlineEvent, SensorReading
from sim import Call, Reading, TicketUpdate, build_city, generate, plan, simulate, validated
from sim.cli import live_start, parse_duration
from sim.mqtt import PublishSettings, parse_url, publish_events
from sim.output import Progress, write_events, write_meta

JULY = datetime(2025, 7, 2, 0, 0, tzinfo=UTC)


class FakePublisher:
    def __init__(self, **over: object) -> None:
        self.settings = PublishSettings(mqtt_url="mqtt://u:p@127.0.0.1:1", **over)  # type: ignore[arg-type]
        self.sent: list[tuple[str, bytes | str]] = []
        self.acked = 0

    def publish(self, topic: str, payload: bytes | str) -> None:
        self.sent.append((topic, payload))
        self.acked += 1

    def drain(self, timeout_s: float = 30.0) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        self.slept += s


def small_run(minutes: int = 10) -> tuple:
    city = build_city(seed=2, sensors=30, districts=["chaoyang"])
    sc = plan(city, JULY, timedelta(minutes=minutes), seed=2, calls_per_hour=60)
    return city, sc


def test_accelerated_publishing_follows_event_time_and_carries_sent_at() -> None:
    city, sc = small_run(10)
    pub, clock = FakePublisher(topic_root="t-sim-unit"), FakeClock()
    stats = publish_events(generate(city, sc), pub, sc.start, speed=60, monotonic=clock.monotonic,  # type: ignore[arg-type]
                           sleep=clock.sleep, now_iso=lambda: "2025-07-02T00:00:00.5+00:00")
    assert 9.0 < clock.slept <= 10.0  # ten event minutes at 60x: ten wall seconds
    assert stats.readings > 100 and stats.messages == len(pub.sent) == stats.readings + stats.calls
    for topic, payload in pub.sent:
        d = orjson.loads(payload)
        if topic.startswith("t-sim-unit/sensors/"):
            assert topic == f"t-sim-unit/sensors/{d['sensor_id']}"
            assert SensorReading.model_validate(d).sent_at is not None
        else:
            assert topic == f"t-sim-unit/hotline/{d['ticket_id']}"
            assert d.pop("caller_phone") and d.pop("caller_name")
            HotlineEvent.model_validate(d)


def test_as_fast_as_possible_batches_on_the_batch_topic() -> None:
    city, sc = small_run(5)
    pub, clock = FakePublisher(publisher="bench1"), FakeClock()
    stats = publish_events(generate(city, sc), pub, sc.start, speed=None, batch=50,  # type: ignore[arg-type]
                           monotonic=clock.monotonic, sleep=clock.sleep)
    assert clock.slept == 0
    batches = [orjson.loads(p) for t, p in pub.sent if t == "city/sensors/batch/bench1"]
    assert batches and max(len(b["readings"]) for b in batches) == 50
    assert sum(len(b["readings"]) for b in batches) == stats.readings


def test_files_labels_and_registry(tmp_path: Path) -> None:
    city, sc = small_run(30)
    write_meta(city, sc, tmp_path)
    counts = write_events(generate(city, sc), tmp_path / "csv", fmt="csv")
    write_events(generate(city, sc), tmp_path, fmt="jsonl")
    lines = (tmp_path / "readings.jsonl").read_text().splitlines()
    assert len(lines) == counts["readings"] > 0
    SensorReading.model_validate_json(lines[0])
    rows = list(csv.DictReader((tmp_path / "csv" / "readings.csv").open(encoding="utf-8")))
    assert len(rows) == counts["readings"] and rows[0]["event_id"] == orjson.loads(lines[0])["event_id"]
    assert len(json.loads((tmp_path / "devices.json").read_text())) == 30
    assert json.loads((tmp_path / "scenario.json").read_text())["sensors"] == 30
    assert json.loads((tmp_path / "labels.json").read_text()) == []
    # the connectors map LoRaWAN uplinks to sensors with this very file
    from connectors.registry import DeviceRegistry

    assert len(DeviceRegistry.from_file(tmp_path / "devices.json").entries) == 30


def test_progress_bar_draws_on_its_stream() -> None:
    import io

    buf, t = io.StringIO(), [0.0]
    bar = Progress(100, stream=buf, clock=lambda: t[0], every=1.0)
    bar.update(10, 5)  # too soon: not drawn
    t[0] = 2.0
    bar.update(50, 1000)
    bar.close(100, 2000)
    assert "50%" in buf.getvalue() and "100%" in buf.getvalue() and buf.getvalue().endswith("\n")


def test_cli_export_and_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc = main(["sim", "export", str(out), "--sensors", "40", "--districts", "fengtai", "--duration", "3h",
               "--incidents", "rainstorm", "--faults", "2", "--no-progress"])
    assert rc == 0
    labels = json.loads((out / "labels.json").read_text())
    assert [lb["kind"] for lb in labels] == ["rainstorm", "dropout", "stuck"]
    assert (out / "readings.jsonl").stat().st_size > 0
    assert main(["sim", "export", str(out), "--duration", "3 weeks"]) == 2
    assert main(["sim", "export", str(out), "--faults", "melt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("citybrain: error: unknown fault") and "bad duration" in err[-2]


def test_time_helpers() -> None:
    assert parse_duration("90s") == timedelta(seconds=90) and parse_duration("2d") == timedelta(days=2)
    with pytest.raises(ConfigError):
        parse_duration("soon")
    now = datetime(2025, 7, 2, 12, 0, 0, 700000, tzinfo=UTC)
    # accelerated: the last event time (start + duration) is reached when the wall clock gets there
    start = live_start(now, timedelta(hours=6), 60)
    assert start + timedelta(hours=6) <= now + timedelta(hours=6) / 60 and start.microsecond == 0
    assert live_start(now, timedelta(hours=1), None) == datetime(2025, 7, 2, 11, 0, tzinfo=UTC)
    b = parse_url("mqtt://publisher:s%40cret@127.0.0.1:1883")
    assert (b.host, b.port, b.username, b.password, b.tls) == ("127.0.0.1", 1883, "publisher", "s@cret", False)
    with pytest.raises(ConfigError):
        parse_url("http://x")


def test_reading_json_fast_path_equals_payload_and_validated_path() -> None:
    city, sc = small_run(3)
    for r in generate(city, sc):
        if isinstance(r, Reading):
            assert orjson.loads(r.json()) == r.payload()
    scenario, events = simulate(city, JULY, timedelta(hours=1), faults=["out_of_range"], seed=2)
    models = list(validated(events, skip_invalid=True))
    assert models and all(isinstance(m, SensorReading | HotlineEvent) for m in models)
    bad = scenario.labels[0]
    assert not any(isinstance(m, SensorReading) and m.sensor_id == bad.sensor_ids[0]
                   and bad.start <= m.ts.timestamp() < bad.end for m in models)
    with pytest.raises(ValidationError):
        list(validated(simulate(city, JULY, timedelta(hours=1), faults=["out_of_range"], seed=2)[1]))
    assert 0.3 < city.readings_per_second() < 30 * 0.11


def test_ticket_updates_follow_their_calls() -> None:
    city = build_city(seed=9, sensors=20, districts=["haidian"])
    sc = plan(city, JULY, timedelta(hours=48), seed=9, calls_per_hour=10, ticket_updates=True)
    events = list(generate(city, sc))
    assert [e.t for e in events] == sorted(e.t for e in events)
    created: dict[str, int] = {}
    history: dict[str, list[TicketUpdate]] = {}
    for e in events:
        if isinstance(e, Call):
            created[e.ticket_id] = e.t
        elif isinstance(e, TicketUpdate):
            assert e.ticket_id in created and e.t > created[e.ticket_id]
            history.setdefault(e.ticket_id, []).append(e)
            m = e.model()
            assert m.kind == e.kind and m.caller_ref is None and "caller_phone" not in e.payload()
    assert len(history) > 0.8 * len(created)
    flows = {tuple(u.status.value if u.kind == "status" else "feedback" for u in h) for h in history.values()}
    assert flows <= {("in_progress",), ("in_progress", "resolved"), ("in_progress", "resolved", "feedback")}
    scores = [u.satisfaction for h in history.values() for u in h if u.satisfaction is not None]
    assert scores and set(scores) <= {1, 2, 3, 4, 5} and mean(scores) > 3.5
    assert len({u.event_id for h in history.values() for u in h}) == sum(len(h) for h in history.values())
    # off by default: same calls, no updates
    plain = list(generate(city, plan(city, JULY, timedelta(hours=48), seed=9, calls_per_hour=10)))
    assert not any(isinstance(e, TicketUpdate) for e in plain)
    assert [c.ticket_id for c in plain if isinstance(c, Call)] == list(created)
