"""Admin REST API of the inventory, under ``/admin/v1``; every route needs the admin token.

Mount with ``app.include_router(inventory_router(service, admin_token))`` on an app that
called ``scheduler.api.errors.install_error_handlers`` (errors become JSON with a status).
Handlers are plain ``def``: the service does blocking database I/O, so FastAPI runs them
in its thread pool.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, status

from scheduler.api.auth import admin_dependency
from scheduler.domain import DeviceKind, LifecycleState
from scheduler.inventory.schemas import (
    AssessmentOut,
    AuditOut,
    DemandIn,
    DemandOut,
    DeviceOut,
    FromUsageIn,
    HealthIn,
    JoinIn,
    ModelIn,
    ModelOut,
    NodeDetail,
    NodeIn,
    NodeOut,
    PolicyIn,
    ProfileIn,
    ProfileResult,
    SiteActionIn,
    SiteIn,
    SiteOut,
    SiteReportRow,
    TransitionIn,
    TransitionOut,
)
from scheduler.inventory.service import InventoryService

ADMIN_ACTOR = "admin-api"

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong admin token"},
    403: {"description": "a tenant key was presented"},
}


def inventory_router(service: InventoryService, admin_token: str) -> APIRouter:
    """All inventory, lifecycle, model and demand routes, guarded by the admin token."""
    router = APIRouter(
        prefix="/admin/v1",
        tags=["inventory"],
        dependencies=[Depends(admin_dependency(admin_token))],
        responses=_ERRORS,
    )
    _site_routes(router, service)
    _node_routes(router, service)
    _model_routes(router, service)
    return router


def _site_routes(router: APIRouter, service: InventoryService) -> None:
    @router.post("/sites", response_model=SiteOut, status_code=status.HTTP_201_CREATED)
    def add_site(body: SiteIn) -> SiteOut:
        """Register a site (tariff yuan/kWh, PUE >= 1, optional time-of-use bands)."""
        return service.add_site(body, ADMIN_ACTOR)

    @router.get("/sites", response_model=list[SiteOut])
    def list_sites() -> list[SiteOut]:
        return service.list_sites()

    @router.get("/sites/report", response_model=list[SiteReportRow])
    def site_report(
        window_hours: Annotated[float | None, Query(gt=0)] = None,
    ) -> list[SiteReportRow]:
        """Sites ranked by tokens/yuan, tokens/joule, PUE and utilisation over a window."""
        return service.site_report(window_hours)

    @router.post("/sites/{name}/lifecycle", response_model=TransitionOut)
    def site_action(name: str, body: SiteActionIn) -> TransitionOut:
        """Put a whole site on probation, drain it, or retire it."""
        return service.site_action(
            name, body.action, ADMIN_ACTOR, body.reason, replicas_moved=body.replicas_moved
        )

    @router.get("/devices", response_model=list[DeviceOut])
    def list_devices(
        site: str | None = None,
        state: LifecycleState | None = None,
        model: str | None = None,
        kind: DeviceKind | None = None,
        host: str | None = None,
        limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    ) -> list[DeviceOut]:
        return service.list_devices(
            site=site,
            state=state.value if state else None,
            model=model,
            kind=kind.value if kind else None,
            host=host,
            limit=limit,
        )

    @router.get("/audit", response_model=list[AuditOut])
    def audit(
        subject_kind: str | None = None,
        subject: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> list[AuditOut]:
        """The append-only audit log, newest first."""
        return service.audit(subject_kind, subject, limit)

    @router.get("/policy", response_model=PolicyIn)
    def policy() -> PolicyIn:
        """The admission and assessment thresholds in force."""
        return PolicyIn.of(service.policy)

    @router.post("/assessments", response_model=AssessmentOut)
    def assess(window_hours: Annotated[float | None, Query(gt=0)] = None) -> AssessmentOut:
        """Run one assessment pass now (normally periodic)."""
        return service.assess(ADMIN_ACTOR, window_hours)


def _node_routes(router: APIRouter, service: InventoryService) -> None:
    @router.post("/nodes", response_model=NodeOut, status_code=status.HTTP_201_CREATED)
    def register_node(body: NodeIn) -> NodeOut:
        """Register a node with its devices (state ``registered``)."""
        return service.register_node(body, ADMIN_ACTOR)

    @router.get("/nodes", response_model=list[NodeOut])
    def list_nodes(site: str | None = None, state: LifecycleState | None = None) -> list[NodeOut]:
        return service.list_nodes(site, state.value if state else None)

    @router.get("/nodes/{host}", response_model=NodeDetail)
    def show_node(host: str) -> NodeDetail:
        """A node, its devices, its newest profile and its audit history."""
        return service.get_node(host)

    @router.post(
        "/nodes/{host}/profiles", response_model=ProfileResult, status_code=status.HTTP_201_CREATED
    )
    def post_profile(host: str, body: ProfileIn) -> ProfileResult:
        """Store a profile (from ``cunliang agent --post``) and run the admission policy."""
        return service.add_profile(host, body, f"agent:{host}")

    @router.put("/nodes/{host}/ray", response_model=NodeOut)
    def join(host: str, body: JoinIn) -> NodeOut:
        """Record the node's Ray node id when it joins the cluster (null when it leaves)."""
        return service.set_ray_node(host, body.ray_node_id, f"runtime:{host}")

    @router.post("/nodes/{host}/health", response_model=NodeOut)
    def post_health(host: str, body: HealthIn) -> NodeOut:
        """Report a health check; repeated failures quarantine the node."""
        return service.record_health(host, body, f"health:{host}")

    @router.post("/nodes/{host}/drain", response_model=TransitionOut)
    def drain(host: str, body: Annotated[TransitionIn | None, Body()] = None) -> TransitionOut:
        """Stop new replicas on the node; running ones are moved by the runtime."""
        return service.drain_node(host, ADMIN_ACTOR, (body or TransitionIn()).reason)

    @router.post("/nodes/{host}/retire", response_model=TransitionOut)
    def retire(host: str, body: Annotated[TransitionIn | None, Body()] = None) -> TransitionOut:
        """Retire a drained node; 409 while replicas may still run on it."""
        body = body or TransitionIn()
        return service.retire_node(
            host, ADMIN_ACTOR, body.reason, replicas_moved=body.replicas_moved
        )

    @router.post("/nodes/{host}/readmit", response_model=TransitionOut)
    def readmit(host: str, body: Annotated[TransitionIn | None, Body()] = None) -> TransitionOut:
        """Back to probation (admitted again once a recent profile meets policy)."""
        return service.readmit_node(host, ADMIN_ACTOR, (body or TransitionIn()).reason)


def _model_routes(router: APIRouter, service: InventoryService) -> None:
    @router.post("/models", response_model=ModelOut, status_code=status.HTTP_201_CREATED)
    def add_model(body: ModelIn) -> ModelOut:
        return service.add_model(body, ADMIN_ACTOR)

    @router.get("/models", response_model=list[ModelOut])
    def list_models() -> list[ModelOut]:
        return service.list_models()

    @router.put("/models/{name}/demand", response_model=DemandOut)
    def set_demand(name: str, body: DemandIn) -> DemandOut:
        """Set (replace) a model's demand for one class of traffic."""
        return service.set_demand(name, body, ADMIN_ACTOR)

    @router.post("/models/{name}/demand/from-usage", response_model=DemandOut)
    def demand_from_usage(name: str, body: FromUsageIn) -> DemandOut:
        """Set demand from measured output tokens over a window, plus headroom."""
        return service.demand_from_usage(name, body, ADMIN_ACTOR)
