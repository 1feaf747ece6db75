"""Open311 GeoReport v2 intake, HTTP layer: httpx against the ASGI app, events
collected by an in-memory sink."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from citybrain.errors import ConfigError
from connectors.open311 import Open311Settings, create_app
from connectors.open311.geo import Gazetteer
from connectors.open311.services import SERVICES
from connectors.pii import caller_ref
from schemas import HotlineCategory, HotlineEvent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "payloads" / "open311"
NOW = datetime(2025, 1, 15, 8, 0, 5, tzinfo=UTC)
PII_KEY = "pii-test-key"
SETTINGS = Open311Settings(api_keys=(SecretStr("test-key-1"), SecretStr("test-key-2")), pii_key=SecretStr(PII_KEY))
BASE = "http://open311.test/open311/v2"
FORM = {"content-type": "application/x-www-form-urlencoded"}


class ListSink:
    def __init__(self) -> None:
        self.events: list[HotlineEvent] = []
        self.fail = False

    async def __call__(self, event: HotlineEvent) -> None:
        if self.fail:
            raise ConnectionError("kafka is away")
        self.events.append(event)


@pytest.fixture
def sink() -> ListSink:
    return ListSink()


@pytest.fixture
async def client(sink: ListSink) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(SETTINGS, sink, clock=lambda: NOW)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        yield c


def form_body() -> str:
    return (FIXTURES / "post-form.txt").read_text().strip()


def json_body(**over: Any) -> dict[str, Any]:
    body = json.loads((FIXTURES / "post.json").read_text())
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def assert_error(resp: httpx.Response, code: int, needle: str = "") -> None:
    assert resp.status_code == code, resp.text
    body = resp.json()
    assert isinstance(body, list) and len(body) == 1
    assert body[0]["code"] == code and isinstance(body[0]["description"], str) and body[0]["description"]
    assert needle in body[0]["description"]


async def test_services_list_maps_hotline_categories(client: httpx.AsyncClient) -> None:
    for path in ("/services.json", "/services"):
        resp = await client.get(path)
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/json")
        services = resp.json()
        assert {s["service_code"] for s in services} == {c.value for c in HotlineCategory}
        assert set(services[0]) == {"service_code", "service_name", "description", "metadata", "type", "keywords", "group"}
    flooding = (await client.get("/services/flooding.json")).json()
    assert flooding == {"service_code": "flooding", "attributes": []}
    assert (await client.get("/services/flooding")).status_code == 200
    assert_error(await client.get("/services/unicorns.json"), 404, "unicorns")


async def test_create_by_form_fetch_and_list(client: httpx.AsyncClient, sink: ListSink) -> None:
    resp = await client.post("/requests.json", content=form_body(), headers=FORM)
    assert resp.status_code == 201, resp.text
    (created,) = resp.json()
    rid = created["service_request_id"]
    assert rid.startswith("o311-20250115-") and created["service_notice"]

    (event,) = sink.events
    assert event.ticket_id == rid and event.kind == "created" and event.channel == "open311"
    assert event.category is HotlineCategory.FLOODING and event.urgency == "urgent"
    assert event.location.district == "朝阳区" and event.location.street == "双井街道"
    assert (event.location.lat, event.location.lon) == (39.8947, 116.4617)
    assert event.ts == NOW
    assert event.caller_ref == caller_ref(PII_KEY.encode(), "13812345678", "王建国")
    wire = event.to_json().decode()
    for pii in ("13812345678", "王建国", "建国", "wang.jianguo"):
        assert pii not in wire
    assert "138****5678" in event.description

    (fetched,) = (await client.get(f"/requests/{rid}.json")).json()
    assert fetched["service_request_id"] == rid and fetched["status"] == "open"
    assert fetched["service_code"] == "flooding" and fetched["lat"] == 39.8947 and fetched["long"] == 116.4617
    assert fetched["requested_datetime"] == "2025-01-15T16:00:05+08:00"
    assert fetched["expected_datetime"] == "2025-01-15T20:00:05+08:00"
    assert fetched["address"] == "朝阳区双井桥下穿"
    text = json.dumps(fetched, ensure_ascii=False)
    for pii in ("13812345678", "建国", "wang.jianguo", "first_name", "phone", "email"):
        assert pii not in text
    assert (await client.get(f"/requests/{rid}")).json() == [fetched]

    listed = (await client.get("/requests.json")).json()
    assert [r["service_request_id"] for r in listed] == [rid]


async def test_create_by_json_with_requested_datetime(client: httpx.AsyncClient, sink: ListSink) -> None:
    resp = await client.post("/requests.json", json=json_body())
    assert resp.status_code == 201, resp.text
    (event,) = sink.events
    assert event.category is HotlineCategory.NOISE and event.urgency == "normal"
    assert event.ts == datetime(2025, 1, 14, 17, 30, tzinfo=UTC)
    assert event.location.street == "三里屯街道"
    assert "139****5678" in event.description and "1234 5678" not in event.description
    assert event.caller_ref == caller_ref(PII_KEY.encode(), "+86 139 1234 5678", None)


async def test_address_only_is_located_by_street_name(client: httpx.AsyncClient, sink: ListSink) -> None:
    body = json_body(lat=None, long=None, address_string="海淀区中关村大街27号（中关村街道）")
    assert (await client.post("/requests.json", json=body)).status_code == 201
    assert sink.events[0].location.district == "海淀区" and sink.events[0].location.street == "中关村街道"


async def test_list_filters(client: httpx.AsyncClient) -> None:
    ids = {}
    for code, hours_ago in (("noise", 1), ("garbage", 30), ("noise", 100)):
        when = (NOW - timedelta(hours=hours_ago)).isoformat()
        r = await client.post("/requests.json", json=json_body(service_code=code, requested_datetime=when))
        assert r.status_code == 201, r.text
        ids[(code, hours_ago)] = r.json()[0]["service_request_id"]

    async def listed(**params: str) -> list[str]:
        resp = await client.get("/requests.json", params=params)
        assert resp.status_code == 200, resp.text
        return [r["service_request_id"] for r in resp.json()]

    assert len(await listed()) == 3
    assert set(await listed(service_code="noise")) == {ids[("noise", 1)], ids[("noise", 100)]}
    assert set(await listed(service_code="noise,garbage")) == set(ids.values())
    recent = (NOW - timedelta(hours=2)).isoformat()
    assert await listed(start_date=recent) == [ids[("noise", 1)]]
    assert await listed(end_date=(NOW - timedelta(hours=50)).isoformat()) == [ids[("noise", 100)]]
    assert await listed(status="open") == await listed()
    assert await listed(status="closed") == []
    two = f"{ids[('garbage', 30)]},{ids[('noise', 1)]}"
    assert set(await listed(service_request_id=two)) == {ids[("garbage", 30)], ids[("noise", 1)]}
    # an unencoded "+08:00" arrives as " 08:00"
    resp = await client.get("/requests.json?start_date=2025-01-15T14:00:00+08:00")
    assert [r["service_request_id"] for r in resp.json()] == [ids[("noise", 1)]]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"start_date": "yesterday"}, "start_date"),
        ({"end_date": "2025-01-15T08:00:00"}, "timezone"),
        ({"status": "pending"}, "status"),
        ({"service_code": "unicorns"}, "service_code"),
        ({"start_date": "2025-01-15T08:00:00Z", "end_date": "2025-01-14T08:00:00Z"}, "after"),
    ],
)
async def test_list_bad_filters_are_400(client: httpx.AsyncClient, params: dict[str, str], needle: str) -> None:
    assert_error(await client.get("/requests.json", params=params), 400, needle)


async def test_fetch_unknown_is_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/requests/o311-20250115-nope.json"), 404, "not found")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (json_body(service_code=None), "service_code is required"),
        (json_body(service_code="unicorns"), "service_code"),
        (json_body(lat=None, long=None, address_string=None), "location is required"),
        (json_body(lat=None), "together"),
        (json_body(lat="north"), "lat"),
        (json_body(lat=95.0), "lat"),
        (json_body(lat=31.23, long=121.47), "outside"),  # Shanghai
        (json_body(lat=None, long=None, address_string="somewhere nice"), "address_string"),
        (json_body(requested_datetime="2025-01-15T09:00:00"), "timezone"),
        (json_body(requested_datetime="2025-01-16T09:00:00Z"), "future"),
        (json_body(requested_datetime="2024-01-01T09:00:00Z"), "past"),
        (json_body(description="噪" * 2001), "description"),
        (json_body(phone=["13912345678"]), "phone"),
        (json_body(jurisdiction_id="shanghai.gov.cn"), "jurisdiction"),
    ],
)
async def test_bad_requests_are_400_with_reason(
    client: httpx.AsyncClient, sink: ListSink, body: dict[str, Any], needle: str
) -> None:
    resp = await client.post("/requests.json", json=body)
    assert_error(resp, 404 if "jurisdiction_id" in body and needle == "jurisdiction" else 400, needle)
    assert sink.events == []


@pytest.mark.parametrize(
    ("content", "ctype", "needle"),
    [
        (b"{not json", "application/json", "JSON"),
        (b"[1, 2]", "application/json", "object"),
        (b"\xff\xfeservice_code=noise", "application/x-www-form-urlencoded", "UTF-8"),
        (b"<xml/>", "text/xml", "content type"),
    ],
)
async def test_malformed_bodies_are_400(client: httpx.AsyncClient, content: bytes, ctype: str, needle: str) -> None:
    resp = await client.post("/requests.json?api_key=test-key-1", content=content, headers={"content-type": ctype})
    assert_error(resp, 400, needle)


async def test_api_key_missing_or_wrong_is_403(client: httpx.AsyncClient, sink: ListSink) -> None:
    assert_error(await client.post("/requests.json", json=json_body(api_key="nope")), 403, "api_key")
    assert_error(await client.post("/requests.json", json=json_body(api_key=None)), 403, "api_key")
    no_key = form_body().replace("api_key=test-key-1&", "")
    assert_error(await client.post("/requests.json", content=no_key, headers=FORM), 403)
    # the key may also come in the query string; the second key works too
    ok = await client.post("/requests.json?api_key=test-key-2", content=no_key, headers=FORM)
    assert ok.status_code == 201
    assert len(sink.events) == 1


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    big = json_body(description="x" * (SETTINGS.max_body_bytes + 10))
    assert_error(await client.post("/requests.json", json=big), 413)


async def test_sink_failure_is_503_and_nothing_is_stored(client: httpx.AsyncClient, sink: ListSink) -> None:
    sink.fail = True
    assert_error(await client.post("/requests.json", json=json_body()), 503, "retry")
    assert (await client.get("/requests.json")).json() == []
    sink.fail = False
    assert (await client.post("/requests.json", json=json_body())).status_code == 201


async def test_unknown_route_and_method_use_the_error_format(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/nothing.json"), 404)
    assert_error(await client.delete("/requests.json"), 405)


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="api_keys"):
        create_app(Open311Settings(pii_key=SecretStr("k")), ListSink())
    with pytest.raises(ConfigError, match="pii_key"):
        create_app(Open311Settings(api_keys=(SecretStr("a"),)), ListSink())


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPEN311_API_KEYS", "k1, k2")
    monkeypatch.setenv("OPEN311_PII_KEY", "secret")
    s = Open311Settings()
    assert [k.get_secret_value() for k in s.api_keys] == ["k1", "k2"]
    assert "k1" not in repr(s) and "secret" not in repr(s)


def test_gazetteer_resolves_nearest_street_and_rejects_outside() -> None:
    gaz = Gazetteer.default()
    loc = gaz.resolve(39.9962, 116.4703)
    assert loc is not None and (loc.district, loc.street) == ("朝阳区", "望京街道")
    assert gaz.resolve(31.23, 121.47) is None
    builtin = Gazetteer.builtin().resolve(39.984, 116.316)
    assert builtin is not None and builtin.street == "中关村街道"
    assert len(SERVICES) == len(HotlineCategory)


async def test_injected_resolver_is_used(sink: ListSink) -> None:
    from schemas import Location

    def resolver(lat: float, lon: float) -> Location:
        return Location(district="测试区", street="测试街道", lat=lat, lon=lon)

    app = create_app(SETTINGS, sink, resolver=resolver, clock=lambda: NOW)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        assert (await c.post("/requests.json", json=json_body())).status_code == 201
    assert sink.events[0].location.district == "测试区"
