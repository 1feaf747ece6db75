"""Open311 intake: a token bucket per api_key (pure logic, then the HTTP 429)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from connectors.open311 import Open311Settings, create_app
from connectors.open311.ratelimit import Bucket, RateLimiter, take
from tests.unit.test_open311 import NOW, PII_KEY, ListSink

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "payloads" / "open311"
BASE = "http://open311.test/open311/v2"


def test_burst_then_steady_rate() -> None:
    rl = RateLimiter(rate_per_s=2.0, burst=3)
    assert [rl.take("k", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.take("k", 0.0) == pytest.approx(0.5)
    assert rl.take("k", 0.5) == 0.0  # one token refilled
    assert rl.take("k", 0.5) > 0
    assert rl.take("other", 0.5) == 0.0  # keys do not share a bucket
    assert [rl.take("k", 10.0) for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # refill is capped at the burst


def test_clock_stepping_back_refills_nothing() -> None:
    b, wait = take(Bucket(0.0, 100.0), 50.0, 1.0, 5)
    assert wait == pytest.approx(1.0) and b.tokens == 0.0


@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), min_size=1, max_size=200),
       st.floats(min_value=0.1, max_value=100), st.integers(min_value=1, max_value=50))
def test_never_more_than_burst_plus_rate_times_span(times: list[float], rate: float, burst: int) -> None:
    times = sorted(times)
    rl = RateLimiter(rate, burst)
    allowed = sum(1 for t in times if rl.take("k", t) == 0.0)
    assert allowed <= burst + rate * (times[-1] - times[0]) + 1e-6


async def test_http_429_with_retry_after_per_key() -> None:
    settings = Open311Settings(api_keys=(SecretStr("key-a"), SecretStr("key-b")), pii_key=SecretStr(PII_KEY),
                               rate_per_s=1.0, rate_burst=2)
    now = [0.0]
    app = create_app(settings, ListSink(), clock=lambda: NOW, monotonic=lambda: now[0])
    body = json.loads((FIXTURES / "post.json").read_text())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        codes = [(await c.post("/requests.json", json={**body, "api_key": "key-a"})).status_code for _ in range(3)]
        assert codes == [201, 201, 429]
        r = await c.post("/requests.json", json={**body, "api_key": "key-a"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()[0]["code"] == 429 and "api_key" in r.json()[0]["description"]
        assert (await c.post("/requests.json", json={**body, "api_key": "key-b"})).status_code == 201
        # a wrong key is refused as before, and spends nobody's tokens
        assert (await c.post("/requests.json", json={**body, "api_key": "nope"})).status_code == 403
        now[0] = 1.0
        assert (await c.post("/requests.json", json={**body, "api_key": "key-a"})).status_code == 201
