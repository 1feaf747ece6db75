"""LifecycleCore (pure): the due-time index ticks only what is due, once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
