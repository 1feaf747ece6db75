"""Integration tier: one component at a time against the real services."""

from tests.services import database_url, kafka_bootstrap, mqtt_publish_url, mqtt_url, unique  # noqa: F401
