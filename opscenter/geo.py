"""The dashboard's map, computed once from the shared geography
(`sim/data/beijing.json`): districts and streets have centroids only, so each
street gets its Voronoi cell (clipped to a disc around it), and district
borders are the cell edges between streets of different districts. Output is
in SVG units (equirectangular projection, x east, y south) together with the
projection, so the browser places alert markers with the same formula.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

GEOGRAPHY_FILE = Path(__file__).resolve().parents[1] / "sim" / "data" / "beijing.json"
WIDTH = 1000.0
CIRCLE_SIDES = 20

Point = tuple[float, float]


def _clip(poly: list[tuple[Point, int]], a: Point, b: Point, label: int) -> list[tuple[Point, int]]:
    """Keep the part of `poly` nearer to `a` than to `b`. Each vertex carries the
    label of the edge that starts at it (-1 = the outer boundary)."""
    mx, my = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
    nx, ny = b[0] - a[0], b[1] - a[1]

    def side(p: Point) -> float:
        return (p[0] - mx) * nx + (p[1] - my) * ny  # <= 0: the a side

    out: list[tuple[Point, int]] = []
    n = len(poly)
    for i in range(n):
        p, lab = poly[i]
        q, _ = poly[(i + 1) % n]
        sp, sq = side(p), side(q)
        if sp <= 0:
            out.append((p, lab))
        if (sp <= 0) != (sq <= 0):
            t = sp / (sp - sq)
            x = (p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]))
            # entering the a side: the new edge continues p's edge; leaving: the cut edge
            out.append((x, lab if sp > 0 else label))
    return out


def _project(lat0: float, lon0: float, scale: float) -> Any:
    k = math.cos(math.radians(lat0))

    def f(lat: float, lon: float) -> Point:
        return ((lon - lon0) * k * scale, (lat0 - lat) * scale)

    return f


def build_map(raw: dict[str, Any]) -> dict[str, Any]:
    districts = raw["districts"]
    pts: list[tuple[float, float, int, float, dict[str, Any]]] = []
    for di, d in enumerate(districts):
        radius_km = float(d.get("street_radius_km", 1.0))
        for s in d.get("streets", []):
            pts.append((s["lat"], s["lon"], di, radius_km, s))
    lats = [p[0] for p in pts] + [d["lat"] for d in districts]
    lons = [p[1] for p in pts] + [d["lon"] for d in districts]
    pad = 0.08
    lat_max, lat_min, lon_min, lon_max = max(lats) + pad, min(lats) - pad, min(lons) - pad, max(lons) + pad
    k = math.cos(math.radians((lat_max + lat_min) / 2))
    scale = WIDTH / ((lon_max - lon_min) * k)
    proj = _project(lat_max, lon_min, scale)
    km = scale / 111.0  # SVG units per km (north-south)
    height = (lat_max - lat_min) * scale
    xy = [proj(p[0], p[1]) for p in pts]
    streets_out = []
    border: list[list[float]] = []
    for i, (_lat, _lon, di, radius_km, s) in enumerate(pts):
        cx, cy = xy[i]
        r = max(radius_km * 2.6, 1.2) * km
        poly: list[tuple[Point, int]] = [
            ((cx + r * math.cos(2 * math.pi * j / CIRCLE_SIDES), cy + r * math.sin(2 * math.pi * j / CIRCLE_SIDES)), -1)
            for j in range(CIRCLE_SIDES)
        ]
        for j, q in enumerate(xy):
            if j == i or abs(q[0] - cx) > 2 * r or abs(q[1] - cy) > 2 * r:
                continue
            if q == (cx, cy):
                continue
            poly = _clip(poly, (cx, cy), q, j)
            if not poly:
                break
        for v in range(len(poly)):
            (p, lab), (q2, _) = poly[v], poly[(v + 1) % len(poly)]
            if lab == -1 or (pts[lab][2] != di and lab > i):
                border.append([round(p[0], 1), round(p[1], 1), round(q2[0], 1), round(q2[1], 1)])
        d = districts[di]
        streets_out.append({
            "name": s["name"], "code": s["code"], "district": d["name"], "district_code": d["code"],
            "x": round(cx, 1), "y": round(cy, 1),
            "cell": " ".join(f"{p[0]:.1f},{p[1]:.1f}" for p, _ in poly),
        })
    districts_out = []
    for d in districts:
        x, y = proj(d["lat"], d["lon"])
        districts_out.append({"name": d["name"], "code": d["code"], "name_en": d["code"].capitalize(),
                              "kind": d.get("kind"), "x": round(x, 1), "y": round(y, 1),
                              "streets": len(d.get("streets", []))})
    return {
        "city": raw.get("city"), "city_en": raw.get("city_en"),
        "width": WIDTH, "height": round(height, 1),
        "projection": {"lat0": lat_max, "lon0": lon_min, "k": k, "scale": scale},
        "km": km, "districts": districts_out, "streets": streets_out, "borders": border,
    }


@lru_cache(maxsize=2)
def load_map(path: Path = GEOGRAPHY_FILE) -> dict[str, Any]:
    if not path.exists():
        return {"city": None, "width": WIDTH, "height": 800.0,
                "projection": {"lat0": 41.1, "lon0": 115.4, "k": math.cos(math.radians(40.2)), "scale": 500.0},
                "km": 500 / 111, "districts": [], "streets": [], "borders": []}
    return build_map(json.loads(path.read_text(encoding="utf-8")))


@lru_cache(maxsize=2)
def district_lookup(path: Path = GEOGRAPHY_FILE) -> dict[str, str]:
    """District name or code -> name (the name is what storage holds)."""
    out: dict[str, str] = {}
    if path.exists():
        for d in json.loads(path.read_text(encoding="utf-8"))["districts"]:
            out[d["name"]] = d["name"]
            out[d["code"]] = d["name"]
    return out
