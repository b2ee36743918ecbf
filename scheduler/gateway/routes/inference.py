"""POST /v1/chat/completions and /v1/completions (streaming or not)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from scheduler.gateway.asgi import serve_inference
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


class _Served(Response):
    """Hands the exchange to the gateway's ASGI handler (it reads the body itself)."""

    def __init__(self, request: Request, path: str) -> None:
        self.gateway = gateway_of(request)
        self.path = path
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_inference(self.gateway, self.path, scope, receive, send)


# GatewayApp serves these POSTs before FastAPI's routing (scheduler/gateway/asgi.py); the
# routes declare the API for OpenAPI and serve the same handler when reached through it


@router.post(
    "/v1/chat/completions",
    openapi_extra=_body_schema(ChatCompletionRequest),
    responses=_ERRORS,
    summary="Create a chat completion (OpenAI-compatible)",
)
async def chat_completions(request: Request) -> Response:
    return _Served(request, "/v1/chat/completions")


@router.post(
    "/v1/completions",
    openapi_extra=_body_schema(CompletionRequest),
    responses=_ERRORS,
    summary="Create a text completion (OpenAI-compatible)",
)
async def completions(request: Request) -> Response:
    return _Served(request, "/v1/completions")
