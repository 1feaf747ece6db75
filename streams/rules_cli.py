"""`citybrain rules check FILE` and `citybrain rules explain ...`.

    citybrain rules check streams/rules/routing.yaml     # exit 0, or 2 with `FILE:LINE: problem`
    citybrain rules check streams/rules/policy.yaml      # policy and departments files too
    citybrain rules explain --category water --sensor-type water_level --severity II \
        --district 朝阳区 --street 望京街道 [--mode emergency] [--source hotline]
    citybrain rules explain --alert alert.json           # or --alert - (stdin): an Alert JSON
    citybrain rules apply new.yaml --to streams/rules/routing.yaml --actor 张工 --reason "..."

`apply` is how rules change in operation: it validates the new file as the
kind of file it replaces, appends a `rules.change` entry (who, why, the file's
SHA-256 before and after, the rules added, removed and changed) to the audit
trail, and only then swaps the file in atomically; running workers pick it up
within their poll interval. If the audit cannot be written, nothing changes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


def _kind(summary: str) -> str:
    return summary.split(": ")[2].split(",")[0]  # "ok: PATH: routing rules, ..." -> "routing rules"


def rules_diff(old: Any, new: Any) -> dict[str, list[str]]:
    """Rules by name: added, removed, changed (routing files; empty otherwise)."""
    def by_name(data: Any) -> dict[str, Any]:
        rules = data.get("rules") if isinstance(data, dict) else None
        return {str(r.get("name")): r for r in rules or [] if isinstance(r, dict)}

    a, b = by_name(old), by_name(new)
    return {"added": sorted(set(b) - set(a)), "removed": sorted(set(a) - set(b)),
            "changed": sorted(k for k in set(a) & set(b) if a[k] != b[k])}


def plan_change(new: Path, target: Path, reason: str) -> tuple[dict[str, Any], bytes]:
    """Validate `new` as the kind of file `target` is; the audit details and the new bytes."""
    summary_new = check(new)
    summary_old = check(target) if target.exists() else None
    if summary_old is not None and _kind(summary_old) != _kind(summary_new):
        raise ConfigError(f"{new} is a {_kind(summary_new)} file but {target} holds {_kind(summary_old)}")
    new_bytes = new.read_bytes()
    old_bytes = target.read_bytes() if target.exists() else b""
    details: dict[str, Any] = {
        "file": str(target), "reason": reason, "kind": _kind(summary_new),
        "sha256_before": hashlib.sha256(old_bytes).hexdigest() if old_bytes else None,
        "sha256_after": hashlib.sha256(new_bytes).hexdigest(),
        **rules_diff(read_yaml(target) if old_bytes else None, read_yaml(new)),
    }  # fmt: skip
    return details, new_bytes


def swap_in(target: Path, content: bytes) -> None:
    """Atomic replace: a worker polling the file never reads half of it."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(content)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot replace {target}: {exc.strerror}") from None


async def apply_rules(new: Path, target: Path, *, actor: str, reason: str, database_url: str, schema: str,
                      now: datetime) -> dict[str, Any]:  # fmt: skip
    """Validate, audit, then swap the file in; the audit entry commits only if the swap worked."""
    from storage.audit import append_audit
    from storage.db import connect

    details, content = plan_change(new, target, reason)
    if details["sha256_before"] == details["sha256_after"]:
        return details | {"unchanged": True}
    conn = await connect(database_url, schema, "citybrain-rules")
    try:
        if not await conn.fetchval("SELECT to_regclass(format('%I.audit_log', $1::text)) IS NOT NULL", schema):
            raise ConfigError(f"schema {schema} has no audit_log: run `citybrain db migrate`")
        async with conn.transaction():
            entry = await append_audit(conn, actor=actor, kind="rules.change", subject=str(target),
                                       details=details, at=now)
            swap_in(target, content)
    finally:
        await conn.close()
    return details | {"audit_seq": entry.seq}


def _cmd_apply(args: argparse.Namespace) -> int:
    url = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise ConfigError("no database for the audit trail: set DATABASE_URL or pass --database-url")
    if not args.actor.strip():
        raise ConfigError("--actor must name who makes the change")
    out = asyncio.run(apply_rules(Path(args.file), Path(args.to), actor=args.actor, reason=args.reason,
                                  database_url=url, schema=args.schema, now=datetime.now(UTC)))
    if out.get("unchanged"):
        print(f"unchanged: {args.to} already holds this content; nothing audited")
        return 0
    changes = ", ".join(f"{k} {', '.join(out[k])}" for k in ("added", "removed", "changed") if out[k]) or "no rule names"
    print(f"applied: {args.to} ({out['kind']}; {changes}); audit entry {out['audit_seq']}")
    return 0


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
    a = s.add_parser("apply", help="validate a new rules/policy/departments file, audit the change, swap it in")
    a.add_argument("file", help="the new file")
    a.add_argument("--to", default=str(DEFAULT_RULES), help="the file the workers read (default: the shipped rules)")
    a.add_argument("--actor", required=True, help="who makes the change (recorded in the audit trail)")
    a.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    a.add_argument("--database-url", help="default: $DATABASE_URL")
    a.add_argument("--schema", default="public", help="database schema (default: public)")
    a.set_defaults(func=_cmd_apply)
