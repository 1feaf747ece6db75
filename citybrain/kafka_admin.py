"""Create the pipeline's topics up front with their partition counts, so a
producer's first record never auto-creates a topic with the wrong shape."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    NotControllerError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
    for_code,
)

from citybrain.errors import PermanentError, TransientError
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
        topics.notices: partitions,
        topics.incidents: partitions,
        topics.hotline_tickets: partitions,
        topics.kpi: partitions,
        topics.kpi_facts: partitions,
        topics.incident_items: partitions,
        topics.dlq: 1,
    }


def department_topics(topics: Topics, codes: Iterable[str], partitions: int,
                      hotline: bool = True) -> dict[str, int]:
    """Each department's alert topic (and ticket topic). A deployment, and a replay, make
    them before the worker starts: the worker otherwise creates one on the department's
    first alert, inside its lifecycle agent, and every alert behind that one waits
    (streams/README.md, "Department topics")."""
    names = [topics.dept(code) for code in codes]
    if hotline:
        names += [topics.hotline_dept(code) for code in codes]
    return dict.fromkeys(names, partitions)


async def ensure_topics(bootstrap: str, wanted: dict[str, int], timeout_s: float = 60,
                        client_kwargs: dict[str, Any] | None = None) -> None:
    """Creates the topics of `wanted` that do not exist, then waits until every
    one of them, old or new, has a leader for each partition: a broker that has
    just started serves its existing partitions a few seconds later, and a
    client started before that only retries (`citybrain demo` printed 44
    NotLeaderForPartition warnings on its alert feed after `make stack-up`)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000,
                                    **(client_kwargs or {}))  # SASL / TLS: citybrain.kafka_security
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = {name: n for name, n in wanted.items() if name not in existing}
            if missing:
                await create_topics(admin, missing)
            # the rest of this call's time, not wait_until_served's 15 s: a broker
            # that has just started may take longer to serve partitions it already had
            await wait_until_served(admin, list(wanted),
                                    timeout_s=max(15.0, deadline - asyncio.get_running_loop().time()))
            return
        except KafkaConnectionError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise TransientError(f"Kafka at {bootstrap} unreachable: {exc}") from exc
            log.warning("Kafka not reachable yet (%s); retrying", exc)
            await asyncio.sleep(1)
        finally:
            await admin.close()


async def create_topics(admin: AIOKafkaAdminClient, wanted: dict[str, int]) -> None:
    """One CreateTopics request; a topic that already exists (another worker
    raced us) is fine, any other refusal (not authorised, bad config) raises:
    the response carries per-topic errors that aiokafka does not raise itself."""
    resp = await admin.create_topics([NewTopic(name, n, 1) for name, n in wanted.items()])
    for entry in resp.topic_errors:
        name, code = entry[0], entry[1]
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        err = for_code(code)
        detail = entry[2] if len(entry) > 2 and entry[2] else err.__name__
        raise PermanentError(f"Kafka refused to create topic {name}: {detail} (error {code})")


async def wait_until_served(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 15.0) -> None:
    """Until every partition of `names` has a leader: CreateTopics returns as the
    controller accepts, and a producer's first send to a topic the broker does
    not serve yet fails ("not found in cluster metadata"), which stalled Faust's
    producer buffer for the whole worker (bench.faults postgres_immediate)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        served = {t["topic"] for t in await admin.describe_topics(names)
                  if t["error_code"] == 0 and t["partitions"]
                  and all(p["error_code"] == 0 and p["leader"] >= 0 for p in t["partitions"])}
        if served >= set(names):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TransientError(f"topics {sorted(set(names) - served)} created but not served within {timeout_s:g} s")
        await asyncio.sleep(0.05)


class TopicCreator:
    """Creates topics on first use at run time (a department's topic when its
    first alert is routed) through one long-lived admin client: no full
    metadata fetch per topic, which costs seconds on a broker with thousands
    of topics."""

    def __init__(self, bootstrap: str, client_kwargs: dict[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.client_kwargs = client_kwargs or {}
        self._admin: AIOKafkaAdminClient | None = None
        self._lock = asyncio.Lock()

    async def ensure(self, wanted: dict[str, int]) -> None:
        async with self._lock:
            for attempt in range(3):
                try:
                    if self._admin is None:
                        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000,
                                                    **self.client_kwargs)
                        await admin.start()
                        self._admin = admin
                    await create_topics(self._admin, wanted)
                    await wait_until_served(self._admin, list(wanted))
                    return
                except (KafkaConnectionError, NotControllerError, RequestTimedOutError) as exc:
                    await self.close()
                    if attempt == 2:
                        raise TransientError(f"Kafka at {self.bootstrap}: cannot create {sorted(wanted)}: {exc}") from exc
                    await asyncio.sleep(1)

    async def close(self) -> None:
        if self._admin is not None:
            admin, self._admin = self._admin, None
            with contextlib.suppress(Exception):
                await admin.close()
