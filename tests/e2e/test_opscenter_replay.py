"""A replay started from the operations center's API (engineer role) on the
real stack: readings recorded in a storage schema of this test's own (two
hours of a PM2.5 sensor climbing into an IAQI alert), POST /api/v1/replays,
the run's worker detects from them, GET /api/v1/replays/{run} reports the run
done with the alert it produced (new against the recorded alerts: none were
recorded here), the runs list has it, and the audit trail has the run and who
asked for it. Departments get 403 on every replay route."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from opscenter.app import create_app
from opscenter.auth import TokenStore
from opscenter.settings import OpscenterSettings
from opscenter.testing import ServerThread, drop_schema, migrate_schema, store
from schemas import SensorReading
from storage.db import connect, create_pool

pytestmark = pytest.mark.e2e
# long: the machine is shared and loaded; this bounds a hang, it measures nothing
RUN_TIMEOUT_S = 600


@pytest.fixture
def served(database_url: str, kafka_bootstrap: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    u = uuid.uuid4().hex[:10]
    schema = f"ops_replay_{u}"
    now = datetime.now(UTC).replace(microsecond=0)
    sensor = f"aq-{u}"
    loc = {"district": "朝阳区", "street": "望京街道", "lat": 39.996, "lon": 116.47}
    readings = [SensorReading(event_id=f"r-{u}-{m}", sensor_id=sensor, sensor_type="pm25", value=80.0 + m * 1.5,
                              unit="ug/m3", ts=now - timedelta(minutes=130 - m), location=loc) for m in range(120)]

    async def setup() -> dict[str, str]:
        await migrate_schema(database_url, schema)
        await store(database_url, schema, "readings", readings)
        pool = await create_pool(database_url, schema, min_size=1, max_size=1)
        try:
            ts = TokenStore(pool)
            await ts.ensure_table()
            return {name: (await ts.issue(f"test-{name}", role, dept, timedelta(hours=1))).token
                    for name, role, dept in (("engineer", "engineer", None), ("ops", "ops", None),
                                             ("eeb", "department", "eeb"))}
        finally:
            await pool.close()

    settings = OpscenterSettings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                                 db_schema=schema, topic_prefix=f"t{u}.", client_id=f"test-opscenter-{u}",
                                 replay_run_root=str(tmp_path / "replay"), replay_partitions=1)
    try:
        tokens = asyncio.run(setup())
        app = create_app(settings, kafka=False, replay_env=dict(os.environ))
        with ServerThread(app) as srv:
            yield {"url": srv.url, "tokens": tokens, "schema": schema, "sensor": sensor, "now": now, "u": u}
    finally:
        asyncio.run(drop_schema(database_url, schema))


def test_engineer_replays_a_range_from_the_api(served: dict[str, Any], database_url: str) -> None:
    url, tokens, now = served["url"], served["tokens"], served["now"]
    body = {"from": (now - timedelta(minutes=140)).isoformat(), "to": now.isoformat(), "run": f"api_{served['u']}"}

    def client(who: str) -> httpx.Client:
        return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[who]}"}, timeout=30)

    with client("eeb") as c:
        assert c.post("/api/v1/replays", json=body).status_code == 403
        assert c.get("/api/v1/replays").status_code == 403
        assert c.get(f"/api/v1/replays/{body['run']}").status_code == 403
    with client("engineer") as c:
        r = c.post("/api/v1/replays", json=body)
        assert r.status_code == 202, r.text
        run = r.json()["run"]
        assert run == body["run"] and r.json()["status"] == "starting"
        again = c.post("/api/v1/replays", json=body)  # running already, and the same run id
        assert again.status_code == 409, again.text
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            got = c.get(f"/api/v1/replays/{run}")
            assert got.status_code == 200, got.text
            item = got.json()
            assert item["status"] in ("starting", "running", "done"), item
            if item["status"] == "done":
                break
            assert time.monotonic() < deadline, f"replay {run} not done in {RUN_TIMEOUT_S} s: {item}"
            time.sleep(1)
        assert item["readings"] == 120 and item["requested_by"] == "test-engineer"
        assert item["summary"]["recorded"] == 0 and item["summary"]["replayed"] >= 1
        produced = item["diff"]["new"]
        pm = [a for a in produced if a["subject"] == served["sensor"] and a["rule"].endswith(":pm25")]
        assert pm, produced
        assert pm[0]["district"] == "朝阳区" and "eeb" in pm[0]["departments"]
        listed = c.get("/api/v1/replays").json()["items"]
        assert [(x["run"], x["status"], x["requested_by"]) for x in listed] == [(run, "done", "test-engineer")]

    async def audit_rows() -> list[Any]:
        conn = await connect(database_url, served["schema"], "test-opscenter-replay")
        try:
            return list(await conn.fetch("SELECT kind, actor, details::text AS d FROM audit_log WHERE subject = $1 "
                                         "ORDER BY seq", run))
        finally:
            await conn.close()

    rows = asyncio.run(audit_rows())
    kinds = {r["kind"]: r for r in rows}
    assert set(kinds) == {"replay.run", "replay.request"}, rows
    assert kinds["replay.request"]["actor"] == "test-engineer"
    assert body["from"][:16] in kinds["replay.run"]["d"]
