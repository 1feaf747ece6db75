"""Daily, weekly and monthly reports (日通报 · 周汇总 · 月分析): counts by
category, area and department, the trend against the previous period, the 三率
per department, and the top recurring problems as 每月一题 candidates. As
JSON, and as a printable HTML page (no scripts, no external resources)."""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from opscenter import queries as q

PERIODS = ("daily", "weekly", "monthly")
TITLES = {"daily": ("日通报", "Daily bulletin"), "weekly": ("周汇总", "Weekly summary"),
          "monthly": ("月分析", "Monthly analysis")}


def period_range(period: str, day: date, tz: ZoneInfo) -> tuple[datetime, datetime, datetime]:
    """(previous start, start, end) in local time for the period containing `day`."""
    if period == "daily":
        start = day
        end = day + timedelta(days=1)
        prev = day - timedelta(days=1)
    elif period == "weekly":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
        prev = start - timedelta(days=7)
    elif period == "monthly":
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
        prev = (start - timedelta(days=1)).replace(day=1)
    else:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}")

    def at(d: date) -> datetime:
        return datetime.combine(d, time(0), tzinfo=tz)

    return at(prev), at(start), at(end)


def _trend(cur: int, prev: int) -> dict[str, Any]:
    return {"current": cur, "previous": prev, "change": cur - prev,
            "change_pct": round((cur - prev) / prev * 100, 1) if prev else None}


async def _counts(conn: q.Conn, since: datetime, until: datetime, visible_to: str | None) -> dict[str, Any]:
    vis_a = " AND departments @> ARRAY[$3]::text[]" if visible_to else ""
    args: list[Any] = [since, until] + ([visible_to] if visible_to else [])
    by: dict[str, Any] = {}
    for name, expr in (("category", "category"), ("district", "district"), ("severity", "severity"),
                       ("rule", "rule")):
        rows = await conn.fetch(f"SELECT {expr} AS k, count(*) AS n FROM alerts WHERE first_seen >= $1 "
                                f"AND first_seen < $2{vis_a} GROUP BY 1 ORDER BY 2 DESC, 1", *args)
        by[name] = {r["k"]: r["n"] for r in rows}
    rows = await conn.fetch("SELECT d AS k, count(*) AS n FROM alerts, unnest(departments) AS d WHERE first_seen >= $1 "
                            f"AND first_seen < $2{vis_a} GROUP BY 1 ORDER BY 2 DESC, 1", *args)
    by["department"] = {r["k"]: r["n"] for r in rows}
    tickets: dict[str, Any] = {}
    sql, w = q._ticket_sql(q.TicketFilter(visible_to=visible_to))
    a, b = w.arg(since), w.arg(until)
    base = f"FROM ({sql}) x WHERE created_at >= {a} AND created_at < {b}"
    for name, expr in (("category", "category"), ("district", "district"),
                       ("department", "coalesce(department, 'unassigned')")):
        rows = await conn.fetch(f"SELECT {expr} AS k, count(*) AS n {base} GROUP BY 1 ORDER BY 2 DESC, 1", *w.args)
        tickets[name] = {r["k"]: r["n"] for r in rows}
    return {"alerts": {"total": sum(by["severity"].values()), "by": by},
            "tickets": {"total": sum(tickets["category"].values()), "by": tickets}}


async def _recurring(conn: q.Conn, since: datetime, until: datetime, prev: datetime,
                     visible_to: str | None, top: int = 10) -> list[dict[str, Any]]:
    """Same kind of problem in the same place, most often: tickets by
    (category, district, street) and alerts by (category, district, street)."""
    sql, w = q._ticket_sql(q.TicketFilter(visible_to=visible_to))
    a, b, p = w.arg(since), w.arg(until), w.arg(prev)
    rows = await conn.fetch(
        f"SELECT 'tickets' AS source, category, district, coalesce(street, '') AS street, "
        f"count(*) FILTER (WHERE created_at >= {a}) AS n, count(*) FILTER (WHERE created_at < {a}) AS prev_n "
        f"FROM ({sql}) x WHERE created_at >= {p} AND created_at < {b} GROUP BY 2, 3, 4", *w.args)
    vis = " AND departments @> ARRAY[$4]::text[]" if visible_to else ""
    args: list[Any] = [since, until, prev] + ([visible_to] if visible_to else [])
    rows2 = await conn.fetch(
        "SELECT 'alerts' AS source, category, district, coalesce(street, '') AS street, "
        "count(*) FILTER (WHERE first_seen >= $1) AS n, count(*) FILTER (WHERE first_seen < $1) AS prev_n "
        f"FROM alerts WHERE first_seen >= $3 AND first_seen < $2{vis} GROUP BY 2, 3, 4", *args)
    items = [dict(r) for r in list(rows) + list(rows2) if r["n"] > 1]
    items.sort(key=lambda r: (-r["n"], -r["prev_n"], r["source"], r["category"], r["district"], r["street"]))
    for r in items:
        r["recurring"] = r["prev_n"] > 0
    return items[:top]


async def build_report(conn: q.Conn, period: str, day: date, tz: ZoneInfo, sla: q.SlaPolicy,
                       visible_to: str | None = None,
                       district_name: Callable[[str], str | None] = lambda c: c) -> dict[str, Any]:
    prev, start, end = period_range(period, day, tz)
    cur = await _counts(conn, start, end, visible_to)
    old = await _counts(conn, prev, start, visible_to)
    trend: dict[str, Any] = {
        "alerts": _trend(cur["alerts"]["total"], old["alerts"]["total"]),
        "tickets": _trend(cur["tickets"]["total"], old["tickets"]["total"]),
        "alerts_by_category": {k: _trend(cur["alerts"]["by"]["category"].get(k, 0),
                                         old["alerts"]["by"]["category"].get(k, 0))
                               for k in sorted(set(cur["alerts"]["by"]["category"]) | set(old["alerts"]["by"]["category"]))},
        "tickets_by_category": {k: _trend(cur["tickets"]["by"]["category"].get(k, 0),
                                          old["tickets"]["by"]["category"].get(k, 0))
                                for k in sorted(set(cur["tickets"]["by"]["category"]) | set(old["tickets"]["by"]["category"]))},
    }
    return {
        "period": period, "title": TITLES[period][0], "title_en": TITLES[period][1],
        "timezone": str(tz), "start": start, "end": end, "previous_start": prev,
        "alerts": cur["alerts"], "tickets": cur["tickets"], "trend": trend,
        "three_rates": {"by_department": await q.three_rates(conn, start, end, "department", visible_to, tz=tz),
                        "by_district": await q.three_rates(conn, start, end, "district", visible_to, tz=tz,
                                                           district_name=district_name)},
        "alert_handling": await q.alert_rates(conn, start, end, "department", sla, visible_to),
        "recurring": await _recurring(conn, start, end, prev, visible_to),
    }


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.1f}%"


def _table(head: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body or '<tr><td colspan=9>—</td></tr>'}</tbody></table>"


def render_html(r: dict[str, Any]) -> str:
    def counts(title: str, d: dict[str, int]) -> str:
        return f"<h3>{html.escape(title)}</h3>" + _table(["", "数量 count"], [[k, v] for k, v in d.items()])

    def trend_rows(d: dict[str, Any]) -> list[list[Any]]:
        return [[k, t["current"], t["previous"], f"{t['change']:+d}",
                 "—" if t["change_pct"] is None else f"{t['change_pct']:+.1f}%"] for k, t in d.items()]

    t = r["trend"]
    parts = [
        "<!doctype html><html lang=zh><head><meta charset=utf-8>",
        f"<title>{html.escape(r['title'])} {r['start']:%Y-%m-%d}</title>",
        "<style>body{font-family:sans-serif;margin:2em;color:#111}h1{margin-bottom:0}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em;min-width:40%}"
        "th,td{border:1px solid #999;padding:3px 8px;text-align:left}th{background:#eee}"
        ".sub{color:#555}section{break-inside:avoid}@media print{body{margin:0}a{display:none}}</style>"
        "</head><body>",
        f"<h1>{html.escape(r['title'])} · {html.escape(r['title_en'])}</h1>",
        f"<p class=sub>{r['start']:%Y-%m-%d %H:%M} — {r['end']:%Y-%m-%d %H:%M} ({html.escape(r['timezone'])}); "
        f"上一周期 previous period from {r['previous_start']:%Y-%m-%d}</p>",
        "<section><h2>总体 Overview</h2>",
        _table(["", "本期 current", "上期 previous", "变化 change", "%"],
               trend_rows({"告警 alerts": t["alerts"], "工单 tickets": t["tickets"]})),
        "</section><section><h2>三率 Response · resolution · satisfaction (12345)</h2>",
        _table(["部门 department", "工单 tickets", "响应率 response", "解决率 resolution", "满意率 satisfaction"],
               [[x["department"], x["tickets"], _pct(x["response_rate"]), _pct(x["resolution_rate"]),
                 _pct(x["satisfaction_rate"])] for x in r["three_rates"]["by_department"]]),
        _table(["区 district", "工单 tickets", "响应率 response", "解决率 resolution", "满意率 satisfaction"],
               [[x["district"], x["tickets"], _pct(x["response_rate"]), _pct(x["resolution_rate"]),
                 _pct(x["satisfaction_rate"])] for x in r["three_rates"]["by_district"]]),
        "</section><section><h2>告警处置 Alert handling</h2>",
        _table(["部门 department", "告警 alerts", "签收率 ack rate", "办结率 resolved", "超时 SLA breaches"],
               [[x["department"], x["alerts"], _pct(x["ack_rate"]), _pct(x["resolution_rate"]), x["ack_breached"]]
                for x in r["alert_handling"]]),
        "</section><section><h2>趋势 Trend by category</h2>",
        "<h3>告警 Alerts</h3>", _table(["类别 category", "本期", "上期", "变化", "%"], trend_rows(t["alerts_by_category"])),
        "<h3>工单 Tickets</h3>", _table(["类别 category", "本期", "上期", "变化", "%"], trend_rows(t["tickets_by_category"])),
        "</section><section><h2>分布 Counts</h2>",
        counts("告警·区 Alerts by district", r["alerts"]["by"]["district"]),
        counts("告警·部门 Alerts by department", r["alerts"]["by"]["department"]),
        counts("工单·区 Tickets by district", r["tickets"]["by"]["district"]),
        counts("工单·部门 Tickets by department", r["tickets"]["by"]["department"]),
        "</section><section><h2>每月一题 候选 · Recurring problems (candidates)</h2>",
        _table(["来源 source", "类别 category", "区 district", "街道 street", "本期 current", "上期 previous",
                "反复 recurring"],
               [[x["source"], x["category"], x["district"], x["street"], x["n"], x["prev_n"],
                 "是 yes" if x["recurring"] else "否 no"] for x in r["recurring"]]),
        "</section></body></html>",
    ]
    return "".join(parts)
