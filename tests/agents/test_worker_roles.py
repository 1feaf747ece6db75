"""A worker's role decides which agents and tables its process runs: the two
halves (detect, alerts) together are exactly the whole worker, each is its own
Faust app (consumer group, changelog topics), and both follow the mode board
and the rules file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from streams.app import WorkerSettings, context_of, create_app


def build(tmp_path: Path, role: str) -> Any:
    settings = WorkerSettings(  # type: ignore[call-arg]
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1",  # never contacted: the app is only built
        app_id="roles-test",
        data_dir=str(tmp_path / role),
        role=role,
    )
    return create_app(settings, clock=lambda: datetime(2026, 7, 20, 8, 0, tzinfo=UTC))


def test_the_halves_split_the_agents_and_tables_of_the_whole(tmp_path: Path) -> None:
    whole, detect, alerts = (build(tmp_path, r) for r in ("all", "detect", "alerts"))
    assert set(detect.agents) == {"detect"}
    assert set(detect.tables) == {"sensor-state"}
    assert "detect" not in alerts.agents and "sensor-state" not in alerts.tables
    assert {"lifecycle-detected", "lifecycle-actions", "hotline-workflow", "incident-alerts"} <= set(alerts.agents)
    assert set(detect.agents) | set(alerts.agents) == set(whole.agents)
    assert set(detect.tables) | set(alerts.tables) == set(whole.tables)


def test_each_half_is_its_own_faust_app(tmp_path: Path) -> None:
    ids = {r: build(tmp_path, r).conf.id for r in ("all", "detect", "alerts")}
    assert ids == {"all": "roles-test", "detect": "roles-test-detect", "alerts": "roles-test-alerts"}
    table = build(tmp_path, "detect").tables["sensor-state"]
    assert table.changelog_topic.get_topic_name() == "roles-test-detect-sensor-state-changelog"


@pytest.mark.parametrize("role", ["all", "detect", "alerts"])
def test_every_role_follows_the_modes_and_the_rules_file(tmp_path: Path, role: str) -> None:
    extras = context_of(build(tmp_path, role)).extras
    assert "follow_mode" in extras and "reload_rules" in extras


def test_an_unknown_role_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="role"):
        build(tmp_path, "lifecycle")


async def test_the_worker_closes_its_department_topic_client_as_it_stops(tmp_path: Path) -> None:
    """Left open, the admin client's tasks held every worker's stop a second."""
    app = build(tmp_path, "all")
    ctx = context_of(app)
    closed: list[bool] = []

    class Creator:
        async def close(self) -> None:
            closed.append(True)

    ctx._topic_creator = Creator()  # type: ignore[assignment]  # as after the first department topic was made
    await app.on_before_shutdown.send()
    assert closed == [True]
