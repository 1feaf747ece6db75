"""The detect stage's silence sweep stores a sensor's state only when the tick
signalled something (streams/detect_agent.py `_tick`): that is right only if a
tick that signals nothing leaves a sensor's state exactly as it was. Held to
that here over a simulated city (every sensor type, a rainstorm, faults)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from schemas import SensorReading
from sim import Reading, build_city, generate, plan
from streams.pipeline import ReadingProcessor
from streams.routing import load_rules

START = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def _states() -> tuple[ReadingProcessor, dict[str, dict], datetime]:
    city = build_city(3, sensors=120)
    scenario = plan(city, START, timedelta(minutes=40), incidents=["rainstorm"], seed=3, calls_per_hour=0)
    proc = ReadingProcessor(load_rules())
    states: dict[str, dict] = {}
    last = START
    for ev in generate(city, scenario):
        if isinstance(ev, Reading):
            r = SensorReading.model_validate_json(ev.model().to_json())
            states[r.sensor_id], _ = proc.step(states.get(r.sensor_id), r)
            last = max(last, r.ts)
    return proc, states, last


def test_a_tick_without_signals_leaves_every_sensor_state_unchanged() -> None:
    proc, states, last = _states()
    assert len(states) > 50
    quiet = 0
    for watermark in (last - timedelta(minutes=5), last, last + timedelta(seconds=30)):
        for sid, st in states.items():
            before = orjson.dumps(st)
            new, alerts = proc.tick(st, watermark)
            if not alerts:
                quiet += 1
                assert orjson.dumps(new) == before, f"{sid}: a tick without signals changed the state"
    assert quiet > 100


def test_silence_signals_once_and_then_the_tick_is_quiet_again() -> None:
    proc, states, last = _states()
    late = last + timedelta(hours=3)  # past every sensor type's silence limit
    for sid, st in states.items():
        st, alerts = proc.tick(st, late)
        assert [a.rule for a in alerts] == ["health:silence"], sid
        before = orjson.dumps(st)
        st, again = proc.tick(st, late + timedelta(minutes=10))
        assert again == [] and orjson.dumps(st) == before, f"{sid}: silence signalled twice or the state moved"
