"""The operations center's HTTP API, live feed and dashboard (one FastAPI app).

`create_app(settings)` builds everything from one settings object; tests and
the benchmark pass their own (schema, topic prefix). The OpenAPI document is
at /openapi.json; the interactive docs pages are off (they load from a CDN).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import asyncpg
import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opscenter import queries as q
from opscenter.auth import Principal, Role, TokenStore
from opscenter.fastquery import openapi_query, parse_query
from opscenter.feed import FeedEvent, LiveHub, Publisher
from opscenter.geo import load_map
from opscenter.replays import Invalid, ReplayIn, ReplayManager, plan
from opscenter.reports import PERIODS, build_report, render_html
from opscenter.settings import OpscenterSettings
from opscenter.shaping import AlertShaper, mask_value
from schemas import ActionKind, AlertAction
from schemas.common import now_utc, stable_id
from storage.audit import append_audit
from streams.routing import Registry, load_registry, mask_text

__all__ = ["create_app", "mask_value"]

log = logging.getLogger("citybrain.opscenter")
STATIC = Path(__file__).resolve().parent / "static"
API = "/api/v1"
MAX_RANGE = timedelta(days=400)

DEPARTMENT_ACTIONS = frozenset({ActionKind.ACK, ActionKind.RESOLVE, ActionKind.COMMENT, ActionKind.REASSIGN,
                                ActionKind.ESCALATE})
OPS_ACTIONS = DEPARTMENT_ACTIONS | {ActionKind.CLOSE, ActionKind.REOPEN}
MODE_ROLES_DEPARTMENTS = frozenset({"ema"})  # besides ops; as streams.emergency.AUTHORISED


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def bad(reason: str) -> HTTPException:
    return HTTPException(400, reason)


# ------------------------------------------------------------------ request bodies
class ActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["ack", "resolve", "comment", "reassign", "escalate", "close", "reopen"]
    comment: str | None = Field(default=None, max_length=2000)
    target_department: str | None = Field(default=None, max_length=128)
    idempotency_key: str | None = Field(default=None, min_length=8, max_length=128,
                                        description="the same key from the same token gives the same event_id")


class ModeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scope: str = Field(description="'city' or 'district:<code>' (e.g. district:chaoyang)", max_length=64)
    mode: Literal["normal", "emergency"]
    comment: str | None = Field(default=None, max_length=500)


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    role: Literal["ops", "department", "engineer"]
    department: str | None = Field(default=None, max_length=128)
    ttl_hours: float = Field(default=24 * 30, gt=0, le=24 * 366)


class AlertListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    status: str | None = Field(default=None, max_length=200,
                               description="comma list of new, dispatched, acknowledged, resolved, closed, cleared, "
                                           "reopened")
    severity: str | None = Field(default=None, max_length=50, description="comma list of I, II, III, IV")
    department: str | None = Field(default=None, max_length=128)
    district: str | None = Field(default=None, max_length=32, description="name (朝阳区) or code (chaoyang)")
    street: str | None = Field(default=None, max_length=64)
    rule: str | None = Field(default=None, max_length=128)
    category: str | None = Field(default=None, max_length=64)
    subject: str | None = Field(default=None, max_length=128)
    open: bool = Field(default=False, description="only new, dispatched, acknowledged, reopened")
    since: datetime | None = Field(default=None, description="ISO 8601 with zone; inclusive")
    until: datetime | None = Field(default=None, description="ISO 8601 with zone; exclusive")
    limit: int = Field(default=50, ge=1, le=500, description="page size")
    cursor: str | None = Field(default=None, max_length=512, description="next_cursor of the previous page")
    total: bool = Field(default=False, description="also count all matches (slower)")


class AlertDetailQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    before_minutes: int = Field(default=120, ge=0, le=7 * 24 * 60, description="series before the window")
    after_minutes: int = Field(default=60, ge=0, le=7 * 24 * 60, description="series after the last reading")
    resolution: Literal["auto", "raw", "1m", "1h"] = "auto"


# ------------------------------------------------------------------ helpers
def parse_list(value: str | None, allowed: tuple[str, ...] | None, name: str) -> list[str]:
    if not value:
        return []
    items = [v.strip() for v in value.split(",") if v.strip()]
    if allowed is not None:
        wrong = [v for v in items if v not in allowed]
        if wrong:
            raise bad(f"{name}: {', '.join(wrong)} not one of {', '.join(allowed)}")
    return items


def time_range(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    for name, t in (("since", since), ("until", until)):
        if t is not None and (t.tzinfo is None or t.utcoffset() is None):
            raise bad(f"{name} must carry a time zone, e.g. 2025-07-01T08:00:00+08:00")
    if since and until and since >= until:
        raise bad("since must be before until")
    return since, until


Since = Annotated[datetime | None, Query(description="ISO 8601 with zone; inclusive")]
Until = Annotated[datetime | None, Query(description="ISO 8601 with zone; exclusive")]
Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
Cursor = Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page")]

STATUSES = ("new", "dispatched", "acknowledged", "resolved", "closed", "cleared", "reopened")
SEVERITIES = ("I", "II", "III", "IV")
TICKET_STATUSES = ("open", "dispatched", "in_progress", "resolved", "closed")


# ------------------------------------------------------------------ the app
class State:
    def __init__(self, settings: OpscenterSettings) -> None:
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self.tokens: TokenStore | None = None
        self.hub: LiveHub | None = None
        self.publisher: Publisher | None = None
        self.registry: Registry = load_registry()
        self.sla = q.SlaPolicy(dict(settings.ack_minutes), dict(settings.resolve_minutes),
                               settings.emergency_sla_factor)
        self.shaper = AlertShaper(self.sla, settings.shaped_cache_items)
        self.tz = ZoneInfo(settings.report_timezone)
        self.clock: Callable[[], datetime] = now_utc


bearer = HTTPBearer(auto_error=False, description="cbt_... token")


async def principal(request: Request,
                    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    st: State = request.app.state.ops
    assert st.tokens is not None
    p = await st.tokens.authenticate(creds.credentials, st.clock())
    if p is None:
        raise HTTPException(401, "invalid, expired or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return p


Who = Annotated[Principal, Depends(principal)]


def create_app(settings: OpscenterSettings, *, clock: Callable[[], datetime] = now_utc, kafka: bool = True,
               on_ready: Callable[[State], Awaitable[None]] | None = None,
               replay_env: Mapping[str, str] | None = None) -> FastAPI:
    """`replay_env`: the environment a replay's worker process starts with
    (the entry point's own); without it POST /api/v1/replays answers 503."""
    st = State(settings)
    st.clock = clock
    replays = ReplayManager(database_url=settings.database_url, bootstrap=settings.kafka_bootstrap_servers,
                            schema=settings.db_schema, run_root=settings.replay_run_root, base_env=replay_env,
                            partitions=settings.replay_partitions, max_running=settings.replay_max_running,
                            clock=clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from storage.db import create_pool

        st.pool = await create_pool(settings.database_url.get_secret_value(), settings.db_schema,
                                    "citybrain-opscenter", min_size=settings.pool_min, max_size=settings.pool_max)
        from storage.db import current_flavor

        async with st.pool.acquire() as conn:
            await current_flavor(conn)  # ConfigError "run citybrain db migrate" when not migrated
        st.tokens = TokenStore(st.pool, settings.token_cache_s)
        await st.tokens.ensure_table()
        if kafka:
            kw = settings.kafka_security.aiokafka_kwargs()
            st.publisher = Publisher(settings.kafka_bootstrap_servers, settings.client_id, kw)
            await st.publisher.start()
            st.hub = LiveHub(settings.kafka_bootstrap_servers, settings.topics, settings.mode_topic,
                             settings.client_id, settings.feed_queue, client_kwargs=kw)
            await st.hub.start()
        if on_ready is not None:
            await on_ready(st)
        # What start-up built (registry, geography, routes, OpenAPI models) lives as
        # long as the process: out of the collector's sight, full collections walk only
        # what requests allocate (they paused every in-flight request by ~40 ms).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await replays.stop_all()
            if st.hub:
                await st.hub.stop()
            if st.publisher:
                await st.publisher.stop()
            await st.pool.close()

    app = FastAPI(
        title="City brain operations center (城市运行指挥中心)",
        version="1.0",
        description=(
            "Alerts, incidents, 12345 tickets, sensors, KPIs and reports for the operations center and the "
            "departments, with a live feed (Server-Sent Events at /api/v1/feed).\n\n"
            "**Auth**: `Authorization: Bearer cbt_...`. Roles: `ops` (everything), `department` (its own alerts "
            "and tickets, citizen data masked), `engineer` (read everything, citizen data masked, no actions). "
            "401 without a valid token, 403 outside one's role, 400 with a `reason` for bad parameters.\n\n"
            "**Actions** (POST /api/v1/alerts/{id}/actions) are published as `schemas.AlertAction` to "
            "`city.alert.actions` (key alert_id; idempotent producer, acks=all); the stream applies them and "
            "the alert's new revision arrives on `city.alerts`.\n\n"
            "**Emergency mode** (POST /api/v1/mode) is published to `city.control.mode` (key = scope) as "
            "`{event_id, scope, mode, actor, actor_department, ts}` (streams.emergency.ModeSwitch); "
            "ops and the emergency bureau (ema) may switch.\n\n"
            "**Replays** (POST /api/v1/replays, engineers and ops) re-run a recorded range through an isolated "
            "worker as `citybrain replay` does (a child process; topics `replay.<run>.*`); GET /api/v1/replays/{run} "
            "gives its status, counts and, when done, the diff against the recorded alerts. 422 with a `reason` "
            "for a request that cannot run; 409 while the allowed number of runs is running."
        ),
        lifespan=lifespan,
        # FastAPI's built-in OpenTelemetry hooks ask os.environ for three providers on every
        # request; this service exports none (~3% of its CPU per request under bench.api)
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url=None,
        redoc_url=None,
        default_response_class=JSON,
    )
    app.state.ops = st

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSON:
        errs = exc.errors()
        reasons = []
        for e in errs:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body", "path"))
            reasons.append(f"{loc or 'request'}: {e.get('msg')}")
        return JSON({"error": "bad_request", "reason": "; ".join(reasons)}, status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSON:
        kinds = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
                 422: "unprocessable", 503: "unavailable"}
        return JSON({"error": kinds.get(exc.status_code, "error"), "reason": exc.detail},
                    status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(q.BadCursor)
    async def _cursor(request: Request, exc: q.BadCursor) -> JSON:
        return JSON({"error": "bad_request", "reason": f"cursor: {exc}"}, status_code=400)

    def pool() -> asyncpg.Pool:
        assert st.pool is not None
        return st.pool

    async def audit(p: Principal, kind: str, subject: str, details: dict[str, Any], at: datetime) -> None:
        # after the publish succeeded: the trail records what took effect
        async with pool().acquire() as conn:
            await append_audit(conn, actor=p.name, kind=kind, subject=subject,
                               details={k: v for k, v in details.items() if v is not None}, at=at)

    def visible(p: Principal) -> str | None:
        return None if p.sees_all else p.department

    def shape_alert(a: dict[str, Any], p: Principal, now: datetime) -> dict[str, Any]:
        return st.shaper.shape(a, pseudonymous(p), now)

    def pseudonymous(p: Principal) -> bool:
        if p.role is Role.OPS:
            return True
        if p.role is Role.DEPARTMENT and p.department:
            d = st.registry.get(p.department)
            return d is not None and d.pii == "pseudonymous"
        return False

    def sla_info(a: dict[str, Any], now: datetime, ack_at: datetime | None = None) -> dict[str, Any]:
        return st.shaper.sla_info(a, now, ack_at)

    async def alert_for(alert_id: str, p: Principal) -> dict[str, Any]:
        a = await q.get_alert(pool(), alert_id)
        if a is None:
            raise HTTPException(404, f"no alert {alert_id}")
        if not p.can_see_alert(a["departments"]):
            raise HTTPException(403, f"alert {alert_id} is not routed to {p.department}")
        return a

    def mask_ticket(t: dict[str, Any], p: Principal) -> dict[str, Any]:
        if not pseudonymous(p):
            t["caller_ref"] = None
        if t.get("description"):
            t["description"] = mask_text(t["description"])
        return t

    # -------------------------------------------------------------- public
    @app.get("/healthz", tags=["service"], summary="liveness and readiness (no auth)")
    async def healthz() -> JSON:
        ok = True
        try:
            await pool().fetchval("SELECT 1")
        except (asyncpg.PostgresError, OSError):
            ok = False
        hub_ready = st.hub.ready.is_set() if st.hub else None
        return JSON({"ok": ok, "live_feed": hub_ready}, status_code=200 if ok else 503)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -------------------------------------------------------------- who / geography
    @app.get(f"{API}/me", tags=["service"], summary="the caller's identity and role")
    async def me(p: Who) -> JSON:
        return JSON(p.public())

    @app.get(f"{API}/geo", tags=["service"], summary="the map: street cells, district borders, projection")
    async def geo(p: Who) -> Response:
        return Response(_map_json(), media_type="application/json", headers={"Cache-Control": "max-age=3600"})

    @app.get(f"{API}/departments", tags=["service"], summary="department registry (city, district, street)")
    async def departments(p: Who, level: Literal["city", "district", "street"] | None = None) -> JSON:
        out = [{"code": d.code, "name": d.name, "name_en": d.name_en, "level": d.level, "district": d.district}
               for d in st.registry.departments.values() if level is None or d.level == level]
        return JSON({"items": out})

    # -------------------------------------------------------------- alerts
    @app.get(f"{API}/alerts", tags=["alerts"], summary="alerts, newest first, filtered and paginated",
             openapi_extra=openapi_query(AlertListQuery))
    async def list_alerts(request: Request, p: Who) -> Response:
        a = parse_query(AlertListQuery, request)
        since, until = time_range(a.since, a.until)
        if a.department and not p.sees_all and a.department != p.department:
            raise HTTPException(403, f"a {p.department} token sees only its own department's alerts")
        f = q.AlertFilter(
            status=parse_list(a.status, STATUSES, "status"), severity=parse_list(a.severity, SEVERITIES, "severity"),
            department=a.department, district=_district(a.district), street=a.street, rule=a.rule,
            category=a.category, subject=a.subject, since=since, until=until, open_only=a.open,
            visible_to=visible(p))
        rows, nxt = await q.list_alert_rows(pool(), f, a.limit, a.cursor)
        extra: dict[str, Any] = {"next_cursor": nxt}
        if a.total:
            extra["total"] = await q.count_alerts(pool(), f)
        return Response(st.shaper.page_json(rows, pseudonymous(p), clock(), extra), media_type="application/json")

    @app.get(f"{API}/alerts/{{alert_id}}", tags=["alerts"],
             summary="one alert: evidence, SLA, history, actions and the sensor's series around it",
             openapi_extra=openapi_query(AlertDetailQuery))
    async def get_alert(request: Request, p: Who, alert_id: Annotated[str, PathParam(max_length=128)]) -> JSON:
        dq = parse_query(AlertDetailQuery, request)
        before_minutes, after_minutes, resolution = dq.before_minutes, dq.after_minutes, dq.resolution
        a = await q.get_alert_detail(pool(), alert_id, before_minutes, after_minutes, resolution)
        if a is None:
            raise HTTPException(404, f"no alert {alert_id}")
        if not p.can_see_alert(a["departments"]):
            raise HTTPException(403, f"alert {alert_id} is not routed to {p.department}")
        history = a.pop("history")
        actions = a.pop("actions")
        acks = [x["ts"] for x in actions if x["action"] == "ack"]
        now = clock()
        payload = a.pop("payload", {})
        shape_alert(a, p, now)
        a["sla"] = sla_info(a, now, min(acks) if acks else None)
        a["trigger_sent_at"] = payload.get("trigger_sent_at")
        actions = [dict(x, comment=mask_text(x["comment"]) if x["comment"] else x["comment"]) for x in actions]
        ev = a["evidence"]
        series = {"sensor_id": a["subject"] if a.get("sensor_type") else None, "resolution": a.pop("series_resolution"),
                  "since": a.pop("series_since"), "until": a.pop("series_until"), "threshold": ev.get("threshold"),
                  "baseline": (ev.get("details") or {}).get("baseline"), "points": a.pop("points")}
        a["history"] = history
        a["actions"] = actions
        a["series"] = series
        return JSON(a)

    @app.post(f"{API}/alerts/{{alert_id}}/actions", tags=["alerts"], status_code=202,
              summary="acknowledge, resolve, comment, reassign, escalate (ops: also close, reopen)")
    async def act(p: Who, alert_id: Annotated[str, PathParam(max_length=128)], body: ActionIn) -> JSON:
        if p.role is Role.ENGINEER:
            raise HTTPException(403, "engineers read and replay; they do not act on alerts")
        kind = ActionKind(body.action)
        allowed = OPS_ACTIONS if p.role is Role.OPS else DEPARTMENT_ACTIONS
        if kind not in allowed:
            raise HTTPException(403, f"{p.role.value} may not {kind.value} (allowed: "
                                     f"{', '.join(sorted(k.value for k in allowed))})")
        if kind is ActionKind.REASSIGN:
            if not body.target_department:
                raise bad("reassign needs target_department")
            if body.target_department not in st.registry:
                raise bad(f"target_department {body.target_department!r} is not a known department")
        elif body.target_department:
            raise bad("target_department is only for reassign")
        if kind is ActionKind.COMMENT and not (body.comment and body.comment.strip()):
            raise bad("comment needs comment text")
        a = await alert_for(alert_id, p)
        if a["status"] == "closed" and kind not in (ActionKind.COMMENT, ActionKind.REOPEN):
            raise HTTPException(409, f"alert {alert_id} is closed; reopen it first")
        if st.publisher is None:
            raise HTTPException(503, "the action topic is not connected")
        ts = clock()
        event_id = (stable_id("action", p.token_id, alert_id, body.idempotency_key, prefix="act-")
                    if body.idempotency_key else f"act-{uuid.uuid4().hex}")
        action = AlertAction(event_id=event_id, alert_id=alert_id, action=kind, actor=p.name[:64],
                             actor_department=p.actor_department, ts=ts, comment=body.comment,
                             target_department=body.target_department)
        topic = settings.topics.actions
        part, off = await st.publisher.send(topic, alert_id, action.to_json())
        await audit(p, f"alert.{kind.value}", alert_id, {
            "event_id": event_id, "department": p.actor_department, "token_id": p.token_id,
            "comment": body.comment, "target_department": body.target_department,
            "topic": topic, "partition": part, "offset": off}, ts)
        return JSON({"action": action.model_dump(mode="json", exclude_none=True), "topic": topic,
                     "partition": part, "offset": off}, status_code=202)

    # -------------------------------------------------------------- incidents
    @app.get(f"{API}/incidents", tags=["incidents"], summary="incidents, newest first")
    async def list_incidents(
        p: Who,
        status: Annotated[str | None, Query(description="comma list of open, resolved, closed")] = None,
        severity: Annotated[str | None, Query()] = None,
        district: Annotated[str | None, Query(max_length=32)] = None,
        kind: Annotated[str | None, Query(max_length=64)] = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> JSON:
        since, until = time_range(since, until)
        f = q.IncidentFilter(status=parse_list(status, ("open", "resolved", "closed"), "status"),
                             severity=parse_list(severity, SEVERITIES, "severity"), district=_district(district),
                             kind=kind, since=since, until=until, visible_to=visible(p))
        items, nxt = await q.list_incidents(pool(), f, limit, cursor)
        return JSON({"items": items, "next_cursor": nxt})

    @app.get(f"{API}/incidents/{{incident_id}}", tags=["incidents"], summary="one incident with its alerts and tickets")
    async def get_incident(p: Who, incident_id: Annotated[str, PathParam(max_length=128)]) -> JSON:
        conn = pool()
        inc = await q.get_incident(conn, incident_id)
        if inc is None:
            raise HTTPException(404, f"no incident {incident_id}")
        alerts = await q.alerts_by_ids(conn, inc["alert_ids"])
        if not p.sees_all and not any(p.can_see_alert(a["departments"]) for a in alerts):
            raise HTTPException(403, f"incident {incident_id} has no alert routed to {p.department}")
        now = clock()
        inc["alerts"] = [shape_alert(a, p, now) for a in alerts if p.can_see_alert(a["departments"])]
        tickets = await q.tickets_by_ids(conn, inc["ticket_ids"])
        inc["tickets"] = [mask_ticket(t, p) for t in tickets if p.sees_all or t.get("department") == p.department]
        return JSON(inc)

    # -------------------------------------------------------------- tickets
    @app.get(f"{API}/tickets", tags=["hotline"], summary="12345 tickets (latest state), newest first")
    async def list_tickets(
        p: Who,
        status: Annotated[str | None, Query(description=f"comma list of {', '.join(TICKET_STATUSES)}")] = None,
        category: Annotated[str | None, Query(max_length=64)] = None,
        district: Annotated[str | None, Query(max_length=32)] = None,
        street: Annotated[str | None, Query(max_length=64)] = None,
        department: Annotated[str | None, Query(max_length=128)] = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> JSON:
        since, until = time_range(since, until)
        if department and not p.sees_all and department != p.department:
            raise HTTPException(403, f"a {p.department} token sees only its own department's tickets")
        f = q.TicketFilter(status=parse_list(status, TICKET_STATUSES, "status"), category=category,
                           district=_district(district), street=street, department=department, since=since,
                           until=until, visible_to=visible(p))
        items, nxt = await q.list_tickets(pool(), f, limit, cursor)
        return JSON({"items": [mask_ticket(t, p) for t in items], "next_cursor": nxt})

    @app.get(f"{API}/tickets/{{ticket_id}}", tags=["hotline"], summary="one ticket with its events")
    async def get_ticket(p: Who, ticket_id: Annotated[str, PathParam(max_length=64)]) -> JSON:
        t, events = await q.get_ticket(pool(), ticket_id)
        if t is None:
            raise HTTPException(404, f"no ticket {ticket_id}")
        if not p.sees_all and t.get("department") != p.department:
            raise HTTPException(403, f"ticket {ticket_id} is not assigned to {p.department}")
        mask_ticket(t, p)
        for e in events:
            mask_ticket(e, p)
        t["events"] = events
        return JSON(t)

    # -------------------------------------------------------------- sensors
    @app.get(f"{API}/sensors", tags=["sensors"], summary="sensors with their latest value (recent readings)")
    async def list_sensors(
        p: Who,
        sensor_type: Annotated[str | None, Query(max_length=32)] = None,
        district: Annotated[str | None, Query(max_length=32)] = None,
        window_minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60, description="how far back to look")] = 60,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> JSON:
        since = clock() - timedelta(minutes=window_minutes)
        items, nxt = await q.latest_sensors(pool(), since, sensor_type, _district(district), limit, cursor)
        return JSON({"items": items, "next_cursor": nxt})

    @app.get(f"{API}/sensors/{{sensor_id}}/series", tags=["sensors"], summary="one sensor's series")
    async def sensor_series(
        p: Who,
        sensor_id: Annotated[str, PathParam(max_length=128)],
        since: Since = None,
        until: Until = None,
        resolution: Annotated[Literal["auto", "raw", "1m", "1h"], Query()] = "auto",
    ) -> JSON:
        since, until = time_range(since, until)
        until = until or clock()
        since = since or until - timedelta(hours=6)
        if until - since > MAX_RANGE:
            raise bad(f"range longer than {MAX_RANGE.days} days")
        res = q.auto_resolution(since, until) if resolution == "auto" else resolution
        latest = await q.sensor_latest(pool(), sensor_id)
        if latest is None:
            raise HTTPException(404, f"no readings of sensor {sensor_id}")
        pts = await q.series(pool(), sensor_id, since, until, res)
        return JSON({"sensor": latest, "resolution": res, "since": since, "until": until, "points": pts})

    # -------------------------------------------------------------- emergency mode
    @app.get(f"{API}/mode", tags=["emergency"], summary="emergency mode in force (平急转换)")
    async def get_mode(p: Who) -> JSON:
        return JSON(st.hub.public_mode() if st.hub else {"city": {"mode": "normal"}, "districts": {}})

    @app.post(f"{API}/mode", tags=["emergency"], status_code=202,
              summary="switch the city or a district between normal and emergency mode")
    async def set_mode(p: Who, body: ModeIn) -> JSON:
        if not (p.role is Role.OPS or (p.role is Role.DEPARTMENT and p.department in MODE_ROLES_DEPARTMENTS)):
            raise HTTPException(403, "only the operations center and the emergency bureau switch modes")
        scope = body.scope
        if scope != "city":
            if not scope.startswith("district:") or _district(scope.split(":", 1)[1], strict=False) is None:
                raise bad("scope must be 'city' or 'district:<code>' of a known district")
            scope = f"district:{st.registry.geo.district_code(_district(scope.split(':', 1)[1]) or '')}"
        if st.publisher is None:
            raise HTTPException(503, "the mode topic is not connected")
        ts = clock()
        msg = {"event_id": f"mode-{uuid.uuid4().hex}", "scope": scope, "mode": body.mode, "actor": p.name,
               "actor_department": p.actor_department, "ts": ts.isoformat()}
        if body.comment:
            msg["comment"] = body.comment
        part, off = await st.publisher.send(settings.mode_topic, scope, orjson.dumps(msg))
        await audit(p, "mode.switch", scope, {**msg, "token_id": p.token_id, "topic": settings.mode_topic,
                                              "partition": part, "offset": off}, ts)
        return JSON({"switch": msg, "topic": settings.mode_topic, "partition": part, "offset": off},
                    status_code=202)

    # -------------------------------------------------------------- KPIs and reports
    @app.get(f"{API}/kpis", tags=["kpis"],
             summary="三率 per department and district, open alerts by severity, SLA breaches, escalations")
    async def kpis(p: Who, since: Since = None, until: Until = None) -> JSON:
        since, until = time_range(since, until)
        now = clock()
        today = datetime.combine(now.astimezone(st.tz).date(), datetime.min.time(), tzinfo=st.tz)
        until = until or now
        since = since or today
        if until - since > MAX_RANGE:
            raise bad(f"range longer than {MAX_RANGE.days} days")
        conn = pool()
        vis = visible(p)
        breaches, oldest = await q.sla_breaches(conn, st.sla, vis, limit=10)
        return JSON({
            "since": since, "until": until, "scope": vis or "city",
            "open_by_severity": await q.open_by_severity(conn, vis),
            "sla_breaches": {"open_unacknowledged": breaches,
                             "oldest": [shape_alert(a, p, now) for a in oldest]},
            "escalations": await q.escalations_since(conn, since, vis),
            "three_rates": {"by_department": await q.three_rates(conn, since, until, "department", vis, tz=st.tz),
                            "by_district": await q.three_rates(conn, since, until, "district", vis, tz=st.tz,
                                                               district_name=st.registry.geo.district_name)},
            "alert_handling": {"by_department": await q.alert_rates(conn, since, until, "department", st.sla, vis),
                               "by_district": await q.alert_rates(conn, since, until, "district", st.sla, vis)},
        })

    @app.get(f"{API}/reports/{{period}}", tags=["reports"],
             summary="日通报 / 周汇总 / 月分析 as JSON, or printable HTML with format=html")
    async def report(
        p: Who,
        period: Annotated[str, PathParam(description="daily, weekly or monthly")],
        day: Annotated[date | None, Query(alias="date", description="a day in the period (local), default today")] = None,
        format: Annotated[Literal["json", "html"], Query()] = "json",
    ) -> Response:
        if period not in PERIODS:
            raise bad(f"period must be one of {', '.join(PERIODS)}")
        d = day or clock().astimezone(st.tz).date()
        r = await build_report(pool(), period, d, st.tz, st.sla, visible(p), st.registry.geo.district_name)
        if format == "html":
            return HTMLResponse(render_html(r))
        return JSON(r)

    # -------------------------------------------------------------- tokens (ops)
    @app.get(f"{API}/tokens", tags=["access"], summary="issued tokens (ops only; hashes never leave)")
    async def list_tokens(p: Who) -> JSON:
        if p.role is not Role.OPS:
            raise HTTPException(403, "only the operations center manages tokens")
        assert st.tokens is not None
        return JSON({"items": await st.tokens.list()})

    @app.post(f"{API}/tokens", tags=["access"], status_code=201, summary="issue a token (shown once; ops only)")
    async def issue_token(p: Who, body: TokenIn) -> JSON:
        if p.role is not Role.OPS:
            raise HTTPException(403, "only the operations center manages tokens")
        if body.role == "department" and (not body.department or body.department not in st.registry):
            raise bad("a department token needs a known department code")
        assert st.tokens is not None
        it = await st.tokens.issue(body.name, body.role, body.department, timedelta(hours=body.ttl_hours), clock())
        await audit(p, "token.issue", it.principal.token_id, {**it.principal.public(), "token_id": None}, clock())
        return JSON({"token": it.token, **it.principal.public()}, status_code=201)

    @app.delete(f"{API}/tokens/{{token_id}}", tags=["access"], summary="revoke a token (ops only)")
    async def revoke_token(p: Who, token_id: Annotated[str, PathParam(max_length=64)]) -> JSON:
        if p.role is not Role.OPS:
            raise HTTPException(403, "only the operations center manages tokens")
        assert st.tokens is not None
        if not await st.tokens.revoke(token_id, clock()):
            raise HTTPException(404, f"no active token {token_id}")
        await audit(p, "token.revoke", token_id, {"by_token_id": p.token_id}, clock())
        return JSON({"revoked": token_id})

    # -------------------------------------------------------------- replays (engineers, ops)
    def replayer(p: Principal) -> None:
        if p.role not in (Role.ENGINEER, Role.OPS):
            raise HTTPException(403, "replays are for engineers and the operations center")

    def area_name(value: str) -> str | None:
        geo = st.registry.geo
        d = geo.district_name(value)
        if d is not None:
            return d
        return value if any(value == street for _, street in geo.streets) else None

    @app.post(f"{API}/replays", tags=["replay"], status_code=202,
              summary="replay a recorded time range through an isolated worker (engineers, ops)",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": ReplayIn.model_json_schema(by_alias=True)}}}})
    async def start_replay(request: Request, p: Who) -> JSON:
        replayer(p)  # before the body: a department learns nothing from its validation
        try:
            raw = await request.json()
        except ValueError:
            raise HTTPException(422, "body must be a JSON object") from None
        try:
            body = ReplayIn.model_validate(raw)
        except ValidationError as exc:
            reasons = [f"{'.'.join(str(x) for x in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()]
            raise HTTPException(422, "; ".join(reasons)) from None
        try:
            pl = plan(body, clock(), max_range=timedelta(days=settings.replay_max_range_days), area_name=area_name)
        except Invalid as exc:
            raise HTTPException(422, str(exc)) from None
        if (why := replays.unavailable()) is not None:  # no replay env, or SASL without the replay principal
            raise HTTPException(503, why)
        if replays.running() >= settings.replay_max_running:
            raise HTTPException(409, f"{replays.running()} replay(s) running already; try again when done")
        if pl.run in replays.local or await pool().fetchval("SELECT 1 FROM replay_runs WHERE run_id = $1", pl.run):
            raise HTTPException(409, f"replay run {pl.run} exists already")
        replays.start(pl, p.name)  # unavailable() said it can start
        at = clock()
        await audit(p, "replay.request", pl.run, {
            **pl.scope.to_dict(), "speed": body.speed, "warmup_minutes": body.warmup_minutes,
            "token_id": p.token_id, "role": p.role.value}, at)
        return JSON({"run": pl.run, "status": "starting", "scope": pl.scope.to_dict(), "speed": body.speed,
                     "href": f"{API}/replays/{pl.run}"}, status_code=202)

    @app.get(f"{API}/replays", tags=["replay"], summary="replay runs, newest first (engineers, ops)")
    async def list_replays(p: Who, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> JSON:
        replayer(p)
        return JSON({"items": await replays.list(pool(), limit)})

    @app.get(f"{API}/replays/{{run}}", tags=["replay"],
             summary="one replay run: status, counts, and the diff against the recorded alerts when done")
    async def get_replay(p: Who, run: Annotated[str, PathParam(max_length=64)]) -> JSON:
        replayer(p)
        item = await replays.get(pool(), run)
        if item is None:
            raise HTTPException(404, f"no replay run {run}")
        return JSON(item)

    # -------------------------------------------------------------- live feed
    @app.get(f"{API}/feed", tags=["live"], response_class=StreamingResponse,
             summary="Server-Sent Events: alert, incident, action, mode (filtered by role)")
    async def feed(
        request: Request,
        p: Who,
        kinds: Annotated[str | None, Query(description="comma list of alert, incident, action, mode")] = None,
    ) -> StreamingResponse:
        wanted = set(parse_list(kinds, ("alert", "incident", "action", "mode"), "kinds")) or {
            "alert", "incident", "action", "mode"}
        if st.hub is None:
            raise HTTPException(503, "the live feed is not connected")
        hub = st.hub

        async def accepts(ev: FeedEvent) -> bool:
            if ev.kind not in wanted:
                return False
            if p.sees_all or ev.kind == "mode":
                return True
            if ev.kind == "alert":
                return p.department in (ev.departments or ())
            if ev.kind == "action":
                depts = ev.departments
                if depts is None:
                    got = await q.alert_departments(pool(), [str(ev.data.get("alert_id"))])
                    depts = tuple(got.get(str(ev.data.get("alert_id")), ()))
                return p.department in depts
            ids = [str(x) for x in ev.data.get("alert_ids") or ()]
            cached = [hub.alert_departments.get(i) for i in ids]
            if any(p.department in (c or ()) for c in cached):
                return True
            missing = [i for i, c in zip(ids, cached, strict=True) if c is None]
            if not missing:
                return False
            got = await q.alert_departments(pool(), missing)
            return any(p.department in d for d in got.values())

        sub = hub.subscribe(accepts)
        keepalive = settings.feed_keepalive_s

        def shaped(ev: FeedEvent) -> bytes:
            data = ev.data
            if ev.kind == "alert":
                data = dict(data, title=mask_text(str(data.get("title", ""))))
                evd = data.get("evidence")
                if isinstance(evd, dict):
                    data["evidence"] = dict(evd, details=mask_value(evd.get("details") or {}, pseudonymous(p)))
            if ev.kind == "alert":
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    data = dict(data, sla=sla_info(data, clock()))
            if ev.kind == "action" and data.get("comment"):
                data = dict(data, comment=mask_text(str(data["comment"])))
            return b"event: " + ev.kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        async def stream() -> AsyncIterator[bytes]:
            try:
                hello = {"principal": p.public(), "mode": hub.public_mode(), "ready": hub.ready.is_set()}
                yield b"retry: 2000\nevent: hello\ndata: " + orjson.dumps(hello) + b"\n\n"
                while True:
                    try:
                        ev = await asyncio.wait_for(sub.queue.get(), timeout=keepalive)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield b": keepalive\n\n"
                        continue
                    if sub.dropped:
                        yield b"event: dropped\ndata: " + orjson.dumps({"dropped": sub.dropped}) + b"\n\n"
                        sub.dropped = 0
                    yield shaped(ev)
            finally:
                hub.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _district(value: str | None, strict: bool = True) -> str | None:
        if value is None or value == "":
            return None
        name = st.registry.geo.district_name(value)
        if name is None:
            if strict:
                raise bad(f"district {value!r} is not a known district name or code")
            return None
        return name

    return app


_MAP_CACHE: list[bytes] = []


def _map_json() -> bytes:
    if not _MAP_CACHE:
        _MAP_CACHE.append(orjson.dumps(load_map()))
    return _MAP_CACHE[0]

