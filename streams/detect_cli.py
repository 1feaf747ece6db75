"""`citybrain detect --input FILE.csv [--detector NAME] [--output OUT.csv]`.

Offline anomaly detection on one univariate series with the same detector
code (and defaults) the stream runs. Input: a CSV with a header containing
`timestamp` and `value` (other columns are ignored). Timestamps are ISO 8601
(`2014-04-01T00:05:00+08:00`, `...Z`) or `2014-04-01 00:05:00`; a timestamp
without a zone is taken as UTC; a plain number is epoch seconds. Any interval
(regular or not), any unit and scale. Rows must be in time order (equal
timestamps are allowed).

Output: `timestamp,value,anomaly_score,alert` per input row, the timestamp and
value as given, the score in [0, 1] with 6 decimals, alert 1 while an anomaly
episode is open. Hour-of-day seasonality uses `--timezone` (default UTC).
Bad input raises `InputError` with a one-line message naming the line.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from citybrain.errors import ConfigError, InputError
from streams.detectors.config import default_config
from streams.detectors.engine import stat_params
from streams.detectors.localtime import LocalClock
from streams.detectors.stats import RateOfChange, RobustSeasonal

DETECTORS = ("robust_seasonal", "rate_of_change")
DEFAULT_DETECTOR = "robust_seasonal"


def parse_timestamp(text: str) -> datetime:
    s = text.strip()
    if not s:
        raise ValueError("empty timestamp")
    try:
        return datetime.fromtimestamp(float(s), UTC)
    except ValueError:
        pass
    ts = datetime.fromisoformat(s)
    if ts.tzinfo is None or ts.utcoffset() is None:
        ts = ts.replace(tzinfo=UTC)  # documented: a timestamp without a zone is UTC
    return ts.astimezone(UTC)


def make_detector(name: str, timezone: str | None = None) -> RobustSeasonal | RateOfChange:
    cfg = default_config()
    try:
        clock = LocalClock(ZoneInfo(timezone) if timezone and timezone.upper() != "UTC" else None)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {timezone!r} (e.g. UTC, Asia/Shanghai)") from exc
    if name == "robust_seasonal":
        return RobustSeasonal(stat_params(cfg), clock)
    if name == "rate_of_change":
        sp = stat_params(cfg)
        return RateOfChange(open_score=float(cfg.section("statistical")["roc_score"]), warmup=sp.warmup)
    raise ConfigError(f"unknown detector {name!r}; choose one of: {', '.join(DETECTORS)}")


def read_series(lines: Iterable[str]) -> Iterator[tuple[int, str, str, float, float]]:
    """(line number, timestamp text, value text, epoch seconds, value) per data row."""
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError("line 1: empty input, expected a header 'timestamp,value'") from None
    names = [h.strip().lower().lstrip("\ufeff") for h in header]
    missing = [c for c in ("timestamp", "value") if c not in names]
    if missing:
        raise InputError(f"line 1: header lacks column(s) {', '.join(missing)}; expected 'timestamp,value', got {','.join(header)!r}")
    it, iv = names.index("timestamp"), names.index("value")
    prev = -math.inf
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(it, iv):
            raise InputError(f"line {line}: expected {len(names)} columns, got {len(row)}: {','.join(row)!r}")
        ts_text, v_text = row[it], row[iv]
        try:
            t = parse_timestamp(ts_text).timestamp()
        except (ValueError, OverflowError, OSError):
            raise InputError(f"line {line}: unparsable timestamp {ts_text!r} (use ISO 8601, e.g. 2014-04-01 00:05:00)") from None
        try:
            v = float(v_text)
        except ValueError:
            raise InputError(f"line {line}: unparsable value {v_text!r} (expected a number)") from None
        if not math.isfinite(v):
            raise InputError(f"line {line}: value {v_text!r} is not a finite number")
        if t < prev:
            raise InputError(f"line {line}: timestamp {ts_text!r} is earlier than the row before (rows must be in time order)")
        prev = t
        yield line, ts_text, v_text, t, v


def detect(lines: Iterable[str], detector: str = DEFAULT_DETECTOR, timezone: str | None = None) -> Iterator[tuple[str, str, float, int]]:
    """(timestamp text, value text, anomaly score, alert 0/1) per row."""
    det = make_detector(detector, timezone)
    state = None
    for _line, ts_text, v_text, t, v in read_series(lines):
        state, r = det.update(state, t, v)
        score = min(1.0, max(0.0, r.score))
        yield ts_text, v_text, score, 1 if r.alert else 0


def run(input_path: Path, output: TextIO, detector: str = DEFAULT_DETECTOR, timezone: str | None = None) -> int:
    try:
        text = input_path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"cannot read {input_path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{input_path} is not UTF-8 text: {exc.reason}") from exc
    # validate everything before writing anything, so a bad row leaves no half output
    rows = list(detect(io.StringIO(text, newline=""), detector, timezone))
    w = csv.writer(output, lineterminator="\n")
    w.writerow(["timestamp", "value", "anomaly_score", "alert"])
    for ts_text, v_text, score, alert in rows:
        w.writerow([ts_text, v_text, f"{score:.6f}", alert])
    return len(rows)


def _cmd_detect(args: argparse.Namespace) -> int:
    if args.output:
        buf = io.StringIO()
        n = run(Path(args.input), buf, args.detector, args.timezone)
        try:
            Path(args.output).write_text(buf.getvalue(), encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write {args.output}: {exc.strerror}") from exc
        print(f"{n} rows -> {args.output}", file=sys.stderr)
    else:
        run(Path(args.input), sys.stdout, args.detector, args.timezone)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="offline anomaly detection on a timestamp,value CSV")
    p.add_argument("--input", required=True, help="CSV with a header timestamp,value (naive timestamps are UTC)")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, choices=DETECTORS, help="default: %(default)s")
    p.add_argument("--output", help="output CSV (default: stdout)")
    p.add_argument("--timezone", default="UTC", help="zone for hour-of-day seasonality (default: UTC)")
    p.set_defaults(func=_cmd_detect)
