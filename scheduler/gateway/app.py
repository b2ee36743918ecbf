"""The gateway app factory: everything it needs is passed in (no process-wide state)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry

from scheduler.api.errors import install_error_handlers
from scheduler.errors import ConfigError
from scheduler.gateway.asgi import GatewayApp
from scheduler.gateway.body_limit import BodySizeLimit
from scheduler.gateway.clients import UPSTREAM_CLIENTS
from scheduler.gateway.config import GatewayConfig
from scheduler.gateway.core import Gateway
from scheduler.gateway.peers import GatewayPeers
from scheduler.gateway.replicas import ReplicaDirectory
from scheduler.gateway.routes import health, inference, models, usage
from scheduler.gateway.routes.admin import admin_router
from scheduler.gateway.routing import POLICIES
from scheduler.observability.metrics import create_metrics
from scheduler.settings import Settings
from scheduler.tenancy import TenancyService


def create_app(
    settings: Settings,
    tenancy: TenancyService,
    directory: ReplicaDirectory,
    registry: CollectorRegistry | None = None,
    *,
    admin_token: str,
    extra_routers: Sequence[APIRouter] = (),
    config: GatewayConfig | None = None,
    peers: GatewayPeers | None = None,
) -> FastAPI:
    """Build the OpenAI-compatible gateway.

    settings: data_dir (usage WAL), body limit and upstream timeouts (see GatewayConfig).
    tenancy: tenants, keys and usage storage. directory: the runtime's replicas.
    registry: where metrics are registered and /metrics reads (a fresh one if None).
    peers: the gateways sharing the tenants' limits (None: this one alone).
    admin_token: guards /admin/v1/*. extra_routers: mounted as they are (e.g. inventory admin).
    """
    if not admin_token:
        raise ConfigError("The gateway needs an admin token.", fix="set CUNLIANG_ADMIN_TOKEN.")
    config = config or GatewayConfig.from_settings(settings)
    if config.routing_policy not in POLICIES:
        raise ConfigError(
            f"Unknown routing policy {config.routing_policy!r}.",
            fix=f"use one of {sorted(POLICIES)}.",
        )
    if config.upstream_client not in UPSTREAM_CLIENTS:
        raise ConfigError(
            f"Unknown upstream client {config.upstream_client!r}.",
            fix=f"use one of {sorted(UPSTREAM_CLIENTS)}.",
        )
    registry = registry if registry is not None else CollectorRegistry()
    gateway = Gateway(
        config,
        tenancy,
        directory,
        create_metrics(registry),
        POLICIES[config.routing_policy](),
        registry,
        peers=peers,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.startup()
        try:
            yield
        finally:
            await gateway.shutdown()

    app = GatewayApp(
        title="cunliang gateway",
        version="0.1.0",
        description="OpenAI-compatible inference API over the cunliang fleet.",
        lifespan=lifespan,
    )
    app.gateway = gateway
    app.state.gateway = gateway
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_request_body_bytes)
    for router in (
        models.router,
        inference.router,
        usage.router,
        health.router,
        admin_router(admin_token),
        *extra_routers,
    ):
        app.include_router(router)
    return app
