"""Settings of the Open311 intake: one frozen object, secrets as SecretStr."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from citybrain.kafka_security import KafkaSecurity


class Open311Settings(BaseSettings):
    """Read from the environment (`OPEN311_*`) at the entry point only; tests pass values."""

    model_config = SettingsConfigDict(frozen=True, env_prefix="OPEN311_", extra="ignore")

    # Keys clients must send as `api_key` to POST; env: comma-separated.
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    # Key of the caller pseudonym (HMAC); the same key as the MQTT hotline intake
    # so a caller gets the same caller_ref on every channel.
    pii_key: SecretStr = SecretStr("")
    jurisdiction_id: str = "beijing.gov.cn"
    max_body_bytes: int = Field(default=64 * 1024, gt=0)
    # POSTs per api_key: a steady rate with a burst (token bucket); over it: 429
    rate_per_s: float = Field(default=20.0, gt=0)
    rate_burst: int = Field(default=200, ge=1)
    # GET requests: default window and page size (GeoReport v2: 90 days, 1000 requests)
    default_days: int = Field(default=90, gt=0)
    max_results: int = Field(default=1000, gt=0)
    # accepted requested_datetime relative to the server clock
    max_future_s: int = 300
    max_past_s: int = 7 * 24 * 3600
    # districts and streets with centroids (sim/data/beijing.json format); None: the shipped file
    geography_file: Path | None = None
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    # KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_*: the intake writes hotline events as the `connector` principal
    kafka_security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    topic_prefix: str = ""
    host: str = "127.0.0.1"
    port: int = 8311
    # the intake's own store (requests with the caller's clear PII): PostgreSQL when given, else memory
    database_url: SecretStr | None = Field(default=None,
                                           validation_alias=AliasChoices("OPEN311_DATABASE_URL", "DATABASE_URL"))

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(k.strip() for k in v.split(",") if k.strip())
        return v
