"""bench.detect_windows: episodes from alert rows, windows detected, false
alerts, the probation share, and the whole command on a small series."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.detect_windows import episode_starts, main, score_series

T = [float(60 * i) for i in range(100)]


def test_an_episode_starts_where_alert_rows_begin() -> None:
    alerts = [0, 1, 1, 0, 0, 1, 0, 1, 1, 1]
    assert episode_starts(T[:10], alerts) == [60.0, 300.0, 420.0]
    assert episode_starts(T[:3], [1, 1, 0]) == [0.0]
    assert episode_starts([], []) == []


def test_windows_detected_false_alerts_and_position() -> None:
    alerts = [0] * 100
    for i in (30, 31, 32):  # one episode inside the first window
        alerts[i] = 1
    alerts[60] = 1  # outside every window: a false alert
    windows = [(20 * 60.0, 40 * 60.0), (70 * 60.0, 90 * 60.0)]  # the second is missed
    s = score_series("s.csv", T, alerts, windows, probation=0.15)
    assert (s.windows, s.detected, s.episodes, s.false_alerts, s.true_alerts) == (2, 1, 2, 1, 1)
    assert s.positions == (0.5,)  # at the middle of its window


def test_the_probation_is_not_scored() -> None:
    alerts = [0] * 100
    alerts[5] = 1  # while learning: neither a false alert nor a detection
    windows = [(0.0, 10 * 60.0)]  # ends while learning: not scored
    s = score_series("s.csv", T, alerts, windows, probation=0.15)
    assert (s.windows, s.detected, s.episodes, s.false_alerts) == (0, 0, 0, 0)
    assert score_series("s.csv", T, alerts, windows, probation=0.0).detected == 1


def test_two_episodes_in_one_window_detect_it_once() -> None:
    alerts = [0] * 100
    alerts[30] = alerts[35] = 1
    s = score_series("s.csv", T, alerts, [(20 * 60.0, 40 * 60.0)])
    assert (s.detected, s.episodes, s.false_alerts) == (1, 2, 0)


def _series(path: Path, spike_at: int) -> tuple[str, str]:
    rnd = random.Random(3)
    t0 = datetime(2015, 9, 1, tzinfo=UTC)
    lines = ["timestamp,value"]
    for i in range(3000):
        v = 50.0 + rnd.gauss(0, 1) + (400.0 if spike_at <= i < spike_at + 4 else 0.0)
        lines.append(f"{(t0 + timedelta(minutes=5 * i)):%Y-%m-%d %H:%M:%S},{v:.3f}")
    path.write_text("\n".join(lines) + "\n")
    w0 = t0 + timedelta(minutes=5 * (spike_at - 100))
    w1 = t0 + timedelta(minutes=5 * (spike_at + 100))
    return f"{w0:%Y-%m-%d %H:%M:%S}", f"{w1:%Y-%m-%d %H:%M:%S}"


def test_the_command_scores_the_series_it_finds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "real").mkdir()
    window = _series(tmp_path / "real" / "a.csv", spike_at=2000)
    labels = tmp_path / "windows.json"
    labels.write_text(json.dumps({"real/a.csv": [list(window)], "real/absent.csv": []}))
    assert main(["--data", str(tmp_path), "--windows", str(labels)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["bench"] == "detect_windows" and out["missing"] == 1
    assert out["totals"]["windows"] == 1 and out["totals"]["detected"] == 1
    assert out["totals"]["false_alerts"] == 0  # Gaussian noise around the spike raises nothing


def test_bad_windows_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "w.json"
    labels.write_text(json.dumps({"a.csv": [["not a time", "2015-01-01 00:00:00"]]}))
    assert main(["--data", str(tmp_path), "--windows", str(labels)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a.csv" in err and "windows must be" in err
