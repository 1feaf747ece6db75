"""Dead-letter records: original bytes plus headers saying why.

Header names follow Kafka Connect's DLQ context headers
(`__connect.errors.*`), under our own prefix so they are not mistaken for
Connect's: reason class, message, source (MQTT topic or Kafka
topic/partition/offset), component, stage, time.
"""

from __future__ import annotations

from datetime import datetime

PREFIX = "citybrain.errors."
H_REASON = PREFIX + "reason"
H_MESSAGE = PREFIX + "exception.message"
H_SOURCE = PREFIX + "source"
H_COMPONENT = PREFIX + "connector.name"
H_STAGE = PREFIX + "stage"
H_TIME = PREFIX + "time"
H_PARTITION = PREFIX + "partition"
H_OFFSET = PREFIX + "offset"


def dlq_headers(
    *,
    reason: str,
    message: str,
    source: str,
    component: str,
    stage: str,
    at: datetime,
    partition: int | None = None,
    offset: int | None = None,
) -> list[tuple[str, bytes]]:
    if at.tzinfo is None:
        raise ValueError("DLQ time must be timezone-aware")
    headers = [
        (H_REASON, reason.encode()),
        (H_MESSAGE, message[:2000].encode("utf-8", "replace")),
        (H_SOURCE, source.encode("utf-8", "replace")),
        (H_COMPONENT, component.encode()),
        (H_STAGE, stage.encode()),
        (H_TIME, at.isoformat().encode()),
    ]
    if partition is not None:
        headers.append((H_PARTITION, str(partition).encode()))
    if offset is not None:
        headers.append((H_OFFSET, str(offset).encode()))
    return headers


def decode_headers(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in headers if k.startswith(PREFIX)}
