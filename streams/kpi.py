"""三率 of the hotline (接诉即办): response, resolution and satisfaction rate per
department and per district, computed incrementally from the `KpiFact`s the
hotline workflow emits (each ticket contributes at most once to each rate).

Definitions, for one scope (a department code, or "district:<code>" for the
tickets located in that district) and one period (the calendar month, Beijing
time, in which the ticket was created):

- **Response rate (响应率)** = tickets whose first contact (the first status
  update to in_progress, resolved or closed) came no later than their
  first-contact deadline / tickets whose first contact is decided, i.e. that
  had their first contact, or whose first-contact deadline passed without one.
  A ticket still within its deadline and not yet contacted is in neither.
- **Resolution rate (解决率)** = tickets resolved (status resolved or closed)
  no later than their resolution deadline / tickets whose resolution is
  decided (resolved, or resolution deadline passed unresolved).
- **Satisfaction rate (满意率)** = tickets whose latest feedback score is
  >= `satisfied_min` (4 of 1..5: 满意 or 基本满意) / tickets with feedback.
  A replaced score moves the ticket between numerator and denominator
  classes; it is never counted twice.

A rate with an empty denominator is None (not 0, not 1).

Partitioning: ONE STATE PER SCOPE. The agent sends each fact to every scope in
`fact.scopes` (re-keyed by scope) and calls::

    st, snap = kpi.apply(st, scope, fact)    # snap: KpiSnapshot to publish, or None for a duplicate

State::

    {"periods": {"2025-07": {"response": [ok, n], "resolution": [ok, n], "satisfaction": [ok, n]}},
     "seen": [fact id prefixes, bounded],  # at-least-once redelivery dedupe (recent ids only)
     "rev": facts counted}
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.tickets import KpiRecord
from streams.hotline_workflow import KpiFact

# Duplicates come from redelivery of a batch not yet committed (a crash), so the
# recent facts of a scope are enough; ids are kept as 64-bit prefixes (the state
# is written to the changelog on every batch, it has to stay small).
SEEN_MAX = 2048
SEEN_CHARS = 18  # "k-" + 16 hex digits of the fact id's hash
PERIODS_MAX = 13
KINDS = ("response", "resolution", "satisfaction")


@dataclass(frozen=True, slots=True)
class KpiSnapshot:
    scope: str
    period: str
    response_rate: float | None
    resolution_rate: float | None
    satisfaction_rate: float | None
    counts: Mapping[str, tuple[int, int]]  # kind -> (ok, n)
    # facts the scope has counted: a consumer keeps the highest (not part of the value)
    revision: int = field(default=0, compare=False)

    def as_record(self) -> KpiRecord:
        return KpiRecord(scope=self.scope, period=self.period, revision=max(1, self.revision),
                         response_rate=self.response_rate, resolution_rate=self.resolution_rate,
                         satisfaction_rate=self.satisfaction_rate, counts=dict(self.counts))

    def as_dict(self) -> dict[str, Any]:
        return {"scope": self.scope, "period": self.period, "response_rate": self.response_rate,
                "resolution_rate": self.resolution_rate, "satisfaction_rate": self.satisfaction_rate,
                "counts": {k: list(v) for k, v in self.counts.items()}}


def _rate(ok: int, n: int) -> float | None:
    return ok / n if n else None


def snapshot(state: Mapping[str, Any], scope: str, period: str) -> KpiSnapshot:
    p = (state.get("periods") or {}).get(period) or {k: [0, 0] for k in KINDS}
    counts = {k: (int(p[k][0]), int(p[k][1])) for k in KINDS}
    return KpiSnapshot(scope, period, _rate(*counts["response"]), _rate(*counts["resolution"]),
                       _rate(*counts["satisfaction"]), counts, int(state.get("rev", 0)))


def apply(state: dict[str, Any] | None, scope: str, fact: KpiFact) -> tuple[dict[str, Any], KpiSnapshot | None]:
    st: dict[str, Any] = (
        {"periods": copy.deepcopy(state["periods"]), "seen": list(state["seen"]), "rev": int(state.get("rev", 0))}
        if state else {"periods": {}, "seen": [], "rev": 0}
    )
    fid = fact.fact_id[:SEEN_CHARS]
    if fid in st["seen"]:
        return st, None
    p = st["periods"].setdefault(fact.period, {k: [0, 0] for k in KINDS})
    c = p[fact.kind]
    if fact.prev_ok is None:
        c[1] += 1
        c[0] += int(fact.ok)
    else:  # a replaced verdict for a ticket already counted
        c[0] += int(fact.ok) - int(fact.prev_ok)
    st["seen"] = [*st["seen"], fid][-SEEN_MAX:]
    st["rev"] += 1
    if len(st["periods"]) > PERIODS_MAX:
        for old in sorted(st["periods"])[:-PERIODS_MAX]:
            del st["periods"][old]
    return st, snapshot(st, scope, fact.period)


def compute(facts: Iterable[KpiFact]) -> dict[tuple[str, str], KpiSnapshot]:
    """Batch form (replay, reports, tests): (scope, period) -> snapshot."""
    states: dict[str, dict[str, Any]] = {}
    out: dict[tuple[str, str], KpiSnapshot] = {}
    for f in facts:
        for scope in f.scopes:
            states[scope], snap = apply(states.get(scope), scope, f)
            if snap is not None:
                out[(scope, f.period)] = snap
    return out
