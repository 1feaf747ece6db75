"""The connector compresses its Kafka record batches with lz4 by default, the
codec is installed (aiokafka would refuse the producer without it), and a
wrong codec name is refused when the settings are read."""

from __future__ import annotations

import pytest
from aiokafka.codec import has_lz4, lz4_decode, lz4_encode
from pydantic import ValidationError

from connectors.mqtt_kafka import MqttKafkaSettings


def settings(**kw: object) -> MqttKafkaSettings:
    return MqttKafkaSettings(mqtt_url="mqtt://u:p@127.0.0.1:1", kafka_bootstrap_servers="127.0.0.1:1",
                             **kw)  # type: ignore[arg-type]


def test_lz4_by_default_and_its_codec_is_there() -> None:
    assert settings().compression == "lz4"
    assert has_lz4()
    body = b'{"sensor_id":"noise-1","value":62.7}' * 50
    packed = lz4_encode(body)
    assert len(packed) < len(body) / 4 and lz4_decode(packed) == body


def test_none_and_a_wrong_codec() -> None:
    assert settings(compression="none").compression == "none"
    with pytest.raises(ValidationError, match="compression"):
        settings(compression="brotli")
