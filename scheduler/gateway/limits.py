"""Admission control per tenant: rate limits (token buckets), concurrency, budgets.

State lives in the gateway process, used from the event loop only. Several gateways serving
the same tenants split every limit between them (``GatewayPeers``: N live gateways, this one
of rank r), so the limits hold across all of them without a database round trip per request:

- requests_per_s: bucket refilled at ``rate / N``, capacity max(1, rate / N); one token a
  request (so N gateways together admit at most ``rate`` per second, plus a burst of one
  request per gateway).
- tokens_per_min: bucket of capacity ``tpm / N`` refilled at ``tpm / 60 / N``; a request is
  admitted while the balance is positive and debited its real tokens when it ends (so the
  balance can go negative, and Retry-After is the time to refill the deficit).
- max_concurrent: requests in flight, ``split_limit(max_concurrent, N, r)`` per gateway (the
  shares add up to the limit exactly; with fewer slots than gateways some gateways get
  none and answer 429 while another has a free slot: the limit is never exceeded).
- budgets: tokens / yuan per UTC day and month, from recorded usage; the ledger is loaded
  from the database on a tenant's first request, updated on every local record and
  reloaded every ``ledger_refresh_s`` (so other gateways' usage counts within that time
  plus their usage flush interval).

A gateway that sees a tenant's whole traffic still enforces only its share: keep client
connections spread over the gateways (the Service does) or run one gateway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from scheduler.errors import RateLimited
from scheduler.gateway.peers import Alone, GatewayPeers
from scheduler.tenancy import Tenant, TenantLimits


class TokenBucket:
    def __init__(self, rate_per_s: float, capacity: float, now_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self.balance = capacity
        self._updated_s = now_s

    def _refill(self, now_s: float) -> None:
        if now_s > self._updated_s:
            self.balance = min(
                self.capacity, self.balance + (now_s - self._updated_s) * self.rate_per_s
            )
            self._updated_s = now_s

    def wait_s(self, amount: float, now_s: float) -> float:
        """Seconds until ``amount`` can be taken (0 = now)."""
        self._refill(now_s)
        missing = amount - self.balance
        return 0.0 if missing <= 0 else missing / self.rate_per_s

    def take(self, amount: float, now_s: float) -> None:
        self._refill(now_s)
        self.balance -= amount


def day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    return day_start(now).replace(day=1)


def _next_month(start: datetime) -> datetime:
    return (start + timedelta(days=32)).replace(day=1)


@dataclass
class BudgetLedger:
    """Usage in the current UTC day and month."""

    day: datetime
    month: datetime
    day_tokens: int = 0
    day_yuan: float = 0.0
    month_tokens: int = 0
    month_yuan: float = 0.0

    def roll(self, now: datetime) -> None:
        if day_start(now) != self.day:
            self.day, self.day_tokens, self.day_yuan = day_start(now), 0, 0.0
        if month_start(now) != self.month:
            self.month, self.month_tokens, self.month_yuan = month_start(now), 0, 0.0

    def add(self, at: datetime, tokens: int, yuan: float) -> None:
        if at >= self.day:
            self.day_tokens += tokens
            self.day_yuan += yuan
        if at >= self.month:
            self.month_tokens += tokens
            self.month_yuan += yuan

    def exhausted(self, limits: TenantLimits, now: datetime) -> tuple[str, float] | None:
        """(which budget, seconds until it resets), or None while within budget."""
        to_day_end = (self.day + timedelta(days=1) - now).total_seconds()
        to_month_end = (_next_month(self.month) - now).total_seconds()
        checks = (
            ("daily token", limits.daily_token_budget, self.day_tokens, to_day_end),
            ("daily yuan", limits.daily_yuan_budget, self.day_yuan, to_day_end),
            ("monthly token", limits.monthly_token_budget, self.month_tokens, to_month_end),
            ("monthly yuan", limits.monthly_yuan_budget, self.month_yuan, to_month_end),
        )
        for name, budget, used, reset_s in checks:
            if budget is not None and used >= budget:
                return name, reset_s
        return None


def has_budget(limits: TenantLimits) -> bool:
    return any(
        b is not None
        for b in (
            limits.daily_token_budget,
            limits.monthly_token_budget,
            limits.daily_yuan_budget,
            limits.monthly_yuan_budget,
        )
    )


def split_limit(limit: int, gateways: int, rank: int) -> int:
    """This gateway's part of an integer limit: the parts of ranks 0..gateways-1 add up to
    ``limit`` exactly (the first ``limit % gateways`` ranks take one more)."""
    return limit // gateways + (1 if rank < limit % gateways else 0)


@dataclass
class _TenantState:
    limits: TenantLimits
    share: tuple[int, int]  # (rank, gateways) the buckets were sized for
    requests: TokenBucket | None
    tokens: TokenBucket | None
    max_concurrent: int | None
    budgeted: bool  # any budget set: a ledger is kept
    in_flight: int = 0
    ledger: BudgetLedger | None = None
    ledger_loaded_s: float = 0.0


class Permit(NamedTuple):  # immutable; a tuple's construction (a frozen dataclass's costs 4x)
    tenant_id: int


UsageLoader = Callable[[int, datetime], tuple[int, float]]  # (tenant_id, since) -> (tok, yuan)


class Admission:
    """Decides whether a tenant's request may go upstream now; raises RateLimited if not."""

    def __init__(
        self,
        clock: Callable[[], float],
        wall_clock: Callable[[], datetime],
        peers: GatewayPeers | None = None,
        *,
        ledger_refresh_s: float = 10.0,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._peers = peers or Alone()
        self._ledger_refresh_s = ledger_refresh_s
        self._tenants: dict[int, _TenantState] = {}  # {tenant_id: state}

    def _state(self, tenant: Tenant) -> _TenantState:
        state = self._tenants.get(tenant.id)
        share = self._peers.share()
        if (
            state is not None
            and state.limits is not tenant.limits
            and state.limits == tenant.limits
        ):
            state.limits = tenant.limits  # the same limits, newly loaded: compare by identity
        if state is None or state.limits is not tenant.limits or state.share != share:
            now_s = self._clock()
            lim = tenant.limits
            rank, gateways = share
            rps = lim.requests_per_s / gateways if lim.requests_per_s else 0.0
            tpm = lim.tokens_per_min / gateways if lim.tokens_per_min else 0.0
            state = _TenantState(
                limits=lim,
                share=share,
                requests=TokenBucket(rps, max(1.0, rps), now_s) if rps else None,
                tokens=TokenBucket(tpm / 60.0, tpm, now_s) if tpm else None,
                max_concurrent=split_limit(lim.max_concurrent, gateways, rank)
                if lim.max_concurrent is not None
                else None,
                budgeted=has_budget(lim),
                in_flight=state.in_flight if state else 0,
                ledger=state.ledger if state else None,
                ledger_loaded_s=state.ledger_loaded_s if state else 0.0,
            )
            self._tenants[tenant.id] = state
        return state

    def ledger_need(self, tenant: Tenant) -> str | None:
        """ "load": budgets to check and no ledger yet (load it before admitting); "reload":
        the ledger is older than ``ledger_refresh_s`` (admission goes on meanwhile)."""
        state = self._state(tenant)
        if not state.budgeted:
            return None
        if state.ledger is None:
            return "load"
        if self._clock() - state.ledger_loaded_s >= self._ledger_refresh_s:
            return "reload"
        return None

    def keep_ledger(self, tenant: Tenant) -> None:
        """Count a tenant's ledger as fresh for another ``ledger_refresh_s`` (a reload put
        off)."""
        state = self._state(tenant)
        if state.ledger is not None:
            state.ledger_loaded_s = self._clock()

    def load_ledger(self, tenant: Tenant, loader: UsageLoader) -> None:
        """Load budget counters from recorded usage (blocking: call from a worker thread)."""
        now = self._wall_clock()
        loaded_s = self._clock()
        day_tok, day_yuan = loader(tenant.id, day_start(now))
        month_tok, month_yuan = loader(tenant.id, month_start(now))
        ledger = BudgetLedger(
            day_start(now), month_start(now), day_tok, day_yuan, month_tok, month_yuan
        )
        state = self._state(tenant)
        if state.ledger is None or state.ledger_loaded_s < loaded_s:
            state.ledger, state.ledger_loaded_s = ledger, loaded_s

    def admit(self, tenant: Tenant) -> Permit:
        state = self._state(tenant)
        now_s = self._clock()
        if state.ledger is not None:
            now = self._wall_clock()
            state.ledger.roll(now)
            over = state.ledger.exhausted(state.limits, now)
            if over is not None:
                raise RateLimited(
                    f"The {over[0]} budget of tenant {tenant.name!r} is used up.",
                    retry_after_s=over[1],
                    fix="wait for the budget period to reset or ask the operator to raise it.",
                )
        if state.max_concurrent is not None and state.in_flight >= state.max_concurrent:
            raise RateLimited(
                f"Too many concurrent requests (limit {state.limits.max_concurrent}).",
                retry_after_s=1.0,
            )
        if state.tokens is not None:
            wait = state.tokens.wait_s(1e-9, now_s)
            if wait > 0:
                raise RateLimited(
                    f"Token rate limit of {state.limits.tokens_per_min} tokens/min reached.",
                    retry_after_s=wait,
                )
        if state.requests is not None:
            wait = state.requests.wait_s(1.0, now_s)
            if wait > 0:
                raise RateLimited(
                    f"Request rate limit of {state.limits.requests_per_s} requests/s reached.",
                    retry_after_s=wait,
                )
            state.requests.take(1.0, now_s)
        state.in_flight += 1
        return Permit(tenant.id)

    def release(self, permit: Permit, tokens: int) -> None:
        state = self._tenants.get(permit.tenant_id)
        if state is None:
            return
        state.in_flight = max(0, state.in_flight - 1)
        if state.tokens is not None and tokens:
            state.tokens.take(tokens, self._clock())

    def on_recorded(self, tenant_id: int, at: datetime, tokens: int, yuan: float) -> None:
        state = self._tenants.get(tenant_id)
        if state is not None and state.ledger is not None:
            state.ledger.roll(self._wall_clock())
            state.ledger.add(at, tokens, yuan)
