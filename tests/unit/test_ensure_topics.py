"""ensure_topics waits for the leaders of the topics that already exist too
(a broker that has just started serves them a few seconds later), not only
for the ones it creates. A scripted admin client stands in for the broker."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from citybrain import kafka_admin


class ScriptedAdmin:
    """Every topic exists; partition 0 of each has no leader for the first `leaderless` describes."""

    leaderless = 2
    describes: ClassVar[list[list[str]]] = []

    def __init__(self, **kwargs: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return ["city.alerts", "city.sensor.readings"]

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        ScriptedAdmin.describes.append(sorted(names))
        leader = -1 if len(ScriptedAdmin.describes) <= ScriptedAdmin.leaderless else 1
        return [{"topic": n, "error_code": 0,
                 "partitions": [{"partition": 0, "error_code": 0, "leader": leader}]} for n in names]

    async def create_topics(self, new: Any) -> Any:
        raise AssertionError("nothing is missing: nothing to create")


async def test_existing_topics_are_waited_for_until_they_have_leaders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_admin, "AIOKafkaAdminClient", ScriptedAdmin)
    ScriptedAdmin.describes = []
    await kafka_admin.ensure_topics("127.0.0.1:1", {"city.alerts": 1, "city.sensor.readings": 1})
    # twice without a leader, then served: three looks at both topics
    assert ScriptedAdmin.describes == [["city.alerts", "city.sensor.readings"]] * 3
