"""`citybrain rules check FILE` and `citybrain rules explain ...`.

    citybrain rules check streams/rules/routing.yaml     # exit 0, or 2 with `FILE:LINE: problem`
    citybrain rules check streams/rules/policy.yaml      # policy and departments files too
    citybrain rules explain --category water --sensor-type water_level --severity II \
        --district 朝阳区 --street 望京街道 [--mode emergency] [--source hotline]
    citybrain rules explain --alert alert.json           # or --alert - (stdin): an Alert JSON
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from citybrain.errors import ConfigError, InputError
from schemas import Alert, Severity
from streams.routing import DEFAULT_RULES, RouteQuery, load_registry, load_rules, query_for_alert, read_yaml


def check(path: Path) -> str:
    """Validate a rules, departments or policy file; one-line summary or ConfigError."""
    data = read_yaml(path)
    if isinstance(data, dict) and "rules" in data:
        table = load_rules(path)
        return f"ok: {path}: routing rules, {len(table.rules)} rules, {len(table.departments)} departments"
    if isinstance(data, dict) and set(data) <= {"version", "departments"} and "departments" in data:
        reg = load_registry(path)
        return f"ok: {path}: departments, {len(reg.departments)} with districts and streets"
    from streams.lifecycle import parse_policy

    parse_policy(data, str(path))
    return f"ok: {path}: policy"


def _cmd_check(args: argparse.Namespace) -> int:
    print(check(Path(args.file)))
    return 0


def _query(args: argparse.Namespace) -> RouteQuery:
    if args.alert:
        try:
            text = sys.stdin.read() if args.alert == "-" else Path(args.alert).read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read alert {args.alert}: {exc}") from None
        try:
            alert = Alert.model_validate_json(text)
        except ValidationError as exc:
            e = exc.errors(include_url=False)[0]
            raise InputError(f"not an Alert JSON: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
        return query_for_alert(alert, args.mode)
    missing = [n for n in ("category", "severity", "district") if not getattr(args, n)]
    if missing:
        raise ConfigError(f"explain needs --alert FILE or --category, --severity and --district (missing: "
                          f"{', '.join('--' + m for m in missing)})")
    try:
        sev = Severity(args.severity)
    except ValueError:
        raise ConfigError(f"--severity must be one of IV, III, II, I, got {args.severity!r}") from None
    return RouteQuery(args.category, args.sensor_type, sev, args.district, args.street, args.source,
                      args.mode or "normal")


def _cmd_explain(args: argparse.Namespace) -> int:
    table = load_rules(Path(args.rules))
    q = _query(args)
    name = table.registry.geo.district_name(q.district)
    if name is None:
        raise ConfigError(f"unknown district {q.district!r}")
    q = RouteQuery(q.category, q.sensor_type, q.severity, name, q.street, q.source, q.mode)
    print(f"query: source={q.source} category={q.category} sensor_type={q.sensor_type} severity={q.severity.value} "
          f"district={q.district} street={q.street} mode={q.mode}")
    for t in table.explain(q):
        if t.matched:
            print(f"  + {t.rule} (line {t.line}): {', '.join(t.added) or '(nothing new)'}")
        else:
            print(f"  - {t.rule} (line {t.line}): {t.reason}")
    depts = table.route_query(q)
    print(f"departments: {', '.join(depts) or '(none: only the operations center on city.alerts)'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rules", help="routing rules: check a file, explain a routing decision")
    s = p.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    c = s.add_parser("check", help="validate a routing rules, departments or policy file (exit 2 on error)")
    c.add_argument("file")
    c.set_defaults(func=_cmd_check)
    e = s.add_parser("explain", help="which rules route an alert (or a described one) to which departments")
    e.add_argument("--rules", default=str(DEFAULT_RULES), help="rules file (default: the shipped one)")
    e.add_argument("--alert", help="an Alert JSON file, or - for stdin")
    e.add_argument("--category")
    e.add_argument("--sensor-type")
    e.add_argument("--severity", help="IV, III, II or I")
    e.add_argument("--district", help="district name, e.g. 朝阳区")
    e.add_argument("--street")
    e.add_argument("--source", choices=["sensor", "hotline"], default="sensor")
    e.add_argument("--mode", choices=["normal", "emergency"])
    e.set_defaults(func=_cmd_explain)
