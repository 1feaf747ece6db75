"""The detect agent under Faust's test_context: readings in, detection
revisions and dead letters out, per-sensor state in the changelog table."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from schemas import SensorReading
from streams import markers
from tests.agents.conftest import Worker, make_worker


def level(w: Worker, i: int, value: float, sensor: str = "wl-agent-1", minutes: float | None = None) -> bytes:
    ts = w.clock.now + timedelta(minutes=i if minutes is None else minutes)
    return SensorReading.model_validate({
        "event_id": f"{sensor}-{i}", "sensor_id": sensor, "sensor_type": "water_level", "value": value, "unit": "m",
        "ts": ts.isoformat(), "location": {"district": "朝阳区", "street": "望京街道", "lat": 39.99, "lon": 116.47},
    }).to_json()  # fmt: skip


async def test_rising_water_opens_one_alert_and_state_is_kept_per_sensor(worker: Worker) -> None:
    h = worker.ctx.extras["detect"]
    async with h.agent.test_context() as agent:
        for i, v in enumerate([1.0, 1.1, 3.2, 3.3, 3.3, 3.4]):  # default site: warning level 3.0 m
            await agent.put(value=level(worker, i, v), key=b"wl-agent-1")
    opened = [a for a in worker.rec.detected if a.rule == "water_level:water_level"]
    assert opened, [a.rule for a in worker.rec.detected]
    assert len({a.alert_id for a in opened}) == 1, "a continuing condition updates one alert"
    assert opened[0].subject == "wl-agent-1" and opened[0].category == "water"
    assert "water" in opened[0].departments  # 水务局 owns water level (III: no one else yet)
    st = orjson.loads(h.table.data[b"wl-agent-1"])
    assert st["alerts"]["water_level:water_level"] and "det" in st
    assert worker.rec.dead == []
    # the table's changelog got the sensor's state, the latest record being what the table holds
    logged = [(p, v) for p, k, v in worker.rec.changelog if k == b"wl-agent-1"]
    assert logged and logged[-1][1] == h.table.data[b"wl-agent-1"]


async def test_malformed_and_late_readings_are_dead_lettered_not_lost(worker: Worker) -> None:
    h = worker.ctx.extras["detect"]
    async with h.agent.test_context() as agent:
        await agent.put(value=b'{"sensor_id": "x"}', key=b"x")  # not a SensorReading
        await agent.put(value=level(worker, 0, 1.0, minutes=60), key=b"wl-agent-1")
        await agent.put(value=level(worker, 1, 1.0, minutes=0), key=b"wl-agent-1")  # an hour behind: past lateness
        await agent.put(value=level(worker, 2, 1.0, minutes=61), key=b"wl-agent-1")  # the stream goes on
    assert [d[1] for d in worker.rec.dead] == ["invalid_reading", "late"]
    assert "behind" in worker.rec.dead[1][2]
    st = orjson.loads(h.table.data[b"wl-agent-1"])
    assert st["det"], "the readings before and after the bad ones were applied"


@pytest.fixture
def replay_worker(tmp_path: Path) -> Iterator[Worker]:
    yield from make_worker(tmp_path, clock="event", progress_markers=True)


@dataclass
class Forwarded:
    """What the stage sends to the detected topic, alerts and markers, in order."""

    sent: list[tuple[str, Any]] = field(default_factory=list)

    async def alert(self, alert: Any) -> None:
        self.sent.append(("alert", alert))

    async def send(self, key: bytes, value: bytes, partition: int, headers: Any, force: bool) -> None:
        self.sent.append(("marker", (partition, markers.decode(value))))


async def test_a_replay_marker_sweeps_for_silence_then_tells_every_partition(replay_worker: Worker) -> None:
    """Markers (streams.markers): after the engine's marker at T the stage opens
    every silence due by T minus the lateness, then tells each partition of the
    detected topic that no alert earlier than that follows; the final marker
    it forwards at T itself."""
    w = replay_worker
    out = Forwarded()
    w.ctx.publish_detected = out.alert  # type: ignore[method-assign]
    w.ctx.extras["detected_topic"] = out
    t0 = w.clock.now
    def msg(offset: int, value: bytes) -> SimpleNamespace:  # a fetched record, as the fast path hands them over
        return SimpleNamespace(topic="readings", partition=0, offset=offset, key=b"k", value=value)

    stage = w.ctx.extras["detect"].stage
    batch = [level(w, i, 1.0) for i in range(5)] + [level(w, 0, 1.0, sensor="wl-agent-2"),
                                                    markers.encode("engine", t0 + timedelta(minutes=30))]
    await stage.process([msg(i, v) for i, v in enumerate(batch)])
    await stage.process([msg(7, markers.encode("engine", t0 + timedelta(minutes=40), final=True)),
                         msg(8, b'{"marker":"soon","source":"engine"}')])
    kinds = [k for k, _ in out.sent]
    first_marker = kinds.index("marker")
    silences = [a for k, a in out.sent[:first_marker] if k == "alert" and a.rule == "health:silence"]
    assert {a.subject for a in silences} == {"wl-agent-1", "wl-agent-2"}, "opened before the marker went on"
    forwarded = [m for k, m in out.sent if k == "marker"]
    late = timedelta(seconds=w.ctx.settings.lateness_s)
    assert forwarded == [(q, ("detect:0", t0 + timedelta(minutes=30) - late, False)) for q in range(4)] + \
        [(q, ("detect:0", t0 + timedelta(minutes=40), True)) for q in range(4)]
    assert all(a.last_seen <= t0 + timedelta(minutes=30) - late for a in silences)
    assert [d[1] for d in w.rec.dead] == ["invalid_marker"], "a malformed marker is dead-lettered"
