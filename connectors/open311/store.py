"""The intake's own store of service requests: the only place where the
caller's clear name, phone and email may live. Behind a small interface so a
deployment can put it in PostgreSQL; the in-memory store serves tests and the
demo."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from schemas import HotlineEvent, TicketStatus

CLOSED = frozenset({TicketStatus.RESOLVED, TicketStatus.CLOSED})


@dataclass(frozen=True, slots=True)
class CallerPII:
    """Clear personal data; never serialised by the API nor put on a topic."""

    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    email: str | None = None
    device_id: str | None = None
    account_id: str | None = None

    def __repr__(self) -> str:  # keep PII out of logs and tracebacks
        return "CallerPII(<redacted>)"


@dataclass(frozen=True, slots=True)
class StoredRequest:
    service_request_id: str
    service_code: str
    event: HotlineEvent  # what went on the topic: no clear PII
    address: str | None
    media_url: str | None
    expected_datetime: datetime | None
    updated_datetime: datetime
    caller: CallerPII = field(default_factory=CallerPII)

    @property
    def open311_status(self) -> str:
        """GeoReport v2 knows two states."""
        return "closed" if self.event.status in CLOSED else "open"


class RequestStore(Protocol):
    async def add(self, request: StoredRequest) -> None: ...

    async def get(self, service_request_id: str) -> StoredRequest | None: ...

    async def query(
        self,
        *,
        ids: Sequence[str] = (),
        codes: Sequence[str] = (),
        start: datetime | None = None,
        end: datetime | None = None,
        statuses: Sequence[str] = (),
        limit: int = 1000,
    ) -> list[StoredRequest]: ...


class InMemoryStore:
    def __init__(self) -> None:
        self._items: dict[str, StoredRequest] = {}
        self._lock = asyncio.Lock()

    async def add(self, request: StoredRequest) -> None:
        async with self._lock:
            self._items[request.service_request_id] = request

    async def get(self, service_request_id: str) -> StoredRequest | None:
        return self._items.get(service_request_id)

    async def query(
        self,
        *,
        ids: Sequence[str] = (),
        codes: Sequence[str] = (),
        start: datetime | None = None,
        end: datetime | None = None,
        statuses: Sequence[str] = (),
        limit: int = 1000,
    ) -> list[StoredRequest]:
        if ids:
            found = [self._items[i] for i in ids if i in self._items]
            return found[:limit]
        out = [
            r
            for r in self._items.values()
            if (not codes or r.service_code in codes)
            and (start is None or r.event.ts >= start)
            and (end is None or r.event.ts <= end)
            and (not statuses or r.open311_status in statuses)
        ]
        out.sort(key=lambda r: r.event.ts, reverse=True)
        return out[:limit]

    def __len__(self) -> int:
        return len(self._items)


class PostgresStore:
    """The store in PostgreSQL (`open311_requests`), through an asyncpg pool or
    connection. Clear PII lives in its own columns here and nowhere else."""

    CREATE_TABLE_SQL = """
    CREATE TABLE IF NOT EXISTS open311_requests (
        service_request_id text PRIMARY KEY,
        service_code       text NOT NULL,
        requested_at       timestamptz NOT NULL,
        ticket_status      text NOT NULL,
        event              jsonb NOT NULL,
        address            text,
        media_url          text,
        expected_at        timestamptz,
        updated_at         timestamptz NOT NULL,
        first_name text, last_name text, phone text, email text, device_id text, account_id text
    );
    CREATE INDEX IF NOT EXISTS open311_requests_requested_at ON open311_requests (requested_at DESC);
    """

    _COLUMNS = (
        "service_request_id, service_code, requested_at, ticket_status, event, address, media_url, "
        "expected_at, updated_at, first_name, last_name, phone, email, device_id, account_id"
    )

    def __init__(self, db: Any) -> None:
        self.db = db

    async def create_schema(self) -> None:
        await self.db.execute(self.CREATE_TABLE_SQL)

    async def add(self, request: StoredRequest) -> None:
        c = request.caller
        await self.db.execute(
            f"INSERT INTO open311_requests ({self._COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) "
            "ON CONFLICT (service_request_id) DO NOTHING",
            request.service_request_id, request.service_code, request.event.ts, request.event.status.value,
            request.event.to_json().decode(), request.address, request.media_url, request.expected_datetime,
            request.updated_datetime, c.first_name, c.last_name, c.phone, c.email, c.device_id, c.account_id,
        )  # fmt: skip

    @staticmethod
    def _row(row: Any) -> StoredRequest:
        event = row["event"]
        return StoredRequest(
            service_request_id=row["service_request_id"],
            service_code=row["service_code"],
            event=HotlineEvent.from_json(event if isinstance(event, str | bytes) else json.dumps(event)),
            address=row["address"],
            media_url=row["media_url"],
            expected_datetime=row["expected_at"],
            updated_datetime=row["updated_at"],
            caller=CallerPII(
                first_name=row["first_name"], last_name=row["last_name"], phone=row["phone"],
                email=row["email"], device_id=row["device_id"], account_id=row["account_id"],
            ),
        )  # fmt: skip

    async def get(self, service_request_id: str) -> StoredRequest | None:
        row = await self.db.fetchrow(
            f"SELECT {self._COLUMNS} FROM open311_requests WHERE service_request_id = $1", service_request_id
        )
        return self._row(row) if row else None

    async def query(
        self,
        *,
        ids: Sequence[str] = (),
        codes: Sequence[str] = (),
        start: datetime | None = None,
        end: datetime | None = None,
        statuses: Sequence[str] = (),
        limit: int = 1000,
    ) -> list[StoredRequest]:
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        closed = [s.value for s in CLOSED]
        if ids:
            where.append(f"service_request_id = ANY({arg(list(ids))}::text[])")
        else:
            if codes:
                where.append(f"service_code = ANY({arg(list(codes))}::text[])")
            if start is not None:
                where.append(f"requested_at >= {arg(start)}")
            if end is not None:
                where.append(f"requested_at <= {arg(end)}")
            if statuses and set(statuses) != {"open", "closed"}:
                op = "= ANY" if "closed" in statuses else "<> ALL"
                where.append(f"ticket_status {op}({arg(closed)}::text[])")
        sql = f"SELECT {self._COLUMNS} FROM open311_requests"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY requested_at DESC LIMIT {arg(limit)}"
        return [self._row(r) for r in await self.db.fetch(sql, *args)]
