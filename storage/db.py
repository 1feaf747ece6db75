"""Connections into one storage schema. Every connection carries its schema in
`search_path`, so SQL names tables unqualified and a test (or a replay run)
can use a schema of its own."""

from __future__ import annotations

import re
from typing import Any, Literal

import asyncpg

from citybrain.errors import ConfigError

Flavor = Literal["plain", "timescale"]
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema(schema: str) -> str:
    if not _SCHEMA_RE.match(schema):
        raise ConfigError(f"schema name {schema!r} must match {_SCHEMA_RE.pattern}")
    return schema


def server_settings(schema: str, application_name: str) -> dict[str, str]:
    return {"search_path": f'"{check_schema(schema)}", public', "application_name": application_name,
            "timezone": "UTC"}


async def connect(database_url: str, schema: str = "public", application_name: str = "citybrain",
                  **kwargs: Any) -> asyncpg.Connection:
    return await asyncpg.connect(database_url, server_settings=server_settings(schema, application_name),
                                 **kwargs)


async def create_pool(database_url: str, schema: str = "public", application_name: str = "citybrain",
                      **kwargs: Any) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(database_url, server_settings=server_settings(schema, application_name),
                                     **kwargs)
    assert pool is not None
    return pool


async def current_flavor(conn: asyncpg.Connection) -> Flavor:
    """The flavour the schema was migrated with (raises if it was never migrated)."""
    try:
        flavor = await conn.fetchval("SELECT flavor FROM schema_migrations ORDER BY version LIMIT 1")
    except asyncpg.UndefinedTableError as exc:
        raise ConfigError("storage schema is not migrated: run `citybrain db migrate`") from exc
    if flavor not in ("plain", "timescale"):
        raise ConfigError("storage schema is not migrated: run `citybrain db migrate`")
    return flavor  # type: ignore[no-any-return]
