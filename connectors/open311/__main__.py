"""`python -m connectors.open311`: serve the intake with the Kafka sink
(settings from OPEN311_* and KAFKA_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

import asyncio

import uvicorn

from citybrain.topics import Topics
from connectors.open311.app import create_app
from connectors.open311.settings import Open311Settings
from connectors.open311.sink import KafkaHotlineSink


async def serve(settings: Open311Settings) -> None:
    sink = KafkaHotlineSink(settings.kafka_bootstrap_servers, Topics(settings.topic_prefix).hotline,
                            client_kwargs=settings.kafka_security.aiokafka_kwargs())
    await sink.start()
    try:
        app = create_app(settings, sink)
        server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning"))
        await server.serve()
    finally:
        await sink.stop()


def main() -> None:
    asyncio.run(serve(Open311Settings()))


if __name__ == "__main__":
    main()
