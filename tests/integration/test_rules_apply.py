"""`citybrain rules apply`: a rules change is validated, audited (who, why,
hashes, rules added/removed/changed) and only then swapped in; a bad file or
an unreachable audit changes nothing. Real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from citybrain.errors import ConfigError
from storage.audit import tail, verify
from storage.db import connect
from storage.migrate import migrate
from streams.routing import DEFAULT_RULES
from streams.rules_cli import apply_rules

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
EXTRA = """
  - name: noise-also-to-the-street-office
    match: {source: sensor, category: noise}
    departments: [ema]
"""


@pytest.fixture
async def schema(database_url: str) -> AsyncIterator[str]:
    name = f"t_rules_{uuid.uuid4().hex[:10]}"
    await migrate(database_url, name)
    yield name
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


def copy_rules(tmp_path: Path) -> tuple[Path, Path]:
    """The live file (a copy of the shipped rules, with its departments file beside it) and a new version."""
    text = DEFAULT_RULES.read_text(encoding="utf-8")
    for f in DEFAULT_RULES.parent.iterdir():
        if f.suffix == ".yaml" and f != DEFAULT_RULES:
            (tmp_path / f.name).write_bytes(f.read_bytes())
    live = tmp_path / "routing.yaml"
    live.write_text(text, encoding="utf-8")
    new = tmp_path / "routing.new.yaml"
    new.write_text(text.rstrip("\n") + "\n" + EXTRA, encoding="utf-8")
    return live, new


async def entries(database_url: str, schema: str) -> list:
    conn = await connect(database_url, schema, "test-rules")
    try:
        assert await verify(conn) is None
        return [e for e in await tail(conn, 50) if e.kind == "rules.change"]
    finally:
        await conn.close()


async def test_apply_audits_then_swaps(database_url: str, schema: str, tmp_path: Path) -> None:
    live, new = copy_rules(tmp_path)
    before = live.read_bytes()
    out = await apply_rules(new, live, actor="zhang.gong", reason="noise complaints in 望京", database_url=database_url,
                            schema=schema, now=NOW)
    assert live.read_bytes() == new.read_bytes() != before
    assert out["added"] == ["noise-also-to-the-street-office"] and out["removed"] == [] and out["changed"] == []
    (e,) = await entries(database_url, schema)
    d = json.loads(e.details)
    assert e.actor == "zhang.gong" and e.subject == str(live) and e.seq == out["audit_seq"]
    assert d["reason"] == "noise complaints in 望京" and d["added"] == ["noise-also-to-the-street-office"]
    assert d["sha256_after"] != d["sha256_before"] and len(d["sha256_after"]) == 64
    # the same content again: nothing to audit
    again = await apply_rules(new, live, actor="zhang.gong", reason="again", database_url=database_url,
                              schema=schema, now=NOW)
    assert again.get("unchanged") is True and len(await entries(database_url, schema)) == 1


async def test_a_bad_file_or_a_missing_audit_changes_nothing(database_url: str, schema: str, tmp_path: Path) -> None:
    live, new = copy_rules(tmp_path)
    before = live.read_bytes()
    good = new.read_text(encoding="utf-8")
    new.write_text(good + "\n  - name: bad\n    departments: [nobody]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown department"):
        await apply_rules(new, live, actor="a", reason="r", database_url=database_url, schema=schema, now=NOW)
    policy = DEFAULT_RULES.parent / "policy.yaml"
    with pytest.raises(ConfigError, match="is a policy file but"):
        await apply_rules(policy, live, actor="a", reason="r", database_url=database_url, schema=schema, now=NOW)
    new.write_text(good, encoding="utf-8")  # a good file, but no audit trail to record it in
    with pytest.raises(ConfigError, match="no audit_log"):
        await apply_rules(new, live, actor="a", reason="r", database_url=database_url, schema=f"{schema}_nope",
                          now=NOW)
    assert live.read_bytes() == before and await entries(database_url, schema) == []


def test_cli_needs_an_actor_and_a_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    r = subprocess.run([sys.executable, "-m", "citybrain.cli", "rules", "apply", str(DEFAULT_RULES), "--to",
                        str(tmp_path / "r.yaml"), "--reason", "x"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "--actor" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "citybrain.cli", "rules", "apply", str(DEFAULT_RULES), "--to",
                        str(tmp_path / "r.yaml"), "--reason", "x", "--actor", "a"], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 2 and "DATABASE_URL" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


async def test_cli_applies_and_prints_the_audit_entry(database_url: str, schema: str, tmp_path: Path) -> None:
    live, new = copy_rules(tmp_path)
    r = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "citybrain.cli", "rules", "apply", str(new), "--to", str(live), "--actor", "li",
        "--reason", "test", "--schema", schema], capture_output=True, text=True,
        env=os.environ | {"DATABASE_URL": database_url})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "added noise-also-to-the-street-office" in r.stdout and "audit entry 1" in r.stdout
    assert live.read_bytes() == new.read_bytes()
