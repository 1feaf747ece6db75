"""The detect agent under Faust's test_context: readings in, detection
revisions and dead letters out, per-sensor state in the changelog table."""

from __future__ import annotations

from datetime import timedelta

import orjson

from schemas import SensorReading
from tests.agents.conftest import Worker


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
