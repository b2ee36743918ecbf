"""Dashboard login: the admin token in, an HMAC of it out as an HttpOnly cookie.

The cookie never holds the token: it holds HMAC-SHA256(key, token) with a key drawn per
process (restarting the gateway logs everyone out). Tenant API keys are refused with
their own message, so a tenant learns why, not just "wrong".
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from enum import StrEnum

from scheduler.api.auth import TENANT_KEY_PREFIX

COOKIE = "cl_dashboard"
COOKIE_PATH = "/dashboard"
MAX_AGE_S = 12 * 3600


class LoginOutcome(StrEnum):
    OK = "ok"
    EMPTY = "login.empty"
    TENANT_KEY = "login.tenant"
    WRONG = "login.bad"


class DashboardAuth:
    """``is_tenant_key(secret)``: whether a presented secret is a live tenant key."""

    def __init__(
        self,
        admin_token: str,
        is_tenant_key: Callable[[str], bool] = lambda _: False,
        key: bytes | None = None,
    ) -> None:
        if not admin_token:
            raise ValueError("the dashboard needs an admin token")
        self._key = key or secrets.token_bytes(32)
        self._expected = self.cookie_value(admin_token)
        self._is_tenant_key = is_tenant_key

    def cookie_value(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()

    def login(self, presented: str) -> LoginOutcome:
        presented = presented.strip()
        if not presented:
            return LoginOutcome.EMPTY
        if hmac.compare_digest(self.cookie_value(presented), self._expected):
            return LoginOutcome.OK
        if presented.startswith(TENANT_KEY_PREFIX) or self._is_tenant_key(presented):
            return LoginOutcome.TENANT_KEY
        return LoginOutcome.WRONG

    def session_cookie(self) -> str:
        """The value to set after a successful login (an HMAC, never the token)."""
        return self._expected

    def valid(self, cookie: str | None) -> bool:
        return cookie is not None and hmac.compare_digest(cookie, self._expected)
