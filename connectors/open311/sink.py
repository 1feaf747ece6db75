"""The durable sink the intake hands events to: Kafka, acks=all, idempotent.

`await sink(event)` returns only when Kafka has acknowledged the record on
`city.hotline.events` (key = ticket_id), so a request is acknowledged to the
citizen only once it cannot be lost.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer

from schemas import HotlineEvent


class KafkaHotlineSink:
    def __init__(self, bootstrap_servers: str, topic: str, *, client_id: str = "citybrain-open311",
                 client_kwargs: dict[str, Any] | None = None) -> None:
        self.topic = topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            request_timeout_ms=15_000,
            **(client_kwargs or {}),  # SASL / TLS: citybrain.kafka_security
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def __call__(self, event: HotlineEvent) -> None:
        await self._producer.send_and_wait(self.topic, value=event.to_json(), key=event.ticket_id.encode())
