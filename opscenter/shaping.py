"""Alerts as the API shows them: SLA clock, citizen data masked, and list
items serialised once per alert revision.

The list route is the hot path of the wall screens: 50 alerts a page, asked
by every client every few seconds. Parsing each row's evidence, masking it
and building its SLA clock cost ~45 µs an alert in Python, most of the
request. Only `remaining_s` and `breached` depend on the clock; everything
else depends on the row (whose content changes only with a higher
`revision`: storage keeps the highest revision, see storage/rows.py) and on
whether the caller may see pseudonymous keys. So the JSON of an alert without
those two fields is kept per (alert_id, revision, pseudonymous) in a bounded
LRU, and a page is joined from bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson

from opscenter.queries import UNACKED_STATUSES, SlaPolicy, alert_record
from streams.routing import PII_KEYS, PSEUDONYMOUS_KEYS, mask_text


def mask_value(value: Any, pseudonymous: bool) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: mask_value(v, pseudonymous) for k, v in value.items()
                if k not in PII_KEYS and (pseudonymous or k not in PSEUDONYMOUS_KEYS)}
    if isinstance(value, list | tuple):
        return [mask_value(v, pseudonymous) for v in value]
    return value


class AlertShaper:
    def __init__(self, sla: SlaPolicy, max_items: int = 20000) -> None:
        self.sla = sla
        self.max_items = max_items
        # key -> (alert JSON up to and including `"sla":{...static`, due or None)
        self._items: OrderedDict[tuple[str, int, bool], tuple[bytes, datetime | None]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def sla_static(self, a: dict[str, Any]) -> dict[str, Any]:
        details = (a.get("evidence") or {}).get("details") or {}
        m = details.get("mode")
        emergency = isinstance(m, dict) and m.get("mode") == "emergency"
        sev = a["severity"]
        first = a["first_seen"]
        if isinstance(first, str):
            first = datetime.fromisoformat(first)
        ack_due = first + timedelta(seconds=self.sla.ack_s(sev, emergency))
        resolve_due = first + timedelta(seconds=self.sla.resolve_s(sev, emergency))
        status = a["status"]
        if status in UNACKED_STATUSES:
            clock_kind, due = "ack", ack_due
        elif status == "acknowledged":
            clock_kind, due = "resolve", resolve_due
        else:
            clock_kind, due = None, None
        return {"ack_due": ack_due, "resolve_due": resolve_due, "emergency": emergency, "clock": clock_kind,
                "due": due}

    @staticmethod
    def sla_clock(due: datetime | None, now: datetime) -> dict[str, Any]:
        return {"remaining_s": round((due - now).total_seconds()) if due else None,
                "breached": bool(due and now > due)}

    def sla_info(self, a: dict[str, Any], now: datetime, ack_at: datetime | None = None) -> dict[str, Any]:
        out = self.sla_static(a)
        out.update(self.sla_clock(out["due"], now))
        if ack_at is not None:
            out["acknowledged_at"] = ack_at
            out["ack_late"] = ack_at > out["ack_due"]
        return out

    def shape(self, a: dict[str, Any], pseudonymous: bool, now: datetime) -> dict[str, Any]:
        """In place: the SLA clock; nobody sees citizen data in clear, only
        pseudonymous roles keep the caller's keyed hash."""
        a["sla"] = self.sla_info(a, now)
        return self._mask(a, pseudonymous)

    @staticmethod
    def _mask(a: dict[str, Any], pseudonymous: bool) -> dict[str, Any]:
        a["title"] = mask_text(a["title"])
        if isinstance(a.get("evidence"), dict):
            a["evidence"] = dict(a["evidence"], details=mask_value(a["evidence"].get("details") or {},
                                                                  pseudonymous))
        return a

    def item_json(self, row: Any, pseudonymous: bool, now: datetime) -> bytes:
        """One list item (a row of ALERT_LIST_COLUMNS) as JSON bytes, equal to
        orjson.dumps(shape(alert_record(row), ...))."""
        key = (row["alert_id"], row["revision"], pseudonymous)
        hit = self._items.get(key)
        if hit is None:
            self.misses += 1
            a = self._mask(alert_record(row), pseudonymous)
            sla = self.sla_static(a)
            body = orjson.dumps(a)
            head = body[:-1] + (b',"sla":' if len(body) > 2 else b'"sla":') + orjson.dumps(sla)[:-1]
            hit = (head, sla["due"])
            self._items[key] = hit
            if len(self._items) > self.max_items:
                self._items.popitem(last=False)
        else:
            self.hits += 1
            self._items.move_to_end(key)
        return hit[0] + b"," + orjson.dumps(self.sla_clock(hit[1], now))[1:] + b"}"

    def page_json(self, rows: Sequence[Any], pseudonymous: bool, now: datetime, extra: dict[str, Any]) -> bytes:
        """`{"items": [...], **extra}` without building the items as dicts."""
        items = b",".join(self.item_json(r, pseudonymous, now) for r in rows)
        tail = orjson.dumps(extra)
        return b'{"items":[' + items + b"]" + (b"," + tail[1:] if len(tail) > 2 else b"}")
