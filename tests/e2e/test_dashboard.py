"""The dashboard in Debian's Chromium (headless, Playwright for Python, never a
downloaded browser): an alert produced to the prefixed city.alerts topic shows
on the map and in the list within seconds, is acknowledged from the UI, and
the action arrives on the actions topic. Screenshot under artifacts/."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from citybrain.kafka_admin import ensure_topics, pipeline_topics
from citybrain.topics import Topics
from opscenter.app import create_app
from opscenter.auth import TokenStore
from opscenter.settings import OpscenterSettings
from opscenter.testing import ServerThread, drop_schema, make_alert, migrate_schema, store
from schemas import AlertAction, SensorReading
from storage.db import create_pool

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"


def run(coro: Any) -> Any:
    """asyncio.run in a thread of its own (Playwright's sync API holds this thread's loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_alert_appears_live_and_is_acknowledged_from_the_ui(database_url: str, kafka_bootstrap: str) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright==1.65.2")
    if not shutil.which(CHROMIUM):
        pytest.fail("Debian's chromium is missing: apt-get install -y chromium (never download a browser)")
    u = uuid.uuid4().hex[:10]
    schema, prefix = f"ops_{u}", f"t{u}."
    now = datetime.now(UTC).replace(microsecond=0)
    alert = make_alert(f"a-{u}-live", now - timedelta(minutes=1), severity="I", subject=f"aq-{u}",
                       title="PM2.5 红色预警 e2e", location={"district": "朝阳区", "street": "望京街道", "lat": 39.996,
                                                           "lon": 116.47}, evidence={"window_start": now - timedelta(minutes=61),
                                                                                     "window_end": now - timedelta(minutes=1)})
    readings = [SensorReading(event_id=f"r-{u}-{m}", sensor_id=f"aq-{u}", sensor_type="pm25",
                              value=80.0 + m * 1.5, unit="ug/m3", ts=now - timedelta(minutes=120 - m),
                              location=alert.location) for m in range(120)]

    async def setup() -> str:
        await migrate_schema(database_url, schema)
        await ensure_topics(kafka_bootstrap, pipeline_topics(Topics(prefix), 2))
        await store(database_url, schema, "readings", readings)
        pool = await create_pool(database_url, schema, min_size=1, max_size=1)
        try:
            ts = TokenStore(pool)
            await ts.ensure_table()
            return (await ts.issue("e2e-ops", "ops", None, timedelta(hours=1))).token
        finally:
            await pool.close()

    async def produce_alert() -> float:
        p = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
        await p.start()
        try:
            t = time.monotonic()
            await p.send_and_wait(prefix + "city.alerts", alert.to_json(), key=alert.alert_id.encode())
            # the writer would store it; do what it does so the detail view has it
            await store(database_url, schema, "alerts", [alert])
            return t
        finally:
            await p.stop()

    async def actions() -> list[AlertAction]:
        c = AIOKafkaConsumer(prefix + "city.alert.actions", bootstrap_servers=kafka_bootstrap, group_id=None,
                             auto_offset_reset="earliest")
        await c.start()
        got: list[AlertAction] = []
        try:
            deadline = time.monotonic() + 15
            while not got and time.monotonic() < deadline:
                for msgs in (await c.getmany(timeout_ms=500)).values():
                    got += [AlertAction.from_json(m.value) for m in msgs]
        finally:
            await c.stop()
        return got

    token = asyncio.run(setup())
    settings = OpscenterSettings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                                 db_schema=schema, topic_prefix=prefix, client_id=f"e2e-opscenter-{u}")
    app = create_app(settings)
    shots = ROOT / "artifacts"
    shots.mkdir(exist_ok=True)
    try:
        with ServerThread(app) as srv, sync_api.sync_playwright() as pw:
            st = app.state.ops
            deadline = time.monotonic() + 30
            while not (st.hub and st.hub.ready.is_set()) and time.monotonic() < deadline:
                time.sleep(0.1)
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            external: list[str] = []
            page.on("request", lambda r: external.append(r.url) if not r.url.startswith(srv.url) else None)
            page.goto(f"{srv.url}/#token={token}")
            page.wait_for_selector("body[data-ready='1']", timeout=15000)
            assert page.locator("#cells polygon").count() > 100  # the street cells of the map
            page.wait_for_selector(".live.on", timeout=10000)

            t0 = run(produce_alert())
            marker = page.locator(f"#marker-{alert.alert_id}")
            marker.wait_for(state="attached", timeout=10000)
            row = page.locator(f"#alert-list li[data-alert-id='{alert.alert_id}']")
            row.wait_for(timeout=10000)
            seen_s = time.monotonic() - t0
            assert seen_s < 5, f"alert took {seen_s:.1f} s to show"
            assert marker.get_attribute("fill") == "#e02020"  # red, severity I
            assert "红色预警" in row.inner_text()
            page.wait_for_timeout(1200)
            assert row.locator(".sla").inner_text()  # SLA clock ticking

            row.click()
            page.wait_for_selector("#detail:not(.hidden) .chart polyline", timeout=10000)
            assert page.locator("#detail .chart .thr").count() == 1  # the threshold line
            page.screenshot(path=str(shots / "dashboard-detail.png"))
            page.click("#detail [data-action='ack']")
            page.wait_for_function("window.__lastAction && window.__lastAction.action === 'ack'", timeout=10000)
            # the feed's action event may arrive before the POST's answer, which sets the status
            page.wait_for_function("['签收已发送', 'ack sent'].includes("
                                   "document.querySelector('#detail-status').textContent)", timeout=10000)
            page.click("#detail-close")
            page.click("#lang")
            assert page.locator("header h1 span").inner_text() == "City Operations Center"
            page.screenshot(path=str(shots / "dashboard.png"))
            browser.close()
            assert not external, f"the dashboard fetched outside the service: {external}"
        got = run(actions())
        assert [(a.alert_id, a.action.value, a.actor) for a in got] == [(alert.alert_id, "ack", "e2e-ops")]
        assert (shots / "dashboard.png").stat().st_size > 10000
    finally:
        asyncio.run(drop_schema(database_url, schema))
