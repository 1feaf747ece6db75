"""`python -m connectors.open311` (also `citybrain open311`): serve the intake
with the Kafka sink (settings from OPEN311_* and KAFKA_*). Requests, with
the caller's clear PII, are kept in PostgreSQL (`open311_requests`) when
OPEN311_DATABASE_URL or DATABASE_URL is set, so they outlive a restart;
otherwise in memory."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from citybrain.topics import Topics
from connectors.open311.app import create_app
from connectors.open311.settings import Open311Settings
from connectors.open311.sink import KafkaHotlineSink
from connectors.open311.store import InMemoryStore, PostgresStore, RequestStore

log = logging.getLogger("citybrain.open311")


async def serve(settings: Open311Settings) -> None:
    sink = KafkaHotlineSink(settings.kafka_bootstrap_servers, Topics(settings.topic_prefix).hotline,
                            client_kwargs=settings.kafka_security.aiokafka_kwargs())
    pool = None
    store: RequestStore
    if settings.database_url is not None:
        from storage.db import create_pool

        pool = await create_pool(settings.database_url.get_secret_value(), application_name="citybrain-open311",
                                 min_size=1, max_size=4)
        pg = PostgresStore(pool)
        await pg.create_schema()
        store = pg
    else:
        log.warning("no OPEN311_DATABASE_URL / DATABASE_URL: requests are kept in memory only")
        store = InMemoryStore()
    try:
        app = create_app(settings, sink, store=store)  # a bad configuration fails here, before Kafka
        await sink.start()
        server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning"))
        log.info("Open311 intake on http://%s:%d/open311/v2/", settings.host, settings.port)
        await server.serve()
    finally:
        await sink.stop()
        if pool is not None:
            await pool.close()


def main() -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(Open311Settings()))


if __name__ == "__main__":
    main()
