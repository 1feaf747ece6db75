"""`citybrain detect`: the offline CLI over a timestamp,value CSV."""

from __future__ import annotations

import csv
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from citybrain.cli import main
from citybrain.errors import InputError
from streams.detect_cli import detect, parse_timestamp, run


def write_series(path: Path, n: int = 1500, spike_at: int = 1200) -> None:
    rng = random.Random(1)
    t0 = datetime(2014, 4, 1, tzinfo=UTC)
    lines = ["timestamp,value"]
    for i in range(n):
        v = 40 + 10 * math.sin(2 * math.pi * i / 288) + rng.gauss(0, 1) + (30 if spike_at <= i < spike_at + 5 else 0)
        lines.append(f"{t0 + timedelta(minutes=5 * i):%Y-%m-%d %H:%M:%S},{v:.3f}")
    path.write_text("\n".join(lines) + "\n")


def test_happy_path_output_file(tmp_path: Path) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    write_series(src)
    assert main(["detect", "--input", str(src), "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1500 and list(rows[0]) == ["timestamp", "value", "anomaly_score", "alert"]
    assert rows[0]["timestamp"] == "2014-04-01 00:00:00"
    assert all(0.0 <= float(r["anomaly_score"]) <= 1.0 and r["alert"] in ("0", "1") for r in rows)
    assert rows[1200]["alert"] == "1" and float(rows[1200]["anomaly_score"]) > 0.9999
    assert sum(r["alert"] == "1" for r in rows) < 30
    # deterministic: a second run writes the same bytes
    out2 = tmp_path / "out2.csv"
    main(["detect", "--input", str(src), "--output", str(out2), "--detector", "robust_seasonal"])
    assert out.read_bytes() == out2.read_bytes()


def test_stdout_and_other_detector(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.csv"
    write_series(src, n=300, spike_at=250)
    assert main(["detect", "--input", str(src), "--detector", "rate_of_change"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "timestamp,value,anomaly_score,alert" and len(lines) == 301


def test_timestamps_naive_utc_iso_and_epoch() -> None:
    utc = datetime(2014, 4, 1, 0, 5, tzinfo=UTC)
    assert parse_timestamp("2014-04-01 00:05:00") == utc
    assert parse_timestamp("2014-04-01T08:05:00+08:00") == utc
    assert parse_timestamp("2014-04-01T00:05:00Z") == utc
    assert parse_timestamp(str(int(utc.timestamp()))) == utc


def test_irregular_intervals_and_extra_columns() -> None:
    text = ["id,timestamp,value"] + [f"{i},2020-01-01T00:{i // 60:02d}:{i % 60:02d}Z,{i % 5}" for i in range(0, 3000, 7)]
    rows = list(detect(text))
    assert len(rows) == len(text) - 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("time,value\n2014-04-01 00:00:00,1\n", r"line 1: header lacks column\(s\) timestamp"),
        ("timestamp,reading\n2014-04-01 00:00:00,1\n", r"line 1: header lacks column\(s\) value"),
        ("", "line 1: empty input"),
        ("timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05:00,abc\n", "line 3: unparsable value 'abc'"),
        ("timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05:00,nan\n", "line 3: value 'nan' is not a finite"),
        ("timestamp,value\nyesterday,1\n", "line 2: unparsable timestamp 'yesterday'"),
        ("timestamp,value\n2014-04-01 00:05:00,1\n2014-04-01 00:00:00,2\n", "line 3: timestamp '2014-04-01 00:00:00' is earlier"),
        ("timestamp,value\n2014-04-01 00:05:00\n", "line 2: expected 2 columns"),
    ],
)
def test_bad_input_names_the_line(tmp_path: Path, content: str, message: str) -> None:
    src = tmp_path / "bad.csv"
    src.write_text(content)
    with (tmp_path / "o.csv").open("w") as out, pytest.raises(InputError, match=message):
        run(src, out)


def test_cli_prints_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05:00,x\n")
    out = tmp_path / "o.csv"
    assert main(["detect", "--input", str(src), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 3" in err
    assert not out.exists()  # nothing half-written
    assert main(["detect", "--input", str(tmp_path / "missing.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_timezone_option_and_unknown_zone(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    write_series(src, n=400, spike_at=350)
    out = tmp_path / "o.csv"
    assert main(["detect", "--input", str(src), "--output", str(out), "--timezone", "Asia/Shanghai"]) == 0
    assert len(out.read_text().splitlines()) == 401
    assert main(["detect", "--input", str(src), "--timezone", "Mars/Olympus"]) == 2
