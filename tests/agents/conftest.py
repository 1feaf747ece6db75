"""Agent tier: the worker's Faust agents driven with `agent.test_context()`
(no broker: records are put straight into the agent's stream). The context's
publishing and dead-lettering are swapped for recorders, so a test sees what
the agent would have sent where."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas import Alert
from streams.app import WorkerSettings, context_of, create_app
from streams.context import WorkerContext


@dataclass
class Recorder:
    published: list[Alert] = field(default_factory=list)
    dead: list[tuple[bytes | None, str, str]] = field(default_factory=list)
    applied: list[bytes] = field(default_factory=list)  # event ids of accepted actions

    notices: list[dict[str, Any]] = field(default_factory=list)
    detected: list[Alert] = field(default_factory=list)  # detection revisions (to the lifecycle)
    changelog: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (partition, key, state)

    async def send_changelog(self, records: Any) -> int:
        self.changelog.extend(records)
        return 1

    async def publish_detected(self, alert: Alert) -> None:
        self.detected.append(alert)

    async def publish_notice(self, key: bytes, value: bytes) -> None:
        import orjson

        self.notices.append(orjson.loads(value))

    async def publish_applied_action(self, key: bytes, value: bytes) -> None:
        import orjson

        self.applied.append(orjson.loads(value)["event_id"].encode())

    async def publish_alert(self, alert: Alert) -> None:
        self.published.append(alert)

    async def dead_letter(self, event: Any, reason: str, message: str, stage: str) -> None:
        self.dead.append((event.message.key, reason, message))


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2026, 7, 20, 8, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Worker:
    app: Any
    ctx: WorkerContext
    rec: Recorder
    clock: Clock


def make_worker(tmp_path: Path, **settings_kw: Any) -> Iterator[Worker]:
    clock = Clock()
    settings = WorkerSettings(  # type: ignore[call-arg]
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",  # never contacted: test_context bypasses the broker
        app_id=f"agent-test-{tmp_path.name}",
        data_dir=str(tmp_path / "faust"),
        batch_within_s=0.001,
        **settings_kw,
    )
    app = create_app(settings, clock=clock)
    app.finalize()
    app.flow_control.resume()
    ctx = context_of(app)
    rec = Recorder()
    ctx.publish_alert = rec.publish_alert  # type: ignore[method-assign]
    ctx.dead_letter = rec.dead_letter  # type: ignore[method-assign]
    ctx.publish_applied_action = rec.publish_applied_action  # type: ignore[method-assign]
    ctx.publish_notice = rec.publish_notice  # type: ignore[method-assign]
    ctx.publish_detected = rec.publish_detected  # type: ignore[method-assign]
    ctx.extras["detect"].changelog.send = rec.send_changelog
    yield Worker(app, ctx, rec, clock)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    yield from make_worker(tmp_path)
