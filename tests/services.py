"""Fixtures for the tiers that use real services (integration, e2e): Kafka,
Mosquitto and PostgreSQL from the local stack. A missing service fails the
test loudly (never skips): run `make test`, which starts the stack."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest


def _require(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        pytest.fail(f"{var} is not set: start the local stack with `make stack-up` (or run `make test`)")
    return value


def _reachable(name: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=3):
            return
    except OSError as exc:
        pytest.fail(f"{name} at {host}:{port} is not reachable ({exc}); start it with `make stack-up`")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    servers = _require("KAFKA_BOOTSTRAP_SERVERS")
    host, _, port = servers.split(",")[0].rpartition(":")
    _reachable("Kafka", host, int(port))
    return servers


@pytest.fixture(scope="session")
def mqtt_url() -> str:
    url = _require("MQTT_URL")
    u = urlparse(url)
    _reachable("Mosquitto", u.hostname or "127.0.0.1", u.port or 1883)
    return url


@pytest.fixture(scope="session")
def mqtt_publish_url() -> str:
    return os.environ.get("MQTT_PUBLISH_URL") or _require("MQTT_URL")


@pytest.fixture(scope="session")
def database_url() -> str:
    url = _require("DATABASE_URL")
    u = urlparse(url)
    _reachable("PostgreSQL", u.hostname or "127.0.0.1", u.port or 5432)
    return url


@pytest.fixture
def unique() -> Iterator[str]:
    """A short unique suffix for topic, group, table and MQTT topic names."""
    yield uuid.uuid4().hex[:10]
