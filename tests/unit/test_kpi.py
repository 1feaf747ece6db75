from __future__ import annotations

from fractions import Fraction

import pytest

from streams import kpi
from tests.unit.test_hotline_workflow import run_known_tickets


def test_three_rates_match_hand_computed_values() -> None:
    snaps = kpi.compute(run_known_tickets())
    # 望京 (district:chaoyang and its street office), tickets t1..t5:
    #   response:     t1 ok, t4 ok, t2 late, t3 missed, t5 missed       -> 2/5
    #   resolution:   t1 ok, t3 ok, t2 late (t4, t5 still within 7 d)   -> 2/3
    #   satisfaction: t1 5 yes, t3 3 (replaced 4) no, t2 2 no           -> 1/3
    for scope in ("district:chaoyang", "street.chaoyang.wangjing"):
        s = snaps[(scope, "2025-07")]
        assert s.response_rate == pytest.approx(float(Fraction(2, 5)))
        assert s.resolution_rate == pytest.approx(float(Fraction(2, 3)))
        assert s.satisfaction_rate == pytest.approx(float(Fraction(1, 3)))
        assert s.counts == {"response": (2, 5), "resolution": (2, 3), "satisfaction": (1, 3)}
    # the water authority also has t6 in 中关村 (contacted on time, undecided otherwise)
    w = snaps[("water", "2025-07")]
    assert w.counts == {"response": (3, 6), "resolution": (2, 3), "satisfaction": (1, 3)}
    h = snaps[("district:haidian", "2025-07")]
    assert h.response_rate == 1.0 and h.resolution_rate is None and h.satisfaction_rate is None


def test_redelivered_facts_are_not_counted_twice() -> None:
    facts = run_known_tickets()
    assert kpi.compute(facts + facts) == kpi.compute(facts)


def test_kpi_core_roundtrips_facts_over_the_wire_and_ignores_redelivery() -> None:
    import orjson

    from streams.hotline_agents import InvalidRecord, KpiCore, fact_from_json

    store: dict[bytes, bytes] = {}
    core = KpiCore(store)
    facts = run_known_tickets()
    snaps = {}
    for f in facts + facts:  # everything delivered twice
        wire = fact_from_json(orjson.dumps(f.as_dict()))
        assert wire == f
        for scope in f.scopes:
            snap, _ = core.apply(scope, wire, 1)
            if snap is not None:
                snaps[(scope, f.period)] = snap
    assert snaps == kpi.compute(facts)
    with pytest.raises(InvalidRecord):
        fact_from_json(b'{"kind": "response"}')
