"""GET /v1/models: the models the calling tenant may use and that have replicas."""

from __future__ import annotations

from fastapi import APIRouter

from scheduler.errors import ModelNotFound
from scheduler.gateway.deps import GatewayDep, PrincipalDep
from scheduler.gateway.schemas import ModelCard, ModelList

router = APIRouter(tags=["models"])


def _visible(gateway: GatewayDep, principal: PrincipalDep) -> list[str]:
    served = {r.model for r in gateway.directory.replicas() if r.state != "unhealthy"}
    return sorted(m for m in served if principal.tenant.may_use(m))


@router.get("/v1/models", response_model=ModelList)
async def list_models(gateway: GatewayDep, principal: PrincipalDep) -> ModelList:
    return ModelList(data=[ModelCard(id=m) for m in _visible(gateway, principal)])


@router.get("/v1/models/{model:path}", response_model=ModelCard)
async def get_model(model: str, gateway: GatewayDep, principal: PrincipalDep) -> ModelCard:
    if model not in _visible(gateway, principal):
        raise ModelNotFound(f"The model '{model}' does not exist.", param="model")
    return ModelCard(id=model)
