"""Generic statistical detection, sensor health, hotline bursts, lateness."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from citybrain.errors import RejectedPayload
from schemas import HotlineEvent, SensorReading
from streams.detectors.base import SENSOR_HEALTH, LateEvent
from streams.detectors.engine import DetectionEngine
from streams.detectors.health import SensorHealth
from streams.detectors.hotline import HotlineBurst, poisson_sf
from streams.detectors.stats import RateOfChange, RobustSeasonal

T0 = datetime(2025, 7, 1, 0, 0, tzinfo=UTC)
LOC = {"district": "朝阳区", "street": "望京街道", "grid": "g-1", "lat": 39.99, "lon": 116.47}


def rd(value: float, seconds: float, ty: str = "traffic_flow", unit: str = "veh/h", sid: str = "t-1") -> SensorReading:
    return SensorReading.model_validate({
        "event_id": f"e-{seconds}", "sensor_id": sid, "sensor_type": ty, "value": value, "unit": unit,
        "ts": (T0 + timedelta(seconds=seconds)).isoformat(), "location": LOC,
    })  # fmt: skip


def run(det: RobustSeasonal | RateOfChange, xs: list[float], dt: float = 300.0) -> list[Any]:
    st = None
    out = []
    for i, x in enumerate(xs):
        st, r = det.update(st, T0.timestamp() + i * dt, x)
        out.append(r)
    return out


def test_scores_on_pure_gaussian_noise_are_calibrated() -> None:
    rng = random.Random(7)
    res = run(RobustSeasonal(), [rng.gauss(100.0, 5.0) for _ in range(30_000)], dt=60)[500:]
    scores = [r.score for r in res]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert 0.006 <= sum(s > 0.99 for s in scores) / len(scores) <= 0.015
    assert 0.07 <= sum(s > 0.9 for s in scores) / len(scores) <= 0.13
    assert sum(r.event == "open" for r in res) <= 1


def test_scale_free_any_unit() -> None:
    rng = random.Random(8)
    base = [rng.gauss(0, 1) for _ in range(3000)]
    a = [r.score for r in run(RobustSeasonal(), base)]
    b = [r.score for r in run(RobustSeasonal(), [1e-6 * x + 3e-5 for x in base])]
    c = [r.score for r in run(RobustSeasonal(), [1e6 * x - 7e6 for x in base])]
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-3
    assert max(abs(x - y) for x, y in zip(a, c, strict=True)) < 1e-3


def test_extreme_magnitudes_and_jumps_across_them_neither_raise_nor_lose_calibration() -> None:
    """The stored state is quantised as round(v * 10**k) / 10**k, k from the
    series' own spread: at 1e-300 or 1e300, and across a jump between the two,
    no product overflows, every score stays in [0, 1], and the state stays
    short JSON (the quantised numbers print as short decimals)."""
    rng = random.Random(9)
    for xs in ([1e-300 * (1 + 0.01 * rng.gauss(0, 1)) for _ in range(500)],
               [1e300 * (1 + 0.01 * rng.gauss(0, 1)) for _ in range(500)],
               [1.0 + rng.gauss(0, 0.1) for _ in range(300)] + [1e300] * 5 + [1.0] * 200):  # fmt: skip
        st = None
        for i, x in enumerate(xs):
            st, r = RobustSeasonal().update(st, T0.timestamp() + 60 * i, x)
            assert 0.0 <= r.score <= 1.0 and math.isfinite(r.z)
        assert st is not None and all(math.isfinite(v) for v in st["M"] + st["S"] + [st["f"], st["b"], st["sb"]])
    st = None
    for i, x in enumerate(daily(i, rng) for i in range(2000)):
        st, _ = RobustSeasonal().update(st, T0.timestamp() + 300 * i, x)
    assert len(json.dumps(st)) < 1000
    assert all(len(repr(v)) <= 12 for v in st["M"] + st["S"]), "profile values print short (1e-5 of the spread)"


def daily(i: int, rng: random.Random, dt: float = 300.0) -> float:
    return 50.0 + 20.0 * math.sin(2 * math.pi * i * dt / 86400) + rng.gauss(0, 1.5)


def test_daily_rhythm_is_learned_then_a_step_alerts() -> None:
    rng = random.Random(9)
    n = 288 * 10
    xs = [daily(i, rng) for i in range(n)]
    res = run(RobustSeasonal(), xs)
    assert sum(r.event == "open" for r in res[288 * 2:]) <= 1
    assert res[-1].model == "seasonal"
    # a step of 10 (~7 sigma of the noise) at a time the rhythm alone would not explain
    det = RobustSeasonal()
    st = None
    opened = None
    for i in range(n + 100):
        x = daily(i, rng) + (10.0 if i >= n else 0.0)
        st, r = det.update(st, T0.timestamp() + i * 300.0, x)
        if r.event == "open" and i >= n:
            opened = i - n
            break
    assert opened is not None and opened <= 3


def test_hysteresis_no_flapping_at_the_edge() -> None:
    rng = random.Random(10)
    det = RobustSeasonal()
    xs = [rng.gauss(0, 1) for _ in range(500)]
    # then an excursion that hovers around the opening score: z alternating ~3.6 / ~4.2
    xs += [3.6 + (0.6 if i % 2 else 0.0) + rng.gauss(0, 0.05) for i in range(60)]
    xs += [rng.gauss(0, 1) for _ in range(200)]
    res = run(det, xs)
    events = [r.event for r in res if r.event]
    assert events.count("open") <= 1 and events.count("clear") <= 1


def test_single_spike_and_rate_of_change() -> None:
    rng = random.Random(11)
    xs = [rng.gauss(20, 0.5) for _ in range(400)]
    xs[300] = 35.0
    res = run(RobustSeasonal(), xs)
    assert res[300].event == "open" and res[300].score > 0.999999
    roc = run(RateOfChange(), xs)
    assert roc[300].event == "open"
    assert sum(r.event == "open" for r in roc) == 1


def test_irregular_intervals_work() -> None:
    rng = random.Random(12)
    st = None
    det = RobustSeasonal()
    t = T0.timestamp()
    opens = 0
    for i in range(3000):
        t += rng.choice([10, 60, 61, 300, 900])
        st, r = det.update(st, t, rng.gauss(5, 1) + (15 if i == 2500 else 0))
        opens += r.event == "open"
        if i == 2500:
            assert r.alert
    assert opens <= 2
    assert len(json.dumps(st)) <= 2048


def test_stuck_values_are_sensor_health_not_incidents() -> None:
    eng = DetectionEngine()
    rng = random.Random(13)
    states = None
    sigs = []
    for i in range(500):
        v = round(rng.gauss(1000, 50)) if i < 200 else 1234.0
        states, s = eng.step_reading(states, rd(v, 60 * i))
        sigs += s
    stuck = [s for s in sigs if s.rule == "health:stuck"]
    assert stuck and stuck[0].kind == "open" and stuck[0].category == SENSOR_HEALTH
    assert stuck[0].episode_start == T0 + timedelta(seconds=60 * 200)
    # after the stuck episode opened no statistical signal opens on the flatline
    t_open = stuck[0].ts
    assert not [s for s in sigs if s.rule.startswith("robust_seasonal") and s.kind == "open" and s.ts > t_open]


def test_zero_rain_is_not_stuck() -> None:
    h = SensorHealth()
    st = None
    for i in range(500):
        st, sig = h.step(st, rd(0.0, 60 * i, "rainfall", "mm/h", "r-1"))
        assert sig == []


def test_out_of_plausible_range_is_health() -> None:
    eng = DetectionEngine()
    eng.health.ranges["traffic_flow"] = (0.0, 5000.0)
    states, sig = eng.step_reading(None, rd(6000.0, 0))
    assert [(s.rule, s.category) for s in sig] == [("health:range", SENSOR_HEALTH)]
    states, sig = eng.step_reading(states, rd(100.0, 60))
    assert [s.kind for s in sig] == ["clear"]


def test_silence_by_event_time_tick() -> None:
    eng = DetectionEngine()
    states = None
    for i in range(30):
        states, _ = eng.step_reading(states, rd(100.0 + i % 7, 60 * i))
    last = T0 + timedelta(seconds=60 * 29)
    # watermark only 4 min on: not silent yet (5 x 60 s expected interval)
    states, sig = eng.tick(states, last + timedelta(minutes=4))
    assert sig == []
    states, sig = eng.tick(states, last + timedelta(minutes=6))
    assert [(s.rule, s.kind, s.category) for s in sig] == [("health:silence", "open", SENSOR_HEALTH)]
    assert sig[0].episode_start == last
    states, sig = eng.tick(states, last + timedelta(minutes=30))
    assert sig == []  # one open signal, not one per tick
    states, sig = eng.step_reading(states, rd(100.0, 60 * 29 + 3600))
    assert [(s.rule, s.kind) for s in sig] == [("health:silence", "clear")]


def _replay(readings: list[SensorReading], tick_every: int | None) -> list[tuple[Any, ...]]:
    """Runs the processor as the worker does; ticks (wall-clock driven in the
    worker) every `tick_every` readings with the event-time watermark."""
    from streams.pipeline import ReadingProcessor
    from streams.routing import DEFAULT_RULES, load_rules

    proc = ReadingProcessor(load_rules(DEFAULT_RULES))
    states: dict[str, Any] = {}
    out = []
    high = T0
    for n, r in enumerate(readings):
        states[r.sensor_id], alerts = proc.step(states.get(r.sensor_id), r)
        out.extend(alerts)
        high = max(high, r.ts)
        if tick_every and n % tick_every == 0:
            for sid in sorted(states):
                states[sid], alerts = proc.tick(states[sid], high - timedelta(seconds=600))
                out.extend(alerts)
    return sorted(
        (a.alert_id, a.revision, a.status.value, a.severity.value, a.first_seen, a.last_seen, a.title)
        for a in out
    )


def test_silence_alerts_do_not_depend_on_when_the_tick_runs() -> None:
    """Replay determinism: live ticks often, a full-speed replay rarely or
    never between two readings; both must give the same silence alerts."""
    readings = []
    for i in range(400):
        readings.append(rd(100.0 + i % 7, 60 * i, sid="steady"))
        if not 100 <= i < 160 and not 250 <= i < 262:  # one hour and one 12-minute gap
            readings.append(rd(50.0 + i % 5, 60 * i + 7, sid="gappy"))
    often, rarely, never = _replay(readings, 1), _replay(readings, 97), _replay(readings, None)
    silence = [a for a in often if "silent" in a[6] or "reporting again" in a[6]]
    assert len({a[0] for a in silence}) == 2 and len(silence) == 4  # two gaps: open + clear each
    assert often == rarely == never


def test_late_readings_are_rejected_with_a_reason() -> None:
    eng = DetectionEngine()
    states, _ = eng.step_reading(None, rd(1.0, 3600))
    states, _ = eng.step_reading(states, rd(1.0, 3600 - 300))  # within the 600 s lateness
    with pytest.raises(LateEvent) as exc:
        eng.step_reading(states, rd(1.0, 3600 - 900))
    assert isinstance(exc.value, RejectedPayload) and exc.value.reason == "late"


def call(i: int, minutes: float, category: str = "flooding", street: str = "望京街道") -> HotlineEvent:
    return HotlineEvent.model_validate({
        "event_id": f"h-{i}", "ticket_id": f"t-{i}", "kind": "created", "category": category,
        "ts": (T0 + timedelta(minutes=minutes)).isoformat(), "location": {**LOC, "street": street},
    })  # fmt: skip


def test_poisson_tail() -> None:
    assert poisson_sf(0, 3.0) == 1.0
    assert math.isclose(poisson_sf(1, 2.0), 1 - math.exp(-2.0))
    assert poisson_sf(10, 0.5) < 1e-8


def test_hotline_burst_raises_an_early_warning() -> None:
    eng = DetectionEngine()
    states = None
    sigs = []
    rng = random.Random(14)
    i = 0
    # two days of the usual trickle: about one call every 8 hours
    for m in sorted(rng.uniform(0, 2 * 1440) for _ in range(6)):
        states, s = eng.step_hotline(states, call(i, m))
        sigs += s
        i += 1
    assert sigs == []
    # then 8 calls within 40 minutes
    for k in range(8):
        states, s = eng.step_hotline(states, call(i, 2 * 1440 + 60 + 5 * k))
        sigs += s
        i += 1
    assert [s.kind for s in sigs][:1] == ["open"]
    assert sigs[0].rule == "hotline_burst:flooding" and sigs[0].category == "water"
    assert sigs[0].subject == "flooding:望京街道"
    # the calls stop: the event-time tick clears it
    states, s = eng.tick(states, T0 + timedelta(minutes=2 * 1440 + 60 + 200))
    assert [x.kind for x in s] == ["clear"] and s[0].episode_start == sigs[0].episode_start
    assert len(json.dumps(states)) < 1024


def test_a_burst_clears_at_the_same_bucket_boundary_however_the_ticks_ran() -> None:
    """Live ticks every few seconds, a replay at its markers, a late worker in one
    jump: the clear is dated where the window fell, and the usual level learned
    afterwards is the same."""
    def burst() -> tuple[DetectionEngine, Any, datetime]:
        eng = DetectionEngine()
        states = None
        rng = random.Random(14)
        calls = sorted(rng.uniform(0, 2 * 1440) for _ in range(6)) + [2 * 1440 + 60 + 5 * k for k in range(8)]
        for i, m in enumerate(calls):
            states, _ = eng.step_hotline(states, call(i, m))
        return eng, states, T0 + timedelta(minutes=2 * 1440 + 60 + 35)

    end = timedelta(minutes=300)
    outcomes = []
    for every in (timedelta(seconds=10), timedelta(minutes=1), timedelta(minutes=7), end):
        eng, states, last = burst()
        cleared = []
        t = last
        while t < last + end:
            t = min(t + every, last + end)
            states, s = eng.tick(states, t)
            cleared += [x.ts for x in s if x.kind == "clear"]
        outcomes.append((cleared, states))
    first, state = outcomes[0]
    assert len(first) == 1 and first[0].timestamp() % (15 * 60) == 0, "at a bucket boundary"
    for cleared, other in outcomes[1:]:
        assert cleared == first, "the same clear time whatever the tick interval"
        lam = other["hotline_burst"].pop("lam")
        assert lam == pytest.approx(state["hotline_burst"]["lam"], rel=1e-12), "the same usual level learned"
        assert other == {**state, "hotline_burst": {k: v for k, v in state["hotline_burst"].items() if k != "lam"}}


def test_hotline_usual_volume_is_not_a_burst() -> None:
    det = HotlineBurst()
    st = None
    rng = random.Random(15)
    t = 0.0
    opens = 0
    for i in range(3000):  # a busy street: ~3 calls an hour, learned over weeks
        t += rng.expovariate(3.0 / 60)
        st, s = det.step(st, call(i, t, "noise"))
        opens += sum(x.kind == "open" for x in s)
    assert opens <= 2


def test_a_short_spike_is_sensor_health_a_lasting_jump_an_incident() -> None:
    eng = DetectionEngine()
    rng = random.Random(16)
    states = None
    sigs = []
    for i in range(600):
        v = rng.gauss(1500, 60)
        if i == 300:
            v = 4000.0  # one reading far off, then back: a spike
        if i >= 450:
            v -= 1200.0  # a lasting drop: an incident (jam)
        states, s = eng.step_reading(states, rd(max(v, 0.0), 60 * i))
        sigs += s
    spikes = [s for s in sigs if s.rule == "health:spike"]
    assert [s.kind for s in spikes] == ["open", "clear"] and spikes[0].category == SENSOR_HEALTH
    assert spikes[0].episode_start == T0 + timedelta(seconds=60 * 300)
    incidents = [s for s in sigs if s.category != SENSOR_HEALTH and s.kind == "open"]
    assert incidents and all(s.ts >= T0 + timedelta(seconds=60 * 450) for s in incidents)
    assert incidents[0].ts <= T0 + timedelta(seconds=60 * 455)  # confirmed after 4 readings
