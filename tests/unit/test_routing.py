from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from citybrain.cli import main
from citybrain.errors import ConfigError
from schemas import Evidence, Location, Severity
from streams.alerting import apply_signal
from streams.detectors.base import Signal
from streams.emergency import ModeInfo
from streams.routing import (
    DEFAULT_RULES,
    RouteQuery,
    RulesHolder,
    department_copy,
    departments_for,
    load_rules,
    parse_rules,
    ticket_copy,
)

T0 = datetime(2025, 7, 20, 14, 0, tzinfo=UTC)
WANGJING = Location(district="朝阳区", street="望京街道", lat=39.996, lon=116.47)
RAIN_DEPTS = {"water", "ema", "district.chaoyang", "street.chaoyang.wangjing"}


def signal(sensor_type: str = "water_level", category: str = "water", severity: Severity = Severity.II,
           kind: str = "open", minutes: float = 0, details: dict | None = None, title: str = "积水") -> Signal:
    ts = T0 + timedelta(minutes=minutes)
    ev = Evidence(detector="level", detector_version="1", statistic="level m", value=1.2, threshold=1.0,
                  window_start=ts, window_end=ts, details=details or {})
    return Signal(kind, f"{sensor_type}-warning", f"wl-{category}-1", category, sensor_type, severity, T0,  # type: ignore[arg-type]
                  ts, WANGJING, title, ev)


def test_rainstorm_water_level_alert_goes_to_water_ema_district_and_street_only() -> None:
    table = load_rules()
    _, alert = apply_signal(None, signal(), table)
    assert set(departments_for(alert)) == RAIN_DEPTS
    assert len(alert.departments) == 4


def test_a_yellow_water_level_goes_to_the_water_authority_only() -> None:
    _, alert = apply_signal(None, signal(severity=Severity.III), load_rules())
    assert alert.departments == ("water",)


def test_emergency_mode_adds_ema_to_traffic_and_is_recorded_in_evidence() -> None:
    table = load_rules()
    sig = signal("traffic_speed", "traffic", Severity.III)
    _, normal = apply_signal(None, sig, table)
    assert normal.departments == ("traffic",)
    assert normal.evidence.details["mode"] == {"mode": "normal", "scope": "city"}
    mode = ModeInfo("emergency", "district:chaoyang", T0.isoformat())
    _, emerg = apply_signal(None, sig, table, mode=mode)
    assert set(emerg.departments) == {"traffic", "ema", "district.chaoyang"}
    assert emerg.evidence.details["mode"] == {"mode": "emergency", "scope": "district:chaoyang",
                                              "since": T0.isoformat()}


def test_hotline_flooding_goes_to_the_street_and_the_owner() -> None:
    table = load_rules()
    q = RouteQuery("flooding", None, Severity.IV, "朝阳区", "望京街道", "hotline")
    assert table.route_query(q) == ("street.chaoyang.wangjing", "water")
    urgent = RouteQuery("flooding", None, Severity.III, "朝阳区", "望京街道", "hotline")
    assert set(table.route_query(urgent)) == {"street.chaoyang.wangjing", "water", "district.chaoyang"}


def test_explain_names_every_rule_and_why() -> None:
    table = load_rules()
    traces = table.explain(RouteQuery("water", "water_level", Severity.II, "朝阳区", "望京街道"))
    matched = {t.rule: t.added for t in traces if t.matched}
    assert matched == {"water-to-water-authority": ("water",),
                       "serious-water-to-emergency": ("ema", "district.chaoyang", "street.chaoyang.wangjing")}
    air = next(t for t in traces if t.rule == "air-quality-to-environment")
    assert not air.matched and "category water" in air.reason and air.line > 1


def test_departments_come_from_the_geography() -> None:
    reg = load_rules().registry
    assert reg.street_dept("海淀区", "中关村街道") == "street.haidian.zhongguancun"
    assert reg.parent("street.haidian.zhongguancun") == "district.haidian"
    assert reg.parent("district.haidian") == "ops"
    assert reg.parent("ops") is None
    assert len([d for d in reg.departments.values() if d.level == "district"]) == 16


@pytest.mark.parametrize(
    ("text", "line", "msg"),
    [
        ("version: 1\nrules:\n  - name: r1\n    match: {category: water}\n    departments: [nobody]\n", 5,
         "unknown department"),
        ("version: 1\nrules:\n  - name: r1\n    match:\n      min_severity: orange\n    departments: [water]\n", 5,
         "min_severity"),
        ("version: 1\nrules:\n  - name: r1\n    match: {colour: red}\n    departments: [water]\n", 4,
         "unknown key 'colour'"),
        ("version: 1\nrules:\n  - name: r1\n    departments: [water]\n  - name: r1\n    departments: [ema]\n", 5,
         "duplicate rule name"),
        ("version: 1\nrules:\n  - name: r1\n    departments: [water]\n    departments: [ema]\n", 5, "duplicate key"),
        ("version: 1\nrules:\n  - name: r1\n    match: {category: water\n", 5, "YAML syntax"),
        ("version: 1\nrules:\n  - name: r1\n    match: {districts: [火星区]}\n    departments: [water]\n", 4,
         "unknown district"),
        ("version: 1\nrules:\n  - name: r1\n    match: {category: water}\n", 3, "routes nowhere"),
    ],
)
def test_rules_errors_name_the_line(text: str, line: int, msg: str) -> None:
    with pytest.raises(ConfigError, match=rf"^bad\.yaml:{line}: .*{msg}"):
        parse_rules(text, "bad.yaml")


def test_holder_keeps_old_rules_when_the_new_file_is_invalid(tmp_path: Path) -> None:
    f = tmp_path / "routing.yaml"
    f.write_text(DEFAULT_RULES.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "departments.yaml").write_text(
        (DEFAULT_RULES.parent / "departments.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    holder = RulesHolder(f)
    old = holder.table
    f.write_text("version: 1\nrules:\n  - name: broken\n    match: {min_severity: purple}\n    departments: [water]\n",
                 encoding="utf-8")
    assert holder.reload() is False
    assert holder.table is old
    assert holder.last_error is not None and ":4:" in holder.last_error and "min_severity" in holder.last_error
    f.write_text("version: 1\nrules:\n  - name: all-water\n    match: {category: water}\n    departments: [water]\n",
                 encoding="utf-8")
    assert holder.reload() is True
    assert holder.last_error is None and [r.name for r in holder.table.rules] == ["all-water"]
    assert holder.table.route("water", "water_level", Severity.I, "朝阳区", "望京街道") == ("water",)


def test_rules_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(DEFAULT_RULES)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: r1\n    match: {sensor_type: water_level}\n    departments: [x]\n")
    assert main(["rules", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}:5:" in err and "unknown department" in err


def test_rules_explain_cli_from_an_alert_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, alert = apply_signal(None, signal(), load_rules())
    f = tmp_path / "alert.json"
    f.write_bytes(alert.to_json())
    assert main(["rules", "explain", "--alert", str(f)]) == 0
    out = capsys.readouterr().out
    assert "+ serious-water-to-emergency" in out
    assert "departments: water, ema, district.chaoyang, street.chaoyang.wangjing" in out


def test_department_copy_masks_citizen_data() -> None:
    table = load_rules()
    details = {"caller_refs": ["h1", "h2"], "phone": "13812345678", "description": "call me at 13812345678",
               "count": 7}
    _, alert = apply_signal(None, signal("noise", "noise", Severity.III, details=details, title="噪声 13812345678"),
                            table)
    street = department_copy(alert, "street.chaoyang.wangjing", table.registry)  # pseudonymous
    uma = department_copy(alert, "uma", table.registry)  # none
    for copy_ in (street, uma):
        body = copy_.to_json().decode()
        assert "13812345678" not in body and "phone" not in copy_.evidence.details
        assert copy_.evidence.details["count"] == 7
    assert street.evidence.details["caller_refs"] == ["h1", "h2"]
    assert "caller_refs" not in uma.evidence.details
    with pytest.raises(ValueError, match="not routed"):
        department_copy(alert, "eeb", table.registry)


def test_ticket_copy_drops_the_caller_for_departments_without_pii_rights() -> None:
    from schemas import HotlineEvent

    table = load_rules()
    ev = HotlineEvent(event_id="h-1", ticket_id="t-1", kind="created", category="flooding", ts=T0, location=WANGJING,
                      description="积水很深, 电话 13900001111", caller_ref="abc")
    water = ticket_copy(ev, "water", table.registry)
    street = ticket_copy(ev, "street.chaoyang.wangjing", table.registry)
    assert water.caller_ref is None and street.caller_ref == "abc"
    assert "13900001111" not in water.description and "1111" in water.description
