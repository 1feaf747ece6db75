"""The producer keeps delivering to a topic it first learnt of from an
all-topics metadata response after it starts sending to a new topic
(citybrain.aiokafka_fixes: without the fix the first topic drops out of the
producer's metadata and its pending records wait for the request timeout)."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

import citybrain  # noqa: F401  (applies the fix, as every component does)
from citybrain.kafka_admin import ensure_topics
from tests.services import kafka_bootstrap, unique  # noqa: F401


async def test_a_topic_known_at_start_survives_a_new_topic(kafka_bootstrap: str, unique: str) -> None:  # noqa: F811
    old, new = f"meta-{unique}.old", f"meta-{unique}.new"
    await ensure_topics(kafka_bootstrap, {old: 4})
    # a long linger keeps the first record in the accumulator while the metadata changes under it
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=1500, request_timeout_ms=120_000)
    await producer.start()
    try:
        # as Faust's producer does after declaring its topics: a refresh with no topic named yet,
        # which asks for every topic of the cluster, `old` among them
        for _ in range(50):
            await producer.client.force_metadata_update()
            if producer.client.cluster.partitions_for_topic(old) is not None:
                break
            await asyncio.sleep(0.1)
        assert producer.client.cluster.partitions_for_topic(old) is not None
        pending = await producer.send(old, b"v", key=b"k", partition=2)
        await ensure_topics(kafka_bootstrap, {new: 1})
        await producer.send_and_wait(new, b"v")  # the client now asks for named topics only
        await producer.client.force_metadata_update()
        assert producer.client.cluster.partitions_for_topic(old) == {0, 1, 2, 3}, "the first topic left the metadata"
        meta = await asyncio.wait_for(pending, timeout=15)
        assert (meta.topic, meta.partition) == (old, 2)
    finally:
        await producer.stop()
