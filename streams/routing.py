"""Routing is data: departments and their jurisdiction (a registry) and a rules
file that maps (source, category, sensor type, severity, area, mode) to the
departments that receive an alert or a hotline ticket.

Department codes (they are also the suffix of `city.alerts.dept.<code>`):

    city level      eeb, water, traffic, ema, ... (streams/rules/departments.yaml)
    district level  district.<district code>            e.g. district.chaoyang
    street level    street.<district code>.<street code>  e.g. street.chaoyang.wangjing

District and street departments come from the simulator's geography
(`sim/data/beijing.json`); without that file a built-in list of the 16
districts is used and street codes are derived from the street name.

Rules file (`streams/rules/routing.yaml`)::

    version: 1
    departments_file: departments.yaml   # optional, relative to the rules file
    departments: {...}                   # optional, inline city departments (override the file)
    rules:
      - name: serious-water-to-emergency
        match:                           # every given condition must hold
          source: sensor                 # sensor | hotline
          category: water                # a value or a list
          sensor_type: water_level       # a value or a list
          min_severity: II               # IV < III < II < I
          max_severity: I
          districts: [朝阳区, haidian]   # names or codes
          streets: [望京街道]            # names or codes
          mode: emergency                # normal | emergency (平急转换)
        departments: [ema]               # registry codes
        district: true                   # + the area's district department
        street: true                     # + the area's street department
        owners: true                     # + every city department owning the category

Every rule that matches adds its departments, in file order, without
duplicates. Loading validates everything and a problem is reported as
`FILE:LINE: what is wrong` (ConfigError). `RulesHolder.reload` swaps rules
atomically and keeps the old ones when the new file is invalid.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from citybrain.errors import ConfigError
from schemas import Severity

RULES_DIR = Path(__file__).with_name("rules")
DEFAULT_RULES = RULES_DIR / "routing.yaml"
DEFAULT_DEPARTMENTS = RULES_DIR / "departments.yaml"
GEOGRAPHY_FILE = Path(__file__).resolve().parents[1] / "sim" / "data" / "beijing.json"

OPS = "ops"  # the operations center: sees everything, top of every escalation ladder

# Fallback when the simulator's geography file is absent.
DISTRICT_CODES = {
    "东城区": "dongcheng", "西城区": "xicheng", "朝阳区": "chaoyang", "海淀区": "haidian",
    "丰台区": "fengtai", "石景山区": "shijingshan", "门头沟区": "mentougou", "房山区": "fangshan",
    "通州区": "tongzhou", "顺义区": "shunyi", "昌平区": "changping", "大兴区": "daxing",
    "怀柔区": "huairou", "平谷区": "pinggu", "密云区": "miyun", "延庆区": "yanqing",
}  # fmt: skip

Level = Literal["city", "district", "street"]
PiiPolicy = Literal["none", "pseudonymous"]
Source = Literal["sensor", "hotline"]
Mode = Literal["normal", "emergency"]
LEVELS: tuple[Level, ...] = ("street", "district", "city")
HOTLINE_CATEGORIES = frozenset(
    {"noise", "garbage", "road_damage", "heating", "water_outage", "flooding", "odour", "illegal_parking",
     "air_pollution", "traffic", "gas_smell", "other"}
)  # fmt: skip


# --------------------------------------------------------------------------- YAML with line numbers


class LDict(dict[str, Any]):
    """A YAML mapping that remembers its line and each key's line (1-based)."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LList(list[Any]):
    line: int = 0
    item_lines: list[int]

    def line_of(self, i: int) -> int:
        return self.item_lines[i] if i < len(self.item_lines) else self.line


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> LDict:
    loader.flatten_mapping(node)
    out = LDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for knode, vnode in node.value:
        key = loader.construct_object(knode, deep=True)
        line = knode.start_mark.line + 1
        if not isinstance(key, str):
            raise ConfigError(f"{loader.name}:{line}: keys must be strings, got {key!r}")
        if key in out:
            raise ConfigError(f"{loader.name}:{line}: duplicate key {key!r} (first at line {out.key_lines[key]})")
        out[key] = loader.construct_object(vnode, deep=True)
        out.key_lines[key] = line
    return out


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode) -> LList:
    out = LList(loader.construct_object(n, deep=True) for n in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [n.start_mark.line + 1 for n in node.value]
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)  # type: ignore[arg-type]
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)  # type: ignore[arg-type]


def load_yaml(text: str, name: str) -> Any:
    """Parse YAML keeping line numbers (LDict/LList); syntax errors name the line."""
    try:
        loader = _LineLoader(text)  # the reader already refuses control characters here
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: YAML: {' '.join(str(exc).split())}") from None
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        ctx = exc.context_mark
        also = f" ({exc.context} at line {ctx.line + 1})" if ctx is not None and exc.context and ctx is not mark else ""
        raise ConfigError(f"{name}:{line}: YAML syntax: {exc.problem or exc.context}{also}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: YAML: {exc}") from None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return load_yaml(text, str(path))


class Where:
    """Builds `FILE:LINE: message` errors for a node."""

    def __init__(self, name: str) -> None:
        self.name = name

    def err(self, line: int, message: str) -> ConfigError:
        return ConfigError(f"{self.name}:{line}: {message}")

    def mapping(self, value: Any, line: int, what: str, allowed: Iterable[str] | None = None) -> LDict:
        if not isinstance(value, LDict):
            raise self.err(getattr(value, "line", line), f"{what} must be a mapping")
        if allowed is not None:
            allowed = tuple(allowed)
            for k in value:
                if k not in allowed:
                    raise self.err(value.line_of(k), f"{what}: unknown key {k!r} (allowed: {', '.join(allowed)})")
        return value

    def strings(self, value: Any, line: int, what: str) -> tuple[str, ...]:
        """A string or a list of strings."""
        if isinstance(value, str) and value:
            return (value,)
        if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return tuple(value)
        raise self.err(line, f"{what} must be a non-empty string or list of strings, got {value!r}")

    def boolean(self, value: Any, line: int, what: str) -> bool:
        if not isinstance(value, bool):
            raise self.err(line, f"{what} must be true or false, got {value!r}")
        return value

    def severity(self, value: Any, line: int, what: str) -> Severity:
        try:
            return Severity(str(value))
        except ValueError:
            raise self.err(line, f"{what} must be one of IV, III, II, I (blue..red), got {value!r}") from None

    def duration_s(self, value: Any, line: int, what: str) -> float:
        return parse_duration(value, lambda m: self.err(line, f"{what}: {m}"))


def parse_duration(value: Any, error: Any = None) -> float:
    """'90s', '30m', '2h', '1d' or a number of seconds -> seconds (> 0)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and len(value) >= 2 and value[-1] in units:
        try:
            seconds = float(value[:-1]) * units[value[-1]]
        except ValueError:
            seconds = None
    if seconds is None or not seconds > 0 or seconds != seconds:
        msg = f"expected a positive duration like 90s, 30m, 2h, 1d, got {value!r}"
        raise (error(msg) if error else ConfigError(msg))
    return seconds


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True, slots=True)
class Department:
    code: str
    name: str
    name_en: str
    level: Level
    district: str | None = None  # Chinese district name (jurisdiction), None for city-wide
    street: str | None = None  # Chinese street name for street offices
    categories: tuple[str, ...] = ()  # categories it owns ("*" = all)
    pii: PiiPolicy = "none"  # what citizen data its copy may carry

    def owns(self, category: str) -> bool:
        return "*" in self.categories or category in self.categories


def street_code(street: str) -> str:
    """Topic-safe code for a street not in the geography (ASCII kept, else a short hash)."""
    if street.isascii():
        return "".join(c if c.isalnum() else "_" for c in street.lower())
    return hashlib.blake2b(street.encode(), digest_size=4).hexdigest()


@dataclass(frozen=True, slots=True)
class Geo:
    """District and street names <-> codes."""

    districts: Mapping[str, str]  # name -> code
    streets: Mapping[tuple[str, str], str]  # (district name, street name) -> street code
    street_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # district -> street names

    def district_name(self, name_or_code: str) -> str | None:
        if name_or_code in self.districts:
            return name_or_code
        for name, code in self.districts.items():
            if code == name_or_code:
                return name
        return None

    def district_code(self, district: str) -> str | None:
        return self.districts.get(district)

    def street_code(self, district: str, street: str) -> str:
        return self.streets.get((district, street)) or street_code(street)


def load_geo(path: Path = GEOGRAPHY_FILE) -> Geo:
    """The simulator's geography if present, else the built-in district list."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        districts = {d["name"]: d["code"] for d in raw["districts"]}
        streets = {(d["name"], s["name"]): s["code"] for d in raw["districts"] for s in d["streets"]}
        names = {d["name"]: tuple(s["name"] for s in d["streets"]) for d in raw["districts"]}
        return Geo(districts, streets, names)
    except (OSError, ValueError, KeyError, TypeError):
        return Geo(dict(DISTRICT_CODES), {})


@dataclass(frozen=True, slots=True)
class Registry:
    """All departments: city ones from data, district/street ones from the geography."""

    departments: Mapping[str, Department]
    geo: Geo

    def __contains__(self, code: object) -> bool:
        return isinstance(code, str) and self.get(code) is not None

    def get(self, code: str) -> Department | None:
        dept = self.departments.get(code)
        if dept is None and code.startswith("street.") and code.count(".") == 2:
            # a street unknown to the geography (fallback mode): synthesised
            _, dcode, scode = code.split(".")
            dname = self.geo.district_name(dcode)
            if dname is not None:
                return Department(code, scode, scode, "street", dname, scode, ("*",), "pseudonymous")
        return dept

    def district_dept(self, district: str) -> str | None:
        code = self.geo.district_code(district)
        return f"district.{code}" if code else None

    def street_dept(self, district: str, street: str | None) -> str | None:
        dcode = self.geo.district_code(district)
        if not dcode or not street:
            return None
        return f"street.{dcode}.{self.geo.street_code(district, street)}"

    def parent(self, code: str) -> str | None:
        """One rung up the ladder: street -> its district -> ops; None at the top."""
        dept = self.get(code)
        if dept is None or code == OPS:
            return None
        if dept.level == "street" and dept.district:
            return self.district_dept(dept.district) or OPS
        return OPS

    def owners(self, category: str) -> tuple[str, ...]:
        return tuple(
            c for c, d in self.departments.items() if d.level == "city" and c != OPS and category in d.categories
        )


def _parse_departments(data: Any, where: Where, line: int) -> dict[str, Department]:
    depts = where.mapping(data, line, "departments")
    out: dict[str, Department] = {}
    keys = ("name", "name_en", "level", "categories", "pii", "note")
    for code, raw in depts.items():
        cl = depts.line_of(code)
        if not code or not all(c.isascii() and (c.isalnum() or c in "_-") for c in code):
            raise where.err(cl, f"department code {code!r} must be ASCII letters, digits, _ or -")
        d = where.mapping(raw, cl, f"department {code}", keys)
        if not isinstance(d.get("name"), str):
            raise where.err(cl, f"department {code}: needs a name")
        level = d.get("level", "city")
        if level != "city":
            raise where.err(d.line_of("level"), f"department {code}: only city departments are listed here "
                            "(district and street ones come from the geography), got level {level!r}")
        cats = where.strings(d["categories"], d.line_of("categories"), f"department {code}: categories") \
            if "categories" in d else ()
        pii = d.get("pii", "none")
        if pii not in ("none", "pseudonymous"):
            raise where.err(d.line_of("pii"), f"department {code}: pii must be none or pseudonymous, got {pii!r}")
        out[code] = Department(code, d["name"], str(d.get("name_en", d["name"])), "city", None, None, cats, pii)
    return out


def build_registry(city: Mapping[str, Department], geo: Geo) -> Registry:
    depts: dict[str, Department] = dict(city)
    if OPS not in depts:
        depts[OPS] = Department(OPS, "城市运行指挥中心", "City Operations Center", "city", None, None, ("*",),
                                "pseudonymous")
    for dname, dcode in geo.districts.items():
        depts[f"district.{dcode}"] = Department(
            f"district.{dcode}", f"{dname}政府", f"{dcode} district", "district", dname, None, ("*",), "pseudonymous"
        )
        for sname in geo.street_names.get(dname, ()):
            scode = geo.street_code(dname, sname)
            depts[f"street.{dcode}.{scode}"] = Department(
                f"street.{dcode}.{scode}", sname, f"{scode} street, {dcode}", "street", dname, sname, ("*",),
                "pseudonymous",
            )
    return Registry(depts, geo)


def load_registry(path: Path = DEFAULT_DEPARTMENTS, geo: Geo | None = None) -> Registry:
    """The departments file (a mapping under `departments:`) plus the geography."""
    data = read_yaml(path)
    where = Where(str(path))
    top = where.mapping(data, 1, "departments file", ("version", "departments"))
    if "departments" not in top:
        raise where.err(1, "departments file needs a 'departments' mapping")
    return build_registry(_parse_departments(top["departments"], where, top.line_of("departments")),
                          geo or load_geo())


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class RouteQuery:
    """What routing looks at."""

    category: str
    sensor_type: str | None
    severity: Severity
    district: str
    street: str | None = None
    source: Source = "sensor"
    mode: Mode = "normal"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    line: int
    sources: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    sensor_types: frozenset[str] = frozenset()
    min_severity: Severity = Severity.IV
    max_severity: Severity = Severity.I
    districts: frozenset[str] = frozenset()  # Chinese names
    streets: frozenset[str] = frozenset()  # names or codes
    modes: frozenset[str] = frozenset()
    departments: tuple[str, ...] = ()
    district: bool = False
    street: bool = False
    owners: bool = False

    def mismatch(self, q: RouteQuery, registry: Registry) -> str | None:
        """Why the rule does not apply to q, or None when it does."""
        if self.sources and q.source not in self.sources:
            return f"source {q.source} not in {sorted(self.sources)}"
        if self.categories and q.category not in self.categories:
            return f"category {q.category} not in {sorted(self.categories)}"
        if self.sensor_types and q.sensor_type not in self.sensor_types:
            return f"sensor_type {q.sensor_type} not in {sorted(self.sensor_types)}"
        if q.severity.rank < self.min_severity.rank:
            return f"severity {q.severity.value} below {self.min_severity.value}"
        if q.severity.rank > self.max_severity.rank:
            return f"severity {q.severity.value} above {self.max_severity.value}"
        if self.districts and q.district not in self.districts:
            return f"district {q.district} not in {sorted(self.districts)}"
        if self.streets:
            code = registry.geo.street_code(q.district, q.street) if q.street else None
            if q.street not in self.streets and code not in self.streets:
                return f"street {q.street} not in {sorted(self.streets)}"
        if self.modes and q.mode not in self.modes:
            return f"mode {q.mode} not in {sorted(self.modes)}"
        return None

    def targets(self, q: RouteQuery, registry: Registry) -> list[str]:
        out = list(self.departments)
        if self.owners:
            out.extend(registry.owners(q.category))
        if self.district:
            d = registry.district_dept(q.district)
            if d:
                out.append(d)
        if self.street:
            s = registry.street_dept(q.district, q.street)
            if s:
                out.append(s)
        return out


@dataclass(frozen=True, slots=True)
class RuleTrace:
    rule: str
    line: int
    matched: bool
    reason: str  # why not, or "" when matched
    added: tuple[str, ...]  # departments this rule added (new ones only)


@dataclass(frozen=True, slots=True)
class RoutingTable:
    rules: tuple[Rule, ...]
    registry: Registry
    source: str = ""  # file it came from
    fingerprint: str = ""  # hash of the file's text

    @property
    def departments(self) -> Mapping[str, Department]:
        return self.registry.departments

    def route_query(self, q: RouteQuery) -> tuple[str, ...]:
        out: dict[str, None] = {}
        for r in self.rules:
            if r.mismatch(q, self.registry) is None:
                for d in r.targets(q, self.registry):
                    out.setdefault(d, None)
        return tuple(out)

    def route(
        self,
        category: str,
        sensor_type: str | None,
        severity: Severity,
        district: str,
        street: str | None,
        *,
        source: Source = "sensor",
        mode: Mode = "normal",
    ) -> tuple[str, ...]:
        return self.route_query(RouteQuery(category, sensor_type, severity, district, street, source, mode))

    def explain(self, q: RouteQuery) -> list[RuleTrace]:
        seen: set[str] = set()
        out = []
        for r in self.rules:
            why = r.mismatch(q, self.registry)
            added: list[str] = []
            if why is None:
                for d in r.targets(q, self.registry):
                    if d not in seen:
                        seen.add(d)
                        added.append(d)
            out.append(RuleTrace(r.name, r.line, why is None, why or "", tuple(added)))
        return out


_MATCH_KEYS = ("source", "category", "sensor_type", "min_severity", "max_severity", "districts", "streets", "mode")
_RULE_KEYS = ("name", "match", "departments", "district", "street", "owners", "note")


def _parse_rule(raw: Any, line: int, where: Where, registry: Registry, i: int) -> Rule:
    r = where.mapping(raw, line, f"rule {i}", _RULE_KEYS)
    name = r.get("name")
    if not isinstance(name, str) or not name:
        raise where.err(r.line, f"rule {i}: each rule needs a name")
    what = f"rule {i} ({name})"
    kw: dict[str, Any] = {}
    if "match" in r:
        m = where.mapping(r["match"], r.line_of("match"), f"{what}: match", _MATCH_KEYS)
        for key, attr in (("source", "sources"), ("category", "categories"), ("sensor_type", "sensor_types"),
                          ("mode", "modes")):
            if key in m:
                kw[attr] = frozenset(where.strings(m[key], m.line_of(key), f"{what}: {key}"))
        for bad in kw.get("sources", frozenset()) - {"sensor", "hotline"}:
            raise where.err(m.line_of("source"), f"{what}: source must be sensor or hotline, got {bad!r}")
        for bad in kw.get("modes", frozenset()) - {"normal", "emergency"}:
            raise where.err(m.line_of("mode"), f"{what}: mode must be normal or emergency, got {bad!r}")
        for key in ("min_severity", "max_severity"):
            if key in m:
                kw[key] = where.severity(m[key], m.line_of(key), f"{what}: {key}")
        if "districts" in m:
            names = []
            for d in where.strings(m["districts"], m.line_of("districts"), f"{what}: districts"):
                name_ = registry.geo.district_name(d)
                if name_ is None:
                    raise where.err(m.line_of("districts"), f"{what}: unknown district {d!r}")
                names.append(name_)
            kw["districts"] = frozenset(names)
        if "streets" in m:
            kw["streets"] = frozenset(where.strings(m["streets"], m.line_of("streets"), f"{what}: streets"))
    if kw.get("min_severity", Severity.IV).rank > kw.get("max_severity", Severity.I).rank:
        raise where.err(r.line, f"{what}: min_severity is above max_severity")
    depts: tuple[str, ...] = ()
    if "departments" in r:
        dl = r.line_of("departments")
        depts = where.strings(r["departments"], dl, f"{what}: departments")
        unknown = [d for d in depts if d not in registry]
        if unknown:
            raise where.err(dl, f"{what}: unknown department(s) {', '.join(unknown)}")
    flags = {k: where.boolean(r[k], r.line_of(k), f"{what}: {k}") if k in r else False
             for k in ("district", "street", "owners")}
    if not depts and not any(flags.values()):
        raise where.err(r.line, f"{what}: routes nowhere (give departments, or district/street/owners: true)")
    return Rule(name=name, line=r.line, departments=depts, district=flags["district"], street=flags["street"],
                owners=flags["owners"], **kw)


def parse_rules(text: str, name: str = "<rules>", base_dir: Path | None = None, geo: Geo | None = None) -> RoutingTable:
    """Validate a rules document; ConfigError names the line and the problem."""
    where = Where(name)
    data = load_yaml(text, name)
    top = where.mapping(data, 1, "rules file", ("version", "departments_file", "departments", "rules"))
    if top.get("version", 1) != 1:
        raise where.err(top.line_of("version"), f"unsupported version {top['version']!r} (expected 1)")
    geo = geo or load_geo()
    city: dict[str, Department] = {}
    if "departments_file" in top or "departments" not in top:
        fname = top.get("departments_file", DEFAULT_DEPARTMENTS.name)
        if not isinstance(fname, str):
            raise where.err(top.line_of("departments_file"), "departments_file must be a path")
        path = (base_dir or RULES_DIR) / fname
        if not path.exists() and "departments_file" not in top:
            path = DEFAULT_DEPARTMENTS
        try:
            city = dict(load_registry(path, geo).departments)
        except ConfigError as exc:
            raise where.err(top.line_of("departments_file"), f"departments file: {exc}") from None
        city = {c: d for c, d in city.items() if d.level == "city"}
    if "departments" in top:
        city.update(_parse_departments(top["departments"], where, top.line_of("departments")))
    registry = build_registry(city, geo)
    rules_raw = top.get("rules")
    if not isinstance(rules_raw, LList):
        raise where.err(top.line_of("rules"), "expected a 'rules' list")
    rules = [_parse_rule(raw, rules_raw.line_of(i), where, registry, i + 1) for i, raw in enumerate(rules_raw)]
    names = [r.name for r in rules]
    for i, r in enumerate(rules):
        if r.name in names[:i]:
            raise where.err(r.line, f"rule {i + 1}: duplicate rule name {r.name!r}")
    fp = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    return RoutingTable(tuple(rules), registry, name, fp)


def load_rules(path: Path = DEFAULT_RULES, geo: Geo | None = None) -> RoutingTable:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read routing rules: {exc}") from None
    return parse_rules(text, str(path), path.parent, geo)


class RulesHolder:
    """The rules in force, reloadable without a restart. Thread-safe swap;
    readers take `holder.table` once per record."""

    def __init__(self, path: Path = DEFAULT_RULES, table: RoutingTable | None = None) -> None:
        self.path = path
        self._table = table if table is not None else load_rules(path)
        self.last_error: str | None = None
        self._lock = threading.Lock()

    @property
    def table(self) -> RoutingTable:
        return self._table

    def reload(self, path: Path | None = None) -> bool:
        """Load `path` (default: the current file). True if the new rules are in
        force; False (old rules kept, `last_error` set) if the file is invalid."""
        target = path or self.path
        try:
            table = load_rules(target)
        except ConfigError as exc:
            self.last_error = str(exc)
            return False
        with self._lock:
            self._table = table
            self.path = target
            self.last_error = None
        return True


# --------------------------------------------------------------------------- alerts


def query_for_alert(alert: Any, mode: Mode | None = None) -> RouteQuery:
    """The routing query of an Alert (hotline-derived if it has no sensor type
    and a hotline category)."""
    src: Source = "hotline" if alert.sensor_type is None and alert.category in HOTLINE_CATEGORIES else "sensor"
    if mode is None:
        m = (alert.evidence.details or {}).get("mode") if alert.evidence else None
        mode = "emergency" if isinstance(m, dict) and m.get("mode") == "emergency" else "normal"
    sev = alert.peak_severity or alert.severity
    return RouteQuery(alert.category, alert.sensor_type, sev, alert.location.district, alert.location.street, src,
                      mode)


# --------------------------------------------------------------------------- fan-out

# keys of evidence details that carry citizen data (hotline-derived alerts)
PII_KEYS = frozenset({"phone", "phones", "caller", "caller_name", "name", "contact", "address", "id_number",
                      "description", "descriptions", "text"})
PSEUDONYMOUS_KEYS = frozenset({"caller_ref", "caller_refs"})
_PHONE = re.compile(r"(?<!\d)(?:\+?86[- ]?)?(?:1[3-9]\d{9}|0\d{2,3}[- ]?\d{7,8}|\d{3,4}[- ]\d{4}[- ]?\d{4})(?!\d)")


def mask_text(text: str) -> str:
    """Phone numbers (mobile, landline) never travel in clear: keep the last 4 digits."""
    return _PHONE.sub(lambda m: "*" * 7 + re.sub(r"\D", "", m.group())[-4:], text)


def _mask(value: Any, pii: PiiPolicy) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, Mapping):
        return {k: _mask(v, pii) for k, v in value.items()
                if k not in PII_KEYS and (pii == "pseudonymous" or k not in PSEUDONYMOUS_KEYS)}
    if isinstance(value, list | tuple):
        return [_mask(v, pii) for v in value]
    return value


def departments_for(alert: Any) -> tuple[str, ...]:
    """Department topics an alert goes to (besides city.alerts, which ops reads)."""
    return tuple(alert.departments)


def department_copy(alert: Any, code: str, registry: Registry) -> Any:
    """The alert as department `code` may see it: citizen data removed per the
    department's `pii` policy (none: no caller data at all; pseudonymous: the
    caller's keyed hash only), phone numbers masked in every text. Raises
    ValueError for a department the alert is not routed to."""
    if code not in alert.departments and code != OPS:
        raise ValueError(f"alert {alert.alert_id} is not routed to {code}")
    dept = registry.get(code)
    pii: PiiPolicy = dept.pii if dept is not None else "none"
    details = _mask(dict(alert.evidence.details), pii)
    return alert.model_copy(update={
        "title": mask_text(alert.title),
        "evidence": alert.evidence.model_copy(update={"details": details}),
    })


def ticket_copy(event: Any, code: str, registry: Registry) -> Any:
    """A HotlineEvent as department `code` may see it (caller_ref only for
    pseudonymous departments, phone numbers masked in the description)."""
    dept = registry.get(code)
    pii: PiiPolicy = dept.pii if dept is not None else "none"
    upd: dict[str, Any] = {"description": mask_text(event.description)}
    if pii != "pseudonymous":
        upd["caller_ref"] = None
    return event.model_copy(update=upd)
