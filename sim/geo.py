"""Beijing's geography as data: districts (区), streets/towns (街道/乡镇) and grid
cells (网格), read from `sim/data/beijing.json`.

The file is the single source: the simulator places sensors with it, the
department rules map district names to codes with it, the dashboard draws it.
Cells are not in the file: they are laid out deterministically at load time
as a 3x3 lattice around each street centroid (spacing from the district's
`street_radius_km`), so the same file always gives the same cell ids.

    geo = load_geography()
    geo.district("朝阳区").code            -> "chaoyang"
    geo.street("朝阳区", "望京街道").cells[0].id  -> "chaoyang.wangjing.1"
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from citybrain.errors import ConfigError

DATA_FILE = Path(__file__).with_name("data") / "beijing.json"

KM_PER_DEG_LAT = 111.32
GRID_SIDE = 3  # cells per street = GRID_SIDE ** 2


@dataclass(frozen=True, slots=True)
class Cell:
    """One grid cell (网格): id `<district>.<street>.<n>` with n = 1..9."""

    id: str
    district: str  # Chinese district name, as in schemas.Location
    street: str
    lat: float
    lon: float
    half_km: float  # half the cell side, for jittering points inside it


@dataclass(frozen=True, slots=True)
class Street:
    name: str
    code: str
    district: str
    lat: float
    lon: float
    cells: tuple[Cell, ...]

    @property
    def key(self) -> str:
        """`<district code>.<street code>`: unique across the city."""
        return self.cells[0].id.rsplit(".", 1)[0]


@dataclass(frozen=True, slots=True)
class District:
    name: str
    code: str
    adcode: str
    kind: str  # core | urban | suburban | ecological
    lat: float
    lon: float
    street_radius_km: float
    streets: tuple[Street, ...]
    rivers: tuple[str, ...]
    underpasses: tuple[str, ...]
    roads: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Geography:
    city: str
    districts: tuple[District, ...]

    def district(self, name_or_code: str) -> District:
        """A district by Chinese name (朝阳区) or code (chaoyang)."""
        for d in self.districts:
            if name_or_code in (d.name, d.code):
                return d
        known = ", ".join(d.code for d in self.districts)
        raise ConfigError(f"unknown district {name_or_code!r}; known: {known}")

    def street(self, district: str, name_or_code: str) -> Street:
        d = self.district(district)
        for s in d.streets:
            if name_or_code in (s.name, s.code):
                return s
        raise ConfigError(f"unknown street {name_or_code!r} in {d.name}")

    def district_codes(self) -> dict[str, str]:
        """Chinese name -> ASCII code, e.g. for department topic names."""
        return {d.name: d.code for d in self.districts}

    def streets(self) -> list[Street]:
        return [s for d in self.districts for s in d.streets]

    def cells(self) -> list[Cell]:
        return [c for s in self.streets() for c in s.cells]


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Equirectangular distance: accurate to well under 1 % across Beijing."""
    dy = (lat2 - lat1) * KM_PER_DEG_LAT
    dx = (lon2 - lon1) * KM_PER_DEG_LAT * math.cos(math.radians((lat1 + lat2) / 2))
    return math.hypot(dx, dy)


def _cells(district_code: str, street_code: str, district: str, street: str, lat: float, lon: float,
           radius_km: float) -> tuple[Cell, ...]:
    step_km = 2 * radius_km / GRID_SIDE
    dlat = step_km / KM_PER_DEG_LAT
    dlon = step_km / (KM_PER_DEG_LAT * math.cos(math.radians(lat)))
    out = []
    mid = (GRID_SIDE - 1) / 2
    for row in range(GRID_SIDE):
        for col in range(GRID_SIDE):
            n = row * GRID_SIDE + col + 1
            out.append(Cell(
                id=f"{district_code}.{street_code}.{n}",
                district=district,
                street=street,
                lat=round(lat + (mid - row) * dlat, 6),  # row 0 is the north edge
                lon=round(lon + (col - mid) * dlon, 6),
                half_km=step_km / 2,
            ))
    return tuple(out)


def parse_geography(raw: dict) -> Geography:
    """Build the typed geography from the file's JSON; raises ConfigError on a bad file."""
    try:
        districts = []
        for d in raw["districts"]:
            streets = tuple(
                Street(
                    name=s["name"], code=s["code"], district=d["name"], lat=float(s["lat"]), lon=float(s["lon"]),
                    cells=_cells(d["code"], s["code"], d["name"], s["name"], float(s["lat"]), float(s["lon"]),
                                 float(d["street_radius_km"])),
                )
                for s in d["streets"]
            )
            districts.append(District(
                name=d["name"], code=d["code"], adcode=d["adcode"], kind=d["kind"],
                lat=float(d["lat"]), lon=float(d["lon"]), street_radius_km=float(d["street_radius_km"]),
                streets=streets, rivers=tuple(d["rivers"]), underpasses=tuple(d["underpasses"]),
                roads=tuple(d["roads"]),
            ))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"bad geography file: {exc!r}") from None
    codes = [d.code for d in districts]
    if len(set(codes)) != len(codes):
        raise ConfigError("bad geography file: duplicate district code")
    for d in districts:
        if len({s.code for s in d.streets}) != len(d.streets) or not d.streets:
            raise ConfigError(f"bad geography file: {d.name} has no streets or duplicate street codes")
    return Geography(city=raw.get("city", ""), districts=tuple(districts))


@cache
def load_geography(path: Path = DATA_FILE) -> Geography:
    """The shipped geography (cached: it is immutable)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read geography {path}: {exc}") from None
    return parse_geography(raw)
