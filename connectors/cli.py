"""`citybrain connector`: run the MQTT -> Kafka connector until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from citybrain.kafka_admin import ensure_topics, pipeline_topics
from citybrain.topics import Topics
from schemas.common import now_utc


async def _run(settings: object) -> None:
    from connectors.mqtt_kafka import MqttKafkaConnector, MqttKafkaSettings, default_routes, run_connector

    assert isinstance(settings, MqttKafkaSettings)
    # only the topics it writes (its ACLs allow creating those and nothing else), as its own principal
    topics = Topics(settings.topic_prefix)
    wanted = {name: n for name, n in pipeline_topics(topics, 4).items()
              if name in (topics.readings, topics.hotline, topics.dlq)}
    await ensure_topics(settings.kafka_bootstrap_servers, wanted,
                        client_kwargs=settings.kafka_security.aiokafka_kwargs())
    from connectors.registry import DeviceRegistry

    registry = DeviceRegistry.from_file(settings.registry_file) if settings.registry_file else DeviceRegistry.sample()
    connector = MqttKafkaConnector(settings, default_routes(), clock=now_utc, registry=registry)
    if settings.metrics_port:
        connector.metrics.serve(settings.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_connector(connector, stop)


def _cmd_connector(args: argparse.Namespace) -> int:
    from connectors.mqtt_kafka import MqttKafkaSettings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = MqttKafkaSettings()  # type: ignore[call-arg]  # from the environment: the entry point
    asyncio.run(_run(settings))
    return 0


def _cmd_open311(args: argparse.Namespace) -> int:
    from connectors.open311.__main__ import serve
    from connectors.open311.settings import Open311Settings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Open311Settings(**overrides)  # the rest from the environment: the entry point
    asyncio.run(serve(settings))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("connector", help="run the MQTT -> Kafka ingestion connector")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_cmd_connector)
    o = sub.add_parser("open311", help="serve the Open311 GeoReport v2 hotline intake (OPEN311_API_KEYS, "
                       "OPEN311_PII_KEY; requests kept in DATABASE_URL)")
    o.add_argument("--host", default=None, help="listen address (default OPEN311_HOST or 127.0.0.1)")
    o.add_argument("--port", type=int, default=None, help="port (default OPEN311_PORT or 8311)")
    o.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    o.set_defaults(func=_cmd_open311)
