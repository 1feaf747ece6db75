"""How a service authenticates to Kafka, as configuration.

PLAINTEXT (the default) is the local stack's loopback listener for tests and
tools; SASL_PLAINTEXT / SASL_SSL with SCRAM-SHA-512 is the authenticated
listener (deploy/local/stack.sh: KAFKA_SASL_BOOTSTRAP), one principal per
service and per department. A service switches by environment only:

    KAFKA_BOOTSTRAP_SERVERS=$KAFKA_SASL_BOOTSTRAP
    KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT
    KAFKA_SASL_USERNAME=connector
    KAFKA_SASL_PASSWORD=$KAFKA_CONNECTOR_PASSWORD

and passes `security.aiokafka_kwargs()` to every AIOKafkaProducer / Consumer /
AdminClient it builds, or `security.faust_credentials()` to `faust.App(broker_credentials=...)`.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from citybrain.errors import ConfigError

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


class KafkaSecurity(BaseSettings):
    """KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME,
    KAFKA_SASL_PASSWORD, KAFKA_SSL_CA_FILE. Read from the environment at an
    entry point (`KafkaSecurity()`), or built directly in tests."""

    model_config = SettingsConfigDict(frozen=True, env_prefix="KAFKA_", extra="ignore")

    security_protocol: Protocol = "PLAINTEXT"
    sasl_mechanism: Mechanism = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_file: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> KafkaSecurity:
        if self.sasl and not (self.sasl_username and self.sasl_password and self.sasl_password.get_secret_value()):
            raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs KAFKA_SASL_USERNAME "
                              "and KAFKA_SASL_PASSWORD")
        return self

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        try:
            return ssl.create_default_context(cafile=self.ssl_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"KAFKA_SSL_CA_FILE {self.ssl_ca_file}: {exc}") from None

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer / AIOKafkaConsumer / AIOKafkaAdminClient."""
        if self.security_protocol == "PLAINTEXT":
            return {}
        kw: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.tls:
            kw["ssl_context"] = self.ssl_context()
        if self.sasl:
            assert self.sasl_password is not None
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                      sasl_plain_password=self.sasl_password.get_secret_value())
        return kw

    def to_env(self) -> dict[str, str]:
        """The environment a child process reads these settings back from (ENV_VARS)."""
        env: dict[str, str] = {"KAFKA_SECURITY_PROTOCOL": self.security_protocol,
                               "KAFKA_SASL_MECHANISM": self.sasl_mechanism}
        if self.sasl:
            assert self.sasl_username is not None and self.sasl_password is not None
            env.update(KAFKA_SASL_USERNAME=self.sasl_username, KAFKA_SASL_PASSWORD=self.sasl_password.get_secret_value())
        if self.ssl_ca_file:
            env["KAFKA_SSL_CA_FILE"] = self.ssl_ca_file
        return env

    def faust_credentials(self) -> Any:
        """`broker_credentials` for faust.App (None on PLAINTEXT)."""
        import faust

        if self.security_protocol == "PLAINTEXT":
            return None
        if not self.sasl:
            return faust.SSLCredentials(self.ssl_context())
        assert self.sasl_password is not None
        return faust.SASLCredentials(username=self.sasl_username, password=self.sasl_password.get_secret_value(),
                                     mechanism=self.sasl_mechanism, ssl_context=self.ssl_context())


# the variables KafkaSecurity reads (to_env writes them)
ENV_VARS = ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD",
            "KAFKA_SSL_CA_FILE")


def without_passwords(env: Mapping[str, str]) -> dict[str, str]:
    """`env` less every Kafka principal's password (stack.env's KAFKA_<SERVICE>_PASSWORD
    and KAFKA_SASL_PASSWORD): what a child gets before its own identity is added."""
    return {k: v for k, v in env.items() if not (k.startswith("KAFKA_") and k.endswith("_PASSWORD"))}


def scram(username: str, password: str, *, protocol: Protocol = "SASL_PLAINTEXT",
          mechanism: Mechanism = "SCRAM-SHA-512", ca_file: str | None = None) -> KafkaSecurity:
    """Settings for one principal, built in code (tests, tools)."""
    return KafkaSecurity(security_protocol=protocol, sasl_mechanism=mechanism, sasl_username=username,
                         sasl_password=SecretStr(password), ssl_ca_file=ca_file)
