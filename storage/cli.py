"""`citybrain db migrate | maintain | writer` and `citybrain writer`.

The environment (DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS, WRITER_*) is read
here, at the entry point, and nowhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from citybrain.errors import ConfigError


def _database_url(args: argparse.Namespace) -> str:
    url = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise ConfigError("no database: set DATABASE_URL or pass --database-url")
    return str(url)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from storage.migrate import migrate

    result = asyncio.run(migrate(_database_url(args), args.schema, args.flavor))
    applied = ", ".join(f"{v:04d}" for v in result.applied) or "none"
    print(f"schema {result.schema} ({result.flavor}): applied {applied}; "
          f"{len(result.already)} already applied")
    return 0


def _cmd_maintain(args: argparse.Namespace) -> int:
    from storage.db import connect
    from storage.maintenance import run_maintenance

    async def run() -> None:
        conn = await connect(_database_url(args), args.schema, "citybrain-maintain")
        try:
            r = await run_maintenance(conn)
        finally:
            await conn.close()
        if r.skipped:
            print("another maintenance run holds the lock; skipped")
        else:
            print(f"{r.flavor}: {r.partitions_created} partitions created, {r.hours_refreshed} hours of "
                  f"rollups refreshed, {len(r.dropped)} partitions dropped {r.dropped or ''}".rstrip())

    asyncio.run(run())
    return 0


def _cmd_writer(args: argparse.Namespace) -> int:
    from storage.writer import WriterSettings, run_writer

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = WriterSettings()  # type: ignore[call-arg]  # from the environment: the entry point

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_writer(settings, stop)

    asyncio.run(run())
    return 0


def _writer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_cmd_writer)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="storage: migrations, maintenance, the writer")
    s = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)

    m = s.add_parser("migrate", help="apply pending schema migrations (safe to run again)")
    m.add_argument("--schema", default="public", help="PostgreSQL schema to migrate (default public)")
    m.add_argument("--flavor", default="auto", choices=["auto", "plain", "timescale"],
                   help="auto: TimescaleDB if the extension is there, else native partitions")
    m.add_argument("--database-url", default=None, help="default: $DATABASE_URL")
    m.set_defaults(func=_cmd_migrate)

    mt = s.add_parser("maintain", help="plain path: partitions ahead, rollup refresh, retention (one run)")
    mt.add_argument("--schema", default="public")
    mt.add_argument("--database-url", default=None, help="default: $DATABASE_URL")
    mt.set_defaults(func=_cmd_maintain)

    _writer_args(s.add_parser("writer", help="run the Kafka -> PostgreSQL writer until SIGINT/SIGTERM"))
    _writer_args(sub.add_parser("writer", help="run the Kafka -> PostgreSQL writer (same as `db writer`)"))
