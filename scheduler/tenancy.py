"""Tenancy service: tenants, API keys, usage records.

Keys are ``sk-cl-`` + 32 random bytes (url-safe base64). Only ``sha256(key)`` and a short
visible prefix are stored: 256 bits of entropy make a slow password hash pointless, and the
lookup by hash is followed by a constant-time compare. ``authenticate`` caches results for
``auth_cache_ttl_s``; revoking a key or disabling a tenant through this service clears the
cache at once (another process sharing the database sees it within the TTL).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from scheduler.api.auth import TENANT_KEY_PREFIX
from scheduler.errors import AuthError, Conflict, Forbidden, InvalidInput, NotFound
from scheduler.store import tenancy as store

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

ALL_MODELS = "*"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_KEY_ENTROPY_BYTES = 32
_VISIBLE_PREFIX_CHARS = len(TENANT_KEY_PREFIX) + 4


@dataclass(frozen=True)
class TenantLimits:
    """None = unlimited."""

    requests_per_s: float | None = None
    max_concurrent: int | None = None
    tokens_per_min: int | None = None
    daily_token_budget: int | None = None
    monthly_token_budget: int | None = None
    daily_yuan_budget: float | None = None
    monthly_yuan_budget: float | None = None


@dataclass(frozen=True)
class Tenant:
    id: int
    name: str
    allowed_models: tuple[str, ...]  # ("*",) = every model
    limits: TenantLimits
    disabled: bool
    created_at: datetime

    def may_use(self, model: str) -> bool:
        return ALL_MODELS in self.allowed_models or model in self.allowed_models


@dataclass(frozen=True)
class ApiKeyInfo:
    id: str
    tenant: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class CreatedKey:
    info: ApiKeyInfo
    secret: str  # shown once; only its sha256 is stored


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of the tenant API."""

    tenant: Tenant
    key_id: str


@dataclass  # not frozen: a frozen dataclass's __init__ costs 4x (2 us per request)
class UsageRecord:
    """One request as metered by the gateway (one row per request id); treat as read-only."""

    request_id: str
    tenant_id: int
    key_id: str | None
    model: str
    status: int
    created_at: datetime
    quant: str = ""
    replica_id: str = ""
    device_class: str = ""
    site: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    cost_yuan: float = 0.0
    stream: bool = False


@dataclass(frozen=True)
class ModelUsage:
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_yuan: float


@dataclass(frozen=True)
class UsageSummary:
    tenant: str
    since: datetime
    until: datetime | None
    by_model: tuple[ModelUsage, ...] = field(default_factory=tuple)

    @property
    def total_tokens(self) -> int:
        return sum(m.prompt_tokens + m.completion_tokens for m in self.by_model)

    @property
    def cost_yuan(self) -> float:
        return sum(m.cost_yuan for m in self.by_model)


_SHA256 = hashlib.sha256()  # copied per key: cheaper than looking the digest up each time


def hash_key(secret: str) -> str:
    digest = _SHA256.copy()
    digest.update(secret.encode())
    return digest.hexdigest()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _tenant(row: store.TenantRow) -> Tenant:
    return Tenant(
        id=row.id,
        name=row.name,
        allowed_models=tuple(row.allowed_models or ()),
        limits=TenantLimits(
            requests_per_s=row.requests_per_s,
            max_concurrent=row.max_concurrent,
            tokens_per_min=row.tokens_per_min,
            daily_token_budget=row.daily_token_budget,
            monthly_token_budget=row.monthly_token_budget,
            daily_yuan_budget=row.daily_yuan_budget,
            monthly_yuan_budget=row.monthly_yuan_budget,
        ),
        disabled=row.disabled,
        created_at=_aware(row.created_at),
    )


def _key(row: store.ApiKeyRow, tenant: str) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id,
        tenant=tenant,
        name=row.name,
        prefix=row.prefix,
        created_at=_aware(row.created_at),
        revoked_at=_aware(row.revoked_at) if row.revoked_at else None,
    )


def _check_limits(limits: TenantLimits) -> None:
    for name, value in asdict(limits).items():
        if value is not None and value <= 0:
            raise InvalidInput(f"{name} must be > 0 (or omitted for unlimited).", param=name)


class TenancyService:
    """Tenants, keys and usage over a SQLAlchemy ``sessionmaker`` (SQLite or PostgreSQL)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        auth_cache_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._ttl_s = auth_cache_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._auth_cache: dict[str, tuple[float, Principal]] = {}  # {sha256: (expiry, who)}

    # ---- tenants -----------------------------------------------------------------------

    def create_tenant(
        self,
        name: str,
        allowed_models: Sequence[str] = (ALL_MODELS,),
        limits: TenantLimits | None = None,
    ) -> Tenant:
        if not _NAME.match(name):
            raise InvalidInput(
                f"Invalid tenant name {name!r}.",
                fix="use 1-64 chars of a-z, 0-9, '_', '.', '-', starting with a letter or digit.",
                param="name",
            )
        models = tuple(dict.fromkeys(m.strip() for m in allowed_models if m.strip()))
        if not models:
            raise InvalidInput("allowed_models is empty.", fix="list models or '*'.")
        limits = limits or TenantLimits()
        _check_limits(limits)
        with self._sessions.begin() as session:
            if store.tenant_by_name(session, name) is not None:
                raise Conflict(f"Tenant {name!r} already exists.")
            row = store.TenantRow(name=name, allowed_models=list(models), **asdict(limits))
            session.add(row)
            session.flush()
            return _tenant(row)

    def get_tenant(self, name: str) -> Tenant:
        with self._sessions() as session:
            return _tenant(self._tenant_row(session, name))

    def list_tenants(self) -> list[Tenant]:
        with self._sessions() as session:
            return [_tenant(r) for r in store.all_tenants(session)]

    def set_disabled(self, name: str, disabled: bool = True) -> Tenant:
        with self._sessions.begin() as session:
            row = self._tenant_row(session, name)
            row.disabled = disabled
            tenant = _tenant(row)
        self._invalidate(lambda p: p.tenant.id == tenant.id)
        return tenant

    # ---- keys --------------------------------------------------------------------------

    def create_key(self, tenant_name: str, name: str = "") -> CreatedKey:
        secret = TENANT_KEY_PREFIX + secrets.token_urlsafe(_KEY_ENTROPY_BYTES)
        with self._sessions.begin() as session:
            tenant = self._tenant_row(session, tenant_name)
            row = store.ApiKeyRow(
                id="key_" + secrets.token_hex(8),
                tenant_id=tenant.id,
                name=name[:128],
                prefix=secret[:_VISIBLE_PREFIX_CHARS],
                key_sha256=hash_key(secret),
                created_at=store.utcnow(),
            )
            session.add(row)
            session.flush()
            return CreatedKey(_key(row, tenant.name), secret)

    def revoke_key(self, key_id: str) -> ApiKeyInfo:
        with self._sessions.begin() as session:
            row = session.get(store.ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"No API key {key_id!r}.", fix="see `cunliang key list`.")
            if row.revoked_at is None:
                row.revoked_at = store.utcnow()
            tenant = session.get(store.TenantRow, row.tenant_id)
            info = _key(row, tenant.name if tenant else "")
        self._invalidate(lambda p: p.key_id == key_id)
        return info

    def list_keys(self, tenant_name: str | None = None) -> list[ApiKeyInfo]:
        with self._sessions() as session:
            tenant_id = self._tenant_row(session, tenant_name).id if tenant_name else None
            return [_key(row, tname) for row, tname in store.keys_of(session, tenant_id)]

    def authenticate_cached(self, secret: str) -> Principal | None:
        """The cached principal for a key, or None on a cache miss (never touches the DB)."""
        cached = self._auth_cache.get(hash_key(secret))
        if cached is None or cached[0] <= self._clock():
            return None
        return self._allowed(cached[1])

    def authenticate(self, secret: str | None) -> Principal:
        """The principal for a tenant API key; AuthError if unknown/revoked, Forbidden if the
        tenant is disabled."""
        if not secret or not secret.startswith(TENANT_KEY_PREFIX):
            raise AuthError("Invalid API key.", fix="send 'Authorization: Bearer sk-cl-...'.")
        digest = hash_key(secret)
        now = self._clock()
        cached = self._auth_cache.get(digest)
        if cached is not None and cached[0] > now:
            return self._allowed(cached[1])
        with self._sessions() as session:
            found = store.key_by_hash(session, digest)
            if found is None or found[0].revoked_at is not None:
                raise AuthError("Invalid API key.")
            key_row, tenant_row = found
            # the index lookup already matched; compare again in constant time on principle
            if not hmac.compare_digest(key_row.key_sha256, digest):
                raise AuthError("Invalid API key.")
            principal = Principal(_tenant(tenant_row), key_row.id)
        with self._lock:
            self._auth_cache[digest] = (now + self._ttl_s, principal)
        return self._allowed(principal)

    @staticmethod
    def _allowed(principal: Principal) -> Principal:
        if principal.tenant.disabled:
            raise Forbidden(f"Tenant {principal.tenant.name!r} is disabled.")
        return principal

    def _invalidate(self, match: Callable[[Principal], bool]) -> None:
        with self._lock:
            for digest in [d for d, (_, p) in self._auth_cache.items() if match(p)]:
                del self._auth_cache[digest]

    # ---- usage -------------------------------------------------------------------------

    def record_usage(self, records: Sequence[UsageRecord]) -> int:
        """Store records, skipping request ids already stored; returns how many were new."""
        with self._sessions.begin() as session:
            return store.insert_usage(session, records)

    def usage_summary(
        self, tenant_name: str, since: datetime, until: datetime | None = None
    ) -> UsageSummary:
        with self._sessions() as session:
            tenant = self._tenant_row(session, tenant_name)
            rows = store.usage_totals(session, tenant.id, since, until)
        return UsageSummary(tenant_name, since, until, tuple(ModelUsage(*r) for r in rows))

    def usage_since(self, tenant_id: int, since: datetime) -> tuple[int, float]:
        """(total tokens, cost yuan) a tenant used since ``since`` (for budgets)."""
        with self._sessions() as session:
            rows = store.usage_totals(session, tenant_id, since)
        return sum(p + c for _, _, p, c, _ in rows), sum(y for *_, y in rows)

    def _tenant_row(self, session: Session, name: str) -> store.TenantRow:
        row = store.tenant_by_name(session, name)
        if row is None:
            raise NotFound(f"No tenant {name!r}.", fix="see `cunliang tenant list`.")
        return row
