"""`python -m bench.detect_windows --data DIR --windows FILE.json`: the offline
detector (`citybrain detect`, the stream's own code and defaults) scored on
labelled series of someone else's.

Input, in the Numenta Anomaly Benchmark's layout (so a checkout of NAB works
as it is: `--data NAB/data --windows NAB/labels/combined_windows.json`):
`--windows` maps a series' path under `--data` to its anomaly windows,
`{"realTraffic/speed_6005.csv": [["2015-09-16 18:40:00", "2015-09-17 16:24:00"], ...]}`,
and each series is a `timestamp,value` CSV. Series listed but absent are
skipped (and counted), so a subset of a benchmark can be scored. No data is
shipped with the project: bring your own.

Scoring (per episode, as an operator sees alerts):
- an **episode** is a run of consecutive rows with `alert` 1;
- the first `--probation` share of each series (default 0.15, NAB's) is for
  learning: episodes starting in it and windows ending in it are not scored;
- a window is **detected** when an episode starts inside it; **recall** is
  detected windows / scored windows;
- an episode starting inside a window is a **true alert**, any other a false
  one; **precision** is true alerts / episodes;
- **position**: where in its window the first detection came (0 = the
  window's start, 1 = its end; NAB centres windows on the labelled anomaly,
  so about 0.5 is "at the anomaly"), median.
The last line is one JSON object `{"bench": "detect_windows", ...}`.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import conditions
from citybrain.errors import InputError
from streams.detect_cli import DEFAULT_DETECTOR, DETECTORS, detect, parse_timestamp

Window = tuple[float, float]


@dataclass(frozen=True, slots=True)
class SeriesScore:
    series: str
    rows: int
    windows: int  # scored (ending after the probation)
    detected: int
    episodes: int  # scored (starting after the probation)
    false_alerts: int
    positions: tuple[float, ...]  # of each detected window's first detection

    @property
    def true_alerts(self) -> int:
        return self.episodes - self.false_alerts


def episode_starts(times: list[float], alerts: list[int]) -> list[float]:
    """The time of each run of consecutive alert rows' first row."""
    return [t for i, (t, a) in enumerate(zip(times, alerts, strict=True)) if a and (i == 0 or not alerts[i - 1])]


def score_series(name: str, times: list[float], alerts: list[int], windows: list[Window],
                 probation: float = 0.15) -> SeriesScore:  # fmt: skip
    n = len(times)
    learn_until = times[min(int(probation * n), n - 1)] if n else 0.0
    scored = [w for w in windows if w[1] >= learn_until]
    starts = [t for t in episode_starts(times, alerts) if t >= learn_until]
    first: dict[int, float] = {}
    false_alerts = 0
    for t in starts:
        inside = [k for k, (w0, w1) in enumerate(scored) if w0 <= t <= w1]
        if not inside:
            false_alerts += 1
        for k in inside:
            first.setdefault(k, t)
    positions = tuple(
        round((t - scored[k][0]) / (scored[k][1] - scored[k][0]), 3) if scored[k][1] > scored[k][0] else 0.0
        for k, t in sorted(first.items())
    )
    return SeriesScore(name, n, len(scored), len(first), len(starts), false_alerts, positions)


def run_series(path: Path, detector: str) -> tuple[list[float], list[int]]:
    text = path.read_text(encoding="utf-8-sig")
    times: list[float] = []
    alerts: list[int] = []
    for ts_text, _value, _score, alert in detect(io.StringIO(text, newline=""), detector):
        times.append(parse_timestamp(ts_text).timestamp())
        alerts.append(alert)
    return times, alerts


def load_windows(path: Path) -> dict[str, list[Window]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"--windows {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise InputError(f"--windows {path}: expected an object of series path -> [[start, end], ...]")
    out: dict[str, list[Window]] = {}
    for series, ws in raw.items():
        try:
            out[series] = [(parse_timestamp(a).timestamp(), parse_timestamp(b).timestamp()) for a, b in ws]
        except (TypeError, ValueError) as exc:
            raise InputError(f"--windows {path}: series {series!r}: windows must be [[start, end], ...] ({exc})") \
                from None
    return out


def totals(scores: list[SeriesScore]) -> dict[str, Any]:
    windows = sum(s.windows for s in scores)
    episodes = sum(s.episodes for s in scores)
    recall = sum(s.detected for s in scores) / windows if windows else None
    precision = sum(s.true_alerts for s in scores) / episodes if episodes else None
    f1 = 2 * precision * recall / (precision + recall) if recall and precision else 0.0
    positions = [p for s in scores for p in s.positions]
    return {
        "series": len(scores), "windows": windows, "detected": sum(s.detected for s in scores),
        "episodes": episodes, "false_alerts": sum(s.false_alerts for s in scores),
        "recall": None if recall is None else round(recall, 3),
        "precision": None if precision is None else round(precision, 3), "f1": round(f1, 3),
        "median_position": round(statistics.median(positions), 3) if positions else None,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from citybrain.cli import OneLineParser

    ap = OneLineParser(prog="python -m bench.detect_windows", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="directory the series paths are relative to (NAB: NAB/data)")
    ap.add_argument("--windows", required=True, help="JSON: series path -> [[start, end], ...] (NAB's "
                    "labels/combined_windows.json)")
    ap.add_argument("--detector", default=DEFAULT_DETECTOR, choices=DETECTORS, help="default: %(default)s")
    ap.add_argument("--probation", type=float, default=0.15, help="learning share of each series, not scored "
                    "(default %(default)s)")
    args = ap.parse_args(argv)
    if not 0.0 <= args.probation < 1.0:
        ap.error(f"--probation {args.probation} is not in [0, 1)")
    data = Path(args.data)
    if not data.is_dir():
        ap.error(f"--data {data} is not a directory")
    try:
        windows = load_windows(Path(args.windows))
        scores: list[SeriesScore] = []
        missing = 0
        for series, ws in sorted(windows.items()):
            path = data / series
            if not path.is_file():
                missing += 1
                continue
            try:
                times, alerts = run_series(path, args.detector)
            except InputError as exc:
                raise InputError(f"{series}: {exc}") from None
            s = score_series(series, times, alerts, ws, args.probation)
            scores.append(s)
            print(f"{series:60s} rows {s.rows:6d}  windows {s.detected}/{s.windows}  alerts {s.true_alerts}/"
                  f"{s.episodes} in a window  position {list(s.positions)}")
    except InputError as exc:
        print(f"bench.detect_windows: {exc}", file=sys.stderr)
        return 2
    if not scores:
        print(f"bench.detect_windows: none of the {len(windows)} listed series is under {data}", file=sys.stderr)
        return 2
    t = totals(scores)
    print(f"{t['series']} series ({missing} listed but absent): windows detected {t['detected']}/{t['windows']} "
          f"(recall {t['recall']}), alerts in a window {t['episodes'] - t['false_alerts']}/{t['episodes']} "
          f"(precision {t['precision']}), F1 {t['f1']}, median position in the window {t['median_position']}")
    print(json.dumps({"bench": "detect_windows", "detector": args.detector, "probation": args.probation,
                      "totals": t, "missing": missing, "series": [asdict(s) for s in scores],
                      "conditions": conditions()}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
