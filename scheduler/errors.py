"""Every error cunliang raises on purpose, in one hierarchy.

    CunliangError                 base; .fix says how to fix it
    ├── ConfigError               bad settings, unwritable data dir, port in use
    ├── NotFound                  unknown site / node / model / tenant      (HTTP 404)
    ├── Conflict                  duplicate host, illegal state transition  (HTTP 409)
    ├── InvalidInput              values out of range                       (HTTP 400)
    ├── PayloadTooLarge           request body over the limit               (HTTP 413)
    ├── AuthError                 missing or wrong key                      (HTTP 401)
    ├── Forbidden                 key valid but not allowed                 (HTTP 403)
    ├── RateLimited               rate or budget exhausted                  (HTTP 429)
    ├── NoCapacity                no healthy replica / infeasible plan      (HTTP 503)
    │   └── UsageNotStored        usage records not in the database yet     (HTTP 503)
    └── EngineError               an engine failed to start or crashed

The gateway maps these to OpenAI-format JSON in one handler; the CLI prints
``str(error)`` on one line and exits non-zero.
"""

from __future__ import annotations


class CunliangError(Exception):
    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, fix: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.param = param

    def __str__(self) -> str:
        return f"{self.message} To fix: {self.fix}" if self.fix else self.message


class ConfigError(CunliangError):
    status_code = 500
    error_type = "configuration_error"


class NotFound(CunliangError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(CunliangError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class InvalidInput(CunliangError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_value"


class PayloadTooLarge(CunliangError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class AuthError(CunliangError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(CunliangError):
    status_code = 403
    error_type = "permission_error"
    code = "forbidden"


class RateLimited(CunliangError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, fix: str | None = None):
        super().__init__(message, fix=fix)
        self.retry_after_s = retry_after_s


class NoCapacity(CunliangError):
    status_code = 503
    error_type = "server_error"
    code = "no_healthy_replica"

    def __init__(self, message: str, *, retry_after_s: float = 2.0, fix: str | None = None):
        super().__init__(message, fix=fix)
        self.retry_after_s = retry_after_s


class UsageNotStored(NoCapacity):
    """A gateway's usage records are not all in the database (it is down, or the gateway
    is storing what waited out an outage): budgets and usage cannot be read exactly."""

    code = "usage_not_stored"


class EngineError(CunliangError):
    status_code = 502
    error_type = "server_error"
    code = "engine_error"
