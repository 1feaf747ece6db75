"""`citybrain worker`: run the Faust stream worker."""

from __future__ import annotations

import argparse
import asyncio
import logging

from citybrain.kafka_admin import ensure_topics, pipeline_topics
from citybrain.topics import Topics
from schemas.common import now_utc


def _cmd_worker(args: argparse.Namespace) -> int:
    from streams.app import WorkerSettings, create_app
    from streams.faust_fixes import Worker

    settings = WorkerSettings()  # type: ignore[call-arg]  # from the environment: the entry point
    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.install()  # before any loop exists: the topic check below and Faust's worker both run on it
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(
        ensure_topics(
            settings.kafka_bootstrap_servers, pipeline_topics(Topics(settings.topic_prefix), settings.partitions),
            client_kwargs=settings.kafka_security.aiokafka_kwargs(),
        )
    )
    app = create_app(settings, clock=now_utc)
    worker = Worker(app, loglevel=args.log_level, quiet=True)
    worker.execute_from_commandline()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run the Faust stream worker (detection, alerting, fan-out)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_cmd_worker)
