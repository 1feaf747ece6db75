from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import AlertStatus, Evidence, HotlineEvent, Location, Severity
from streams.alerting import apply_signal
from streams.detectors.base import Signal
from streams.incidents import IncidentCorrelator, area_key
from streams.routing import load_rules

T0 = datetime(2025, 7, 20, 14, 0, tzinfo=UTC)
TABLE = load_rules()
WANGJING = Location(district="朝阳区", street="望京街道", lat=39.996, lon=116.47)
NEARBY = Location(district="朝阳区", street="望京街道", lat=40.001, lon=116.475)
FAR = Location(district="朝阳区", street="黑庄户地区", lat=39.83, lon=116.6)


def alert(sensor_type: str, category: str, subject: str, minutes: float, sev: Severity = Severity.II,
          loc: Location = WANGJING, kind: str = "open") -> Any:
    ts = T0 + timedelta(minutes=minutes)
    ev = Evidence(detector="d", detector_version="1", statistic="s", value=1, window_start=ts, window_end=ts)
    sig = Signal(kind, f"{sensor_type}-rule", subject, category, sensor_type, sev, ts, ts, loc, "t", ev)  # type: ignore[arg-type]
    return apply_signal(None, sig, TABLE)[1]


def ticket(tid: str, minutes: float, category: str = "flooding", loc: Location = NEARBY, status: str = "dispatched",
           urgency: str = "normal", kind: str = "created") -> HotlineEvent:
    return HotlineEvent(event_id=f"{tid}-{minutes}-{status}", ticket_id=tid, kind=kind, category=category,  # type: ignore[arg-type]
                        status=status, ts=T0 + timedelta(minutes=minutes), location=loc, urgency=urgency)  # type: ignore[arg-type]


def test_flood_complaints_and_water_alerts_form_one_incident() -> None:
    c = IncidentCorrelator()
    st: dict[str, Any] | None = None
    published = []
    items = [
        alert("rainfall", "water", "rain-1", 0, Severity.III),
        alert("water_level", "water", "wl-1", 10, Severity.II),
        ticket("t-1", 15),
        ticket("t-2", 18, urgency="urgent"),
        alert("traffic_speed", "traffic", "tr-1", 20, Severity.III, NEARBY),
        alert("noise", "noise", "ns-1", 21, Severity.III),  # unrelated
        ticket("t-3", 25, "gas_smell"),  # unrelated: a gas group of its own
    ]
    for x in items:
        assert area_key(x.location) == "chaoyang"
        st, out = c.step(st, x)
        published += out
    ids = {i.incident_id for i in published}
    assert len(ids) == 1
    last = published[-1]
    assert last.kind == "flood" and last.status == "open" and last.severity is Severity.II
    assert set(last.alert_ids) == {items[0].alert_id, items[1].alert_id, items[4].alert_id}
    assert set(last.ticket_ids) == {"t-1", "t-2"}
    assert [i.revision for i in published] == list(range(1, len(published) + 1))


def test_same_input_same_incident_id_and_redelivery_is_idempotent() -> None:
    def run() -> list[str]:
        c = IncidentCorrelator()
        st: dict[str, Any] | None = None
        out: list[str] = []
        for x in (alert("water_level", "water", "wl-1", 0), ticket("t-1", 5), ticket("t-1", 5)):
            st, inc = c.step(st, x)
            out += [i.to_json().decode() for i in inc]
        return out

    a = run()
    assert a == run() and len(a) == 1  # the redelivered ticket published nothing


def test_a_traffic_slowdown_alone_is_no_flood_and_far_items_do_not_join() -> None:
    c = IncidentCorrelator()
    st, out = c.step(None, alert("traffic_speed", "traffic", "tr-1", 0))
    st, out2 = c.step(st, alert("traffic_speed", "traffic", "tr-2", 1))
    assert out == out2 == [] and st["incidents"] == {}
    st, _ = c.step(st, alert("water_level", "water", "wl-1", 2))
    st, out = c.step(st, ticket("t-far", 3, loc=FAR))
    assert out == [] and len(st["incidents"]) == 2
    st, out = c.step(st, ticket("t-late", 3 + 3 * 60))  # long after: outside the window
    assert out == []


def test_incident_resolves_when_its_members_do_and_closes_later() -> None:
    c = IncidentCorrelator()
    wl = alert("water_level", "water", "wl-1", 0)
    st, _ = c.step(None, wl)
    st, out = c.step(st, ticket("t-1", 5))
    assert out[-1].status == "open"
    st, out = c.step(st, wl.model_copy(update={"status": AlertStatus.CLEARED, "revision": 2}))
    assert out[-1].status == "open"
    st, out = c.step(st, ticket("t-1", 50, status="resolved", kind="status"))
    assert out[-1].status == "resolved"
    st, out = c.tick(st, T0 + timedelta(minutes=50 + 119))
    assert out == []
    st, out = c.tick(st, T0 + timedelta(minutes=50 + 120))
    assert out[-1].status == "closed" and st == {"incidents": {}, "index": {}}


def test_area_core_spike_once_per_call_and_incidents_per_district() -> None:
    """The agent's core: redelivered calls never count twice in the spike window,
    and alerts and tickets of one district land in one incident state."""
    from streams.detectors.engine import DetectionEngine
    from streams.emergency import NORMAL
    from streams.hotline_agents import AreaCore

    spikes: dict[bytes, bytes] = {}
    incidents: dict[bytes, bytes] = {}
    core = AreaCore(DetectionEngine(), IncidentCorrelator(), lambda: TABLE, spikes, incidents)
    calls = [ticket(f"n{i}", i, "noise", WANGJING) for i in range(7)]
    opened = []
    for i, call in enumerate(calls):
        for _ in range(2):  # every call delivered twice
            out = core.hotline(call, 3, NORMAL)
            opened += [(i, a) for a in out.alerts]
    assert [i for i, _ in opened] == [5], "one early warning, at the sixth distinct call"
    a = opened[0][1]
    assert a.rule == "hotline_burst:noise" and a.evidence.value == 6.0 and "uma" in a.departments
    assert list(spikes) == ["chaoyang|noise:望京街道".encode()]
    # the burst ends when the calls stop: the tick visits only keys in a burst, and clears it
    ticks = core.tick_spikes(T0 + timedelta(hours=3), lambda d: NORMAL)
    assert [(k, [x.status.value for x in al]) for k, _, al, _ in ticks] == [("chaoyang|noise:望京街道".encode(), ["cleared"])]
    assert core.tick_spikes(T0 + timedelta(hours=4), lambda d: NORMAL) == []
    assert AreaCore(core.engine, core.correlator, lambda: TABLE, spikes, incidents).rebuild_index() == 0
    out = core.alert(alert("noise", "noise", "ns-1", 8, Severity.III), 3)
    assert [i.kind for i in out.incidents] == ["noise"]
    assert set(out.incidents[-1].ticket_ids) == {f"n{i}" for i in range(7)} and out.incidents[-1].alert_ids
    assert list(incidents) == [b"chaoyang"] and out.changed and out.changed[0][0] == AreaCore.INCIDENTS
    # nothing new when the same alert revision comes again
    assert core.alert(alert("noise", "noise", "ns-1", 8, Severity.III), 3).incidents == []


def test_an_incident_stops_growing_at_its_size_or_age_and_closes_without_news() -> None:
    from streams.incidents import IncidentPolicy

    c = IncidentCorrelator(IncidentPolicy(max_members=3, max_span_s=3600))
    st: dict[str, Any] | None = None
    ids = []
    for i in range(7):  # a complaint every 10 minutes in one street
        st, out = c.step(st, ticket(f"n{i}", 10 * i, "noise", WANGJING))
        ids += [x.incident_id for x in out]
    assert st is not None
    sizes = sorted(len(inc["members"]) for inc in st["incidents"].values())
    assert sizes == [1, 3, 3] and len(set(ids)) == 2  # the seventh waits for a partner
    st, closed = c.tick(st, T0 + timedelta(minutes=85))  # the first (last news at 20 min) is over
    assert [x.status for x in closed] == ["closed"] and closed[0].ticket_ids == ("n0", "n1", "n2")
