"""Generic statistical detection for any univariate series, no configuration.

`RobustSeasonal` keeps two robust one-step-ahead predictors per sensor and
scores every reading with whichever has predicted this sensor better:

- **fast level**: an EWMA (alpha 0.3) of the value, for random-walk-like
  signals (smooth temperatures, levels sampled often);
- **seasonal**: a slower level B (alpha 0.05) plus a daily profile of 24
  hour-of-day bins (linearly interpolated, learned without labels once each
  bin has seen a few readings), each bin with its own residual scale, so a
  quiet night is judged against the night's spread (Holt-Winters-like: the
  level absorbs weekday/weekend and multi-day drifts, the profile the rhythm).

Updates are robust: a residual moves the level by at most `clip` sigmas and
the scale (an EWMA of absolute residuals, times sqrt(pi/2) to read as a
Gaussian sigma) by at most `scale_clip`, so one outlier barely moves the
baseline. The anomaly score is the two-sided Gaussian tail of the robust z,
erf(z/sqrt 2), so on pure Gaussian noise the scores are uniform on [0, 1]
(1 % above 0.99). A slow online estimate of the 99th percentile of z
tempers heavy-tailed series: z is scaled by 2.576/q99 when q99 > 2.576.

Hysteresis: an episode opens when the score stays >= open_score for open_hold
readings (or reaches instant_score once) after the warm-up, and clears after
clear_hold readings below clear_score.

Time: `t` is event time in epoch seconds; hour of day comes from a
`LocalClock` (UTC when none is given, e.g. for an unknown CSV). Interval may
be regular or irregular; nothing depends on the wall clock.

State: a JSON-serialisable dict, about 1.3 KB; work per reading O(1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from streams.detectors.localtime import LocalClock

MAD2SD = 1.2533141373155003  # sigma / E|x - mu| for a Gaussian
SQRT1_2 = 0.7071067811865476
Z99 = 2.5758293035489004  # two-sided 99 % point of N(0,1)
Z999 = 3.2905267314919255  # two-sided 99.9 % point
NAME = "robust_seasonal"
VERSION = "1.0.1"  # 1.0.1: state rounded as round(v * 10**k) / 10**k
_P10 = tuple(10.0**k for k in range(16))


@dataclass(frozen=True, slots=True)
class StatParams:
    alpha_fast: float = 0.3
    alpha_level: float = 0.05
    alpha_bin: float = 0.1  # minimum per-bin learning rate (1/count before)
    alpha_scale: float = 0.03
    clip: float = 3.0
    scale_clip: float = 5.0
    bin_warm: float = 3.0  # weighted readings a bin needs before the profile is used
    warmup: int = 48
    open_score: float = 0.9999
    open_hold: int = 2
    instant_score: float = 0.999999
    clear_score: float = 0.99
    clear_hold: int = 3
    tail_eta: float = 0.05
    bin_scale_floor: float = 0.6  # per-bin sigma never below this share of the global one
    alpha_long: float = 0.002  # long-run spread (about a day of minute readings)
    long_floor: float = 0.5  # scales never below this share of the long-run spread
    min_sigma: float = 0.0  # absolute floor (the type's meaningful resolution), 0 = none

    @property
    def min_mad(self) -> float:
        return self.min_sigma / MAD2SD


class Scored(NamedTuple):
    """One reading's verdict."""

    score: float
    z: float
    alert: bool  # inside an open episode (after this reading)
    event: str | None  # "open" | "clear" | None
    predicted: float
    sigma: float
    model: str  # "fast" | "seasonal" | "level" | "warmup"
    episode_start: float | None


def new_state(t: float, x: float) -> dict[str, Any]:
    return {
        "n": 1, "t": t, "x": x, "f": x, "sf": 0.0, "b": x, "sb": 0.0,
        "M": [0.0] * 24, "S": [0.0] * 24, "C": [0.0] * 24,
        "sl": 0.0, "res": 0.0, "q": Z99, "q3": Z999, "h": 0, "ep": None,
    }  # fmt: skip


class RobustSeasonal:
    name = NAME
    version = VERSION

    def __init__(self, params: StatParams | None = None, clock: LocalClock | None = None) -> None:
        self.p = params or StatParams()
        self.clock = clock or LocalClock(None)
        self._utc = self.clock.tz is None

    def update(self, st: dict[str, Any] | None, t: float, x: float) -> tuple[dict[str, Any], Scored]:
        p = self.p
        if st is None:
            st = new_state(t, x)
            return st, Scored(0.0, 0.0, False, None, x, 0.0, "warmup", None)
        n = st["n"] + 1
        st["n"] = n
        # resolution: the smallest non-zero step seen (quantised series)
        d = abs(x - st["x"])
        res = st["res"]
        if d > 0.0 and (res == 0.0 or d < res):
            st["res"] = res = d
        st["t"] = t
        st["x"] = x
        # the scale never collapses below a share of the long-run spread (a
        # series idle for hours, then its usual small wobble, is not an anomaly)
        sl = st["sl"]
        floor = 0.5 * res + 1e-9 * abs(st["b"]) + 1e-12
        lf = p.long_floor * sl
        if lf > floor:
            floor = lf
        if p.min_mad > floor:
            floor = p.min_mad

        # hour-of-day bins, interpolated between bin centres
        h = ((t if self._utc else t + self.clock.offset(t)) % 86400.0) / 3600.0 - 0.5
        i0 = math.floor(h)
        w1 = h - i0
        w0 = 1.0 - w1
        i0 %= 24
        i1 = (i0 + 1) % 24
        M, S, C = st["M"], st["S"], st["C"]
        warm_bins = C[i0] >= p.bin_warm and C[i1] >= p.bin_warm

        f = st["f"]
        sf = st["sf"]
        b = st["b"]
        sb = st["sb"]
        season = M[i0] * w0 + M[i1] * w1 if warm_bins else 0.0
        pred_s = b + season
        rf = x - f
        rs = x - pred_s
        sig_f = MAD2SD * (sf if sf > floor else floor)
        sig_b = MAD2SD * (sb if sb > floor else floor)
        if warm_bins:
            sig_bin = MAD2SD * (S[i0] * w0 + S[i1] * w1)
            lim = p.bin_scale_floor * sig_b
            sig_s = sig_bin if sig_bin > lim else lim
        else:
            sig_s = sig_b

        # choose the model that has predicted this series better so far
        if sf < sb:
            z = abs(rf) / sig_f
            pred, sig, model = f, sig_f, "fast"
        else:
            z = abs(rs) / sig_s
            pred, sig, model = pred_s, sig_s, ("seasonal" if warm_bins else "level")

        # robust updates (no clipping while warming up: the scale is not known yet)
        warm = n > p.warmup
        if n <= 10:
            a_f = a_b = a_s = 1.0 / n
            cf = cs = math.inf
        else:
            a_f, a_b, a_s = p.alpha_fast, p.alpha_level, p.alpha_scale
            if not warm:
                a_s = max(a_s, 1.0 / n)
            cf, cs = p.clip * sig_f, p.clip * sig_s
            if st["ep"] is not None:  # an open anomaly does not teach the scale or the profile
                a_s = 0.0
        rfc = rf if -cf <= rf <= cf else (cf if rf > 0 else -cf)
        rsc = rs if -cs <= rs <= cs else (cs if rs > 0 else -cs)
        st["f"] = f + a_f * rfc
        st["b"] = b + a_b * rsc
        arf = abs(rf)
        ars = abs(rs)
        if n > 10:
            lf = p.scale_clip * sig_f / MAD2SD
            ls = p.scale_clip * sig_s / MAD2SD
            arf = arf if arf < lf else lf
            ars = ars if ars < ls else ls
        st["sf"] = sf + a_s * (arf - sf)
        if n <= 10:
            st["sl"] = sl + (ars - sl) / n
        elif a_s > 0.0:
            st["sl"] = sl + p.alpha_long * ((ars if ars < 3.0 * sl or sl == 0.0 else 3.0 * sl) - sl)
        st["sb"] = sb + a_s * (ars - sb)
        # profile: learn x - level (before this reading's level move) in the two bins
        dev = x - b
        nd = st.get("nd")
        if nd is None or n & 63 == 0:
            # stored profile precision: ~1e-5 of the series' spread (keeps the state small)
            ref = sb if sb > floor else floor
            st["nd"] = nd = max(0, min(15, 5 - math.floor(math.log10(ref))))
        # round(v * s) / s, not round(v, nd): a third of the cost (round with digits
        # goes through decimal strings), as short in JSON (an integer over a power
        # of ten is the double nearest that decimal), and as deterministic
        s = _P10[nd]
        for i, w in ((i0, w0), (i1, w1)):
            if w <= 0.0 or a_s == 0.0:
                continue
            c = C[i] + w
            C[i] = round(c * 100.0) / 100.0 if c < 1000.0 else 1000.0
            a = w / c if w / c > p.alpha_bin * w else p.alpha_bin * w
            m = M[i]
            e = dev - m
            if C[i] >= p.bin_warm and n > 10:
                lim = p.clip * sig_s
                e = e if -lim <= e <= lim else (lim if e > 0 else -lim)
            M[i] = round((m + a * e) * s) / s
            S[i] = round((S[i] + a * (ars - S[i])) * s) / s

        # short numbers in the stored state (1e-7 of the spread: far below any signal)
        s2 = s * 100.0
        st["f"] = round(st["f"] * s2) / s2
        st["b"] = round(st["b"] * s2) / s2
        st["sf"] = round(st["sf"] * s2) / s2
        st["sb"] = round(st["sb"] * s2) / s2
        st["sl"] = round(st["sl"] * s2) / s2

        # calibrated score
        q = st["q"]
        q3 = st.get("q3", Z999)
        k = q / Z99
        k3 = q3 / Z999
        if k3 > k:
            k = k3
        zc = z / k if k > 1.0 else z
        score = math.erf(zc * SQRT1_2) if n > 2 else 0.0

        ep = st["ep"]
        event: str | None = None
        if warm:  # tail calibration (99 % and 99.9 % points of z) learns slower inside an episode
            eta = p.tail_eta if ep is None else 0.25 * p.tail_eta
            q *= (1.0 + eta * 0.99) if z > q else (1.0 - eta * 0.01)
            st["q"] = round(q * 1e5) / 1e5 if q > Z99 else Z99
            q3 *= (1.0 + eta * 0.999) if z > q3 else (1.0 - eta * 0.001)
            st["q3"] = round(q3 * 1e5) / 1e5 if q3 > Z999 else Z999
        if ep is None:
            if warm:
                if score >= p.instant_score or (score >= p.open_score and st["h"] + 1 >= p.open_hold):
                    st["ep"] = ep = [t, 0, score]
                    st["h"] = 0
                    event = "open"
                elif score >= p.open_score:
                    st["h"] += 1
                else:
                    st["h"] = 0
        else:
            if score < p.clear_score:
                ep[1] += 1
                if ep[1] >= p.clear_hold:
                    st["ep"] = None
                    event = "clear"
            else:
                ep[1] = 0
                if score > ep[2]:
                    ep[2] = score
        start = ep[0] if ep is not None else None
        return st, Scored(score, zc, st["ep"] is not None, event, pred, sig, model, start)


ROC_NAME = "rate_of_change"


class RateOfChange:
    """Spikes in |delta value| between consecutive readings against its own
    robust scale (EWMA of |delta|), for jumps the level models would absorb.
    A gap longer than 4 x the usual interval is not a rate. State: 7 numbers."""

    name = ROC_NAME
    version = "1.0.0"

    def __init__(self, open_score: float = 0.9999999, warmup: int = 48, clear_hold: int = 3,
                 min_sigma: float = 0.0) -> None:  # fmt: skip
        self.min_d = min_sigma / MAD2SD
        self.open_score = open_score
        self.warmup = warmup
        self.clear_hold = clear_hold

    def update(self, st: dict[str, Any] | None, t: float, x: float) -> tuple[dict[str, Any], Scored]:
        if st is None:
            return {"n": 1, "t": t, "x": x, "d": 0.0, "dl": 0.0, "dt": 0.0, "res": 0.0, "q": Z99, "ep": None}, Scored(
                0.0, 0.0, False, None, x, 0.0, "warmup", None
            )
        n = st["n"] + 1
        st["n"] = n
        dt = t - st["t"]
        delta = abs(x - st["x"])
        px = st["x"]
        st["t"] = t
        st["x"] = x
        res = st["res"]
        if delta > 0.0 and (res == 0.0 or delta < res):
            st["res"] = res = delta
        mdt = st["dt"]
        gap = mdt > 0.0 and dt > 4.0 * mdt
        if dt > 0.0:
            st["dt"] = dt if mdt == 0.0 else mdt + 0.05 * ((dt if dt < 4 * mdt else 4 * mdt) - mdt)
        d = st["d"]
        dl = st["dl"]
        sig = MAD2SD * max(d, 0.5 * dl, 0.5 * res + 1e-9 * abs(x) + 1e-12, self.min_d)
        z = delta / sig
        a = 1.0 / n if n <= 10 else 0.03
        cl = delta if n <= 10 else min(delta, 5.0 * sig / MAD2SD)
        ep = st["ep"]
        if not gap:
            st["d"] = d + a * (cl - d)
            st["dl"] = dl + (1.0 / n if n <= 10 else 0.002) * (cl - dl)
        # tail calibration as in RobustSeasonal (slower inside an episode)
        q = st["q"]
        if n > self.warmup and not gap:
            eta = 0.02 if ep is None else 0.005
            q2 = q * ((1.0 + eta * 0.99) if z > q else (1.0 - eta * 0.01))
            st["q"] = q2 if q2 > Z99 else Z99
        if q > Z99:
            z = z * Z99 / q
        score = math.erf(z * SQRT1_2) if n > 3 and not gap else 0.0
        event = None
        if ep is None:
            if n > self.warmup and score >= self.open_score:
                st["ep"] = ep = [t, 0, score]
                event = "open"
        elif score < 0.99:
            ep[1] += 1
            if ep[1] >= self.clear_hold:
                st["ep"] = None
                event = "clear"
        else:
            ep[1] = 0
        start = ep[0] if ep is not None else None
        return st, Scored(score, z, st["ep"] is not None, event, px, sig, "delta", start)
