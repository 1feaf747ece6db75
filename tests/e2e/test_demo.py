"""The README's main job, `citybrain demo`, as a person runs it: the simulated
city flows through connector, worker and writer to alerts on screen, the
dashboard and the Open311 intake answer, and nothing needs the open Kafka
listener: the test points KAFKA_BOOTSTRAP_SERVERS at a closed port, so any
process that tried the unauthenticated listener instead of its own SASL
principal would fail to start or to deliver."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from connectors.mqtt_sessions import forget_session
from tests.services import _require

ROOT = Path(__file__).resolve().parents[2]
# "<colour>[ IV 蓝]<reset> new 朝阳区... -> eeb, district.chaoyang  (a-... r1)"
ALERT_LINE = re.compile(r"\[\s*(IV|III|II|I) \S+\]\S* +\w+ .* -> \S.*\(a-[0-9a-f]+ r\d+\)$")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lines(proc: subprocess.Popen[str], out: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        out.put(line.rstrip("\n"))


def test_demo_runs_the_city_on_authenticated_kafka_only() -> None:
    for var in ("KAFKA_SASL_BOOTSTRAP", "KAFKA_ADMIN_PASSWORD", "KAFKA_CONNECTOR_PASSWORD", "KAFKA_WORKER_PASSWORD",
                "KAFKA_WRITER_PASSWORD", "KAFKA_OPSCENTER_PASSWORD", "MQTT_PUBLISH_URL", "DATABASE_URL"):
        _require(var)
    port, o_port = _free_port(), _free_port()
    client_id = f"test-demo-{uuid.uuid4().hex[:8]}"  # its persistent MQTT session is ended afterwards
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # the open listener: nobody may need it
           "CONNECTOR_CLIENT_ID": client_id}
    proc = subprocess.Popen(
        [sys.executable, "-m", "citybrain.cli", "demo", "--port", str(port), "--open311-port", str(o_port),
         "--speed", "120", "--duration", "6h"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc, lines), daemon=True).start()
    seen: list[str] = []
    alerts: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while not alerts and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "demo exited:\n" + "\n".join(seen[-40:])
                continue
            seen.append(line)
            assert " exited (code" not in line, "\n".join(seen[-40:])
            if ALERT_LINE.search(line):
                alerts.append(line)
        assert alerts, "no alert within 240 s:\n" + "\n".join(seen[-40:])

        banner = "\n".join(seen)
        key = re.search(r"api_key=([\w-]+)\)", banner)
        assert key, banner
        with httpx.Client(base_url=f"http://127.0.0.1:{o_port}/open311/v2", timeout=20) as client:
            created = client.post("/requests.json", data={
                "api_key": key.group(1), "service_code": "noise", "lat": "39.92", "long": "116.44",
                "description": "工地夜间施工，电话13700001111", "phone": "13700001111"})
            # 201 only once Kafka (as the connector principal, on the SASL listener) acknowledged the event
            assert created.status_code == 201, created.text
            rid = created.json()[0]["service_request_id"]
            (fetched,) = client.get(f"/requests/{rid}.json").json()
            assert fetched["service_code"] == "noise" and "13700001111" not in fetched["description"]
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=20)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("demo did not stop within 60 s of Ctrl-C")
        finally:
            forget_session(os.environ["MQTT_URL"], client_id)
    assert rc == 0, "\n".join(seen[-40:])
