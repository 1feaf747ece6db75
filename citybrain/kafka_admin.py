"""Create the pipeline's topics up front with their partition counts, so a
producer's first record never auto-creates a topic with the wrong shape."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from citybrain.errors import TransientError
from citybrain.topics import Topics

log = logging.getLogger("citybrain.kafka")


def pipeline_topics(topics: Topics, partitions: int) -> dict[str, int]:
    return {
        topics.readings: partitions,
        topics.hotline: partitions,
        topics.alerts: partitions,
        topics.alerts_detected: partitions,
        topics.actions: partitions,
        topics.actions_applied: partitions,
        topics.incidents: partitions,
        topics.hotline_tickets: partitions,
        topics.kpi: partitions,
        topics.kpi_facts: partitions,
        topics.incident_items: partitions,
        topics.dlq: 1,
    }


async def ensure_topics(bootstrap: str, wanted: dict[str, int], timeout_s: float = 60,
                        client_kwargs: dict[str, Any] | None = None) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000,
                                    **(client_kwargs or {}))  # SASL / TLS: citybrain.kafka_security
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [NewTopic(name, n, 1) for name, n in wanted.items() if name not in existing]
            if missing:
                try:
                    await admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass
            return
        except KafkaConnectionError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise TransientError(f"Kafka at {bootstrap} unreachable: {exc}") from exc
            log.warning("Kafka not reachable yet (%s); retrying", exc)
            await asyncio.sleep(1)
        finally:
            await admin.close()
