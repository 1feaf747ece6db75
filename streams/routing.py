"""Routing rules (data) -> departments for an alert. Pure and small; loaded
and validated once, applied per alert."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from citybrain.errors import ConfigError
from schemas import Severity

DEFAULT_RULES = Path(__file__).with_name("rules") / "routing.yaml"

# district name -> ASCII code used in department topic names
DISTRICT_CODES = {
    "东城区": "dongcheng", "西城区": "xicheng", "朝阳区": "chaoyang", "海淀区": "haidian",
    "丰台区": "fengtai", "石景山区": "shijingshan", "门头沟区": "mentougou", "房山区": "fangshan",
    "通州区": "tongzhou", "顺义区": "shunyi", "昌平区": "changping", "大兴区": "daxing",
    "怀柔区": "huairou", "平谷区": "pinggu", "密云区": "miyun", "延庆区": "yanqing",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    category: str | None
    sensor_type: str | None
    min_severity: Severity
    districts: frozenset[str]
    departments: tuple[str, ...]
    district: bool
    street: bool


@dataclass(frozen=True, slots=True)
class RoutingTable:
    rules: tuple[Rule, ...]
    departments: dict[str, dict[str, Any]]

    def route(
        self, category: str, sensor_type: str | None, severity: Severity, district: str, street: str | None
    ) -> tuple[str, ...]:
        out: list[str] = []
        for r in self.rules:
            if r.category and r.category != category:
                continue
            if r.sensor_type and r.sensor_type != sensor_type:
                continue
            if severity.rank < r.min_severity.rank:
                continue
            if r.districts and district not in r.districts:
                continue
            out.extend(r.departments)
            if r.district and district in DISTRICT_CODES:
                out.append(f"district.{DISTRICT_CODES[district]}")
            if r.street and street and district in DISTRICT_CODES:
                out.append(f"street.{DISTRICT_CODES[district]}.{street_code(street)}")
        return tuple(dict.fromkeys(out))


def street_code(street: str) -> str:
    """Topic-safe code for a street name (Chinese names hashed to a short stable code)."""
    if street.isascii():
        return "".join(c if c.isalnum() else "_" for c in street.lower())
    import hashlib

    return hashlib.blake2b(street.encode(), digest_size=4).hexdigest()


def load_rules(path: Path = DEFAULT_RULES) -> RoutingTable:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read routing rules: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ConfigError(f"{path}: expected a mapping with a 'rules' list")
    departments = data.get("departments") or {}
    rules = []
    for i, raw in enumerate(data["rules"]):
        where = f"{path}: rule {i + 1}"
        if not isinstance(raw, dict) or "name" not in raw:
            raise ConfigError(f"{where}: each rule needs a name")
        match = raw.get("match") or {}
        try:
            min_sev = Severity(match.get("min_severity", "IV"))
        except ValueError:
            raise ConfigError(f"{where} ({raw['name']}): min_severity must be one of IV, III, II, I") from None
        depts = tuple(raw.get("departments") or ())
        unknown = [d for d in depts if d not in departments]
        if unknown:
            raise ConfigError(f"{where} ({raw['name']}): unknown department(s) {', '.join(unknown)}")
        rules.append(
            Rule(
                name=str(raw["name"]),
                category=match.get("category"),
                sensor_type=match.get("sensor_type"),
                min_severity=min_sev,
                districts=frozenset(match.get("districts") or ()),
                departments=depts,
                district=bool(raw.get("district", False)),
                street=bool(raw.get("street", False)),
            )
        )
    return RoutingTable(tuple(rules), departments)
