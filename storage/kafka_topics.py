"""The emergency-mode control topic, made the way the worker makes it (one
partition, compacted: the latest switch per scope), for the writer, which
records every switch in `mode_switches`, and for a replay run, which
republishes the recorded switches into its own copy."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from citybrain.kafka_admin import wait_until_served


async def ensure_control_topic(bootstrap: str, name: str, client_kwargs: Mapping[str, Any] | None = None) -> None:
    """Create `name` (one partition, compacted) unless it exists, and wait until it is served."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000, **(client_kwargs or {}))
    await admin.start()
    try:
        if name not in set(await admin.list_topics()):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(name, 1, 1, topic_configs={"cleanup.policy": "compact"})])
            await wait_until_served(admin, [name])
    finally:
        await admin.close()


__all__ = ["ensure_control_topic"]
