"""The operator dashboard's routes, mounted on the gateway app (``extra_routers``).

Every page is server-rendered HTML (no JavaScript). Reads go through ``DashboardSources``
(injected: the inventory service, tenancy, the fleet figures provider, the replica
directory, a usage reader, a clock), so the router holds no global state.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from scheduler.dashboard import pages
from scheduler.dashboard.auth import COOKIE, COOKIE_PATH, MAX_AGE_S, DashboardAuth, LoginOutcome
from scheduler.dashboard.i18n import Lang, pick_lang, t
from scheduler.dashboard.usage import UsagePoint, UsageReader, bucket_usage, chart_data
from scheduler.observability.fleet import FleetFigures

CHART_BUCKETS = 30
MAX_LOGIN_BODY_BYTES = 4096


@dataclass(frozen=True)
class DashboardSources:
    inventory: Any  # InventoryService: snapshot, site_report, audit
    tenancy: Any  # TenancyService: list_tenants, authenticate_cached
    fleet: Callable[[], FleetFigures]
    directory: Any  # ReplicaDirectory: replicas()
    usage: UsageReader
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


def dashboard_router(
    sources: DashboardSources, admin_token: str, auth: DashboardAuth | None = None
) -> APIRouter:
    """``/dashboard`` pages behind an admin login (cookie = HMAC of the admin token)."""
    auth = auth or DashboardAuth(admin_token, _tenant_key_check(sources.tenancy))
    router = APIRouter(prefix="/dashboard", include_in_schema=False)

    def lang_of(request: Request) -> Lang:
        return pick_lang(request.query_params.get("lang"))

    def guard(request: Request) -> Response | None:
        if auth.valid(request.cookies.get(COOKIE)):
            return None
        suffix = "?lang=zh" if lang_of(request) == "zh" else ""
        return RedirectResponse(f"/dashboard/login{suffix}", status_code=303)

    @router.get("/login")
    def login_form(request: Request) -> HTMLResponse:
        return HTMLResponse(pages.login_page(lang_of(request)))

    @router.post("/login")
    async def login(request: Request) -> Response:
        lang = lang_of(request)
        body = (await request.body())[:MAX_LOGIN_BODY_BYTES].decode("utf-8", "replace")
        token = (parse_qs(body).get("token") or [""])[0]
        outcome = auth.login(token)
        if outcome is not LoginOutcome.OK:
            status = 403 if outcome is LoginOutcome.TENANT_KEY else 401
            return HTMLResponse(pages.login_page(lang, str(outcome)), status_code=status)
        target = "/dashboard" + ("?lang=zh" if lang == "zh" else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            auth.session_cookie(),
            max_age=MAX_AGE_S,
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
        )
        return response

    @router.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/dashboard/login", status_code=303)
        response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
        return response

    def page(name: str, render: Callable[[Request, Lang, str], str]) -> None:
        def handler(request: Request) -> Response:
            denied = guard(request)
            if denied is not None:
                return denied
            lang = lang_of(request)
            window = request.query_params.get("window", "1h")
            window = window if window in pages.WINDOWS else "1h"
            return HTMLResponse(render(request, lang, window))

        router.add_api_route("" if name == "overview" else f"/{name}", handler, methods=["GET"])

    page("overview", lambda r, lang, w: overview(sources, lang, w))
    page("classes", lambda r, lang, w: classes(sources, lang, w))
    page("models", lambda r, lang, w: models(sources, lang))
    page("tenants", lambda r, lang, w: tenants(sources, lang, w))
    page("audit", lambda r, lang, w: audit(sources, lang))
    page("whatif", lambda r, lang, w: whatif(sources, lang, dict(r.query_params)))
    return router


def _tenant_key_check(tenancy: Any) -> Callable[[str], bool]:
    def check(secret: str) -> bool:
        try:
            return tenancy.authenticate_cached(secret) is not None
        except Exception:  # a disabled tenant's key is still a tenant key
            return True

    return check


# ---- pages (read, then render) -----------------------------------------------------------


def _window(sources: DashboardSources, window: str) -> tuple[datetime, datetime, list[UsagePoint]]:
    until = sources.clock()
    since = until - timedelta(seconds=pages.WINDOWS[window])
    return since, until, list(sources.usage(since, until + timedelta(seconds=1)))


def _ready_yuan_per_hour(directory: Any) -> float:
    return float(sum(r.yuan_per_hour for r in directory.replicas() if r.state == "ready"))


def overview(sources: DashboardSources, lang: Lang, window: str) -> str:
    fleet = sources.fleet()
    since, until, points = _window(sources, window)
    full = sum(c.full_yuan_per_hour for c in fleet.classes)
    tokens = sum(p.completion_tokens for p in points)
    window_h = (until - since).total_seconds() / 3600.0
    buckets, width_s = bucket_usage(points, since, until, CHART_BUCKETS)
    data = chart_data(buckets, width_s, full, _ready_yuan_per_hour(sources.directory))
    body = (
        pages.window_picker(lang, "/dashboard", window)
        + pages.kpis(
            [
                (
                    "devices",
                    t(lang, "kpi.devices"),
                    sum(sum(c.states.values()) for c in fleet.classes),
                    0,
                ),
                ("full", t(lang, "kpi.full"), full, 3),
                (
                    "marginal",
                    t(lang, "kpi.marginal"),
                    sum(c.marginal_yuan_per_hour for c in fleet.classes),
                    3,
                ),
                ("watts", t(lang, "kpi.watts"), sum(c.watts for c in fleet.classes), 0),
                ("requests", t(lang, "kpi.requests"), len(points), 0),
                ("tokens", t(lang, "kpi.tokens"), tokens, 0),
                (
                    "tokens-per-yuan",
                    t(lang, "kpi.tokens_per_yuan"),
                    tokens / (full * window_h) if full > 0 else 0.0,
                    0,
                ),
            ]
        )
        + pages.charts(lang, data)
        + pages.state_tables(lang, fleet.classes)
    )
    return pages.layout(lang, "overview", t(lang, "overview.title"), body, window)


def classes(sources: DashboardSources, lang: Lang, window: str) -> str:
    fleet = sources.fleet()
    since, until, points = _window(sources, window)
    tokens: dict[tuple[str, str], int] = defaultdict(int)
    for p in points:
        tokens[(p.device_class, p.site)] += p.completion_tokens
    window_h = (until - since).total_seconds() / 3600.0
    body = (
        pages.window_picker(lang, "/dashboard/classes", window)
        + pages.table(
            "t-classes",
            pages.class_headers(lang),
            pages.class_rows(fleet.classes, tokens, window_h),
        )
        + f"<h2>{t(lang, 'classes.sites')}</h2>"
        + pages.site_report_table(lang, sources.inventory.site_report())
    )
    return pages.layout(lang, "classes", t(lang, "classes.title"), body, window)


def models(sources: DashboardSources, lang: Lang) -> str:
    fleet = sources.fleet()
    plan_rows = [
        [m, c.get("planned", 0), c.get("running", 0)] for m, c in sorted(fleet.replicas.items())
    ]
    endpoints = sorted(sources.directory.replicas(), key=lambda r: r.id)
    body = pages.table(
        "t-replicas",
        [t(lang, "col.model"), t(lang, "col.planned"), t(lang, "col.running")],
        plan_rows,
    ) + (
        f"<h2>{t(lang, 'models.endpoints')}</h2>"
        + pages.table(
            "t-endpoints",
            [
                t(lang, "col.replica"),
                t(lang, "col.model"),
                t(lang, "col.quant"),
                t(lang, "col.class"),
                t(lang, "col.site"),
                t(lang, "col.state"),
                t(lang, "col.yuan_per_hour"),
            ],
            [
                [r.id, r.model, r.quant, r.device_class, r.site, r.state, r.yuan_per_hour]
                for r in endpoints
            ],
        )
    )
    return pages.layout(lang, "models", t(lang, "models.title"), body)


def tenants(sources: DashboardSources, lang: Lang, window: str) -> str:
    _, _, points = _window(sources, window)
    usage: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    for p in points:
        u = usage[p.tenant]
        u[0] += 1
        u[1] += p.prompt_tokens
        u[2] += p.completion_tokens
        u[3] += p.cost_yuan
    rows = []
    for tenant in sources.tenancy.list_tenants():
        u = usage.get(tenant.name, [0, 0, 0, 0.0])
        disabled = t(lang, "col.disabled") if tenant.disabled else ""
        rows.append([tenant.name, int(u[0]), int(u[1]), int(u[2]), float(u[3]), disabled])
    body = pages.window_picker(lang, "/dashboard/tenants", window) + pages.table(
        "t-tenants",
        [
            t(lang, "col.tenant"),
            t(lang, "col.requests"),
            t(lang, "col.prompt_tokens"),
            t(lang, "col.tokens"),
            t(lang, "col.cost"),
            t(lang, "col.disabled"),
        ],
        rows,
    )
    return pages.layout(lang, "tenants", t(lang, "tenants.title"), body, window)


def audit(sources: DashboardSources, lang: Lang) -> str:
    entries = sources.inventory.audit(limit=200)
    rows = [
        [
            e.at.strftime("%Y-%m-%d %H:%M:%S"),
            f"{e.subject_kind} {e.subject}",
            e.action,
            f"{e.from_state or '-'} → {e.to_state or '-'}",
            e.actor,
            e.reason,
        ]
        for e in entries
    ]
    keys = ("time", "subject", "action", "transition", "actor", "reason")
    body = pages.table("t-audit", [t(lang, "col." + k) for k in keys], rows)
    return pages.layout(lang, "audit", t(lang, "audit.title"), body)


def whatif(sources: DashboardSources, lang: Lang, params: dict[str, str]) -> str:
    from scheduler.cli.plan import plan_report, report_json
    from scheduler.cost import CostBasis
    from scheduler.placement import PlacementPolicy

    fleet, demands, model_specs = sources.inventory.snapshot()
    values, errors = _demand_values(demands, params)
    basis = params.get("cost", "marginal")
    basis = basis if basis in ("marginal", "full") else "marginal"
    body = pages.whatif_form(lang, demands, values, basis)
    if params.get("run") and demands and not errors:
        changed = [replace(d, output_tokens_per_s=v) for d, v in zip(demands, values, strict=True)]
        report = plan_report(
            fleet, changed, model_specs, PlacementPolicy(cost_basis=CostBasis(basis))
        )
        body += pages.whatif_result(lang, report_json(report))
    body += "".join(f'<p class="error">{e}</p>' for e in errors)
    return pages.layout(lang, "whatif", t(lang, "whatif.title"), body)


def _demand_values(demands: Sequence[Any], params: dict[str, str]) -> tuple[list[float], list[str]]:
    values, errors = [], []
    for i, d in enumerate(demands):
        raw = params.get(f"d{i}")
        try:
            v = float(raw) if raw not in (None, "") else d.output_tokens_per_s
            if not 0 <= v < 1e9:
                raise ValueError
        except ValueError:
            errors.append(f"{d.model}: not a demand in tokens/s: {raw!r}")
            v = d.output_tokens_per_s
        values.append(v)
    return values, errors
