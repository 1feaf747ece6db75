"""Loss accounting per hop: received = decoded-or-rejected, produced, acknowledged.

Counters live in their own registry per connector instance so several
connectors (and tests) in one process do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, start_http_server


class ConnectorMetrics:
    def __init__(self, name: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"connector": name}
        self.received = Counter(
            "citybrain_connector_received_total", "MQTT messages received", ["connector"], registry=self.registry
        ).labels(**labels)
        self.decoded = Counter(
            "citybrain_connector_decoded_total", "events decoded from messages", ["connector"], registry=self.registry
        ).labels(**labels)
        self._rejected = Counter(
            "citybrain_connector_rejected_total",
            "messages dead-lettered, by reason",
            ["connector", "reason"],
            registry=self.registry,
        )
        self.produced = Counter(
            "citybrain_connector_produced_total",
            "Kafka records acknowledged by the broker (events and DLQ records)",
            ["connector"],
            registry=self.registry,
        ).labels(**labels)
        self.acknowledged = Counter(
            "citybrain_connector_acknowledged_total",
            "MQTT messages acknowledged after Kafka had them",
            ["connector"],
            registry=self.registry,
        ).labels(**labels)
        self._name = name

    @property
    def rejected(self) -> _RejectedByReason:
        return _RejectedByReason(self._rejected, self._name)

    def serve(self, port: int) -> None:
        start_http_server(port, addr="127.0.0.1", registry=self.registry)

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    key = sample.name.removeprefix("citybrain_connector_").removesuffix("_total")
                    if "reason" in sample.labels:
                        key += ":" + sample.labels["reason"]
                    out[key] = out.get(key, 0) + sample.value
        return out


class _RejectedByReason:
    def __init__(self, counter: Counter, name: str) -> None:
        self._counter = counter
        self._name = name

    def labels(self, reason: str) -> Counter:
        return self._counter.labels(connector=self._name, reason=reason)
