"""Event-time progress markers: how a replay's stages learn how far every one
of their sources has got, so that the lifecycle fires an SLA timer only once
no earlier record of its alert can still come.

A replay worker runs with `progress_markers` on. The replay engine puts a
marker on every partition of the readings and hotline topics at each
`marker_every_s` of event time, before its operator actions and at the end:
"nothing earlier than T follows on this partition". Each stage forwards what
it knows, after everything it has sent for the records before the marker, to
every partition of the topic it feeds::

    readings p  -> detect stage  -> city.alerts.detected (all partitions)  "detect:p"
    hotline p   -> workflow      -> city.incidents.items (all partitions)  "hotline:p"
    items r     -> area agent    -> city.alerts.detected (all partitions)  "area:r"

Kafka keeps one producer's records to one partition in order, so a marker
from source S on partition q means every record S sent to q before it has
arrived. The safe time of q is the minimum over the sources it expects; a
source not heard from yet holds it at None. Live workers never see a marker
(a marker-shaped payload on a live topic is just an invalid record).

A record is `{"marker": "<ISO time>", "source": "<stage>:<partition>"}`, with
`"final": true` on the engine's last one (at the last record's time).

Stages that tick windows (silence, hotline bursts) tick them at a marker's time
minus the lateness, as live ticks them at its watermark minus the lateness, and
so forward that earlier time; the final marker they forward as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import orjson

PREFIX = b'{"marker":'
KEY = b"progress"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def boundary(at: datetime, every: timedelta) -> datetime:
    """The marker time at or before `at` on a fixed grid of `every` (the same in every replay)."""
    return at - (at - EPOCH) % every


def encode(source: str, at: datetime, final: bool = False) -> bytes:
    body: dict[str, object] = {"marker": at.isoformat(), "source": source}
    if final:
        body["final"] = True
    return orjson.dumps(body)


def is_marker(value: bytes | None) -> bool:
    return value is not None and value.startswith(PREFIX)


def decode(value: bytes) -> tuple[str, datetime, bool]:
    """(source, time, final) of a marker; ValueError for a malformed one."""
    try:
        d = orjson.loads(value)
        at = datetime.fromisoformat(d["marker"])
        source = d["source"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed progress marker: {exc}") from None
    if not isinstance(source, str) or at.tzinfo is None:
        raise ValueError("malformed progress marker: a source name and a time with its zone are needed")
    return source, at, d.get("final") is True


def forwarded(at: datetime, final: bool, lateness: timedelta) -> datetime:
    """What a stage that ticks its windows at `at - lateness` (as live does) can
    promise after a marker: nothing earlier than that; after the final one,
    nothing earlier than `at` (its last tick has run, no input follows)."""
    return at if final else at - lateness


class Progress:
    """The latest marker time per (partition, source), and from it the safe
    time of a set of partitions: the earliest time any expected source may
    still send there; and which sources have sent their final marker."""

    def __init__(self, sources: Iterable[str]) -> None:
        self.sources = tuple(sources)
        self.seen: dict[tuple[int, str], datetime] = {}
        self.finals: set[tuple[int, str]] = set()

    def observe(self, partition: int, source: str, at: datetime, final: bool = False) -> bool:
        """Record a marker; True when it moved its source on (a redelivered one does not)."""
        k = (partition, source)
        if final:
            self.finals.add(k)
        prev = self.seen.get(k)
        if prev is not None and prev >= at:
            return False
        self.seen[k] = at
        return True

    def safe(self, partitions: Iterable[int]) -> datetime | None:
        """Min over the partitions and the expected sources; None while any has not reported."""
        out: datetime | None = None
        for p in partitions:
            for s in self.sources:
                t = self.seen.get((p, s))
                if t is None:
                    return None
                if out is None or t < out:
                    out = t
        return out

    def all_final(self, partition: int) -> bool:
        """Every expected source's final marker has reached `partition`: nothing follows."""
        return all((partition, s) in self.finals for s in self.sources)
