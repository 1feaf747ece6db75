"""`citybrain audit verify | tail`: check the audit trail's hash chain, show its end.

`verify` exits 0 and prints the head when the whole chain holds; otherwise it
exits 1 with one line naming the first entry edited, inserted or deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from citybrain.errors import ConfigError


def _database_url(args: argparse.Namespace) -> str:
    url = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise ConfigError("no database: set DATABASE_URL or pass --database-url")
    return str(url)


async def _run_verify(url: str, schema: str, head_hash: str | None) -> int:
    from storage.audit import head, verify
    from storage.db import connect

    conn = await connect(url, schema, "citybrain-audit")
    try:
        if not await conn.fetchval("SELECT to_regclass(format('%I.audit_log', $1::text)) IS NOT NULL", schema):
            raise ConfigError(f"schema {schema} has no audit_log: run `citybrain db migrate`")
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            problem = await verify(conn, head=head_hash)
            h = await head(conn)
    finally:
        await conn.close()
    if problem is not None:
        print(f"audit: FAILED: {problem}", file=sys.stderr)
        return 1
    print(f"audit: chain intact: {h.count} entries, head {h.seq} {h.hash}")
    return 0


async def _run_tail(url: str, schema: str, n: int) -> int:
    from storage.audit import head, tail
    from storage.db import connect

    conn = await connect(url, schema, "citybrain-audit")
    try:
        if not await conn.fetchval("SELECT to_regclass(format('%I.audit_log', $1::text)) IS NOT NULL", schema):
            raise ConfigError(f"schema {schema} has no audit_log: run `citybrain db migrate`")
        entries = await tail(conn, n)
        h = await head(conn)
    finally:
        await conn.close()
    for e in entries:
        print(e.line())
    print(f"head {h.seq} {h.hash}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    return asyncio.run(_run_verify(_database_url(args), args.schema, args.head))


def _cmd_tail(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ConfigError("-n must be at least 1")
    return asyncio.run(_run_tail(_database_url(args), args.schema, args.n))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="the audit trail: verify its hash chain, show its latest entries")
    s = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = s.add_parser("verify", help="check the whole chain; names the first entry edited, inserted or deleted")
    v.add_argument("--head", help="a head hash recorded earlier (from `audit tail`): must still be in the chain")
    v.set_defaults(func=_cmd_verify)
    t = s.add_parser("tail", help="the latest entries and the head hash")
    t.add_argument("-n", type=int, default=20, help="how many entries (default 20)")
    t.set_defaults(func=_cmd_tail)
    for q in (v, t):
        q.add_argument("--database-url", help="default: $DATABASE_URL")
        q.add_argument("--schema", default="public", help="PostgreSQL schema (default public)")
