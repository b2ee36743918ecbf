"""One place that maps errors to OpenAI-format JSON.

Every HTTP error cunliang returns, on the tenant API and the admin API alike, is
``{"error": {"message", "type", "param", "code"}}`` with the right status, and
``Retry-After`` on 429/503.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from scheduler.errors import CunliangError, NoCapacity, RateLimited

_STATUS_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "bad_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", "invalid_value"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"),
}


def error_body(
    message: str, *, type_: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    type_: str | None = None,
    code: str | None = None,
    param: str | None = None,
    retry_after_s: float | None = None,
) -> JSONResponse:
    default_type, default_code = _STATUS_TYPES.get(status, ("server_error", "internal_error"))
    headers = {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return JSONResponse(
        error_body(message, type_=type_ or default_type, code=code or default_code, param=param),
        status_code=status,
        headers=headers,
    )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    where = f" at '{param}'" if param else ""
    return f"Invalid request{where}: {first.get('msg', 'invalid value')}.", param


def domain_error_response(exc: CunliangError) -> JSONResponse:
    retry = exc.retry_after_s if isinstance(exc, RateLimited | NoCapacity) else None
    return error_response(
        exc.status_code,
        str(exc),
        type_=exc.error_type,
        code=exc.code,
        param=exc.param,
        retry_after_s=retry,
    )


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    message, param = _validation_message(exc)
    # malformed JSON is a 400; well-formed JSON with wrong types/fields is a 422
    status = 400 if any(e.get("type") == "json_invalid" for e in exc.errors()) else 422
    return error_response(status, message, param=param)


def unexpected_error_response() -> JSONResponse:
    # a bug: answer in OpenAI format instead of a bare text 500 (the traceback is logged)
    return error_response(500, "Internal server error.", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on an app (gateway and admin API share them)."""

    @app.exception_handler(CunliangError)
    async def _domain(_: Request, exc: CunliangError) -> JSONResponse:
        return domain_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return unexpected_error_response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        return error_response(exc.status_code, message)
