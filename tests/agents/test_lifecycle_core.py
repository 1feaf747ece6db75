"""LifecycleCore (pure): the due-time index ticks only what is due, once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from schemas import Alert, AlertStatus, Evidence, Location, Severity
from streams.lifecycle import Lifecycle
from streams.lifecycle_agent import LifecycleCore
from streams.routing import load_rules

T0 = datetime(2026, 7, 20, 8, 0, tzinfo=UTC)


def alert(i: int, severity: Severity = Severity.III) -> bytes:
    return Alert(
        alert_id=f"a-{i}", rule="water_level", subject=f"wl-{i}", category="water", sensor_type="water_level",
        severity=severity, status=AlertStatus.DISPATCHED, title="水位预警",
        location=Location(district="朝阳区", street="望京街道", lat=39.99, lon=116.47),
        first_seen=T0, last_seen=T0, count=1, revision=1,
        evidence=Evidence(detector="water_level", detector_version="1.0.0", statistic="median", value=3.2,
                          threshold=3.0, window_start=T0, window_end=T0),
    ).to_json()  # fmt: skip


class CountingStore(dict[bytes, bytes]):
    """Counts reads, to show a tick does not scan every alert."""

    reads = 0

    def get(self, key: bytes, default: object = None) -> object:  # type: ignore[override]
        self.reads += 1
        return super().get(key, default)


def test_tick_touches_only_due_alerts_and_each_once() -> None:
    store = CountingStore()
    core = LifecycleCore(Lifecycle(load_rules()), store)
    for i in range(50):  # 49 red alerts (5 min to ack) and one yellow (30 min)
        sev = Severity.III if i == 0 else Severity.I
        out, body = core.apply("detected", f"a-{i}".encode(), alert(i, sev), T0 + timedelta(minutes=i), i % 4)
        assert body is not None and len(out.alerts) == 1
    store.reads = 0
    # at T0 + 4 min only alert 1's reminder (75 % of 5 min after T0+1) and alert 0's nothing are due
    ticked = core.tick(T0 + timedelta(minutes=4, seconds=46))
    assert [k for k, *_ in ticked] == [b"a-1"]
    assert store.reads == 1, "only the due alert was read"
    assert core.tick(T0 + timedelta(minutes=4, seconds=46)) == [], "nothing twice at the same time"
    # a late tick escalates every overdue red alert, one rung each, and publishes them
    ticked = core.tick(T0 + timedelta(minutes=8))
    keys = {k for k, _, out, _ in ticked if out.alerts}
    assert keys == {b"a-1", b"a-2", b"a-3"}, "acknowledge-by T0+6, +7, +8 min passed"
    st = orjson.loads(store[b"a-1"])
    assert st["timers"]["rung"] == 2 and st["p"] == 1


def test_index_rebuilt_from_the_store_and_ownership_respected() -> None:
    store: dict[bytes, bytes] = {}
    core = LifecycleCore(Lifecycle(load_rules()), store)
    core.apply("detected", b"a-0", alert(0), T0, 2)
    fresh = LifecycleCore(Lifecycle(load_rules()), store)  # a restarted worker after recovery
    assert fresh.next_due() is None
    assert fresh.rebuild_index() == 1
    assert fresh.next_due() == core.next_due() == T0 + timedelta(seconds=0.75 * 30 * 60)
    assert fresh.tick(T0 + timedelta(hours=1), owned=lambda p: p != 2) == [], "partition 2 is not ours"
    assert fresh.next_due() is None, "and it left the index (recovery re-adds it if it comes back)"


def test_finished_alert_dropped_after_its_retention_only() -> None:
    store: dict[bytes, bytes] = {}
    core = LifecycleCore(Lifecycle(load_rules()), store, retention_s=3600)
    core.apply("detected", b"a-0", alert(0), T0, 1)
    cleared = orjson.loads(alert(0))
    cleared.update(status="cleared", revision=2, last_seen=(T0 + timedelta(minutes=5)).isoformat())
    out, body = core.apply("detected", b"a-0", orjson.dumps(cleared), T0 + timedelta(minutes=5), 1)
    assert body is not None and out.alerts[0].status is AlertStatus.CLEARED
    assert core.next_due() == T0 + timedelta(minutes=65), "a cleared alert has no SLA timer, only its expiry"
    assert core.tick(T0 + timedelta(minutes=64)) == []
    assert b"a-0" in store
    (dropped,) = core.tick(T0 + timedelta(minutes=65))
    assert dropped[0] == b"a-0" and dropped[3] is None and b"a-0" not in store


def cleared_at(i: int, minutes: float) -> bytes:
    body = orjson.loads(alert(i))
    body.update(status="cleared", revision=2, last_seen=(T0 + timedelta(minutes=minutes)).isoformat())
    return orjson.dumps(body)


def test_a_record_from_a_partition_that_runs_ahead_fires_only_its_own_alerts_timers() -> None:
    """A replay (streams.markers): alert a-0 is cleared at T0+20 min, before its
    acknowledge-by at T0+30; a-1's record at T0+40 min, from a partition that
    ran ahead, arrives before that clear. Firing every due timer at a record's
    time escalated a-0 (the bug); firing only the record's own alert's timers,
    and the rest once the safe time is past them, does not."""
    def run(own_only: bool) -> dict[str, Any]:
        store: dict[bytes, bytes] = {}
        core = LifecycleCore(Lifecycle(load_rules()), store)
        core.apply("detected", b"a-0", alert(0), T0, 0)
        ahead = T0 + timedelta(minutes=40)
        core.tick_own(b"a-1", ahead) if own_only else core.tick(ahead)
        core.apply("detected", b"a-1", alert(1), ahead, 1)
        core.apply("detected", b"a-0", cleared_at(0, 20), T0 + timedelta(minutes=20), 0)
        core.tick(T0 + timedelta(minutes=45), at_due=own_only)  # the safe time, once every partition is past
        st: dict[str, Any] = orjson.loads(store[b"a-0"])
        return st

    assert run(own_only=False)["timers"]["rung"] == 1, "the old way: escalated before its clear arrived"
    st = run(own_only=True)
    assert st["status"] == "cleared"
    assert st["timers"]["rung"] == 0 and not st["timers"]["escalations"], "as live: cleared before its deadline"


def test_tick_own_fires_the_alerts_due_timers_before_its_record_and_no_others() -> None:
    store: dict[bytes, bytes] = {}
    core = LifecycleCore(Lifecycle(load_rules()), store)
    core.apply("detected", b"a-0", alert(0, Severity.I), T0, 0)  # red: acknowledge within 5 min
    core.apply("detected", b"a-1", alert(1, Severity.I), T0, 1)
    fired = core.tick_own(b"a-0", T0 + timedelta(minutes=6))
    assert {k for k, *_ in fired} == {b"a-0"}
    assert orjson.loads(store[b"a-0"])["timers"]["rung"] == 2, "escalated at its deadline, T0+5 min"
    assert orjson.loads(store[b"a-1"])["timers"]["rung"] == 1, "another alert's timer waits for the safe time"
    assert core.tick_own(b"a-0", T0 + timedelta(minutes=6)) == [], "nothing twice"
    assert {k for k, *_ in core.tick(T0 + timedelta(minutes=6), at_due=True)} == {b"a-1"}


def test_at_due_fires_each_timer_at_its_own_deadline_however_late_the_tick() -> None:
    """A replay's safe time may jump far past several deadlines of one alert:
    each fires, in order, dated at its deadline, as a live tick every 30 s would."""
    end = T0 + timedelta(hours=4)

    def escalations(ticks: list[datetime], at_due: bool) -> list[str]:
        store: dict[bytes, bytes] = {}
        core = LifecycleCore(Lifecycle(load_rules()), store)
        core.apply("detected", b"a-0", alert(0), T0, 0)  # yellow: from the street up
        for t in ticks:
            core.tick(t, at_due=at_due)
        return [e["at"] for e in orjson.loads(store[b"a-0"])["timers"]["escalations"]]

    every_30_s = escalations([T0 + timedelta(seconds=30 * i) for i in range(1, 4 * 120 + 1)], at_due=False)
    assert len(every_30_s) >= 2
    assert escalations([end], at_due=True) == every_30_s
    assert len(escalations([end], at_due=False)) == 1, "the live tick: one rung per call"
