"""The GeoReport v2 service list: one service per hotline category.

`service_code` is the `HotlineCategory` value, so a request's category is its
service code. Names are given in Chinese with the English in `description`.
`expected_hours` gives `expected_datetime` (when the request is expected to be
handled): defaults in the spirit of 接诉即办 (urgent matters within hours,
others within days); configuration, not law.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas import HotlineCategory


@dataclass(frozen=True, slots=True)
class Service:
    category: HotlineCategory
    name: str
    description: str
    group: str
    keywords: tuple[str, ...]
    agency: str
    expected_hours: int
    urgent: bool = False

    @property
    def code(self) -> str:
        return self.category.value

    def as_georeport(self) -> dict[str, Any]:
        return {
            "service_code": self.code,
            "service_name": self.name,
            "description": self.description,
            "metadata": False,
            "type": "realtime",
            "keywords": ",".join(self.keywords),
            "group": self.group,
        }


C = HotlineCategory
SERVICES: tuple[Service, ...] = (
    Service(C.NOISE, "噪声扰民", "Noise nuisance (construction at night, loudspeakers, venues)", "环境",
            ("噪音", "施工", "noise"), "生态环境局", 72),
    Service(C.GARBAGE, "垃圾清运", "Uncollected garbage, overflowing bins, illegal dumping", "市容",
            ("垃圾", "清运", "garbage"), "城市管理委员会", 48),
    Service(C.ROAD_DAMAGE, "道路破损", "Potholes, broken pavement, damaged manhole covers", "交通",
            ("坑洼", "井盖", "pothole"), "交通委员会", 72),
    Service(C.HEATING, "供暖问题", "No or insufficient heating in the heating season", "民生",
            ("暖气", "供暖", "heating"), "城市管理委员会", 24),
    Service(C.WATER_OUTAGE, "停水", "Water supply outage or low pressure", "民生",
            ("停水", "水压", "water"), "水务局", 24),
    Service(C.FLOODING, "道路积水", "Standing water on roads and in underpasses", "水务",
            ("积水", "内涝", "flooding"), "水务局", 4, urgent=True),
    Service(C.ODOUR, "异味", "Bad smells (sewage, waste, industry)", "环境",
            ("异味", "臭味", "odour"), "生态环境局", 72),
    Service(C.ILLEGAL_PARKING, "违章停车", "Illegal parking blocking roads, lanes or fire exits", "交通",
            ("停车", "占道", "parking"), "交通管理局", 24),
    Service(C.AIR_POLLUTION, "大气污染", "Smoke, dust, open burning", "环境",
            ("扬尘", "烟尘", "焚烧", "air"), "生态环境局", 48),
    Service(C.TRAFFIC, "交通拥堵", "Traffic congestion, broken traffic lights", "交通",
            ("拥堵", "信号灯", "traffic"), "交通管理局", 24),
    Service(C.GAS_SMELL, "燃气异味", "Smell of gas: possible leak (also call 96777)", "安全",
            ("燃气", "煤气", "泄漏", "gas"), "燃气集团", 2, urgent=True),
    Service(C.OTHER, "其他", "Anything else the city should know", "其他",
            ("其他", "other"), "12345市民服务热线", 168),
)  # fmt: skip

BY_CODE: dict[str, Service] = {s.code: s for s in SERVICES}
assert set(BY_CODE) == {c.value for c in HotlineCategory}, "every hotline category is a service"
