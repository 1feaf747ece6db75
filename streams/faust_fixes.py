"""A fix to faust-streaming's offset bookkeeping (pinned 0.15.3), applied once
when the worker app is built.

The commit creep (bench.faults worker_kill9, about one run in three):
right after a worker starts, Faust resumes the fetch flow before it seeks the
stream partitions to their committed offsets ("Resuming flow" comes before
"Seek stream partitions to committed offsets" in its log), and offsets read
in that window can reach the consumer's `_acked` list twice (once as a read
message, once more through its gap or re-read bookkeeping). `_new_offset`
commits the first run of consecutive offsets in the sorted list, and with
every offset doubled ([c, c, c+1, c+1, ...]) that run is one offset long: the
worker then commits ONE offset per commit interval (1 s) while it processes
hundreds per second. Nothing is lost, but the committed lag only grows, and
a restart after that reprocesses everything since.

The fix: before Faust picks the run, drop offsets below the committed one
(already committed, can never matter again) and duplicates. Everything else
(gaps, the head-of-list check) is Faust's own code, unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.transport.consumer import Consumer

_APPLIED = "_citybrain_dedup_acked"
log = logging.getLogger("citybrain.streams.faust_fixes")


def dedup_acked(acked: list[int], committed: int | None) -> list[int]:
    """The acked offsets that can still move the commit: sorted, each once,
    none below the committed offset (Kafka's "next to read")."""
    return sorted({o for o in acked if committed is None or o >= committed})


def apply() -> None:
    if getattr(Consumer, _APPLIED, False):
        return
    original = Consumer._new_offset

    def _new_offset(self: Any, tp: Any) -> int | None:
        acked = self._acked[tp]
        if acked:
            committed = self._committed_offset[tp]
            clean = dedup_acked(acked, committed)
            if len(clean) != len(acked):
                if committed is not None:  # the index must not keep what can no longer be committed
                    self._acked_index[tp].difference_update(range(min(acked), committed))
                log.info("%s[%d]: %d duplicate or committed offsets dropped from the acked list",
                         tp.topic, tp.partition, len(acked) - len(clean))
                acked[:] = clean
        result: int | None = original(self, tp)
        return result

    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    setattr(Consumer, _APPLIED, True)
