"""Open311 GeoReport v2 (JSON) over FastAPI.

    GET  /open311/v2/services.json              the service list (= hotline categories)
    GET  /open311/v2/services/{code}.json       a service definition (no extra attributes)
    POST /open311/v2/requests.json              create a service request (api_key required)
    GET  /open311/v2/requests.json              query: service_request_id, service_code,
                                                start_date, end_date, status
    GET  /open311/v2/requests/{id}.json         one request

Each path also answers without `.json`. Field names follow GeoReport v2
(`service_code`, `description`, `lat`, `long`, `address_string`, `email`,
`first_name`, `last_name`, `phone`, `media_url`, `requested_datetime`, ...).
POST bodies may be form-encoded (as the spec's examples) or a JSON object.

Errors use GeoReport's format, a list of `{"code", "description"}`: 400 for a
bad request (the description says what), 403 for a missing or wrong api_key,
404 for an unknown service or request, 413 for an oversized body, 429 when
an api_key exceeds its rate (token bucket: `rate_per_s`, `rate_burst`; the
response says when to retry, also as Retry-After), 503 when the request could
not be handed on (nothing was stored: retry).

An accepted request becomes a `HotlineEvent` (kind "created", channel
"open311"): the caller's phone/name become `caller_ref` (keyed HMAC), phone
numbers inside the description are masked, and the event is given to the
injected `sink`, which must hand it on durably (Kafka acks=all) before the
request is stored and acknowledged to the client. The clear PII stays in the
intake's store and is never returned by GET.
"""

from __future__ import annotations

import hmac
import math
import re
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from citybrain.errors import ConfigError
from connectors.open311.geo import Gazetteer, Resolver
from connectors.open311.ratelimit import RateLimiter
from connectors.open311.services import BY_CODE, SERVICES, Service
from connectors.open311.settings import Open311Settings
from connectors.open311.store import CallerPII, InMemoryStore, RequestStore, StoredRequest
from connectors.pii import caller_ref, mask_phone
from schemas import HotlineCategory, HotlineEvent, Location, stable_id
from schemas.common import now_utc

Sink = Callable[[HotlineEvent], Awaitable[None]]
BEIJING = timezone(timedelta(hours=8), "CST")
PREFIX = "/open311/v2"
MAX_FIELD = 2000
TEXT_FIELDS = (
    "jurisdiction_id", "service_code", "address_string", "address_id", "email", "device_id", "account_id",
    "first_name", "last_name", "phone", "description", "media_url", "requested_datetime", "api_key",
)  # fmt: skip


class Open311Error(Exception):
    def __init__(self, code: int, description: str, retry_after_s: float | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after_s = retry_after_s


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json; charset=utf-8")


def _error(code: int, description: str) -> Response:
    return _json([{"code": code, "description": description}], code)


def _iso(ts: datetime | None) -> str | None:
    return ts.astimezone(BEIJING).isoformat(timespec="seconds") if ts else None


def _parse_dt(value: str, name: str) -> datetime:
    # an unencoded "+08:00" in a query string or form arrives as " 08:00"
    text = re.sub(r" (\d{2}:?\d{2})$", r"+\1", value.strip())
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise Open311Error(400, f"{name} {value[:40]!r} is not an ISO 8601 date/time") from None
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise Open311Error(400, f"{name} must carry a timezone (e.g. 2025-01-15T08:00:00+08:00 or ...Z)")
    return ts.astimezone(UTC)


def _coord(value: str | None, name: str, low: float, high: float) -> float | None:
    if value is None or value == "":
        return None
    try:
        f = float(value)
    except ValueError:
        raise Open311Error(400, f"{name} {value[:40]!r} is not a number") from None
    if not math.isfinite(f) or not low <= f <= high:
        raise Open311Error(400, f"{name} {value[:40]!r} is out of range [{low}, {high}]")
    return f


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


async def _read_fields(request: Request, max_bytes: int) -> dict[str, str]:
    """The POST body as text fields: form-encoded or a JSON object."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise Open311Error(413, f"request body larger than {max_bytes} bytes")
    body = await request.body()
    if len(body) > max_bytes:
        raise Open311Error(413, f"request body larger than {max_bytes} bytes")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Open311Error(400, "request body is not valid UTF-8") from None
    raw: Mapping[str, Any]
    if ctype == "application/json" or (not ctype and text.lstrip().startswith("{")):
        try:
            data = orjson.loads(text) if text.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise Open311Error(400, f"request body is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise Open311Error(400, "a JSON request body must be an object")
        raw = data
    elif ctype in ("application/x-www-form-urlencoded", ""):
        try:
            pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, errors="strict")
        except (ValueError, UnicodeDecodeError) as exc:
            raise Open311Error(400, f"request body is not a valid form ({exc})") from None
        raw = {}
        for k, v in pairs:
            raw.setdefault(k, v)  # first value wins
    else:
        raise Open311Error(400, f"unsupported content type {ctype!r}: send a form or JSON")
    fields: dict[str, str] = {}
    for key, value in raw.items():
        if value is None:
            continue
        if key in ("lat", "long") and isinstance(value, int | float) and not isinstance(value, bool):
            fields[key] = repr(float(value))
        elif isinstance(value, str):
            fields[key] = value.strip()
        elif isinstance(value, int) and not isinstance(value, bool) and key in ("phone", "account_id", "address_id"):
            fields[key] = str(value)
        elif key in TEXT_FIELDS or key in ("lat", "long"):
            raise Open311Error(400, f"{key} must be a string")
        # other keys (attribute[...], extensions) are not used
    for key in TEXT_FIELDS:
        if len(fields.get(key, "")) > MAX_FIELD:
            raise Open311Error(400, f"{key} is longer than {MAX_FIELD} characters")
    return fields


def _request_view(r: StoredRequest, service: Service) -> dict[str, Any]:
    """A request as GET returns it: no caller PII, description already masked."""
    e = r.event
    return {
        "service_request_id": r.service_request_id,
        "status": r.open311_status,
        "status_notes": None,
        "service_name": service.name,
        "service_code": r.service_code,
        "description": e.description,
        "agency_responsible": e.department or service.agency,
        "service_notice": None,
        "requested_datetime": _iso(e.ts),
        "updated_datetime": _iso(r.updated_datetime),
        "expected_datetime": _iso(r.expected_datetime),
        "address": r.address or " ".join(p for p in (e.location.district, e.location.street) if p),
        "address_id": None,
        "zipcode": None,
        "lat": e.location.lat,
        "long": e.location.lon,
        "media_url": r.media_url,
    }


def create_app(
    settings: Open311Settings,
    sink: Sink,
    *,
    store: RequestStore | None = None,
    resolver: Resolver | None = None,
    gazetteer: Gazetteer | None = None,
    clock: Callable[[], datetime] = now_utc,
    monotonic: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The intake app. `sink(event)` must durably hand the event on (raise if
    it could not); `store` keeps requests (default: in memory); `resolver`
    maps lat/long to a Location (default: nearest street in `gazetteer`, the
    shipped Beijing file)."""
    keys = [k.get_secret_value().encode() for k in settings.api_keys if k.get_secret_value()]
    if not keys:
        raise ConfigError("Open311 intake: no api_keys configured (OPEN311_API_KEYS)")
    pii_key = settings.pii_key.get_secret_value().encode()
    if not pii_key:
        raise ConfigError("Open311 intake: pii_key is required to pseudonymise callers (OPEN311_PII_KEY)")
    gaz = gazetteer or Gazetteer.default(settings.geography_file)
    resolve: Resolver = resolver or gaz.resolve
    requests_store: RequestStore = store if store is not None else InMemoryStore()

    app = FastAPI(title="citybrain Open311 GeoReport v2", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = requests_store

    @app.exception_handler(Open311Error)
    async def _open311_error(request: Request, exc: Open311Error) -> Response:
        resp = _error(exc.code, exc.description)
        if exc.retry_after_s is not None:
            resp.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return resp

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _error(400, "invalid request parameters")

    def check_jurisdiction(value: str | None) -> None:
        if value and value != settings.jurisdiction_id:
            raise Open311Error(404, f"jurisdiction_id {value!r} is not served here ({settings.jurisdiction_id})")

    limiter = RateLimiter(settings.rate_per_s, settings.rate_burst)

    def check_key(candidate: str | None) -> None:
        if not candidate:
            raise Open311Error(403, "api_key is required to submit a service request")
        given = candidate.encode()
        matched = [i for i, k in enumerate(keys) if hmac.compare_digest(given, k)]
        if not matched:
            raise Open311Error(403, "api_key is not valid")
        wait = limiter.take(f"key{matched[0]}", monotonic())  # the key's index: no secret kept as a dict key
        if wait > 0:
            raise Open311Error(429, f"too many requests for this api_key; retry in {wait:.1f} s", wait)

    def service_for(code: str) -> Service:
        service = BY_CODE.get(code)
        if service is None:
            raise Open311Error(404, f"service_code {code!r} is not a service of this jurisdiction")
        return service

    # ---- services ------------------------------------------------------

    async def services(request: Request) -> Response:
        check_jurisdiction(request.query_params.get("jurisdiction_id"))
        return _json([s.as_georeport() for s in SERVICES])

    async def service_definition(request: Request, service_code: str) -> Response:
        check_jurisdiction(request.query_params.get("jurisdiction_id"))
        service = service_for(service_code.removesuffix(".json"))
        return _json({"service_code": service.code, "attributes": []})

    # ---- requests ------------------------------------------------------

    async def post_request(request: Request) -> Response:
        f = await _read_fields(request, settings.max_body_bytes)
        check_key(f.get("api_key") or request.query_params.get("api_key"))
        check_jurisdiction(f.get("jurisdiction_id"))
        code = f.get("service_code")
        if not code:
            raise Open311Error(400, "service_code is required")
        service = BY_CODE.get(code)
        if service is None:
            raise Open311Error(400, f"service_code {code!r} is not a service of this jurisdiction")

        now = clock()
        lat = _coord(f.get("lat"), "lat", -90, 90)
        lon = _coord(f.get("long"), "long", -180, 180)
        address = f.get("address_string") or None
        if (lat is None) != (lon is None):
            raise Open311Error(400, "lat and long must be given together")
        location: Location | None
        if lat is not None and lon is not None:
            location = resolve(lat, lon)
            if location is None:
                raise Open311Error(400, f"lat/long ({lat}, {lon}) is outside {settings.jurisdiction_id}")
        elif address:
            location = gaz.locate_address(address)
            if location is None:
                raise Open311Error(400, "address_string names no district or street of the city: send lat and long")
        else:
            raise Open311Error(400, "a location is required: lat and long, or address_string")

        ts = now
        if f.get("requested_datetime"):
            ts = _parse_dt(f["requested_datetime"], "requested_datetime")
            if ts > now + timedelta(seconds=settings.max_future_s):
                raise Open311Error(400, "requested_datetime is in the future")
            if ts < now - timedelta(seconds=settings.max_past_s):
                raise Open311Error(400, "requested_datetime is too far in the past")

        caller = CallerPII(
            first_name=f.get("first_name") or None,
            last_name=f.get("last_name") or None,
            phone=f.get("phone") or None,
            email=f.get("email") or None,
            device_id=f.get("device_id") or None,
            account_id=f.get("account_id") or None,
        )
        name = "".join(p for p in (caller.last_name, caller.first_name) if p) or caller.email
        ticket = f"o311-{now.astimezone(BEIJING):%Y%m%d}-{uuid.uuid4().hex[:10]}"
        try:
            event = HotlineEvent(
                event_id=stable_id("open311", ticket, "created", prefix="h-"),
                ticket_id=ticket,
                kind="created",
                category=HotlineCategory(service.code),
                ts=ts,
                location=location,
                description=mask_phone(f.get("description", "")),
                urgency="urgent" if service.urgent else "normal",
                channel="open311",
                caller_ref=caller_ref(pii_key, caller.phone, name),
            )
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in err["loc"]) or "request"
            raise Open311Error(400, f"{loc}: {err['msg']}") from None

        try:
            await sink(event)
        except Exception:
            # nothing stored, nothing acknowledged: the client retries
            raise Open311Error(503, "the request could not be recorded right now; please retry") from None
        stored = StoredRequest(
            service_request_id=ticket,
            service_code=service.code,
            event=event,
            address=address,
            media_url=f.get("media_url") or None,
            expected_datetime=ts + timedelta(hours=service.expected_hours),
            updated_datetime=now,
            caller=caller,
        )
        await requests_store.add(stored)
        notice = f"已受理，{service.agency}将在{service.expected_hours}小时内处理 (handled within {service.expected_hours} h)"
        return _json([{"service_request_id": ticket, "service_notice": notice, "account_id": caller.account_id}], 201)

    async def get_requests(request: Request) -> Response:
        q = request.query_params
        check_jurisdiction(q.get("jurisdiction_id"))
        ids = _csv(q.get("service_request_id"))
        codes = _csv(q.get("service_code"))
        for code in codes:
            if code not in BY_CODE:
                raise Open311Error(400, f"service_code {code!r} is not a service of this jurisdiction")
        statuses = _csv(q.get("status"))
        for s in statuses:
            if s not in ("open", "closed"):
                raise Open311Error(400, f"status {s!r} is not open or closed")
        start = _parse_dt(q["start_date"], "start_date") if q.get("start_date") else None
        end = _parse_dt(q["end_date"], "end_date") if q.get("end_date") else None
        if start and end and start > end:
            raise Open311Error(400, "start_date is after end_date")
        if not ids and start is None:
            start = (end or clock()) - timedelta(days=settings.default_days)
        found = await requests_store.query(
            ids=ids, codes=codes, start=start, end=end, statuses=statuses, limit=settings.max_results
        )
        return _json([_request_view(r, BY_CODE[r.service_code]) for r in found])

    async def get_request(request: Request, service_request_id: str) -> Response:
        check_jurisdiction(request.query_params.get("jurisdiction_id"))
        rid = service_request_id.removesuffix(".json")
        found = await requests_store.get(rid)
        if found is None:
            raise Open311Error(404, f"service request {rid!r} not found")
        return _json([_request_view(found, BY_CODE[found.service_code])])

    for suffix in (".json", ""):
        app.add_api_route(f"{PREFIX}/services{suffix}", services, methods=["GET"])
        app.add_api_route(f"{PREFIX}/services/{{service_code}}{suffix}", service_definition, methods=["GET"])
        app.add_api_route(f"{PREFIX}/requests{suffix}", post_request, methods=["POST"])
        app.add_api_route(f"{PREFIX}/requests{suffix}", get_requests, methods=["GET"])
        app.add_api_route(f"{PREFIX}/requests/{{service_request_id}}{suffix}", get_request, methods=["GET"])
    return app
