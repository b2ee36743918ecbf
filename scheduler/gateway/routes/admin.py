"""Admin API: /admin/v1/tenants..., /admin/v1/keys... (admin bearer token required).

Built per app by ``admin_router(token)`` so the token is injected, not read globally.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from scheduler.api.auth import admin_dependency
from scheduler.gateway.deps import GatewayDep
from scheduler.gateway.routes.usage import usage_out, window
from scheduler.gateway.schemas import (
    KeyCreate,
    KeyCreated,
    KeyOut,
    TenantCreate,
    TenantOut,
    UsageOut,
)
from scheduler.tenancy import ApiKeyInfo, Tenant, TenantLimits


def tenant_out(tenant: Tenant) -> TenantOut:
    return TenantOut(
        id=tenant.id,
        name=tenant.name,
        allowed_models=list(tenant.allowed_models),
        disabled=tenant.disabled,
        created_at=tenant.created_at,
        **asdict(tenant.limits),
    )


def key_out(key: ApiKeyInfo) -> KeyOut:
    return KeyOut(**asdict(key))


def admin_router(admin_token: str) -> APIRouter:
    router = APIRouter(
        prefix="/admin/v1", tags=["admin"], dependencies=[Depends(admin_dependency(admin_token))]
    )

    @router.post("/tenants", response_model=TenantOut, status_code=201)
    async def create_tenant(spec: TenantCreate, gateway: GatewayDep) -> TenantOut:
        limits = TenantLimits(**spec.model_dump(exclude={"name", "allowed_models"}))
        tenant = await asyncio.to_thread(
            gateway.tenancy.create_tenant, spec.name, spec.allowed_models, limits
        )
        return tenant_out(tenant)

    @router.get("/tenants", response_model=list[TenantOut])
    async def list_tenants(gateway: GatewayDep) -> list[TenantOut]:
        return [tenant_out(t) for t in await asyncio.to_thread(gateway.tenancy.list_tenants)]

    @router.get("/tenants/{name}", response_model=TenantOut)
    async def get_tenant(name: str, gateway: GatewayDep) -> TenantOut:
        return tenant_out(await asyncio.to_thread(gateway.tenancy.get_tenant, name))

    @router.post("/tenants/{name}/disable", response_model=TenantOut)
    async def disable_tenant(name: str, gateway: GatewayDep) -> TenantOut:
        return tenant_out(await asyncio.to_thread(gateway.tenancy.set_disabled, name, True))

    @router.post("/tenants/{name}/enable", response_model=TenantOut)
    async def enable_tenant(name: str, gateway: GatewayDep) -> TenantOut:
        return tenant_out(await asyncio.to_thread(gateway.tenancy.set_disabled, name, False))

    @router.get("/tenants/{name}/usage", response_model=UsageOut)
    async def tenant_usage(
        name: str,
        gateway: GatewayDep,
        period: Annotated[Literal["day", "month", "all"], Query()] = "month",
        since: Annotated[datetime | None, Query()] = None,
        until: Annotated[datetime | None, Query()] = None,
    ) -> UsageOut:
        start, end = window(period, since, until, gateway.wall_clock())
        await gateway.store_usage()
        summary = await asyncio.to_thread(gateway.tenancy.usage_summary, name, start, end)
        return usage_out(summary)

    @router.post("/keys", response_model=KeyCreated, status_code=201)
    async def create_key(spec: KeyCreate, gateway: GatewayDep) -> KeyCreated:
        created = await asyncio.to_thread(gateway.tenancy.create_key, spec.tenant, spec.name)
        return KeyCreated(**asdict(created.info), key=created.secret)

    @router.get("/keys", response_model=list[KeyOut])
    async def list_keys(
        gateway: GatewayDep, tenant: Annotated[str | None, Query()] = None
    ) -> list[KeyOut]:
        return [key_out(k) for k in await asyncio.to_thread(gateway.tenancy.list_keys, tenant)]

    @router.post("/keys/{key_id}/revoke", response_model=KeyOut)
    async def revoke_key(key_id: str, gateway: GatewayDep) -> KeyOut:
        return key_out(await asyncio.to_thread(gateway.tenancy.revoke_key, key_id))

    return router
