"""Versioned, forward-only migrations, safe to run twice.

Files `storage/migrations/NNNN_name.sql` are applied in version order, each in
its own transaction together with its row in `schema_migrations` (version,
name, flavour, checksum). An applied migration is never re-run; if its file
changed since, that is an error (write a new migration instead).

One file serves both flavours: lines between `--@if plain` (or
`--@if timescale`) and `--@endif` are kept only for that flavour. The flavour
is chosen once per schema at its first migration: `timescale` when the
extension is installed or can be created, else `plain`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from citybrain.errors import ConfigError
from storage.db import Flavor, check_schema, connect

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_IF_RE = re.compile(r"^\s*--@if\s+(plain|timescale)\s*$")
_ENDIF_RE = re.compile(r"^\s*--@endif\s*$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    text: str

    def render(self, flavor: Flavor) -> str:
        return render(self.text, flavor)

    def checksum(self, flavor: Flavor) -> str:
        return hashlib.sha256(self.render(flavor).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MigrateResult:
    schema: str
    flavor: Flavor
    applied: tuple[int, ...]
    already: tuple[int, ...]


def render(text: str, flavor: Flavor) -> str:
    out: list[str] = []
    keep = True
    inside = False
    for n, line in enumerate(text.splitlines(), 1):
        m = _IF_RE.match(line)
        if m:
            if inside:
                raise ConfigError(f"migration line {n}: nested --@if")
            inside, keep = True, m.group(1) == flavor
            continue
        if _ENDIF_RE.match(line):
            if not inside:
                raise ConfigError(f"migration line {n}: --@endif without --@if")
            inside, keep = False, True
            continue
        if keep:
            out.append(line)
    if inside:
        raise ConfigError("migration: --@if without --@endif")
    return "\n".join(out) + "\n"


def _has_statements(sql: str) -> bool:
    # asyncpg fails on the server's EmptyQueryResponse to a comments-only script
    return any(line.strip() and not line.strip().startswith("--") for line in sql.splitlines())


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE_RE.match(path.name)
        if not m:
            raise ConfigError(f"migration file {path.name} is not named NNNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise ConfigError(f"two migrations with version {version}")
        found[version] = Migration(version, m.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


async def detect_flavor(conn: asyncpg.Connection, requested: str = "auto") -> Flavor:
    """`timescale` if the extension is installed, or available and creatable."""
    if requested not in ("auto", "plain", "timescale"):
        raise ConfigError(f"flavour {requested!r} is not auto, plain or timescale")
    if requested == "plain":
        return "plain"
    installed = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    if installed:
        return "timescale"
    available = await conn.fetchval(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    if available:
        try:
            # in public, which every storage connection's search_path ends with: created
            # in the first schema migrated (search_path's head), the next schemas would not
            # see its functions, and dropping that schema would drop the extension
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb SCHEMA public")
            return "timescale"
        except asyncpg.PostgresError as exc:
            if requested == "timescale":
                raise ConfigError(f"cannot create the timescaledb extension: {exc}") from exc
            return "plain"
    if requested == "timescale":
        raise ConfigError("the timescaledb extension is not available on this server")
    return "plain"


_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    flavor      text NOT NULL CHECK (flavor IN ('plain', 'timescale')),
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate_connection(conn: asyncpg.Connection, schema: str = "public", flavor: str = "auto",
                             migrations: list[Migration] | None = None) -> MigrateResult:
    """Apply pending migrations into `schema` on an open connection (its
    search_path is set to the schema for the duration)."""
    check_schema(schema)
    migrations = load_migrations() if migrations is None else migrations
    lock_key = f"citybrain.migrate:{schema}"
    await conn.execute("SELECT pg_advisory_lock(hashtext($1))", lock_key)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}", public')
        await conn.execute(_LEDGER)
        rows = await conn.fetch("SELECT version, flavor, checksum FROM schema_migrations ORDER BY version")
        applied = {r["version"]: r for r in rows}
        flavors = {r["flavor"] for r in rows}
        if len(flavors) > 1:
            raise ConfigError(f"schema {schema} has migrations of both flavours {sorted(flavors)}")
        if flavors:
            chosen: Flavor = flavors.pop()
            if flavor not in ("auto", chosen):
                raise ConfigError(f"schema {schema} was migrated as {chosen}, not {flavor}")
        else:
            chosen = await detect_flavor(conn, flavor)
        done: list[int] = []
        already: list[int] = []
        for m in migrations:
            if m.version in applied:
                if applied[m.version]["checksum"] != m.checksum(chosen):
                    raise ConfigError(
                        f"migration {m.version:04d}_{m.name} changed after it was applied to {schema}; "
                        "migrations are forward-only: add a new one instead"
                    )
                already.append(m.version)
                continue
            sql = m.render(chosen)
            async with conn.transaction():
                if _has_statements(sql):  # a one-flavour migration is only comments in the other
                    await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, flavor, checksum) VALUES ($1, $2, $3, $4)",
                    m.version, m.name, chosen, m.checksum(chosen),
                )
            done.append(m.version)
        return MigrateResult(schema, chosen, tuple(done), tuple(already))
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", lock_key)


async def migrate(database_url: str, schema: str = "public", flavor: str = "auto") -> MigrateResult:
    """Apply pending migrations, then create the partitions ahead (plain path)."""
    conn = await connect(database_url, schema, "citybrain-migrate")
    try:
        result = await migrate_connection(conn, schema, flavor)
        if result.flavor == "plain":
            from storage.maintenance import ensure_partitions_ahead

            await ensure_partitions_ahead(conn)
        return result
    finally:
        await conn.close()
