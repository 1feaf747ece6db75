"""Storage pieces that need no database: migration rendering, resolution
choice, error classification, row mapping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from citybrain.errors import ConfigError
from storage import errors
from storage.migrate import load_migrations, render
from storage.queries import choose_resolution
from storage.rows import READING_COLUMNS, SPECS, partition_probes

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_render_keeps_only_the_flavours_blocks() -> None:
    text = "a\n--@if plain\np\n--@endif\n--@if timescale\nt\n--@endif\nz\n"
    assert render(text, "plain") == "a\np\nz\n"
    assert render(text, "timescale") == "a\nt\nz\n"
    with pytest.raises(ConfigError):
        render("--@if plain\nx\n", "plain")


def test_every_migration_renders_for_both_flavours() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    for m in migrations:
        plain, ts = m.render("plain"), m.render("timescale")
        assert "create_hypertable" not in plain and "timescaledb" not in plain.replace("Timescale", "")
        assert "PARTITION BY RANGE" not in ts
    core = migrations[0]
    assert "create_hypertable('readings', by_range('ts', INTERVAL '1 day')" in core.render("timescale")


@pytest.mark.parametrize(("span", "age", "want"), [
    (timedelta(hours=1), timedelta(0), "raw"),
    (timedelta(hours=6), timedelta(days=1), "raw"),
    (timedelta(hours=7), timedelta(0), "1m"),
    (timedelta(hours=1), timedelta(days=31), "1m"),
    (timedelta(days=7), timedelta(0), "1m"),
    (timedelta(days=8), timedelta(0), "1h"),
    (timedelta(hours=1), timedelta(days=400), "1h"),
])
def test_resolution_follows_span_and_retention(span: timedelta, age: timedelta, want: str) -> None:
    start = NOW - age - span
    assert choose_resolution(start, start + span, NOW) == want


def test_classification() -> None:
    assert errors.classify(asyncpg.exceptions.AdminShutdownError("x")) == "transient"
    assert errors.classify(asyncpg.exceptions.DeadlockDetectedError("x")) == "transient"
    assert errors.classify(asyncpg.exceptions.SerializationError("x")) == "transient"
    assert errors.classify(asyncpg.exceptions.TooManyConnectionsError("x")) == "transient"
    assert errors.classify(asyncpg.exceptions.ConnectionDoesNotExistError("x")) == "transient"
    assert errors.classify(ConnectionResetError()) == "transient"
    assert errors.classify(asyncpg.exceptions.CharacterNotInRepertoireError("x")) == "permanent"
    assert errors.reason(asyncpg.exceptions.CharacterNotInRepertoireError("x")) == "bad_encoding"
    assert errors.classify(asyncpg.exceptions.NumericValueOutOfRangeError("x")) == "permanent"
    assert errors.classify(asyncpg.exceptions.UndefinedTableError("x")) == "fatal"
    assert errors.classify(asyncpg.exceptions.InsufficientPrivilegeError("x")) == "fatal"
    missing = asyncpg.exceptions.CheckViolationError('no partition of relation "readings" found for row')
    assert errors.classify(missing) == "transient"
    assert errors.classify(asyncpg.exceptions.CheckViolationError("violates check constraint")) == "permanent"


def test_partition_probes_one_per_utc_day() -> None:
    rows = [(datetime(2026, 1, 1, 23, 30, tzinfo=UTC),), (datetime(2026, 1, 2, 7, 0, tzinfo=UTC) - timedelta(hours=8),),
            (datetime(2026, 1, 2, 0, 30, tzinfo=UTC),)]
    assert partition_probes(rows, 0) == [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)]


def test_specs_merge_sql_is_idempotent() -> None:
    for spec in SPECS.values():
        for flavor in ("plain", "timescale"):
            sql = spec.merge_sql(flavor)
            assert "ON CONFLICT" in sql
    assert "rollup_dirty" in SPECS["readings"].merge_sql("plain")
    assert "rollup_dirty" not in SPECS["readings"].merge_sql("timescale")
    assert READING_COLUMNS[0] == "ts"
