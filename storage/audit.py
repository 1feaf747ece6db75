"""The audit trail: an append-only, hash-chained log of what people and runs did.

Every alert action, rules change, emergency-mode switch and replay run is one
row of `audit_log` (migration 0005). Each row carries the previous row's hash,
and its own hash is SHA-256 over a canonical encoding of the row and that
previous hash, so editing, inserting or deleting a row breaks the chain at a
place `verify` names.

Canonical encoding (stable across Python and PostgreSQL versions): the compact
JSON array `[seq, at, actor, kind, subject, details, prev_hash]` with `at` in
UTC ISO 8601 with microseconds and `details` as PostgreSQL prints the jsonb
value (its own normal form: keys sorted, numbers as stored), so the hash is
recomputed from exactly what the database holds.

The chain proves the rows agree with each other; it cannot by itself show that
the newest rows were cut off. `citybrain audit tail` prints the head (seq and
hash): recording it elsewhere and passing it to `verify --head` closes that gap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg

from citybrain.errors import InputError

GENESIS = "0" * 64
_LOCK = "citybrain.audit:"
_PAGE = 5000

Problem = Literal["edited", "deleted", "inserted", "truncated"]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: datetime
    actor: str
    kind: str
    subject: str
    details: str  # the jsonb text as PostgreSQL prints it
    prev_hash: str
    hash: str

    def line(self) -> str:
        return (f"{self.seq:>8} {self.at.astimezone(UTC).isoformat(timespec='seconds')} {self.kind:<20} "
                f"{self.subject} by {self.actor} {self.details} {self.hash[:12]}")


@dataclass(frozen=True, slots=True)
class AuditBreak:
    """The first place the chain does not hold."""

    seq: int
    problem: Problem
    message: str

    def __str__(self) -> str:
        return f"audit entry {self.seq}: {self.problem}: {self.message}"


@dataclass(frozen=True, slots=True)
class AuditHead:
    count: int
    seq: int
    hash: str


def _at(at: datetime) -> str:
    if at.tzinfo is None:
        raise InputError("audit time must be timezone-aware")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def entry_hash(seq: int, at: datetime, actor: str, kind: str, subject: str, details_text: str,
               prev_hash: str) -> str:
    canon = json.dumps([seq, _at(at), actor, kind, subject, details_text, prev_hash],
                       ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def _details_json(details: Mapping[str, Any] | None) -> str:
    try:
        return json.dumps(dict(details or {}), ensure_ascii=False, default=str, allow_nan=False)
    except ValueError as exc:
        raise InputError(f"audit details are not JSON: {exc}") from None


async def append_audit(conn: asyncpg.Connection, *, actor: str, kind: str, subject: str,
                       details: Mapping[str, Any] | None, at: datetime) -> AuditEntry:
    """Append one entry and return it. Safe from any number of writers at once:
    an advisory lock (per schema) serialises appends so the chain stays linear.
    Joins the caller's transaction if one is open (the entry then commits or
    rolls back with the caller's own writes)."""
    for name, value in (("actor", actor), ("kind", kind), ("subject", subject)):
        if not value or not value.strip():
            raise InputError(f"audit {name} must not be empty")
    raw = _details_json(details)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1::text || current_schema()::text))", _LOCK)
        last = await conn.fetchrow("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        seq = (last["seq"] + 1) if last else 1
        prev = last["hash"] if last else GENESIS
        details_text: str = await conn.fetchval("SELECT $1::jsonb::text", raw)
        h = entry_hash(seq, at, actor, kind, subject, details_text, prev)
        await conn.execute(
            "INSERT INTO audit_log (seq, at, actor, kind, subject, details, prev_hash, hash) "
            "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8)",
            seq, at, actor, kind, subject, details_text, prev, h)
    return AuditEntry(seq, at, actor, kind, subject, details_text, prev, h)


_SELECT = ("SELECT seq, at, actor, kind, subject, details::text AS details, prev_hash, hash "
           "FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2")


def _entry(r: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(r["seq"], r["at"], r["actor"], r["kind"], r["subject"], r["details"], r["prev_hash"],
                      r["hash"])


def check_link(prev: AuditEntry | None, e: AuditEntry) -> AuditBreak | None:
    """What is wrong with `e` following `prev` (None: `e` should be the first)."""
    want_seq = prev.seq + 1 if prev else 1
    if e.seq > want_seq:
        gone = f"{want_seq}" if e.seq == want_seq + 1 else f"{want_seq}..{e.seq - 1}"
        return AuditBreak(want_seq, "deleted", f"entries {gone} are missing before entry {e.seq}")
    if e.seq < want_seq:  # cannot happen with seq as primary key and ordered reads
        return AuditBreak(e.seq, "inserted", f"entry {e.seq} is out of order")
    if entry_hash(e.seq, e.at, e.actor, e.kind, e.subject, e.details, e.prev_hash) != e.hash:
        return AuditBreak(e.seq, "edited", f"its content no longer matches its hash {e.hash[:12]} "
                                          f"({e.kind} {e.subject} by {e.actor})")
    want_prev = prev.hash if prev else GENESIS
    if e.prev_hash != want_prev:
        if prev is None:
            return AuditBreak(e.seq, "inserted", "it does not chain to the start of the log")
        return AuditBreak(e.seq, "inserted", f"it does not chain to entry {prev.seq} (entry {e.seq} was "
                                             f"inserted, or entry {prev.seq} replaced with a recomputed hash)")
    return None


async def verify(conn: asyncpg.Connection, *, head: str | None = None) -> AuditBreak | None:
    """Walk the whole chain; the first entry that was edited, inserted or deleted,
    or None when it holds. `head` (a hash printed earlier by `tail`) must still
    be in the chain, else entries were cut off or rewritten since."""
    prev: AuditEntry | None = None
    head_seen = head is None
    after = 0
    while True:
        rows = await conn.fetch(_SELECT, after, _PAGE)
        for r in rows:
            e = _entry(r)
            problem = check_link(prev, e)
            if problem is not None:
                return problem
            if head is not None and e.hash.startswith(head):
                head_seen = True
            prev = e
        if len(rows) < _PAGE:
            break
        after = rows[-1]["seq"]
    if not head_seen:
        last = prev.seq if prev else 0
        return AuditBreak(last + 1, "truncated", f"the recorded head {head} is not in the chain "
                                                 f"(it ends at entry {last}): entries were removed or rewritten")
    return None


async def head(conn: asyncpg.Connection) -> AuditHead:
    r = await conn.fetchrow("SELECT count(*) AS n, max(seq) AS seq FROM audit_log")
    seq = r["seq"] or 0
    h = await conn.fetchval("SELECT hash FROM audit_log WHERE seq = $1", seq) if seq else GENESIS
    return AuditHead(int(r["n"]), int(seq), str(h))


async def tail(conn: asyncpg.Connection, n: int = 20) -> list[AuditEntry]:
    rows = await conn.fetch(
        "SELECT seq, at, actor, kind, subject, details::text AS details, prev_hash, hash "
        "FROM audit_log ORDER BY seq DESC LIMIT $1", n)
    return [_entry(r) for r in reversed(rows)]
