"""`citybrain opscenter [--host H] [--port P] [--demo]` serves the API, the live
feed and the dashboard; `citybrain opscenter token issue|list|revoke` manages
access tokens. The environment (DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS,
OPSCENTER_*) is read here, at the entry point, and nowhere else."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
from datetime import timedelta
from typing import Any

from citybrain.errors import ConfigError

DEMO_TOKENS = (("demo-ops", "ops", None), ("demo-engineer", "engineer", None), ("demo-eeb", "department", "eeb"),
               ("demo-water", "department", "water"), ("demo-chaoyang", "department", "district.chaoyang"))


def _settings(args: argparse.Namespace, **over: Any) -> Any:
    from pydantic import ValidationError

    from opscenter.settings import OpscenterSettings

    for key in ("host", "port", "demo"):
        if getattr(args, key, None) not in (None, False):
            over[key] = getattr(args, key)
    try:
        return OpscenterSettings(**over)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"opscenter settings: {loc}: {first['msg']} (set DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS; "
                          "source .run/stack.env)") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def issue_demo_tokens(state: Any) -> list[tuple[str, str, str | None, str]]:
    """Revoke the previous demo tokens, issue fresh ones, return (name, role, department, token)."""
    s = state.settings
    out = []
    for name, role, dept in DEMO_TOKENS:
        await state.tokens.revoke_named(name)
        it = await state.tokens.issue(name, role, dept, timedelta(hours=s.demo_token_ttl_hours))
        out.append((name, role, dept, it.token))
    return out


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from opscenter.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = _settings(args)
    if settings.demo and not _is_loopback(settings.host):
        raise ConfigError("demo mode issues well-known local tokens: bind it to 127.0.0.1 only")

    async def on_ready(state: Any) -> None:
        if not settings.demo:
            return
        tokens = await issue_demo_tokens(state)
        url = f"http://{settings.host}:{settings.port}/"
        lines = [f"opscenter demo tokens (valid {settings.demo_token_ttl_hours:g} h; local demo only):"]
        for name, role, dept, tok in tokens:
            lines.append(f"  {name:<14} {role:<10} {dept or '-':<18} {tok}")
        ops_token = tokens[0][3]
        lines.append(f"open the dashboard as ops: {url}#token={ops_token}")
        print("\n".join(lines), flush=True)

    # a replay started from the API runs its worker with this process's environment, as `citybrain replay` does
    app = create_app(settings, on_ready=on_ready, replay_env=dict(os.environ))
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level,
                            access_log=args.access_log, timeout_graceful_shutdown=3,
                            loop=settings.event_loop, http=settings.http_parser)
    uvicorn.Server(config).run()
    return 0


async def _with_store(args: argparse.Namespace, fn: Any) -> Any:
    from opscenter.auth import TokenStore
    from storage.db import create_pool

    settings = _settings(args)
    pool = await create_pool(settings.database_url.get_secret_value(), settings.db_schema, "citybrain-opscenter-cli",
                             min_size=1, max_size=2)
    try:
        store = TokenStore(pool, 0)
        await store.ensure_table()
        return await fn(store)
    finally:
        await pool.close()


def _cmd_token_issue(args: argparse.Namespace) -> int:
    from opscenter.auth import Role

    if args.role == Role.DEPARTMENT and not args.department:
        raise ConfigError("a department token needs --department CODE (e.g. eeb, district.chaoyang)")
    if args.role != Role.DEPARTMENT and args.department:
        raise ConfigError("--department is only for --role department")
    if args.department:
        from streams.routing import load_registry

        if args.department not in load_registry():
            raise ConfigError(f"unknown department {args.department!r} (see streams/rules/departments.yaml)")

    async def run(store: Any) -> Any:
        return await store.issue(args.name, args.role, args.department, timedelta(hours=args.ttl_hours))

    it = asyncio.run(_with_store(args, run))
    p = it.principal
    print(f"token_id {p.token_id}  role {p.role.value}  department {p.department or '-'}  "
          f"expires {p.expires_at.isoformat()}")
    print(it.token)
    return 0


def _cmd_token_list(args: argparse.Namespace) -> int:
    async def run(store: Any) -> Any:
        return await store.list()

    for t in asyncio.run(_with_store(args, run)):
        state = "revoked" if t["revoked_at"] else "active"
        print(f"{t['token_id']}  {t['name']:<20} {t['role']:<10} {t['department'] or '-':<20} "
              f"expires {t['expires_at'].isoformat()}  {state}")
    return 0


def _cmd_token_revoke(args: argparse.Namespace) -> int:
    async def run(store: Any) -> Any:
        return await store.revoke(args.token_id)

    if not asyncio.run(_with_store(args, run)):
        raise ConfigError(f"no active token {args.token_id}")
    print(f"revoked {args.token_id}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("opscenter", help="operations center: HTTP API, live feed, dashboard; access tokens")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080)")
    p.add_argument("--demo", action="store_true", default=None,
                   help="local demo: issue one token per role at start and print them (loopback only)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=_cmd_serve)
    s = p.add_subparsers(dest="opscenter_command", metavar="ACTION")
    t = s.add_parser("token", help="issue, list and revoke access tokens")
    ts = t.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    i = ts.add_parser("issue", help="issue a token (printed once; only its hash is stored)")
    i.add_argument("--name", required=True, help="who holds it, e.g. wang.li@eeb")
    i.add_argument("--role", required=True, choices=["ops", "department", "engineer"])
    i.add_argument("--department", help="department code for --role department (eeb, district.chaoyang, ...)")
    i.add_argument("--ttl-hours", type=float, default=24 * 30, help="lifetime (default 30 days)")
    i.set_defaults(func=_cmd_token_issue)
    ts.add_parser("list", help="list tokens (no secrets)").set_defaults(func=_cmd_token_list)
    r = ts.add_parser("revoke", help="revoke a token by its token_id")
    r.add_argument("token_id")
    r.set_defaults(func=_cmd_token_revoke)
