"""Load and validate the detection thresholds file (`thresholds.yaml`).

`load_config(path=None, overrides=None)` returns a `DetectConfig`; every
problem is a `ConfigError` naming the key, so a bad rules change fails at
start-up, not at 3 a.m. Per-site values come from the sensor's site metadata
(`sites`: sensor_id -> mapping), e.g. `warning_level`, `guarantee_level`,
`zone_class`, `alarm_level_1`.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from citybrain.errors import ConfigError
from schemas import Severity

DEFAULT_PATH = Path(__file__).with_name("thresholds.yaml")
_SEVERITIES = {s.value for s in Severity}


def _num(d: Mapping[str, Any], key: str, where: str, *, lo: float = -math.inf, hi: float = math.inf) -> float:
    if key not in d:
        raise ConfigError(f"{where}.{key} is missing")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
        raise ConfigError(f"{where}.{key} must be a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _levels(v: Any, where: str) -> list[tuple[float, Severity]]:
    """[[value, severity], ...] ascending in value and in severity."""
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{where} must be a non-empty list of [value, severity]")
    out: list[tuple[float, Severity]] = []
    for i, item in enumerate(v):
        if (not isinstance(item, list) or len(item) != 2 or isinstance(item[0], bool)
                or not isinstance(item[0], int | float) or str(item[1]) not in _SEVERITIES):  # fmt: skip
            raise ConfigError(f"{where}[{i}] must be [number, IV|III|II|I], got {item!r}")
        out.append((float(item[0]), Severity(str(item[1]))))
    for (a, sa), (b, sb) in itertools.pairwise(out):
        if not (b > a and sb.rank > sa.rank):
            raise ConfigError(f"{where} must ascend in value and severity, got {v!r}")
    return out


def _section(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    v = raw.get(key)
    if not isinstance(v, dict):
        raise ConfigError(f"thresholds: section {key!r} is missing or not a mapping")
    return v


@dataclass(frozen=True)
class DetectConfig:
    raw: dict[str, Any]
    tz: ZoneInfo
    lateness_s: float
    air_breakpoints: dict[str, tuple[float, ...]]
    iaqi_steps: tuple[int, ...]
    air_periods: dict[str, list[tuple[int, str]]]
    air_severity: list[tuple[float, Severity]]
    noise_limits: dict[str, tuple[float, float]]  # zone -> (day, night)
    noise_exceedance: list[tuple[float, Severity]]
    gas_levels: list[tuple[float, Severity]]
    sites: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def section(self, key: str) -> dict[str, Any]:
        return _section(self.raw, key)

    def site(self, sensor_id: str) -> Mapping[str, Any]:
        return self.sites.get(sensor_id, {})


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def validate(raw: Any, sites: Mapping[str, Mapping[str, Any]] | None = None) -> DetectConfig:
    if not isinstance(raw, dict) or raw.get("version") != 1:
        raise ConfigError("thresholds: expected a mapping with 'version: 1'")
    try:
        tz = ZoneInfo(str(raw.get("timezone", "Asia/Shanghai")))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"thresholds.timezone: unknown time zone {raw.get('timezone')!r}") from exc
    lateness = _num(raw, "lateness_s", "thresholds", lo=0)

    air = _section(raw, "air")
    steps = air.get("iaqi_steps")
    if not isinstance(steps, list) or len(steps) < 2 or any(not isinstance(s, int) for s in steps):
        raise ConfigError("air.iaqi_steps must be a list of integers")
    bps_raw = air.get("breakpoints")
    if not isinstance(bps_raw, dict) or not bps_raw:
        raise ConfigError("air.breakpoints must be a mapping of table -> list of concentrations")
    bps: dict[str, tuple[float, ...]] = {}
    for name, seq in bps_raw.items():
        if (not isinstance(seq, list) or not 2 <= len(seq) <= len(steps)
                or any(isinstance(c, bool) or not isinstance(c, int | float) for c in seq)
                or any(b <= a for a, b in itertools.pairwise(seq))):  # fmt: skip
            raise ConfigError(f"air.breakpoints.{name} must be 2..{len(steps)} strictly ascending numbers")
        bps[str(name)] = tuple(float(c) for c in seq)
    periods: dict[str, list[tuple[int, str]]] = {}
    for pol, plist in _section(air, "periods").items():
        if not isinstance(plist, list) or not plist:
            raise ConfigError(f"air.periods.{pol} must be a non-empty list")
        items = []
        for i, p in enumerate(plist):
            where = f"air.periods.{pol}[{i}]"
            if not isinstance(p, dict) or p.get("table") not in bps:
                raise ConfigError(f"{where}.table must name one of air.breakpoints")
            items.append((int(_num(p, "window_s", where, lo=60, hi=7 * 86400)), str(p["table"])))
        periods[str(pol)] = items
    air_sev = _levels(air.get("severity_from_aqi"), "air.severity_from_aqi")
    if str(air.get("open_from", "IV")) not in _SEVERITIES:
        raise ConfigError(f"air.open_from must be a severity (IV, III, II, I), got {air.get('open_from')!r}")

    noise = _section(raw, "noise")
    limits: dict[str, tuple[float, float]] = {}
    for zone, lim in _section(noise, "limits").items():
        where = f"noise.limits.{zone}"
        if not isinstance(lim, dict):
            raise ConfigError(f"{where} must be {{day: dB, night: dB}}")
        limits[str(zone)] = (_num(lim, "day", where, lo=0, hi=140), _num(lim, "night", where, lo=0, hi=140))
    if str(noise.get("default_zone")) not in limits:
        raise ConfigError("noise.default_zone must be one of noise.limits")
    for k in ("day_start_h", "night_start_h"):
        _num(noise, k, "noise", lo=0, hi=23)
    _num(noise, "window_s", "noise", lo=60, hi=86400)
    noise_ex = _levels(noise.get("exceedance"), "noise.exceedance")

    wl = _section(raw, "water_level")
    dsite = _section(wl, "default_site")
    if _num(dsite, "guarantee_level", "water_level.default_site") <= _num(dsite, "warning_level", "water_level.default_site"):
        raise ConfigError("water_level.default_site: guarantee_level must exceed warning_level")
    _num(wl, "approach_fraction", "water_level", lo=0, hi=1)
    gas = _section(raw, "manhole_gas")
    gas_levels = _levels(gas.get("levels"), "manhole_gas.levels")
    for k, sev in _section(gas, "site_levels").items():
        if str(sev) not in _SEVERITIES:
            raise ConfigError(f"manhole_gas.site_levels.{k} must be a severity, got {sev!r}")

    rain = _section(raw, "rainfall")
    _levels(rain.get("levels"), "rainfall.levels")

    tr = _section(raw, "traffic")
    tr_levels = tr.get("levels")
    if not isinstance(tr_levels, list) or not tr_levels or any(
            not isinstance(lv, list) or len(lv) != 2 or not isinstance(lv[0], int | float)
            or not 0 < lv[0] < 1 or str(lv[1]) not in _SEVERITIES for lv in tr_levels):
        raise ConfigError("traffic.levels must be [[ratio in (0, 1), severity], ...]")
    for k in ("median_of", "clear_after", "bin_warm_readings"):
        _num(tr, k, "traffic", lo=1, hi=1e6)
    for k in ("clear_ratio", "learn_above_ratio", "bin_alpha"):
        _num(tr, k, "traffic", lo=0, hi=1)

    st = _section(raw, "statistical")
    for k in ("open_score", "instant_score", "clear_score", "roc_score"):
        _num(st, k, "statistical", lo=0.5, hi=1)
    if st["clear_score"] > st["open_score"]:
        raise ConfigError("statistical.clear_score must not exceed open_score (hysteresis)")
    for k in ("warmup", "open_hold", "clear_hold"):
        _num(st, k, "statistical", lo=0, hi=1e6)

    h = _section(raw, "health")
    for k in ("silence_factor", "silence_min_s", "stuck_min_readings", "stuck_min_s"):
        _num(h, k, "health", lo=0)
    hl = _section(raw, "hotline")
    for k in ("bucket_s", "window_s", "min_count", "prior_per_hour", "learn_half_life_h"):
        _num(hl, k, "hotline", lo=0)
    _num(hl, "p_value", "hotline", lo=1e-12, hi=0.5)
    if hl["window_s"] % hl["bucket_s"] or hl["window_s"] < hl["bucket_s"]:
        raise ConfigError("hotline.window_s must be a multiple of hotline.bucket_s")
    di = hl.get("diurnal")
    if not isinstance(di, list) or len(di) != 24 or any(not isinstance(x, int | float) or x <= 0 for x in di):
        raise ConfigError("hotline.diurnal must be 24 positive numbers")
    return DetectConfig(
        raw=raw, tz=tz, lateness_s=lateness, air_breakpoints=bps, iaqi_steps=tuple(steps),
        air_periods=periods, air_severity=air_sev, noise_limits=limits, noise_exceedance=noise_ex,
        gas_levels=gas_levels, sites=dict(sites or {}),
    )  # fmt: skip


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    sites: Mapping[str, Mapping[str, Any]] | None = None,
) -> DetectConfig:
    """The thresholds file (default: the one beside this module), with optional
    overrides merged in (nested mappings merge key by key)."""
    p = Path(path) if path is not None else DEFAULT_PATH
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read thresholds file {p}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"thresholds file {p} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if overrides:
        raw = _merge(raw if isinstance(raw, dict) else {}, overrides)
    return validate(raw, sites)


_DEFAULT: DetectConfig | None = None


def default_config() -> DetectConfig:
    """The packaged thresholds, loaded once."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_config()
    return _DEFAULT
