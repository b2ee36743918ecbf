"""POST /v1/chat/completions and /v1/completions (streaming or not)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.routing import request_response

from scheduler.gateway.deps import gateway_of
from scheduler.gateway.schemas import ChatCompletionRequest, CompletionRequest

router = APIRouter(tags=["inference"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text}
    for code, text in (
        (400, "Malformed JSON"),
        (401, "Missing or invalid API key"),
        (403, "Model not allowed for the tenant, or tenant disabled"),
        (404, "Unknown model"),
        (413, "Request body too large"),
        (422, "Invalid request"),
        (429, "Rate limit or budget exhausted (Retry-After)"),
        (503, "No healthy replica (Retry-After)"),
    )
}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace local ``$ref``s by their definitions (the schema is embedded inline, where
    pydantic's ``#/$defs/...`` references would not resolve)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _body_schema(model: type[ChatCompletionRequest | CompletionRequest]) -> dict[str, Any]:
    # the handler reads the raw body (auth first, then parse, then forward the dict as sent),
    # so the schema is declared for OpenAPI here instead of through a body parameter
    schema = model.model_json_schema()
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline(schema, schema.get("$defs", {}))}},
        }
    }


@router.post(
    "/v1/chat/completions",
    openapi_extra=_body_schema(ChatCompletionRequest),
    responses=_ERRORS,
    summary="Create a chat completion (OpenAI-compatible)",
)
async def chat_completions(request: Request) -> Response:
    # no FastAPI dependencies on the hot path: auth and parsing happen inside handle()
    return await gateway_of(request).handle(request, "/v1/chat/completions", ChatCompletionRequest)


@router.post(
    "/v1/completions",
    openapi_extra=_body_schema(CompletionRequest),
    responses=_ERRORS,
    summary="Create a text completion (OpenAI-compatible)",
)
async def completions(request: Request) -> Response:
    return await gateway_of(request).handle(request, "/v1/completions", CompletionRequest)


def lean_dispatch(routes: list[Any]) -> None:
    """Serve the inference routes through Starlette's plain request wrapper.

    The endpoints take only the Request (auth, parsing and validation happen in
    Gateway.handle), so FastAPI's per-request dependency solving and query parsing is pure
    overhead on the hottest path. The APIRoute objects stay, so the OpenAPI schema and the
    routing table are unchanged; only the ASGI callable behind them is swapped.
    """
    hot = {"/v1/chat/completions", "/v1/completions"}
    for route in routes:
        if isinstance(route, APIRoute) and route.path in hot:
            route.app = request_response(route.endpoint)
