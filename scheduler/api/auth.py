"""Admin authentication: one bearer token, compared in constant time.

Tenant API keys start with ``TENANT_KEY_PREFIX``; presenting one to an admin endpoint is a
403 (valid credential, wrong realm), anything else wrong is a 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Header

from scheduler.errors import AuthError, Forbidden

TENANT_KEY_PREFIX = "sk-cl-"
ADMIN_TOKEN_PREFIX = "adm-cl-"


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check_admin_token(presented: str | None, expected: str) -> None:
    """Raise AuthError/Forbidden unless ``presented`` is the admin token."""
    if presented is None:
        raise AuthError("Missing admin token.", fix="send 'Authorization: Bearer <admin token>'.")
    if hmac.compare_digest(presented.encode(), expected.encode()):
        return
    if presented.startswith(TENANT_KEY_PREFIX):
        raise Forbidden("Tenant API keys cannot call admin endpoints.")
    raise AuthError("Invalid admin token.")


def admin_dependency(expected_token: str) -> Callable[[str | None], None]:
    """A FastAPI dependency enforcing the admin token: ``Depends(admin_dependency(tok))``."""

    def require_admin(authorization: Annotated[str | None, Header()] = None) -> None:
        check_admin_token(bearer_token(authorization), expected_token)

    return require_admin
