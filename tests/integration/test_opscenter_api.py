"""Operations center API on the real stack: every route with its roles (401,
403), filters, pagination, bad parameters (400 with a reason), actions and the
live feed through real Kafka (own topic prefix), data in a PostgreSQL schema
of its own migrated by storage's migrations."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from citybrain.kafka_admin import ensure_topics, pipeline_topics
from citybrain.topics import Topics
from opscenter.app import create_app
from opscenter.auth import TokenStore
from opscenter.settings import OpscenterSettings
from opscenter.testing import ServerThread, drop_schema, make_alert, migrate_schema, store
from schemas import AlertAction, HotlineEvent, Incident, SensorReading
from schemas.tickets import KpiRecord, TicketRecord
from storage.db import create_pool

pytestmark = pytest.mark.integration
TZ = ZoneInfo("Asia/Shanghai")
# yesterday 10:00 in Beijing: far enough back that every ack SLA has passed
DAY = (datetime.now(TZ) - timedelta(days=1)).date()
T0 = datetime(DAY.year, DAY.month, DAY.day, 10, 0, tzinfo=TZ).astimezone(UTC)
LOC_HD = {"district": "海淀区", "street": "中关村街道", "grid": "g-9", "lat": 39.98, "lon": 116.31}


@dataclass
class Env:
    url: str
    tokens: dict[str, str]
    token_ids: dict[str, str]
    prefix: str
    bootstrap: str
    schema: str
    ids: dict[str, Any]

    def client(self, who: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=15)

    def get(self, who: str | None, path: str, **params: Any) -> httpx.Response:
        with self.client(who) as c:
            return c.get(path, params=params)


def _seed_models(u: str) -> dict[str, Any]:
    alerts = []
    # 24 eeb air alerts in 朝阳区 (望京), revisions 1..2, severities cycling, statuses mixed
    sev = ["I", "II", "III", "IV"]
    for i in range(24):
        first = T0 + timedelta(minutes=i)
        status = ["new", "acknowledged", "resolved", "new"][i % 4]
        alerts.append(make_alert(f"a-{u}-eeb-{i:02d}", first, severity=sev[i % 4], status=status,
                                 subject=f"aq-{u}-{i % 3}", revision=1))
    # a second revision of alert 0 (history)
    alerts.append(make_alert(f"a-{u}-eeb-00", T0, severity="I", status="dispatched", subject=f"aq-{u}-0",
                             revision=2, last_seen=T0 + timedelta(minutes=30)))
    # 6 water alerts in 海淀区, one with citizen data in its evidence
    for i in range(6):
        alerts.append(make_alert(
            f"a-{u}-wat-{i}", T0 + timedelta(minutes=40 + i), rule="water-level", category="water",
            sensor_type="water_level", subject=f"wl-{u}-{i}", severity="II", departments=["water", "district.haidian"],
            location=LOC_HD, title="积水 water level high",
            evidence={"statistic": "water level", "value": 1.2, "threshold": 0.8,
                      "details": {"caller_ref": "ref-secret", "phone": "13812345678",
                                  "note": "call 13812345678 back"}}))
    # the eeb alert 0 series: one reading a minute around its window
    readings = [
        SensorReading(event_id=f"r-{u}-{m}", sensor_id=f"aq-{u}-0", sensor_type="pm25", value=100.0 + m,
                      unit="ug/m3", ts=T0 + timedelta(minutes=m),
                      location={"district": "朝阳区", "street": "望京街道", "lat": 39.996, "lon": 116.47})
        for m in range(-90, 30)
    ]
    actions = [AlertAction(event_id=f"act-{u}-1", alert_id=f"a-{u}-eeb-01", action="ack", actor="wang",
                           actor_department="eeb", ts=T0 + timedelta(minutes=5)),
               AlertAction(event_id=f"act-{u}-2", alert_id=f"a-{u}-eeb-02", action="escalate", actor="li",
                           actor_department="ops", ts=T0 + timedelta(minutes=6), comment="ring 13912345678")]
    incidents = [Incident(incident_id=f"i-{u}-1", kind="flooding", severity="II", location=LOC_HD,
                          alert_ids=(f"a-{u}-wat-0", f"a-{u}-wat-1"), ticket_ids=(f"tk-{u}-1",),
                          first_seen=T0 + timedelta(minutes=40), last_seen=T0 + timedelta(minutes=50))]
    hot = []
    # 4 water tickets (3 responded, 2 resolved, ratings 5 and 2), 2 eeb tickets (1 responded)
    def ev(tid: str, k: int, kind: str, status: str, dept: str | None, minutes: int, **kw: Any) -> HotlineEvent:
        return HotlineEvent(event_id=f"h-{u}-{tid}-{k}", ticket_id=f"tk-{u}-{tid}", kind=kind,
                            category=kw.pop("category", "flooding"), status=status, ts=T0 + timedelta(minutes=minutes),
                            location=kw.pop("location", LOC_HD), department=dept, **kw)
    hot += [ev("1", 0, "created", "open", "water", 41, description="积水 call me 13712345678", caller_ref="cr-1"),
            ev("1", 1, "status", "resolved", "water", 60),
            ev("1", 2, "feedback", "closed", "water", 70, satisfaction=5)]
    hot += [ev("2", 0, "created", "open", "water", 42), ev("2", 1, "status", "in_progress", "water", 50)]
    hot += [ev("3", 0, "created", "open", "water", 43), ev("3", 1, "status", "resolved", "water", 55),
            ev("3", 2, "feedback", "closed", "water", 65, satisfaction=2)]
    hot += [ev("4", 0, "created", "open", "water", 44)]
    air = {"district": "朝阳区", "street": "望京街道", "lat": 39.996, "lon": 116.47}
    hot += [ev("5", 0, "created", "open", "eeb", 45, category="air_pollution", location=air),
            ev("5", 1, "status", "dispatched", "eeb", 46, category="air_pollution", location=air),
            ev("6", 0, "created", "open", "eeb", 47, category="odour", location=air)]
    # what the worker's hotline workflow made of those calls (city.hotline.tickets, city.kpi): the API reads these
    def tk(tid: str, status: str, dept: str, created: int, updated: int, responded: int | None = None,
           resolved: int | None = None, **kw: Any) -> TicketRecord:
        at = lambda m: None if m is None else T0 + timedelta(minutes=m)  # noqa: E731
        return TicketRecord(ticket_id=f"tk-{u}-{tid}", revision=3, change="updated", category=kw.pop("category", "flooding"),
                            urgency="normal", status=status, location=kw.pop("location", LOC_HD), departments=(dept,),
                            created=at(created), first_contact_by=at(created + 60), resolve_by=at(created + 24 * 60),
                            responded_at=at(responded), resolved_at=at(resolved), updated=at(updated), **kw)
    tickets = [tk("1", "closed", "water", 41, 70, 60, 60, satisfaction=5, caller_ref="cr-1",
                  description="积水 call me 13712345678"),
               tk("2", "in_progress", "water", 42, 50, 50), tk("3", "closed", "water", 43, 65, 55, 55, satisfaction=2),
               tk("4", "open", "water", 44, 44),
               tk("5", "dispatched", "eeb", 45, 46, category="air_pollution", location=air),
               tk("6", "open", "eeb", 47, 47, category="odour", location=air)]
    month = T0.astimezone(TZ).strftime("%Y-%m")
    water_counts = {"response": (3, 4), "resolution": (2, 4), "satisfaction": (1, 2)}
    eeb_counts = {"response": (1, 2), "resolution": (0, 1), "satisfaction": (0, 0)}
    kpi = [KpiRecord(scope=scope, period=month, revision=5, counts=c,
                     response_rate=c["response"][0] / c["response"][1],
                     resolution_rate=c["resolution"][0] / c["resolution"][1],
                     satisfaction_rate=c["satisfaction"][0] / c["satisfaction"][1] if c["satisfaction"][1] else None)
           for scope, c in (("water", water_counts), ("district:haidian", water_counts), ("eeb", eeb_counts),
                            ("district:chaoyang", eeb_counts))]
    return {"alerts": alerts, "readings": readings, "actions": actions, "incidents": incidents, "hotline": hot,
            "tickets": tickets, "kpi": kpi}


@pytest.fixture(scope="module")
def env(database_url: str, kafka_bootstrap: str) -> Iterator[Env]:
    import uuid

    u = uuid.uuid4().hex[:10]
    schema = f"ops_{u}"
    prefix = f"t{u}."
    models = _seed_models(u)

    async def setup() -> tuple[dict[str, str], dict[str, str]]:
        await migrate_schema(database_url, schema)
        await ensure_topics(kafka_bootstrap, pipeline_topics(Topics(prefix), 2))
        for kind in ("alerts", "readings", "actions", "incidents", "hotline", "tickets", "kpi"):
            await store(database_url, schema, kind, models[kind])
        pool = await create_pool(database_url, schema, min_size=1, max_size=2)
        try:
            ts = TokenStore(pool)
            await ts.ensure_table()
            toks, ids = {}, {}
            for name, role, dept, ttl in (("ops", "ops", None, 1), ("engineer", "engineer", None, 1),
                                          ("eeb", "department", "eeb", 1), ("water", "department", "water", 1),
                                          ("ema", "department", "ema", 1), ("expired", "ops", None, -1),
                                          ("revoked", "ops", None, 1)):
                it = await ts.issue(f"test-{name}", role, dept, timedelta(hours=ttl))
                toks[name], ids[name] = it.token, it.principal.token_id
            await ts.revoke(ids["revoked"])
            return toks, ids
        finally:
            await pool.close()

    settings = OpscenterSettings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                                 db_schema=schema, topic_prefix=prefix, client_id=f"test-opscenter-{u}",
                                 feed_keepalive_s=1.0)
    try:
        tokens, token_ids = asyncio.run(setup())  # inside: a failed set-up drops its schema too
        app = create_app(settings, replay_env=dict(os.environ))
        with ServerThread(app) as srv:
            st = app.state.ops
            deadline = time.monotonic() + 30
            while not (st.hub and st.hub.ready.is_set()) and time.monotonic() < deadline:
                time.sleep(0.1)
            yield Env(srv.url, tokens, token_ids, prefix, kafka_bootstrap, schema, {"u": u})
    finally:
        asyncio.run(drop_schema(database_url, schema))


def U(env: Env, name: str) -> str:
    return name.replace("{u}", env.ids["u"])


# ------------------------------------------------------------------ every route: 401 and 403
# (method, path, body, roles that get 403, roles that pass)
ROUTES: list[tuple[str, str, Any, set[str]]] = [
    ("GET", "/api/v1/me", None, set()),
    ("GET", "/api/v1/geo", None, set()),
    ("GET", "/api/v1/departments", None, set()),
    ("GET", "/api/v1/alerts", None, set()),
    ("GET", "/api/v1/alerts/a-{u}-eeb-00", None, {"water"}),
    ("POST", "/api/v1/alerts/a-{u}-eeb-03/actions", {"action": "comment", "comment": "looking"}, {"engineer", "water"}),
    ("GET", "/api/v1/incidents", None, set()),
    ("GET", "/api/v1/incidents/i-{u}-1", None, {"eeb"}),
    ("GET", "/api/v1/tickets", None, set()),
    ("GET", "/api/v1/tickets/tk-{u}-1", None, {"eeb"}),
    ("GET", "/api/v1/sensors", None, set()),
    ("GET", "/api/v1/sensors/aq-{u}-0/series", None, set()),
    ("GET", "/api/v1/mode", None, set()),
    ("POST", "/api/v1/mode", {"scope": "district:yanqing", "mode": "normal"}, {"engineer", "eeb", "water"}),
    ("GET", "/api/v1/kpis", None, set()),
    ("GET", "/api/v1/reports/{period}", None, set()),
    ("GET", "/api/v1/tokens", None, {"engineer", "eeb", "water", "ema"}),
    ("POST", "/api/v1/tokens", {"name": "x", "role": "engineer", "ttl_hours": 1}, {"engineer", "eeb", "water", "ema"}),
    ("DELETE", "/api/v1/tokens/{token_id}", None, {"engineer", "eeb", "water", "ema"}),
    ("GET", "/api/v1/feed", None, set()),
    # engineers and ops; the body is checked after the role (422 here: `from` after `to`, nothing starts)
    ("POST", "/api/v1/replays", {"from": "2026-01-02T00:00:00+00:00", "to": "2026-01-01T00:00:00+00:00"},
     {"eeb", "water", "ema"}),
    ("GET", "/api/v1/replays", None, {"eeb", "water", "ema"}),
    ("GET", "/api/v1/replays/{run}", None, {"eeb", "water", "ema"}),
]


def _call(env: Env, who: str | None, method: str, path: str, body: Any, raw_token: str | None = None) -> httpx.Response:
    path = U(env, path).replace("{period}", "daily").replace("{token_id}", "nonexistent0").replace("{run}", "no_such_run")
    headers = {}
    if raw_token is not None:
        headers["Authorization"] = raw_token
    elif who:
        headers["Authorization"] = f"Bearer {env.tokens[who]}"
    with httpx.Client(base_url=env.url, headers=headers, timeout=15) as c:
        if path.endswith("/feed"):
            with c.stream("GET", path) as r:
                r.read() if r.status_code != 200 else None
                return r
        return c.request(method, path, json=body)


def test_openapi_lists_exactly_the_tested_routes(env: Env) -> None:
    doc = httpx.get(env.url + "/openapi.json").json()
    published = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if p != "/healthz"}
    norm = {(m, p.replace("a-{u}-eeb-00", "{alert_id}").replace("a-{u}-eeb-03", "{alert_id}")
             .replace("i-{u}-1", "{incident_id}").replace("tk-{u}-1", "{ticket_id}")
             .replace("aq-{u}-0", "{sensor_id}")) for m, p, _, _ in ROUTES}
    assert published == norm
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


@pytest.mark.parametrize("method,path,body,forbidden", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_401_without_valid_credentials(env: Env, method: str, path: str, body: Any, forbidden: set[str]) -> None:
    for who, raw in ((None, None), (None, "Bearer cbt_not-a-real-token"), (None, "Basic dXNlcjpwdw=="),
                     ("expired", None), ("revoked", None)):
        r = _call(env, who, method, path, body, raw)
        assert r.status_code == 401, (who, raw, r.status_code)
        if method != "GET" or not path.endswith("/feed"):
            assert r.json()["error"] == "unauthorized"
        assert r.headers.get("www-authenticate") == "Bearer"


@pytest.mark.parametrize("method,path,body,forbidden", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_403_outside_the_role_and_allowed_inside(env: Env, method: str, path: str, body: Any,
                                                 forbidden: set[str]) -> None:
    for who in ("ops", "engineer", "eeb", "water", "ema"):
        if (who == "ema" and path.startswith("/api/v1/alerts/")) or (who == "ema" and "/tickets/" in path) \
                or (who == "ema" and "/incidents/" in path):
            continue  # ema sees no seeded alert or ticket; covered by eeb/water
        r = _call(env, who, method, path, body)
        if who in forbidden:
            assert r.status_code == 403, (who, r.status_code, r.text)
            assert r.json()["error"] == "forbidden" and r.json()["reason"]
        else:
            expected = ({404} if path.startswith(("/api/v1/tokens/", "/api/v1/replays/"))
                        else {422} if (method, path) == ("POST", "/api/v1/replays") else {200, 201, 202})
            assert r.status_code in expected, (who, r.status_code, r.text)


# ------------------------------------------------------------------ alerts
def _ids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [a["alert_id"] for a in r.json()["items"]]


def test_alert_filters(env: Env) -> None:
    u = env.ids["u"]
    mine = lambda ids: [i for i in ids if u in i]  # noqa: E731
    all_ids = mine(_ids(env.get("ops", "/api/v1/alerts", limit=500)))
    assert len(all_ids) == 30
    assert len(mine(_ids(env.get("ops", "/api/v1/alerts", severity="I", limit=500)))) == 6
    assert len(mine(_ids(env.get("ops", "/api/v1/alerts", severity="I,II", limit=500)))) == 18
    st = mine(_ids(env.get("ops", "/api/v1/alerts", status="resolved", limit=500)))
    assert len(st) == 6 and all(i.startswith(f"a-{u}-eeb") for i in st)
    assert len(mine(_ids(env.get("ops", "/api/v1/alerts", department="water", limit=500)))) == 6
    assert len(mine(_ids(env.get("ops", "/api/v1/alerts", district="haidian", limit=500)))) == 6
    assert len(mine(_ids(env.get("ops", "/api/v1/alerts", district="海淀区", street="中关村街道", limit=500)))) == 6
    assert len(mine(_ids(env.get("ops", "/api/v1/alerts", rule="water-level", limit=500)))) == 6
    assert len(mine(_ids(env.get("ops", "/api/v1/alerts", subject=f"aq-{u}-1", limit=500)))) == 8
    # time range: first_seen < until and last_seen >= since
    win = mine(_ids(env.get("ops", "/api/v1/alerts", since=(T0 + timedelta(minutes=45)).isoformat(),
                            until=(T0 + timedelta(minutes=46)).isoformat(), limit=500)))
    assert set(win) >= {f"a-{u}-wat-5", f"a-{u}-wat-0"} and f"a-{u}-eeb-03" not in win
    r = env.get("ops", "/api/v1/alerts", rule="water-level", total="true")
    assert r.json()["total"] >= 6
    # open = new, dispatched, acknowledged, reopened
    opened = mine(_ids(env.get("ops", "/api/v1/alerts", open="true", limit=500)))
    assert len(opened) == 24
    # a department sees its own only, whatever it asks
    eeb = mine(_ids(env.get("eeb", "/api/v1/alerts", limit=500)))
    assert len(eeb) == 24 and all("-eeb-" in i for i in eeb)
    assert env.get("eeb", "/api/v1/alerts", department="water").status_code == 403
    assert len(mine(_ids(env.get("water", "/api/v1/alerts", limit=500)))) == 6


def test_alert_pagination_is_complete_and_stable(env: Env) -> None:
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 7, "rule": "pm25-iaqi", "subject": f"aq-{env.ids['u']}-0"}
        if cursor:
            params["cursor"] = cursor
        body = env.get("ops", "/api/v1/alerts", **params).json()
        seen += [a["alert_id"] for a in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 8 and pages == 2
    full = _ids(env.get("ops", "/api/v1/alerts", limit=500, rule="pm25-iaqi", subject=f"aq-{env.ids['u']}-0"))
    assert seen == full


@pytest.mark.parametrize("path,params,needle", [
    ("/api/v1/alerts", {"severity": "V"}, "severity"),
    ("/api/v1/alerts", {"status": "bogus"}, "status"),
    ("/api/v1/alerts", {"limit": 0}, "limit"),
    ("/api/v1/alerts", {"limit": 501}, "limit"),
    ("/api/v1/alerts", {"since": "2025-01-01T00:00:00"}, "time zone"),
    ("/api/v1/alerts", {"since": "yesterday"}, "since"),
    ("/api/v1/alerts", {"since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, "before"),
    ("/api/v1/alerts", {"cursor": "not-a-cursor"}, "cursor"),
    ("/api/v1/alerts", {"district": "atlantis"}, "district"),
    ("/api/v1/alerts", {"open": "maybe"}, "open"),
    ("/api/v1/alerts/a-x", {"resolution": "5m"}, "resolution"),
    ("/api/v1/incidents", {"status": "sleeping"}, "status"),
    ("/api/v1/tickets", {"status": "lost"}, "status"),
    ("/api/v1/sensors", {"window_minutes": -1}, "window_minutes"),
    ("/api/v1/sensors/x/series", {"since": "2025-01-01T00:00:00Z", "until": "2026-06-01T00:00:00Z"}, "range"),
    ("/api/v1/reports/yearly", {}, "period"),
    ("/api/v1/reports/daily", {"date": "2025-13-01"}, "date"),
    ("/api/v1/reports/daily", {"format": "pdf"}, "format"),
    ("/api/v1/kpis", {"since": "2020-01-01T00:00:00Z"}, "range"),
    ("/api/v1/feed", {"kinds": "weather"}, "kinds"),
    ("/api/v1/departments", {"level": "planet"}, "level"),
])
def test_bad_parameters_are_400_with_a_reason(env: Env, path: str, params: dict[str, Any], needle: str) -> None:
    r = env.get("ops", path, **params)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "bad_request" and needle in body["reason"], body


@pytest.mark.parametrize("body,needle", [
    ({"action": "explode"}, "action"),
    ({"action": "reassign"}, "target_department"),
    ({"action": "reassign", "target_department": "nasa"}, "target_department"),
    ({"action": "ack", "target_department": "water"}, "target_department"),
    ({"action": "comment"}, "comment"),
    ({"action": "ack", "extra": 1}, "extra"),
    ({"action": "ack", "idempotency_key": "short"}, "idempotency_key"),
])
def test_bad_action_bodies_are_400(env: Env, body: dict[str, Any], needle: str) -> None:
    with env.client("ops") as c:
        r = c.post(U(env, "/api/v1/alerts/a-{u}-eeb-03/actions"), json=body)
    assert r.status_code == 400 and needle in r.json()["reason"], r.text


def test_bad_mode_scope_is_400(env: Env) -> None:
    with env.client("ops") as c:
        assert c.post("/api/v1/mode", json={"scope": "district:atlantis", "mode": "emergency"}).status_code == 400
        assert c.post("/api/v1/mode", json={"scope": "planet", "mode": "emergency"}).status_code == 400
        assert c.post("/api/v1/mode", json={"scope": "city", "mode": "panic"}).status_code == 400


@pytest.mark.parametrize("body,needle", [
    ({"from": "2026-01-02T00:00:00+00:00", "to": "2026-01-01T00:00:00+00:00"}, "from must be before to"),
    ({"from": "2026-01-01T00:00:00", "to": "2026-01-02T00:00:00+00:00"}, "time zone"),
    ({"from": "2025-01-01T00:00:00+00:00", "to": "2025-06-01T00:00:00+00:00"}, "range longer than 31 days"),
    ({"from": "2026-01-01T00:00:00+00:00", "to": "2026-01-02T00:00:00+00:00", "speed": "fast"}, "speed 'fast'"),
    ({"from": "2026-01-01T00:00:00+00:00", "to": "2026-01-02T00:00:00+00:00", "area": "atlantis"},
     "area 'atlantis' is not a known district"),
    ({"from": "2026-01-01T00:00:00+00:00", "to": "2026-01-02T00:00:00+00:00", "run": "Bad-Id"}, "run 'Bad-Id'"),
    ({"from": "2026-01-01T00:00:00+00:00", "to": "2026-01-02T00:00:00+00:00", "rules": "/etc/x"},
     "rules: Extra inputs are not permitted"),
    ({"to": "2026-01-02T00:00:00+00:00"}, "from: Field required"),
    ({"from": "2099-01-01T00:00:00+00:00", "to": "2099-01-02T00:00:00+00:00"}, "in the future"),
    ([1, 2], "Input should be a valid dictionary"),
])
def test_bad_replay_requests_are_422_with_a_reason(env: Env, body: Any, needle: str) -> None:
    with env.client("engineer") as c:
        r = c.post("/api/v1/replays", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "unprocessable" and needle in r.json()["reason"], r.json()
    with env.client("engineer") as c:
        r = c.post("/api/v1/replays", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["reason"]
    runs = env.get("ops", "/api/v1/replays").json()["items"]
    assert runs == []  # nothing was started


def test_alert_detail_has_evidence_history_actions_series_and_sla(env: Env) -> None:
    u = env.ids["u"]
    a = env.get("ops", f"/api/v1/alerts/a-{u}-eeb-00").json()
    assert a["revision"] == 2 and a["status"] == "dispatched"
    assert [h["revision"] for h in a["history"]] == [1, 2]
    assert a["evidence"]["threshold"] == 150.0 and a["evidence"]["statistic"]
    s = a["series"]
    assert s["sensor_id"] == f"aq-{u}-0" and s["resolution"] == "raw" and s["threshold"] == 150.0
    assert s["baseline"] == 60.0
    assert len(s["points"]) == 120  # T0-90min .. T0+30min, all inside the window
    ws, we = (datetime.fromisoformat(a["evidence"][k]) for k in ("window_start", "window_end"))
    assert datetime.fromisoformat(s["since"]) == ws - timedelta(minutes=120)
    assert datetime.fromisoformat(s["until"]) == max(we, datetime.fromisoformat(a["last_seen"])) + timedelta(minutes=60)
    assert s["points"][0] == {"ts": (T0 - timedelta(minutes=90)).isoformat(), "value": 10.0}
    wide = env.get("ops", f"/api/v1/alerts/a-{u}-eeb-00", before_minutes=4 * 24 * 60).json()["series"]
    assert wide["resolution"] == "1h"  # auto: more than 3 days
    narrow = env.get("ops", f"/api/v1/alerts/a-{u}-eeb-00", before_minutes=0, after_minutes=0).json()["series"]
    assert [p["ts"] for p in narrow["points"]] == [p["ts"] for p in s["points"] if p["ts"] >= ws.isoformat()]
    assert a["sla"]["clock"] == "ack" and a["sla"]["breached"] is True
    acked = env.get("ops", f"/api/v1/alerts/a-{u}-eeb-01").json()
    assert acked["actions"][0]["action"] == "ack" and acked["sla"]["acknowledged_at"]
    assert acked["sla"]["clock"] == "resolve"
    assert env.get("ops", "/api/v1/alerts/a-nope").status_code == 404


def test_citizen_data_is_masked_outside_ops(env: Env) -> None:
    u = env.ids["u"]
    ops = env.get("ops", f"/api/v1/alerts/a-{u}-wat-0").json()["evidence"]["details"]
    assert ops["caller_ref"] == "ref-secret" and "phone" not in ops and "13812345678" not in json.dumps(ops)
    for who in ("water", "engineer"):
        d = env.get(who, f"/api/v1/alerts/a-{u}-wat-0").json()["evidence"]["details"]
        assert "caller_ref" not in d and "phone" not in d and "13812345678" not in json.dumps(d)
    t_ops = env.get("ops", f"/api/v1/tickets/tk-{u}-1").json()
    assert t_ops["caller_ref"] == "cr-1"
    for who in ("water", "engineer"):
        t = env.get(who, f"/api/v1/tickets/tk-{u}-1").json()
        assert t["caller_ref"] is None and "13712345678" not in json.dumps(t), t
        assert all(e["caller_ref"] is None for e in t["events"])
    esc = env.get("engineer", f"/api/v1/alerts/a-{u}-eeb-02").json()["actions"]
    assert "13912345678" not in json.dumps(esc)


def test_incidents_with_members(env: Env) -> None:
    u = env.ids["u"]
    items = env.get("ops", "/api/v1/incidents", district="haidian", limit=500).json()["items"]
    assert f"i-{u}-1" in [i["incident_id"] for i in items]
    inc = env.get("water", f"/api/v1/incidents/i-{u}-1").json()
    assert {a["alert_id"] for a in inc["alerts"]} == {f"a-{u}-wat-0", f"a-{u}-wat-1"}
    assert [t["ticket_id"] for t in inc["tickets"]] == [f"tk-{u}-1"]
    assert f"i-{u}-1" not in [i["incident_id"] for i in env.get("eeb", "/api/v1/incidents", limit=500).json()["items"]]
    assert env.get("ops", "/api/v1/incidents/i-nope").status_code == 404


def test_tickets_list_filters_and_department_scope(env: Env) -> None:
    u = env.ids["u"]
    since = (T0 - timedelta(hours=1)).isoformat()
    mine = lambda r: sorted(t["ticket_id"] for t in r.json()["items"] if u in t["ticket_id"])  # noqa: E731
    assert mine(env.get("ops", "/api/v1/tickets", since=since, limit=500)) == [f"tk-{u}-{i}" for i in range(1, 7)]
    assert mine(env.get("ops", "/api/v1/tickets", since=since, status="closed", limit=500)) == [f"tk-{u}-1", f"tk-{u}-3"]
    assert mine(env.get("ops", "/api/v1/tickets", since=since, category="odour", limit=500)) == [f"tk-{u}-6"]
    assert mine(env.get("eeb", "/api/v1/tickets", since=since, limit=500)) == [f"tk-{u}-5", f"tk-{u}-6"]
    p1 = env.get("ops", "/api/v1/tickets", since=since, district="haidian", limit=3).json()
    p2 = env.get("ops", "/api/v1/tickets", since=since, district="haidian", limit=3, cursor=p1["next_cursor"]).json()
    got = [t["ticket_id"] for t in p1["items"] + p2["items"] if u in t["ticket_id"]]
    assert sorted(got) == [f"tk-{u}-{i}" for i in range(1, 5)]
    t = env.get("water", f"/api/v1/tickets/tk-{u}-1").json()
    assert t["status"] == "closed" and t["satisfaction"] == 5 and len(t["events"]) == 3


def test_sensors_latest_and_series(env: Env) -> None:
    u = env.ids["u"]
    window = int((datetime.now(UTC) - T0).total_seconds() // 60) + 180
    items = env.get("ops", "/api/v1/sensors", window_minutes=min(window, 7 * 24 * 60), district="chaoyang",
                    sensor_type="pm25", limit=500).json()["items"]
    mine = [s for s in items if s["sensor_id"] == f"aq-{u}-0"]
    assert mine and mine[0]["value"] == 100.0 + 29
    r = env.get("ops", f"/api/v1/sensors/aq-{u}-0/series", since=(T0 - timedelta(minutes=10)).isoformat(),
                until=(T0 + timedelta(minutes=10)).isoformat()).json()
    assert r["resolution"] == "raw" and len(r["points"]) == 20 and r["points"][0]["value"] == 90.0
    assert env.get("ops", "/api/v1/sensors/nope/series").status_code == 404


def test_kpis_three_rates_and_sla(env: Env) -> None:
    since, until = (T0 - timedelta(minutes=1)).isoformat(), (T0 + timedelta(hours=2)).isoformat()
    k = env.get("water", "/api/v1/kpis", since=since, until=until).json()
    # the worker's 三率 (hotline_kpi) of the month, and the month's tickets (hotline_tickets)
    month = T0.astimezone(TZ).strftime("%Y-%m")
    water = [r for r in k["three_rates"]["by_department"] if r["department"] == "water"]
    assert water == [{"department": "water", "tickets": 4, "responded": 3, "resolved": 2, "rated": 2, "satisfied": 1,
                      "response_rate": 0.75, "resolution_rate": 0.5, "satisfaction_rate": 0.5,
                      "response_decided": 4, "resolution_decided": 4, "periods": [month]}]
    assert k["three_rates"]["by_district"] == []  # district scopes cover every department's tickets
    assert k["scope"] == "water"
    assert k["open_by_severity"]["II"] == 6
    assert k["sla_breaches"]["open_unacknowledged"] == 6
    ah = k["alert_handling"]["by_department"]
    assert ah == [{"department": "water", "alerts": 6, "acknowledged": 0, "resolved": 0, "ack_breached": 6,
                   "ack_rate": 0.0, "resolution_rate": 0.0}]
    eeb = env.get("eeb", "/api/v1/kpis", since=since, until=until).json()
    assert [(r["department"], r["tickets"], r["response_rate"], r["satisfaction_rate"])
            for r in eeb["three_rates"]["by_department"]] == [("eeb", 2, 0.5, None)]
    assert eeb["escalations"] >= 0
    ops = env.get("ops", "/api/v1/kpis", since=since, until=until).json()
    by_district = {r["district"]: r for r in ops["three_rates"]["by_district"]}
    assert set(by_district) == {"海淀区", "朝阳区"}
    assert by_district["海淀区"]["tickets"] == 4 and by_district["海淀区"]["resolution_rate"] == 0.5
    assert {r["department"] for r in ops["three_rates"]["by_department"]} == {"water", "eeb"}


def test_reports_json_and_printable_html(env: Env) -> None:
    u = env.ids["u"]
    r = env.get("water", "/api/v1/reports/daily", date=DAY.isoformat()).json()
    assert r["alerts"]["total"] == 6 and r["tickets"]["total"] == 4
    assert r["alerts"]["by"]["district"] == {"海淀区": 6}
    assert r["trend"]["alerts"] == {"current": 6, "previous": 0, "change": 6, "change_pct": None}
    assert r["recurring"][0]["category"] in ("water", "flooding") and r["recurring"][0]["n"] >= 4
    html = env.get("water", "/api/v1/reports/daily", date=DAY.isoformat(), format="html")
    assert html.headers["content-type"].startswith("text/html")
    assert "日通报" in html.text and "75.0%" in html.text and "<script" not in html.text and "http" not in html.text
    for period in ("weekly", "monthly"):
        w = env.get("ops", f"/api/v1/reports/{period}", date=DAY.isoformat()).json()
        assert w["alerts"]["total"] >= 30 and w["period"] == period
    assert u


def test_actions_are_published_to_the_actions_topic(env: Env) -> None:
    u = env.ids["u"]

    async def consume(n: int) -> list[AlertAction]:
        c = AIOKafkaConsumer(env.prefix + "city.alert.actions", bootstrap_servers=env.bootstrap, group_id=None,
                             auto_offset_reset="earliest")
        await c.start()
        got: list[AlertAction] = []
        try:
            deadline = time.monotonic() + 20
            while len(got) < n and time.monotonic() < deadline:
                for msgs in (await c.getmany(timeout_ms=500)).values():
                    got += [AlertAction.from_json(m.value) for m in msgs]
        finally:
            await c.stop()
        return got

    with env.client("eeb") as c:
        r1 = c.post(f"/api/v1/alerts/a-{u}-eeb-07/actions", json={"action": "ack", "idempotency_key": "key-00001"})
        r2 = c.post(f"/api/v1/alerts/a-{u}-eeb-07/actions", json={"action": "ack", "idempotency_key": "key-00001"})
        assert r1.status_code == r2.status_code == 202
        assert r1.json()["action"]["event_id"] == r2.json()["action"]["event_id"]
        assert c.post(f"/api/v1/alerts/a-{u}-eeb-07/actions", json={"action": "close"}).status_code == 403
    with env.client("ops") as c:
        r3 = c.post(f"/api/v1/alerts/a-{u}-wat-2/actions", json={"action": "reassign",
                                                                   "target_department": "district.haidian"})
        assert r3.status_code == 202 and r3.json()["topic"] == env.prefix + "city.alert.actions"
    got = asyncio.run(consume(3))
    mine = [a for a in got if a.alert_id in (f"a-{u}-eeb-07", f"a-{u}-wat-2")]
    # the two alerts' actions are keyed to different partitions: no order between them
    assert sorted((a.action.value, a.actor_department) for a in mine) == [("ack", "eeb"), ("ack", "eeb"),
                                                                         ("reassign", "ops")]
    reassign = next(a for a in mine if a.action.value == "reassign")
    assert reassign.target_department == "district.haidian" and reassign.ts.tzinfo is not None


class FeedReader:
    """Reads an SSE stream in a thread, collecting (event, data)."""

    def __init__(self, env: Env, who: str) -> None:
        self.events: list[tuple[str, Any]] = []
        self.ready = threading.Event()
        self.stop = False
        self.t = threading.Thread(target=self._run, args=(env, who), daemon=True)
        self.t.start()
        assert self.ready.wait(10)

    def _run(self, env: Env, who: str) -> None:
        with env.client(who) as c, c.stream("GET", "/api/v1/feed", timeout=30) as r:
            kind = ""
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self.events.append((kind, json.loads(line[6:])))
                    if kind == "hello":
                        self.ready.set()
                if self.stop:
                    return

    def wait(self, pred: Any, timeout: float = 15) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.events):
                return True
            time.sleep(0.05)
        return False


def test_live_feed_is_filtered_by_role(env: Env) -> None:
    u = env.ids["u"]
    ops, eeb, water = FeedReader(env, "ops"), FeedReader(env, "eeb"), FeedReader(env, "water")
    now = datetime.now(UTC)
    a_eeb = make_alert(f"a-{u}-live-eeb", now)
    a_wat = make_alert(f"a-{u}-live-wat", now, departments=["water"], category="water",
                       evidence={"details": {"phone": "13812345678", "caller_ref": "x"}})

    async def produce() -> None:
        p = AIOKafkaProducer(bootstrap_servers=env.bootstrap, acks="all", enable_idempotence=True)
        await p.start()
        try:
            for a in (a_eeb, a_wat):
                await p.send_and_wait(env.prefix + "city.alerts", a.to_json(), key=a.alert_id.encode())
            inc = Incident(incident_id=f"i-{u}-live", kind="flooding", severity="II", location=LOC_HD,
                           alert_ids=(a_wat.alert_id,), first_seen=now, last_seen=now)
            await p.send_and_wait(env.prefix + "city.incidents", inc.to_json(), key=inc.incident_id.encode())
        finally:
            await p.stop()

    asyncio.run(produce())
    ids = lambda evs: {d.get("alert_id") or d.get("incident_id") for _, d in evs}  # noqa: E731
    assert ops.wait(lambda e: {a_eeb.alert_id, a_wat.alert_id, f"i-{u}-live"} <= ids(e))
    assert water.wait(lambda e: {a_wat.alert_id, f"i-{u}-live"} <= ids(e))
    assert eeb.wait(lambda e: a_eeb.alert_id in ids(e))
    time.sleep(0.5)
    assert a_wat.alert_id not in ids(eeb.events) and f"i-{u}-live" not in ids(eeb.events)
    assert a_eeb.alert_id not in ids(water.events)
    wat = next(d for k, d in water.events if d.get("alert_id") == a_wat.alert_id)
    assert "phone" not in wat["evidence"]["details"] and "caller_ref" not in wat["evidence"]["details"]
    assert wat["sla"]["clock"] == "ack"
    for r in (ops, eeb, water):
        r.stop = True


def test_mode_switch_round_trip(env: Env) -> None:
    with env.client("ema") as c:
        r = c.post("/api/v1/mode", json={"scope": "district:chaoyang", "mode": "emergency", "comment": "rainstorm"})
        assert r.status_code == 202 and r.json()["switch"]["actor_department"] == "ema"
    deadline = time.monotonic() + 15
    mode: dict[str, Any] = {}
    while time.monotonic() < deadline:
        mode = env.get("engineer", "/api/v1/mode").json()
        if "chaoyang" in mode["districts"]:
            break
        time.sleep(0.2)
    assert mode["districts"]["chaoyang"]["mode"] == "emergency" and mode["city"]["mode"] == "normal"
    with env.client("ops") as c:
        assert c.post("/api/v1/mode", json={"scope": "district:朝阳区", "mode": "normal"}).status_code == 202


def test_tokens_issue_use_revoke(env: Env) -> None:
    with env.client("ops") as c:
        r = c.post("/api/v1/tokens", json={"name": "zhang@water", "role": "department", "department": "water",
                                           "ttl_hours": 1})
        assert r.status_code == 201
        tok, tid = r.json()["token"], r.json()["token_id"]
        assert c.post("/api/v1/tokens", json={"name": "x", "role": "department"}).status_code == 400
        listed = c.get("/api/v1/tokens").json()["items"]
        assert any(t["token_id"] == tid for t in listed) and all("token_hash" not in t for t in listed)
        assert tok not in json.dumps(listed)
    assert httpx.get(env.url + "/api/v1/me", headers={"Authorization": f"Bearer {tok}"}).json()["department"] == "water"
    with env.client("ops") as c:
        assert c.delete(f"/api/v1/tokens/{tid}").status_code == 200
    time.sleep(2.2)  # token cache
    assert httpx.get(env.url + "/api/v1/me", headers={"Authorization": f"Bearer {tok}"}).status_code == 401


def test_dashboard_is_served_and_offline(env: Env) -> None:
    r = httpx.get(env.url + "/")
    assert r.status_code == 200 and "城市运行指挥中心" in r.text
    for path in ("/static/app.js", "/static/app.css"):
        body = httpx.get(env.url + path).text
        assert "http://" not in body.replace("http://www.w3.org/2000/svg", "") and "https://" not in body
    assert "https://" not in r.text and "http://" not in r.text.replace("http://www.w3.org/2000/svg", "")
    assert httpx.get(env.url + "/healthz").json()["ok"] is True
    assert httpx.get(env.url + "/docs").status_code == 404  # the docs pages would load from a CDN
