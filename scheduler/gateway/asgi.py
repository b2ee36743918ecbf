"""The inference endpoints as plain ASGI: the hot path, in front of FastAPI.

``GatewayApp`` is the FastAPI app of every other route (admin, usage, models, metrics,
dashboard, OpenAPI). A POST to an inference path skips its middleware stack and router
(exception wrappers, exit stacks, route matching, the Request object) and goes straight to
``serve_inference``, which applies what those layers would: the body size limit, and the
same OpenAI-format errors for domain, validation and unexpected errors. The routes declared
in ``routes/inference.py`` serve the same handler, so OpenAPI, other methods (405) and apps
that mount the router behave as before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from scheduler.api.errors import (
    domain_error_response,
    unexpected_error_response,
    validation_error_response,
)
from scheduler.errors import CunliangError, PayloadTooLarge
from scheduler.gateway.core import INFERENCE_PATHS, ClientGone, Gateway

log = logging.getLogger(__name__)


RESUME = "cunliang.resume"  # scope key: the rest of a request Gateway.serve_now took


def authorization_and_length(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, int]:
    """An inference request's Authorization header (the last one) and its Content-Length
    (-1 if none), in one pass over its headers: for this module's task path and for the
    server protocol's fast path alike."""
    authorization: str | None = None
    length = -1
    for name, value in headers:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"content-length" and value.isdigit():
            length = int(value)
    return authorization, length


async def serve_inference(
    gateway: Gateway, path: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer one POST to ``path`` (an INFERENCE_PATHS key), or run the rest of one that
    the fast path (``Gateway.serve_now``) took and handed on (``scope[RESUME]``)."""
    resume = scope.get(RESUME)
    if resume is not None:
        await _respond(resume(), scope, receive, send)
        return
    authorization, length = authorization_and_length(scope["headers"])
    limit = gateway.config.max_request_body_bytes
    response: Response
    if length > limit:  # refused before reading (or authenticating) anything
        response = domain_error_response(
            PayloadTooLarge(f"Request body larger than {limit} bytes.")
        )
        response.headers["connection"] = "close"  # the unread body is abandoned
        await response(scope, receive, send)
        return
    await _respond(gateway.handle(path, authorization, receive), scope, receive, send)


async def _respond(
    serving: Awaitable[Response], scope: Scope, receive: Receive, send: Send
) -> None:
    """Send the response ``serving`` gives, or the OpenAI-format error it raised."""
    response: Response
    try:
        response = await serving
    except CunliangError as exc:
        response = domain_error_response(exc)
    except RequestValidationError as exc:
        response = validation_error_response(exc)
    except ClientGone:
        return
    except Exception:
        log.exception("inference request failed")
        response = unexpected_error_response()
    await response(scope, receive, send)


class GatewayApp(FastAPI):
    """FastAPI with the inference POSTs dispatched before the middleware stack."""

    gateway: Gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in INFERENCE_PATHS
            and not scope.get("root_path")
        ):
            await serve_inference(self.gateway, scope["path"], scope, receive, send)
            return
        await super().__call__(scope, receive, send)
