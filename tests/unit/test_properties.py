"""Properties with hypothesis: whatever arrives, every decoder and the rules
loader either succeed or raise the project's classified error - never
anything else.

  decoders (connectors/decoders/*)   events of the right type, or RejectedPayload
                                     with a reason class ([a-z_]+) and a message
  rules / departments / policy files  a table, or ConfigError (one line, no traceback)

Inputs: arbitrary bytes, arbitrary JSON, and the shipped samples with one part
replaced by arbitrary JSON or removed (the inputs most likely to get deep into
a decoder before something is wrong).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citybrain.errors import ConfigError, RejectedPayload
from connectors.base import DecodeContext
from connectors.decoders import chirpstack, native, senml, tts
from connectors.registry import DeviceRegistry
from schemas import HotlineEvent, SensorReading
from streams.routing import DEFAULT_DEPARTMENTS, DEFAULT_RULES, RULES_DIR, parse_rules
from streams.rules_cli import check

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
NOW = datetime(2025, 1, 15, 8, 0, 5, tzinfo=UTC)
CTX = DecodeContext(now=NOW, max_future=timedelta(minutes=5), max_past=timedelta(days=7),
                    registry=DeviceRegistry.sample(), pii_key=b"prop-key")
REASON = re.compile(r"^[a-z][a-z_]*$")
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


NATIVE_READING = {
    "sensor_id": "bj-cy-aq-0001-pm25", "sensor_type": "pm25", "value": 35.0, "unit": "ug/m3",
    "ts": "2025-01-15T08:00:00Z", "location": {"district": "朝阳区", "street": "望京街道", "lat": 39.99, "lon": 116.47},
}  # fmt: skip
NATIVE_CALL = {
    "event_id": "h-1", "ticket_id": "T1", "kind": "created", "category": "flooding", "status": "open",
    "ts": "2025-01-15T08:00:00Z", "location": {"district": "朝阳区", "lat": 39.99, "lon": 116.47},
    "description": "积水，电话13712345678", "caller_name": "张三", "caller_phone": "13712345678",
}  # fmt: skip

# (name, decoder, topic, event type, sample documents)
DECODERS: list[tuple[str, Callable[[str, bytes, DecodeContext], Sequence[Any]], str, type, list[Any]]] = [
    ("native-readings", native.decode_readings, "city/sensors/bj-cy-aq-0001-pm25", SensorReading,
     [NATIVE_READING, {"readings": [NATIVE_READING, NATIVE_READING]}]),
    ("native-hotline", native.decode_hotline, "city/hotline/T1", HotlineEvent, [NATIVE_CALL]),
    ("senml", senml.decode, "city/senml/chaoyang", SensorReading,
     [_fixture("senml/air-pack.json"), _fixture("senml/mixed-units.json")]),
    ("chirpstack-water", chirpstack.decode, "application/17c82e96/device/24e124126c210455/event/up",
     SensorReading, [_fixture("chirpstack/up-water-level.json")]),
    ("chirpstack-air", chirpstack.decode, "application/17c82e96/device/70b3d57ed005a1c1/event/up",
     SensorReading, [_fixture("chirpstack/up-air-quality.json")]),
    ("tts-noise", tts.decode, "v3/chaoyang-noise@citybrain/devices/cb-cy-noise-0007/up", SensorReading,
     [_fixture("tts/up-noise.json")]),
    ("tts-gas", tts.decode, "v3/chaoyang-gas@citybrain/devices/cb-cy-gas-0012/up", SensorReading,
     [_fixture("tts/up-gas.json")]),
]
IDS = [d[0] for d in DECODERS]

_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
            | st.floats() | st.text(max_size=20)
            | st.sampled_from(["", "2025-01-15T08:00:00Z", "2025-01-15T08:00:00", "1e400", "pm25", "朝阳区",
                               "70B3D57ED0041A2F", "-1", "0"]))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=10)


def _paths(doc: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [here]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*here, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*here, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, docs: list[Any]) -> Any:
    """A sample with one node replaced by arbitrary JSON, or deleted."""
    doc = copy.deepcopy(draw(st.sampled_from(docs)))
    path = draw(st.sampled_from(_paths(doc)))
    if not path:
        return draw(_json)
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(_json)
    return doc


def classify(decode: Callable[..., Sequence[Any]], topic: str, payload: bytes, kind: type) -> None:
    try:
        events = decode(topic, payload, CTX)
    except RejectedPayload as exc:
        assert REASON.match(exc.reason), f"unclassified reason {exc.reason!r}"
        assert exc.message and "\n" not in str(exc), repr(exc)
        return
    assert isinstance(events, list | tuple)
    for ev in events:
        assert isinstance(ev, kind), type(ev)


@pytest.mark.parametrize(("name", "decode", "topic", "kind", "docs"), DECODERS, ids=IDS)
@FAST
@given(payload=st.binary(max_size=400))
def test_decoders_classify_arbitrary_bytes(name: str, decode: Any, topic: str, kind: type, docs: Any,
                                           payload: bytes) -> None:
    classify(decode, topic, payload, kind)


@pytest.mark.parametrize(("name", "decode", "topic", "kind", "docs"), DECODERS, ids=IDS)
@FAST
@given(doc=_json)
def test_decoders_classify_arbitrary_json(name: str, decode: Any, topic: str, kind: type, docs: Any,
                                          doc: Any) -> None:
    classify(decode, topic, json.dumps(doc).encode(), kind)


@pytest.mark.parametrize(("name", "decode", "topic", "kind", "docs"), DECODERS, ids=IDS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decoders_classify_mutated_samples(name: str, decode: Any, topic: str, kind: type, docs: Any,
                                           data: st.DataObject) -> None:
    doc = data.draw(mutated(docs))
    classify(decode, topic, json.dumps(doc, ensure_ascii=data.draw(st.booleans())).encode(), kind)


@pytest.mark.parametrize(("name", "decode", "topic", "kind", "docs"), DECODERS, ids=IDS)
def test_the_samples_themselves_decode(name: str, decode: Any, topic: str, kind: type, docs: Any) -> None:
    """The mutations start from documents that are accepted (else the property is vacuous)."""
    ctx = DecodeContext(now=datetime(2025, 1, 15, 8, 0, 5, tzinfo=UTC), max_past=timedelta(days=3650),
                        max_future=timedelta(days=3650), registry=CTX.registry, pii_key=b"k")
    for doc in docs:
        events = decode(topic, json.dumps(doc).encode(), ctx)
        assert events and all(isinstance(e, kind) for e in events)


def test_deeply_nested_json_is_classified() -> None:
    for n in (100, 1000, 100_000):
        for _name, decode, topic, kind, _ in DECODERS:
            classify(decode, topic, b"[" * n + b"]" * n, kind)
            classify(decode, topic, b'{"a":' * n + b"1" + b"}" * n, kind)


# ------------------------------------------------------------------ rules loader
RULES_DOC = yaml.safe_load(DEFAULT_RULES.read_text(encoding="utf-8"))
DEPARTMENTS_DOC = yaml.safe_load(DEFAULT_DEPARTMENTS.read_text(encoding="utf-8"))


def rules_outcome(text: str) -> None:
    try:
        parse_rules(text, "prop.yaml", RULES_DIR)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), repr(exc)


@FAST
@given(text=st.text(max_size=300))
def test_rules_loader_classifies_arbitrary_text(text: str) -> None:
    rules_outcome(text)


@FAST
@given(doc=_json)
def test_rules_loader_classifies_arbitrary_json(doc: Any) -> None:
    rules_outcome(json.dumps(doc))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated([RULES_DOC]))
def test_rules_loader_classifies_mutated_rules(doc: Any) -> None:
    rules_outcome(yaml.safe_dump(doc, allow_unicode=True))


def test_the_shipped_rules_load() -> None:
    assert parse_rules(DEFAULT_RULES.read_text(encoding="utf-8"), "routing.yaml", RULES_DIR).rules


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(doc=mutated([DEPARTMENTS_DOC, RULES_DOC]), raw=st.booleans())
def test_rules_check_cli_classifies_mutated_files(tmp_path: Path, doc: Any, raw: bool) -> None:
    """`citybrain rules check FILE` on a damaged departments or rules file."""
    f = tmp_path / "file.yaml"
    text = yaml.safe_dump(doc, allow_unicode=True)
    f.write_bytes(text.encode()[: len(text) // 2] if raw else text.encode())
    if isinstance(doc, dict) and doc.get("departments_file"):
        (tmp_path / str(doc["departments_file"])).write_text(DEFAULT_DEPARTMENTS.read_text(encoding="utf-8"))
    try:
        assert check(f).startswith("ok: ")
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), repr(exc)
