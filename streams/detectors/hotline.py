"""Hotline spike early warning (未诉先办): a burst of 12345 calls of one
category in one street (or grid, else district) before complaints pile up.

Per (category, area) key: call counts in event-time buckets (15 min) over a
sliding window (2 h), and the usual rate learned per bucket (an EWMA with a
half-life of days, normalised by a city-wide diurnal profile (which only raises the
usual level at busy hours, never lowers it below the average); a prior before any
history). A burst is a window count >= `min_count` whose Poisson upper tail
probability under the usual level is below `p_value`. The episode clears once
the window count is back to within mean + 2 sd of the usual level; `tick`
advances the window by the watermark so a burst also clears when calls stop.
State: a few numbers and at most window/bucket buckets per key.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from schemas import Evidence, HotlineEvent, Location, Severity
from streams.detectors.base import Signal, State
from streams.detectors.config import DetectConfig, default_config
from streams.detectors.localtime import LocalClock

NAME = "hotline_burst"
VERSION = "1.1.0"  # 1.1: a burst clears dated at the bucket boundary where its window fell

# hotline category -> the city category its early warning is routed as
CATEGORY_OF: dict[str, str] = {
    "noise": "noise", "flooding": "water", "water_outage": "water", "gas_smell": "gas",
    "air_pollution": "air", "odour": "air", "traffic": "traffic", "illegal_parking": "traffic",
}  # fmt: skip


def hotline_key(event: HotlineEvent) -> str:
    loc = event.location
    area = loc.street or loc.grid or loc.district
    return f"{event.category}:{area}"


def poisson_sf(k: int, mu: float) -> float:
    """P(X >= k) for X ~ Poisson(mu)."""
    if k <= 0:
        return 1.0
    if mu <= 0.0:
        return 0.0
    if k > 200:  # normal approximation with continuity correction
        z = (k - 0.5 - mu) / math.sqrt(mu)
        return 0.5 * math.erfc(z / math.sqrt(2.0))
    term = math.exp(-mu)
    cdf = 0.0
    for i in range(k):
        cdf += term
        term *= mu / (i + 1)
    return max(0.0, 1.0 - cdf)


class HotlineBurst:
    name = NAME
    version = VERSION

    def __init__(self, config: DetectConfig | None = None) -> None:
        self.cfg = config or default_config()
        c = self.cfg.section("hotline")
        self.bucket_s = int(c["bucket_s"])
        self.nb = int(c["window_s"]) // self.bucket_s
        self.min_count = int(c["min_count"])
        self.p_value = float(c["p_value"])
        self.min_ratio = float(c.get("min_ratio", 3.0))
        self.prior_weight = float(c.get("prior_weight_buckets", 8))
        self.prior = float(c["prior_per_hour"]) * self.bucket_s / 3600.0
        self.alpha = 1.0 - 0.5 ** (self.bucket_s / (float(c["learn_half_life_h"]) * 3600.0))
        # the city-wide rhythm only ever raises the usual level (a street whose
        # calls do not follow it must not look like a burst every night)
        floor = float(c.get("diurnal_floor", 1.0))
        self.diurnal = [max(float(x), floor) for x in c["diurnal"]]
        self.clock = LocalClock(self.cfg.tz)

    def applies_to(self, event: HotlineEvent) -> bool:
        return event.kind == "created"

    def _factor(self, bucket: int) -> float:
        return self.diurnal[self.clock.hour(bucket * self.bucket_s + self.bucket_s / 2)]

    def _advance(self, st: State, bucket: int) -> None:
        """Move the window to end at `bucket`; buckets leaving it are folded into
        the usual rate, so the usual level never includes the window it judges
        (a burst cannot teach itself away before it is noticed)."""
        if bucket <= st["cur"]:
            return
        first_kept = bucket - self.nb + 1
        fold_from = st.get("f", st["cur"] - self.nb + 1)
        if first_kept > fold_from:
            counts = {b: c for b, c in st["b"]}
            lam = st["lam"]
            a = self.alpha
            seen = st.get("n", 0)
            learn = st["ep"] is None  # a burst does not teach the usual level
            steps = min(first_kept - fold_from, 100_000)
            # buckets with calls are at most the old window: the rest are zeros, in closed form
            for b in range(fold_from, min(first_kept, fold_from + self.nb)):
                if learn:
                    seen += 1
                    # a running mean at first (no long cold start), then the half-life
                    lam += max(a, 1.0 / (seen + self.prior_weight)) * (counts.get(b, 0) / self._factor(b) - lam)
            rest = steps - self.nb
            if rest > 0 and learn:
                if seen < 1.0 / a:  # still learning: zeros count as a running mean
                    lam *= (seen + self.prior_weight) / (seen + self.prior_weight + rest)
                    seen += rest
                else:
                    lam *= (1.0 - a) ** rest
            st["n"] = min(seen, 100_000)
            st["lam"] = max(lam, 1e-6)
            st["f"] = first_kept
        st["cur"] = bucket
        st["b"] = [[b, c] for b, c in st["b"] if b >= first_kept]

    def _evaluate(self, st: State, t: float, ts: datetime) -> tuple[str | None, dict[str, Any]]:
        cur = st["cur"]
        count = sum(c for _, c in st["b"])
        mu = sum(st["lam"] * self._factor(b) for b in range(cur - self.nb + 1, cur + 1))
        p = poisson_sf(count, mu)
        burst = count >= self.min_count and p < self.p_value and count >= self.min_ratio * mu
        ev = {"count": count, "usual": round(mu, 4), "p": p, "window_start": (cur - self.nb + 1) * self.bucket_s,
              "window_end": (cur + 1) * self.bucket_s}  # fmt: skip
        ep = st["ep"]
        if ep is None:
            if burst:
                st["ep"] = [t, count]
                return "open", ev
            return None, ev
        if burst and count > ep[1] * 2:
            ep[1] = count
            return "update", ev
        if not burst and count <= mu + 2.0 * math.sqrt(mu) + 1:
            st["ep_last"] = ep[0]
            st["ep"] = None
            return "clear", ev
        return None, ev

    def _signal(self, st: State, kind: str, t: float, ev: dict[str, Any]) -> Signal:
        start = st["ep"][0] if st["ep"] is not None else st["ep_last"]
        count = ev["count"]
        sev = Severity.III if count >= max(2 * self.min_count, 4 * ev["usual"] + self.min_count) else Severity.IV
        cat, area = st["key"].split(":", 1)
        ts = datetime.fromtimestamp(t, UTC)
        return Signal(
            kind=kind,  # type: ignore[arg-type]
            rule=f"{self.name}:{cat}",
            subject=st["key"],
            category=CATEGORY_OF.get(cat, "hotline"),
            sensor_type=None,
            severity=sev,
            episode_start=datetime.fromtimestamp(start, UTC),
            ts=ts,
            location=Location(**st["loc"]),
            title=f"未诉先办 early warning: {count} {cat} calls in {area} within {self.nb * self.bucket_s // 60} min "
            f"(usual {ev['usual']:.1f})",
            evidence=Evidence(
                detector=self.name, detector_version=self.version,
                statistic=f"calls per ({cat}, area) in a sliding {self.nb * self.bucket_s // 60} min window vs usual (Poisson tail)",
                value=float(count), threshold=float(self.min_count),
                window_start=datetime.fromtimestamp(ev["window_start"], UTC),
                window_end=datetime.fromtimestamp(ev["window_end"], UTC),
                score=max(0.0, min(1.0, 1.0 - ev["p"])),
                details={"usual": ev["usual"], "p_value": ev["p"], "alpha": self.p_value},
            ),
        )

    def step(self, state: State | None, event: HotlineEvent) -> tuple[State, list[Signal]]:
        t = event.ts.timestamp()
        bucket = int(t // self.bucket_s)
        if state is None:
            state = {"key": hotline_key(event), "loc": event.location.model_dump(exclude_none=True),
                     "b": [], "cur": bucket, "lam": self.prior, "ep": None}  # fmt: skip
        st = state
        self._advance(st, bucket)
        if bucket > st["cur"] - self.nb:
            for item in st["b"]:
                if item[0] == bucket:
                    item[1] += 1
                    break
            else:
                st["b"].append([bucket, 1])
                st["b"].sort()
        kind, ev = self._evaluate(st, t, event.ts)
        return st, ([self._signal(st, kind, t, ev)] if kind else [])

    def tick(self, state: State | None, watermark: datetime) -> tuple[State | None, list[Signal]]:
        """Advance the window to the watermark's bucket. A burst in progress is
        judged bucket by bucket, each at the boundary where the window moved, so
        its clear is dated at the boundary where the count fell, however late
        or seldom the ticks ran (live timers, a replay's markers alike); once it
        has cleared, the buckets after it teach the usual level as they would
        have at a tick per bucket."""
        if state is None:
            return state, []
        bucket = int(watermark.timestamp() // self.bucket_s)
        if bucket <= state["cur"]:
            return state, []
        out: list[Signal] = []
        for b in range(state["cur"] + 1, bucket + 1):
            if state["ep"] is None:
                break
            self._advance(state, b)
            t = float(b * self.bucket_s)
            kind, ev = self._evaluate(state, t, datetime.fromtimestamp(t, UTC))
            if kind:
                out.append(self._signal(state, kind, t, ev))
        self._advance(state, bucket)
        return state, out
