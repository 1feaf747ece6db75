"""bench.detect's worker figure: skipped with a line saying why when no stack
is configured, and a bad --worker-readings gets one line, not a traceback."""

from __future__ import annotations

import pytest

from bench import detect


def test_the_worker_figure_is_skipped_with_a_reason_without_a_broker(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert detect.one_worker(0) is None
    assert capsys.readouterr().out == ""
    assert detect.one_worker(100_000) is None
    assert "skipped, KAFKA_BOOTSTRAP_SERVERS is not set" in capsys.readouterr().out


def test_a_bad_worker_readings_gets_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        detect.main(["--worker-readings", "5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--worker-readings must be 0 (skip) or at least 1000" in err
