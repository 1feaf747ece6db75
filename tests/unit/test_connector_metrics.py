from __future__ import annotations


def test_metrics_account_for_every_message() -> None:
    from connectors.metrics import ConnectorMetrics

    m = ConnectorMetrics("t")
    m.received.inc(3)
    m.rejected.labels("malformed_json").inc()
    m.decoded.inc(2)
    snap = m.snapshot()
    assert snap["received"] == 3 and snap["rejected:malformed_json"] == 1 and snap["decoded"] == 2

