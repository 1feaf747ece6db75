"""The sensor catalogue: every sensor type with its unit, physical range and
usual sampling interval. Data, shared by decoders, detectors and the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SensorType(StrEnum):
    PM25 = "pm25"
    PM10 = "pm10"
    NO2 = "no2"
    O3 = "o3"
    CO = "co"
    SO2 = "so2"
    WATER_LEVEL = "water_level"
    RAINFALL = "rainfall"
    NOISE = "noise"
    TRAFFIC_FLOW = "traffic_flow"
    TRAFFIC_SPEED = "traffic_speed"
    MANHOLE_GAS = "manhole_gas"
    TEMPERATURE = "temperature"


@dataclass(frozen=True, slots=True)
class SensorSpec:
    unit: str
    low: float  # physically possible minimum
    high: float  # physically possible maximum
    interval_s: int  # usual sampling interval
    category: str  # what the city calls this kind of signal


CATALOGUE: dict[SensorType, SensorSpec] = {
    SensorType.PM25: SensorSpec("ug/m3", 0, 2000, 60, "air"),
    SensorType.PM10: SensorSpec("ug/m3", 0, 3000, 60, "air"),
    SensorType.NO2: SensorSpec("ug/m3", 0, 4000, 60, "air"),
    SensorType.O3: SensorSpec("ug/m3", 0, 1500, 60, "air"),
    SensorType.CO: SensorSpec("mg/m3", 0, 200, 60, "air"),
    SensorType.SO2: SensorSpec("ug/m3", 0, 3000, 60, "air"),
    SensorType.WATER_LEVEL: SensorSpec("m", -5, 60, 30, "water"),
    SensorType.RAINFALL: SensorSpec("mm/h", 0, 300, 60, "water"),
    SensorType.NOISE: SensorSpec("dB(A)", 20, 140, 10, "noise"),
    SensorType.TRAFFIC_FLOW: SensorSpec("veh/h", 0, 12000, 60, "traffic"),
    SensorType.TRAFFIC_SPEED: SensorSpec("km/h", 0, 200, 60, "traffic"),
    SensorType.MANHOLE_GAS: SensorSpec("%LEL", 0, 100, 30, "gas"),
    SensorType.TEMPERATURE: SensorSpec("degC", -50, 70, 300, "weather"),
}
