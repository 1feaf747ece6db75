"""The intake's own store of service requests: the only place where the
caller's clear name, phone and email may live. Behind a small interface so a
deployment can put it in PostgreSQL; the in-memory store serves tests and the
demo."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

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
