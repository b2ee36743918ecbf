"""FastAPI dependencies: the app's Gateway and the calling tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from scheduler.gateway.core import Gateway
from scheduler.tenancy import Principal


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def get_gateway(request: Request) -> Gateway:
    # async: a sync dependency would cost a thread-pool hop per request
    return gateway_of(request)


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def get_principal(
    gateway: GatewayDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return await gateway.authenticate(authorization)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
