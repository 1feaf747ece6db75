"""Roles and bearer tokens.

Roles:
  ops         the operations center: everything.
  department  one department (`department` code, e.g. eeb, district.chaoyang):
              its own alerts, actions on them, its own tickets; citizen data masked.
  engineer    read everything (citizen data masked) and replay; no actions.

A token is `cbt_` + 43 random URL-safe characters, shown once when issued.
Only its SHA-256 is stored (table `opscenter_tokens`, created by the opscenter
itself, idempotently), with an expiry and a revocation time. A looked-up token
is cached for `token_cache_s` (revocation takes effect within that).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg

from schemas.common import now_utc

TOKEN_PREFIX = "cbt_"

TOKENS_DDL = """
CREATE TABLE IF NOT EXISTS opscenter_tokens (
    token_hash  text PRIMARY KEY,
    token_id    text NOT NULL UNIQUE,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('ops', 'department', 'engineer')),
    department  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    CHECK ((role = 'department') = (department IS NOT NULL))
)
"""


class Role(StrEnum):
    OPS = "ops"
    DEPARTMENT = "department"
    ENGINEER = "engineer"


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    name: str
    role: Role
    department: str | None
    expires_at: datetime

    @property
    def actor_department(self) -> str:
        """The department code actions are recorded under."""
        return self.department if self.role is Role.DEPARTMENT and self.department else "ops"

    @property
    def sees_all(self) -> bool:
        return self.role is not Role.DEPARTMENT

    @property
    def sees_pii(self) -> bool:
        """Only the operations center sees the caller's keyed hash; nobody sees clear PII."""
        return self.role is Role.OPS

    def can_see_alert(self, departments: list[str] | tuple[str, ...]) -> bool:
        return self.sees_all or (self.department is not None and self.department in departments)

    def public(self) -> dict[str, Any]:
        return {"token_id": self.token_id, "name": self.name, "role": self.role.value,
                "department": self.department, "expires_at": self.expires_at.isoformat()}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str  # shown once
    principal: Principal


class TokenStore:
    def __init__(self, pool: asyncpg.Pool, cache_s: float = 2.0) -> None:
        self.pool = pool
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def ensure_table(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(hashtext('citybrain.opscenter.tokens'))")
            try:
                await conn.execute(TOKENS_DDL)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext('citybrain.opscenter.tokens'))")

    async def issue(self, name: str, role: Role | str, department: str | None = None,
                    ttl: timedelta = timedelta(days=30), now: datetime | None = None) -> IssuedToken:
        role = Role(role)
        if role is Role.DEPARTMENT and not department:
            raise ValueError("a department token needs a department code")
        if role is not Role.DEPARTMENT:
            department = None
        token = new_token()
        h = hash_token(token)
        expires = (now or now_utc()) + ttl
        await self.pool.execute(
            "INSERT INTO opscenter_tokens (token_hash, token_id, name, role, department, expires_at) "
            "VALUES ($1, $2, $3, $4, $5, $6)", h, h[:12], name, role.value, department, expires)
        return IssuedToken(token, Principal(h[:12], name, role, department, expires))

    async def revoke(self, token_id: str, now: datetime | None = None) -> bool:
        status = await self.pool.execute(
            "UPDATE opscenter_tokens SET revoked_at = $2 WHERE token_id = $1 AND revoked_at IS NULL",
            token_id, now or now_utc())
        self._cache.clear()
        return status.endswith(" 1")

    async def revoke_named(self, name: str, now: datetime | None = None) -> int:
        status = await self.pool.execute(
            "UPDATE opscenter_tokens SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL",
            name, now or now_utc())
        self._cache.clear()
        return int(status.split()[-1])

    async def list(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT token_id, name, role, department, created_at, expires_at, revoked_at "
            "FROM opscenter_tokens ORDER BY created_at")
        return [dict(r) for r in rows]

    async def authenticate(self, token: str, now: datetime | None = None) -> Principal | None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        h = hash_token(token)
        mono = time.monotonic()
        hit = self._cache.get(h)
        if hit is not None and hit[0] > mono:
            p = hit[1]
        else:
            row = await self.pool.fetchrow(
                "SELECT token_id, name, role, department, expires_at FROM opscenter_tokens "
                "WHERE token_hash = $1 AND revoked_at IS NULL", h)
            p = (Principal(row["token_id"], row["name"], Role(row["role"]), row["department"], row["expires_at"])
                 if row else None)
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[h] = (mono + self.cache_s, p)
        if p is None or p.expires_at <= (now or now_utc()):
            return None
        return p
