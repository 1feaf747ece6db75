"""Where a request is: lat/long (or an address string) -> district and street.

The nearest street centroid (any district) decides; a point outside the
city's bounding box is not ours. The gazetteer is the simulator's
`sim/data/beijing.json` (districts with streets and centroids), or a tiny
built-in one when that file is absent; any `(lat, lon) -> Location | None`
function can be injected instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citybrain.errors import ConfigError
from schemas import Location

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "sim" / "data" / "beijing.json"

Resolver = Callable[[float, float], Location | None]


@dataclass(frozen=True, slots=True)
class Place:
    district: str
    street: str | None
    lat: float
    lon: float


# Beijing's municipal boundary with a margin (WGS-84)
BBOX = (39.40, 41.10, 115.40, 117.55)  # lat_min, lat_max, lon_min, lon_max

_BUILTIN: tuple[Place, ...] = (
    Place("东城区", "景山街道", 39.929, 116.403),
    Place("东城区", "建国门街道", 39.907, 116.430),
    Place("西城区", "金融街街道", 39.917, 116.360),
    Place("朝阳区", "望京街道", 39.996, 116.470),
    Place("朝阳区", "三里屯街道", 39.937, 116.454),
    Place("朝阳区", "双井街道", 39.895, 116.462),
    Place("海淀区", "中关村街道", 39.984, 116.315),
    Place("海淀区", "学院路街道", 39.995, 116.350),
    Place("丰台区", "右安门街道", 39.865, 116.360),
    Place("通州区", "新华街道", 39.910, 116.650),
)


class Gazetteer:
    def __init__(self, places: Sequence[Place], districts: Sequence[Place] = ()) -> None:
        if not places:
            raise ConfigError("gazetteer has no places")
        self.places = tuple(places)
        self.districts = tuple(districts) or self._district_centroids(self.places)

    @staticmethod
    def _district_centroids(places: Sequence[Place]) -> tuple[Place, ...]:
        acc: dict[str, list[Place]] = {}
        for p in places:
            acc.setdefault(p.district, []).append(p)
        return tuple(
            Place(d, None, sum(p.lat for p in ps) / len(ps), sum(p.lon for p in ps) / len(ps)) for d, ps in acc.items()
        )

    @classmethod
    def builtin(cls) -> Gazetteer:
        return cls(_BUILTIN)

    @classmethod
    def from_file(cls, path: str | Path) -> Gazetteer:
        p = Path(path)
        try:
            data: Any = json.loads(p.read_text(encoding="utf-8"))
            places, districts = [], []
            for d in data["districts"]:
                districts.append(Place(d["name"], None, float(d["lat"]), float(d["lon"])))
                for s in d.get("streets", ()):
                    places.append(Place(d["name"], s["name"], float(s["lat"]), float(s["lon"])))
        except OSError as exc:
            raise ConfigError(f"gazetteer {p}: cannot read ({exc.strerror})") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"gazetteer {p}: not a districts/streets file ({exc!r})") from None
        return cls(places, districts)

    @classmethod
    def default(cls, path: Path | None = None) -> Gazetteer:
        if path is not None:
            return cls.from_file(path)
        return cls.from_file(DEFAULT_FILE) if DEFAULT_FILE.exists() else cls.builtin()

    def resolve(self, lat: float, lon: float) -> Location | None:
        """The district and street of a point, or None outside the city."""
        lat_min, lat_max, lon_min, lon_max = BBOX
        if not (lat_min <= lat <= lat_max and lon_min <= lon <= lon_max):
            return None
        k = math.cos(math.radians(lat))
        best = min(self.places, key=lambda p: (p.lat - lat) ** 2 + ((p.lon - lon) * k) ** 2)
        return Location(district=best.district, street=best.street, lat=lat, lon=lon)

    def locate_address(self, text: str) -> Location | None:
        """A street or district named in a free-text address, at its centroid."""
        named = [p for p in self.places if p.street and _stem(p.street) in text]
        in_district = [p for p in named if p.district in text]
        for group in (in_district, named):
            if group:
                best = max(group, key=lambda p: len(p.street or ""))
                return Location(district=best.district, street=best.street, lat=best.lat, lon=best.lon)
        for d in self.districts:
            if d.district in text or (len(d.district) > 2 and d.district.removesuffix("区") in text):
                return Location(district=d.district, lat=d.lat, lon=d.lon)
        return None


def _stem(street: str) -> str:
    """望京街道 -> 望京 (people write 望京 or 望京街道 or 望京街道办事处)."""
    for suffix in ("街道", "地区", "镇", "乡"):
        if street.endswith(suffix) and len(street) > len(suffix) + 1:
            return street[: -len(suffix)]
    return street
