"""HTML for each dashboard page: pure functions from already-read data to markup.

All text comes from ``i18n``; every value is escaped. Tables carry ids (``#t-...``) and
KPIs ``data-value`` attributes with the raw number, so tests and scrapers read them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import urlencode

from scheduler.dashboard.i18n import Lang, t
from scheduler.dashboard.svg import Series, line_chart
from scheduler.dashboard.usage import ChartData

NAV = ("overview", "classes", "models", "tenants", "audit", "whatif")
PATHS = {
    "overview": "/dashboard",
    "classes": "/dashboard/classes",
    "models": "/dashboard/models",
    "tenants": "/dashboard/tenants",
    "audit": "/dashboard/audit",
    "whatif": "/dashboard/whatif",
}
WINDOWS = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}

CSS = """
body{font-family:"Noto Sans CJK SC","Noto Sans SC","PingFang SC","Microsoft YaHei",
 system-ui,sans-serif;margin:0;color:#111827;background:#f9fafb}
header{background:#111827;color:#fff;padding:10px 20px;display:flex;gap:18px;align-items:center;
 flex-wrap:wrap}
header a{color:#d1d5db;text-decoration:none}header a.active{color:#fff;font-weight:600}
header .app{font-weight:700;margin-right:12px}main{padding:16px 24px}
table{border-collapse:collapse;margin:8px 0 20px;background:#fff}
th,td{border:1px solid #e5e7eb;padding:4px 10px;text-align:left;font-size:14px}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f4f6}
.kpis{display:flex;gap:12px;flex-wrap:wrap}.kpi{background:#fff;border:1px solid #e5e7eb;
 padding:10px 14px;min-width:150px}.kpi .v{font-size:22px;font-weight:600}
.kpi .l{font-size:12px;color:#6b7280}.charts{display:flex;flex-wrap:wrap;gap:12px}
svg.chart{background:#fff;border:1px solid #e5e7eb}svg .title{font-size:13px;font-weight:600}
svg .tick,svg .legend{font-size:11px;fill:#4b5563}svg .axis{stroke:#9ca3af}
svg .empty{font-size:13px;fill:#6b7280}.error{color:#b91c1c}form.inline{display:inline}
"""


def _q(lang: Lang, **extra: str) -> str:
    params = {"lang": lang, **extra} if lang != "en" else dict(extra)
    return "?" + urlencode(params) if params else ""


def num(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def layout(lang: Lang, active: str, title: str, body: str, window: str | None = None) -> str:
    extra = {"window": window} if window else {}
    links = "".join(
        f'<a href="{PATHS[p]}{_q(lang, **extra)}" class="{"active" if p == active else ""}" '
        f'id="nav-{p}">{escape(t(lang, "nav." + p))}</a>'
        for p in NAV
    )
    other: Lang = "en" if lang == "zh" else "zh"
    switch = f'<a href="{PATHS[active]}{_q(other, **extra)}" id="lang-switch">{t(lang, "lang.switch")}</a>'
    logout = (
        f'<form method="post" action="/dashboard/logout" class="inline">'
        f'<button type="submit" id="logout">{escape(t(lang, "nav.logout"))}</button></form>'
    )
    return (
        f'<!doctype html><html lang="{"zh-CN" if lang == "zh" else "en"}"><head>'
        f'<meta charset="utf-8"><title>{escape(title)} · {escape(t(lang, "app"))}</title>'
        f"<style>{CSS}</style></head><body><header>"
        f'<span class="app">{escape(t(lang, "app"))}</span>{links}{switch}{logout}</header>'
        f"<main><h1>{escape(title)}</h1>{body}</main></body></html>"
    )


def table(table_id: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table; numbers (int/float) are right-aligned and formatted, text escaped."""

    def cell(v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return f"<td>{escape(str(v))}</td>"
        text = f"{v:,}" if isinstance(v, int) else num(v)
        return f'<td class="num" data-value="{v}">{text}</td>'

    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def kpis(items: Sequence[tuple[str, str, float, int]]) -> str:
    """(id, label, value, digits) boxes."""
    return (
        '<div class="kpis">'
        + "".join(
            f'<div class="kpi" id="kpi-{i}" data-value="{v}"><div class="v">{num(v, d)}</div>'
            f'<div class="l">{escape(label)}</div></div>'
            for i, label, v, d in items
        )
        + "</div>"
    )


def window_picker(lang: Lang, path: str, current: str) -> str:
    links = " ".join(
        f"<b>{w}</b>" if w == current else f'<a href="{path}{_q(lang, window=w)}">{w}</a>'
        for w in WINDOWS
    )
    return f'<p id="window">{escape(t(lang, "window"))}: {links}</p>'


def charts(lang: Lang, data: ChartData) -> str:
    empty = t(lang, "chart.empty")
    labels = data.labels
    return (
        '<div class="charts">'
        + line_chart(
            t(lang, "chart.throughput"),
            labels,
            [Series(t(lang, "unit.tokens_per_s"), data.throughput_tokens_per_s)],
            empty,
            "chart-throughput",
            t(lang, "chart.time"),
        )
        + line_chart(
            t(lang, "chart.tokens_per_yuan"),
            labels,
            [Series(t(lang, "unit.tokens_per_yuan"), data.tokens_per_yuan)],
            empty,
            "chart-tokens-per-yuan",
            t(lang, "chart.time"),
        )
        + line_chart(
            t(lang, "chart.utilisation"),
            labels,
            [Series(t(lang, "unit.busy_share"), data.utilisation)],
            empty,
            "chart-utilisation",
            t(lang, "chart.time"),
        )
        + "</div>"
    )


def login_page(lang: Lang, message_key: str | None = None) -> str:
    error = (
        f'<p class="error" id="login-error">{escape(t(lang, message_key))}</p>'
        if message_key
        else ""
    )
    return (
        f'<!doctype html><html lang="{"zh-CN" if lang == "zh" else "en"}"><head><meta charset="utf-8">'
        f"<title>{escape(t(lang, 'login.title'))}</title><style>{CSS}</style></head><body>"
        f'<header><span class="app">{escape(t(lang, "app"))}</span></header><main>'
        f"<h1>{escape(t(lang, 'login.title'))}</h1>{error}"
        f'<form method="post" action="/dashboard/login{_q(lang)}" id="login-form">'
        f"<label>{escape(t(lang, 'login.token'))} "
        f'<input type="password" name="token" id="token" autocomplete="off"></label> '
        f'<button type="submit" id="login-submit">{escape(t(lang, "login.submit"))}</button>'
        f"</form></main></body></html>"
    )


def state_tables(lang: Lang, classes: Sequence[Any]) -> str:
    by_state: dict[str, int] = {}
    by_site: dict[str, int] = {}
    by_class: dict[str, int] = {}
    for c in classes:
        n = sum(c.states.values())
        by_site[c.site] = by_site.get(c.site, 0) + n
        by_class[c.device_class] = by_class.get(c.device_class, 0) + n
        for s, k in c.states.items():
            by_state[s] = by_state.get(s, 0) + k
    dev = t(lang, "col.devices")
    return (
        f"<h2>{escape(t(lang, 'table.by_state'))}</h2>"
        + table("t-state", [t(lang, "col.state"), dev], sorted(by_state.items()))
        + f"<h2>{escape(t(lang, 'table.by_site'))}</h2>"
        + table("t-site", [t(lang, "col.site"), dev], sorted(by_site.items()))
        + f"<h2>{escape(t(lang, 'table.by_class'))}</h2>"
        + table("t-class", [t(lang, "col.class"), dev], sorted(by_class.items()))
    )


def class_rows(
    classes: Sequence[Any], tokens_by_class: Mapping[tuple[str, str], int], window_h: float
) -> list[list[Any]]:
    rows = []
    for c in classes:
        tokens = tokens_by_class.get((c.device_class, c.site), 0)
        yuan = c.full_yuan_per_hour * window_h
        rows.append(
            [
                c.device_class,
                c.site,
                sum(c.states.values()),
                ", ".join(f"{k} {v}" for k, v in sorted(c.states.items())),
                c.full_yuan_per_hour,
                c.marginal_yuan_per_hour,
                c.watts,
                c.watts_source,
                tokens,
                tokens / yuan if yuan > 0 else 0.0,
            ]
        )
    return rows


def class_headers(lang: Lang) -> list[str]:
    keys = ("class", "site", "devices", "state", "full", "marginal", "watts", "source", "tokens")
    return [t(lang, "col." + k) for k in keys] + [t(lang, "col.tokens_per_yuan")]


def site_report_table(lang: Lang, rows: Sequence[Any]) -> str:
    return table(
        "t-sites",
        [
            t(lang, "col.site"),
            t(lang, "col.hub"),
            t(lang, "col.devices"),
            t(lang, "col.admitted"),
            t(lang, "col.tokens"),
            t(lang, "col.tokens_per_yuan"),
        ],
        [
            [r.site, r.hub, r.devices, r.admitted_devices, r.output_tokens, r.tokens_per_yuan]
            for r in rows
        ],
    )


def whatif_form(
    lang: Lang, demands: Sequence[Any], values: Sequence[float], cost_basis: str
) -> str:
    if not demands:
        return f'<p id="whatif-empty">{escape(t(lang, "whatif.no_models"))}</p>'
    inputs = "".join(
        f"<tr><td>{escape(d.model)}</td><td>{escape(d.klass)}</td><td>"
        f'<input type="number" min="0" step="any" name="d{i}" id="d{i}" value="{v:g}"></td></tr>'
        for i, (d, v) in enumerate(zip(demands, values, strict=True))
    )
    options = "".join(
        f'<option value="{b}"{" selected" if b == cost_basis else ""}>{b}</option>'
        for b in ("marginal", "full")
    )
    lang_field = f'<input type="hidden" name="lang" value="{lang}">' if lang != "en" else ""
    return (
        f"<p>{escape(t(lang, 'whatif.help'))}</p>"
        f'<form method="get" action="/dashboard/whatif" id="whatif-form">{lang_field}'
        f'<table id="t-demand"><thead><tr><th>{escape(t(lang, "col.model"))}</th><th>{escape(t(lang, "col.klass"))}</th>'
        f"<th>{escape(t(lang, 'col.demand'))}</th></tr></thead><tbody>{inputs}</tbody></table>"
        f'<label>{escape(t(lang, "whatif.cost_basis"))} <select name="cost" id="cost">{options}'
        f'</select></label> <input type="hidden" name="run" value="1">'
        f'<button type="submit" id="whatif-run">{escape(t(lang, "whatif.run"))}</button></form>'
    )


def whatif_result(lang: Lang, report: Mapping[str, Any]) -> str:
    """``report``: ``scheduler.cli.plan.report_json`` output."""
    rows = [[t(lang, "whatif.optimiser"), *_summary_cells(report["plan"])]]
    rows += [[name, *_summary_cells(s)] for name, s in sorted(report["baselines"].items())]
    headers = [
        t(lang, "col.strategy"),
        t(lang, "col.status"),
        t(lang, "col.replicas"),
        t(lang, "col.served"),
        t(lang, "col.yuan_per_hour"),
        t(lang, "col.tokens_per_yuan"),
    ]
    unplaced = report["plan"]["unplaced"]
    missing = (
        "".join(
            f"<li>{escape(u['model'])}: {num(u['missing_output_tokens_per_s'])} tokens/s — "
            f"{escape(u['reason'])}</li>"
            for u in unplaced
        )
        or f"<li>{escape(t(lang, 'none'))}</li>"
    )
    variants = table(
        "t-variants",
        [t(lang, "col.model"), t(lang, "col.quant"), t(lang, "col.class"), t(lang, "col.engine"),
         t(lang, "col.replicas"), t(lang, "col.served"), t(lang, "col.yuan_per_hour")],
        [
            [v["model"], v["quant"], v["device_class"], v["engine"], v["replicas"],
             v["predicted_tokens_per_s"], v["yuan_per_hour"]]
            for v in report["plan"]["variants"]
        ],
    )  # fmt: skip
    return (
        f"<h2>{escape(t(lang, 'whatif.result'))} ({escape(report['cost_basis'])})</h2>"
        + table("t-whatif", headers, rows)
        + variants
        + f"<h2>{escape(t(lang, 'whatif.unplaced'))}</h2><ul id='unplaced'>{missing}</ul>"
    )


def _summary_cells(s: Mapping[str, Any]) -> list[Any]:
    return [
        s["status"],
        int(s["replicas"]),
        float(s["served_tokens_per_s"]),
        float(s["yuan_per_hour"]),
        float(s["tokens_per_yuan"]),
    ]
