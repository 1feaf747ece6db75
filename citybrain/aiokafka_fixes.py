"""A fix to aiokafka's producer metadata (pinned 0.14.0), applied once at import of `citybrain`.

The stall it cures (the worker determinism test and the replay recording
failed about one run in five under CPU load): a worker's producer stopped
delivering one topic for good. The records sat in the producer's
accumulator, `Producer.flush` (which Faust awaits before every offset commit)
never returned ("Timer commit is overlapping"), and the last detections never
reached the lifecycle agent. A logging probe showed the batch's topic
(`city.alerts.detected`) missing from the producer's cluster metadata
altogether (`partitions_for_topic` None, "unknown leader") for minutes.

The cause, in `AIOKafkaClient`:

* a client starts with an empty topic set, which means "all topics": its
  first metadata response lists every topic of the cluster;
* `_wait_on_metadata(topic)`, which every `send` and `send_batch` awaits,
  returns at once when the topic is already in the cluster metadata, so a
  topic that existed when the producer started is never added to the set;
* once any topic is added (a department topic created later), the metadata
  requests ask for the set only and `ClusterMetadata.update_metadata`
  replaces what it knew: the first topic drops out, its pending batch has no
  leader, and the sender waits for metadata that will never name it (a batch
  expires only after the producer's request timeout, 20 minutes in Faust).

The fix: a topic is added to the client's set the first time anyone waits
on its metadata, even when the metadata already has it. Everything else is
aiokafka's code, unchanged.
"""

from __future__ import annotations

from typing import Any

from aiokafka.client import AIOKafkaClient

_APPLIED = "_citybrain_fixes_applied"


def apply() -> None:
    if getattr(AIOKafkaClient, _APPLIED, False):
        return
    original = AIOKafkaClient._wait_on_metadata

    async def _wait_on_metadata(self: Any, topic: str) -> Any:
        if topic not in self._topics and self.cluster.partitions_for_topic(topic) is not None:
            # known from an all-topics response: track it so that narrower requests keep it;
            # the next round (due anyway) includes it, nothing needs waiting for here
            self._topics.add(topic)
        return await original(self, topic)

    AIOKafkaClient._wait_on_metadata = _wait_on_metadata  # type: ignore[method-assign]
    setattr(AIOKafkaClient, _APPLIED, True)
