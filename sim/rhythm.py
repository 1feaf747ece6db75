"""How each kind of signal normally behaves: daily and weekly rhythm, season,
per-site spread and noise. Data plus two small pure functions.

A sensor's normal value is

    mode "mul":  scale_i * hourly(t) * weekly(t) * (1 + season_amp * cos(season)) + offset_i + noise
    mode "add":  hourly(t) + weekly(t) + season_mean + season_amp * cos(season) + offset_i + noise

with `hourly` linearly interpolated per minute of Beijing local time (UTC+8,
no daylight saving) and noise an AR(1) process (readings a few seconds apart
are correlated, as real ones are). The shapes are textbook Beijing: PM2.5
high at night and in winter (inversions, heating), NO2/CO and traffic with
morning and evening rush hours and quieter weekends, O3 peaking mid-afternoon
in summer, noise 45 dB(A) at night and 63 by day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas import SensorType

LOCAL_OFFSET_S = 8 * 3600  # Asia/Shanghai, fixed: China has no DST
TWO_PI = 2 * math.pi


@dataclass(frozen=True, slots=True)
class Rhythm:
    mode: str  # "mul" | "add"
    hourly: tuple[float, ...]  # 24 values at hh:00 local
    weekly: tuple[float, ...] = ()  # Mon..Sun; factors ("mul") or offsets ("add"); () = none
    season_amp: float = 0.0
    season_peak_doy: int = 15
    season_mean: float = 0.0  # "add" only
    scale: tuple[float, float] = (1.0, 1.0)  # per-site range of scale_i ("mul")
    offset: tuple[float, float] = (0.0, 0.0)  # per-site range of offset_i
    noise: float = 0.0  # stationary sd: relative to scale_i ("mul") or absolute ("add")
    floor: float = 0.0  # normal readings never go below (a real gauge does not read -0.3 mm/h)
    decimals: int = 1


_TRAFFIC = (0.8, 0.7, 0.65, 0.6, 0.6, 0.7, 0.9, 1.2, 1.35, 1.2, 1.0, 0.9,
            0.85, 0.82, 0.85, 0.95, 1.1, 1.3, 1.35, 1.25, 1.1, 1.0, 0.95, 0.9)  # fmt: skip
_WORKDAYS = (1.05, 1.05, 1.05, 1.05, 1.05, 0.88, 0.85)
_NIGHT_HIGH = (1.25, 1.3, 1.3, 1.28, 1.25, 1.2, 1.15, 1.12, 1.08, 1.0, 0.9, 0.82,
               0.76, 0.72, 0.7, 0.72, 0.78, 0.88, 1.0, 1.1, 1.18, 1.22, 1.25, 1.25)  # fmt: skip
_FLAT = (0.0,) * 24

# model name -> rhythm; water level has two: a river stage and an underpass depth
RHYTHMS: dict[str, Rhythm] = {
    "pm25": Rhythm("mul", _NIGHT_HIGH, (1, 1, 1, 1.02, 1.04, 0.98, 0.96), 0.35, 15,
                   scale=(28, 48), noise=0.12, floor=1, decimals=1),
    "pm10": Rhythm("mul", _NIGHT_HIGH, (1, 1, 1, 1.02, 1.04, 0.98, 0.96), 0.25, 100,
                   scale=(50, 85), noise=0.12, floor=2, decimals=1),
    "no2": Rhythm("mul", _TRAFFIC, _WORKDAYS, 0.2, 15, scale=(25, 45), noise=0.12, floor=1, decimals=1),
    "o3": Rhythm("mul", (0.4, 0.35, 0.3, 0.28, 0.28, 0.3, 0.35, 0.45, 0.6, 0.8, 1.0, 1.25,
                         1.45, 1.6, 1.65, 1.6, 1.45, 1.2, 0.95, 0.75, 0.6, 0.52, 0.47, 0.43),
                 (1, 1, 1, 1, 1, 1.05, 1.05), 0.5, 180, scale=(45, 70), noise=0.1, floor=2, decimals=1),
    "co": Rhythm("mul", _TRAFFIC, _WORKDAYS, 0.35, 15, scale=(0.4, 0.8), noise=0.1, floor=0.05, decimals=2),
    "so2": Rhythm("mul", (1.1,) * 7 + (1.05, 1.0, 0.95, 0.9, 0.9, 0.9, 0.9, 0.9, 0.92, 0.95, 1.0, 1.05)
                  + (1.1,) * 5, season_amp=0.5, season_peak_doy=15,
                  scale=(3, 8), noise=0.15, floor=0.5, decimals=1),
    "water_river": Rhythm("add", tuple(0.02 * math.sin(TWO_PI * h / 24) for h in range(24)),
                          offset=(0.8, 3.5), noise=0.01, floor=0.0, decimals=3),
    "water_underpass": Rhythm("add", _FLAT, noise=0.004, floor=0.0, decimals=3),
    "rainfall": Rhythm("add", _FLAT, noise=0.0, floor=0.0, decimals=1),
    "noise": Rhythm("add", (48, 46, 45, 44, 45, 48, 54, 60, 63, 63, 62, 62,
                            61, 61, 62, 62, 63, 64, 64, 62, 59, 56, 53, 50),
                    (0, 0, 0, 0, 0, -1.5, -2), offset=(-4, 8), noise=1.5, floor=25, decimals=1),
    "traffic_flow": Rhythm("mul", (0.15, 0.1, 0.07, 0.06, 0.08, 0.2, 0.55, 0.95, 1.0, 0.85, 0.75, 0.72,
                                   0.7, 0.72, 0.75, 0.8, 0.9, 1.0, 0.95, 0.75, 0.6, 0.5, 0.38, 0.25),
                           (1, 1, 1, 1, 1.03, 0.8, 0.72), scale=(600, 3600), noise=0.06, floor=0, decimals=0),
    "traffic_speed": Rhythm("mul", (1.0, 1.0, 1.0, 1.0, 1.0, 0.97, 0.8, 0.55, 0.5, 0.65, 0.75, 0.78,
                                    0.8, 0.78, 0.75, 0.72, 0.62, 0.5, 0.52, 0.7, 0.85, 0.92, 0.97, 1.0),
                            (1, 1, 1, 1, 0.97, 1.08, 1.1), scale=(45, 80), noise=0.05, floor=3, decimals=1),
    "manhole_gas": Rhythm("add", _FLAT, offset=(0.0, 1.5), noise=0.25, floor=0.0, decimals=1),
    "temperature": Rhythm("add", tuple(5.0 * math.cos(TWO_PI * (h - 15) / 24) for h in range(24)),
                          season_amp=15.0, season_peak_doy=200, season_mean=12.5,
                          offset=(-1.0, 2.0), noise=0.2, floor=-40, decimals=1),
}

MODEL_OF_TYPE: dict[SensorType, str] = {t: t.value for t in SensorType if t is not SensorType.WATER_LEVEL}
MODELS: tuple[str, ...] = tuple(RHYTHMS)  # model index order used by the generator


def _per_minute(hourly: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(
        hourly[m // 60] + (hourly[(m // 60 + 1) % 24] - hourly[m // 60]) * (m % 60) / 60 for m in range(1440)
    )


_MINUTES = {name: _per_minute(r.hourly) for name, r in RHYTHMS.items()}


def local_parts(t: int) -> tuple[int, int, int]:
    """Epoch seconds -> (minute of the local day, weekday Mon=0, day of year) in Beijing time."""
    local = t + LOCAL_OFFSET_S
    day = local // 86400
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
    doy = datetime.fromtimestamp(day * 86400, UTC).timetuple().tm_yday
    return (local // 60) % 1440, weekday, doy


def level(name: str, minute: int, weekday: int, doy: int) -> float:
    """The rhythm's common factor ("mul") or value ("add") at that local time."""
    r = RHYTHMS[name]
    season = math.cos(TWO_PI * (doy - r.season_peak_doy) / 365.25)
    if r.mode == "mul":
        week = r.weekly[weekday] if r.weekly else 1.0
        return _MINUTES[name][minute] * week * (1 + r.season_amp * season)
    week = r.weekly[weekday] if r.weekly else 0.0
    return _MINUTES[name][minute] + week + r.season_mean + r.season_amp * season


def levels(t: int) -> list[float]:
    """All models' levels at epoch second t, indexed like MODELS."""
    minute, weekday, doy = local_parts(t)
    return [level(name, minute, weekday, doy) for name in MODELS]
