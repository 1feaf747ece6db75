"""Settings of the operations center: one frozen object, read from the
environment at the entry point only (`citybrain opscenter`)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from citybrain.kafka_security import KafkaSecurity
from citybrain.topics import Topics

# Acknowledge-by and resolve-by per severity (minutes), normal mode. Emergency
# mode (an alert whose evidence says mode=emergency) multiplies them by
# `emergency_sla_factor`, as the streams' emergency profile does.
DEFAULT_ACK_MINUTES: dict[str, float] = {"I": 15, "II": 30, "III": 60, "IV": 240}
DEFAULT_RESOLVE_MINUTES: dict[str, float] = {"I": 240, "II": 480, "III": 1440, "IV": 4320}


class OpscenterSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, env_prefix="OPSCENTER_", extra="ignore", populate_by_name=True)

    database_url: SecretStr = Field(validation_alias=AliasChoices("database_url", "DATABASE_URL"))
    kafka_bootstrap_servers: str = Field(
        validation_alias=AliasChoices("kafka_bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS")
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    topic_prefix: str = ""
    db_schema: str = "public"
    client_id: str = "citybrain-opscenter"
    # KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_*: SASL as the `opscenter` principal (citybrain.kafka_security)
    kafka_security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    # local demo only: issue one token per role at start and print them
    demo: bool = False
    demo_token_ttl_hours: float = Field(default=24.0, gt=0)
    # how long a looked-up token stays cached (revocation takes effect within this)
    token_cache_s: float = Field(default=2.0, ge=0)
    # alert list items kept serialised per (alert, revision, pseudonymous): ~1 kB each
    shaped_cache_items: int = Field(default=20000, ge=0)
    pool_min: int = Field(default=2, ge=1)
    pool_max: int = Field(default=20, ge=1)
    # uvicorn's event loop and HTTP parser: uvloop and httptools cost less per request than
    # asyncio and h11 (bench.api); the standard ones remain a setting away
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    http_parser: Literal["httptools", "h11"] = "httptools"
    feed_queue: int = Field(default=1000, ge=10, description="events buffered per live-feed client")
    feed_keepalive_s: float = Field(default=15.0, gt=0)
    ack_minutes: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_ACK_MINUTES))
    resolve_minutes: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_RESOLVE_MINUTES))
    emergency_sla_factor: float = Field(default=0.5, gt=0, le=10)
    report_timezone: str = "Asia/Shanghai"
    # replays started from the API (POST /api/v1/replays): storage.replay's engine in this process
    replay_run_root: str = ".run/replay"
    replay_max_running: int = Field(default=1, ge=1, le=8, description="runs at a time (each runs a worker)")
    replay_max_range_days: float = Field(default=31, gt=0)
    replay_partitions: int = Field(default=0, ge=0, description="0: as many as the live readings topic has")

    @property
    def topics(self) -> Topics:
        return Topics(prefix=self.topic_prefix)

    @property
    def mode_topic(self) -> str:
        """Emergency mode switches (平急转换): `streams.emergency.ModeSwitch` as JSON, key = scope."""
        return f"{self.topic_prefix}city.control.mode"
