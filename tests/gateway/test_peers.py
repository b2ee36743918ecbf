"""Several gateways on one database split every tenant limit, so the limits hold across them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from scheduler.errors import RateLimited
from scheduler.gateway.app import create_app
from scheduler.gateway.config import GatewayConfig
from scheduler.gateway.core import Gateway
from scheduler.gateway.db_directory import DbGatewayPeers
from scheduler.gateway.limits import Admission, split_limit
from scheduler.gateway.replicas import ReplicaTable
from scheduler.settings import Settings
from scheduler.store.tenancy import session_factory
from scheduler.tenancy import TenancyService, Tenant, TenantLimits
from tests.fakes.openai_upstream import FakeUpstream, UpstreamBehaviour
from tests.fakes.servers import serve_in_thread
from tests.gateway.conftest import ADMIN_TOKEN, ENGINE_MODEL, MODEL, replica


class FixedPeers:
    def __init__(self, rank: int, count: int) -> None:
        self.value = (rank, count)

    def share(self) -> tuple[int, int]:
        return self.value


@given(limit=st.integers(0, 50), gateways=st.integers(1, 12))
def test_split_limit_parts_add_up_to_the_limit(limit: int, gateways: int) -> None:
    parts = [split_limit(limit, gateways, rank) for rank in range(gateways)]
    assert sum(parts) == limit
    assert max(parts) - min(parts) <= 1


def _tenant(**limits: float | int) -> Tenant:
    return Tenant(7, "t", ("*",), TenantLimits(**limits), False, datetime.now(UTC))


def test_admission_enforces_this_gateways_share() -> None:
    now = [0.0]
    peers = FixedPeers(1, 3)
    admission = Admission(lambda: now[0], lambda: datetime(2026, 1, 1, tzinfo=UTC), peers)
    tenant = _tenant(max_concurrent=4, requests_per_s=6.0)
    # rank 1 of 3 gets 4 // 3 = 1 slot (rank 0 gets the remainder's extra one)
    admission.admit(tenant)
    with pytest.raises(RateLimited, match="concurrent"):
        admission.admit(tenant)
    # 6 requests/s over 3 gateways: 2/s here, a burst of 2
    rate_only = Tenant(8, "r", ("*",), TenantLimits(requests_per_s=6.0), False, datetime.now(UTC))
    admission.admit(rate_only)
    admission.admit(rate_only)
    with pytest.raises(RateLimited) as err:
        admission.admit(rate_only)
    assert err.value.retry_after_s == pytest.approx(0.5)
    # a gateway leaves: the shares grow at once, requests in flight still count
    peers.value = (0, 1)
    admission.admit(tenant)
    admission.admit(tenant)
    admission.admit(tenant)
    with pytest.raises(RateLimited, match="concurrent"):
        admission.admit(tenant)


def test_budget_ledger_reloads_other_gateways_usage() -> None:
    now = [0.0]
    wall = datetime(2026, 1, 1, 12, tzinfo=UTC)
    admission = Admission(lambda: now[0], lambda: wall, ledger_refresh_s=10.0)
    tenant = _tenant(daily_token_budget=100)
    recorded = [40]  # tokens the database holds for the tenant (all gateways)
    assert admission.ledger_need(tenant) == "load"
    admission.load_ledger(tenant, lambda _id, _since: (recorded[0], 0.0))
    assert admission.ledger_need(tenant) is None
    admission.admit(tenant)
    recorded[0] = 100  # another gateway spent the rest
    now[0] = 10.0
    assert admission.ledger_need(tenant) == "reload"
    admission.load_ledger(tenant, lambda _id, _since: (recorded[0], 0.0))
    _budget_spent(admission, tenant)


def test_db_peers_count_live_gateways_and_forget_stopped_ones(tmp_path: Path) -> None:
    sessions = session_factory(f"sqlite:///{tmp_path / 'gw.db'}", create_tables=True)
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    a = DbGatewayPeers(sessions, live_within_s=10.0, clock=lambda: now[0])
    b = DbGatewayPeers(sessions, live_within_s=10.0, clock=lambda: now[0])
    a.refresh()
    b.refresh()
    a.refresh()
    assert a.share()[1] == b.share()[1] == 2
    assert {a.share()[0], b.share()[0]} == {0, 1}
    b.stop()  # a clean stop removes its row at once
    a.refresh()
    assert a.share() == (0, 1)
    c = DbGatewayPeers(sessions, live_within_s=10.0, clock=lambda: now[0])
    c.refresh()
    now[0] += timedelta(seconds=11)  # c died without stopping: it ages out
    a.refresh()
    assert a.share() == (0, 1)


@contextmanager
def _gateways(tmp_path: Path, sessions: Any, n: int) -> Iterator[list[str]]:
    """``n`` gateways (real HTTP) on one database and one slow engine; their base URLs."""
    tenancy = TenancyService(sessions)
    upstream = FakeUpstream(served_model=ENGINE_MODEL, behaviour=UpstreamBehaviour(delay_s=2.0))
    with ExitStack() as stack:
        engine_url = stack.enter_context(serve_in_thread(upstream, lifespan="off"))
        all_peers = [DbGatewayPeers(sessions) for _ in range(n)]
        for peers in all_peers:
            peers.refresh()
        for peers in all_peers:
            peers.start()
            stack.callback(peers.stop)
        urls = []
        for i, peers in enumerate(all_peers):
            settings = Settings(data_dir=tmp_path / f"gw{i}")
            app = create_app(
                settings,
                tenancy,
                ReplicaTable([replica("r0", engine_url)]),
                CollectorRegistry(),
                admin_token=ADMIN_TOKEN,
                config=GatewayConfig.from_settings(settings),
                peers=peers,
            )
            urls.append(stack.enter_context(serve_in_thread(app)))
        yield urls


def test_concurrency_limit_holds_across_two_gateways(tmp_path: Path) -> None:
    sessions = session_factory(f"sqlite:///{tmp_path / 'gw.db'}", create_tables=True)
    tenancy = TenancyService(sessions)
    tenancy.create_tenant("acme", limits=TenantLimits(max_concurrent=2))
    key = tenancy.create_key("acme").secret

    async def burst(urls: list[str]) -> list[int]:
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=30, headers=headers) as client:
            replies = await asyncio.gather(
                *(client.post(f"{url}/v1/completions", json=body) for url in urls for _ in range(4))
            )
        return [r.status_code for r in replies]

    with _gateways(tmp_path, sessions, 2) as urls:
        statuses = asyncio.run(burst(urls))
    # 8 requests at once, 4 on each gateway, limit 2 in all: one slot per gateway
    assert sorted(statuses) == [200, 200] + [429] * 6
    assert statuses[:4].count(200) == statuses[4:].count(200) == 1


def _budget_spent(admission: Admission, tenant: Tenant) -> None:
    """The tenant's next request is refused: its daily token budget is spent."""
    with pytest.raises(RateLimited, match="daily token budget"):
        admission.admit(tenant)


def _budgeted_gateway(tmp_path: Path) -> tuple[TenancyService, Tenant, Gateway]:
    """A gateway (not started) whose tenant "acme" has a daily budget of 30 tokens, its
    usage flushed only when asked."""
    sessions = session_factory(f"sqlite:///{tmp_path / 'gw.db'}", create_tables=True)
    tenancy = TenancyService(sessions)
    tenancy.create_tenant("acme", limits=TenantLimits(daily_token_budget=30))
    tenant = tenancy.authenticate(tenancy.create_key("acme").secret).tenant
    settings = Settings(data_dir=tmp_path / "gw")
    config = GatewayConfig.from_settings(settings)
    app = create_app(
        settings,
        tenancy,
        ReplicaTable([]),
        CollectorRegistry(),
        admin_token=ADMIN_TOKEN,
        config=GatewayConfig(**{**vars(config), "usage_flush_interval_s": 3600.0}),
    )
    return tenancy, tenant, app.gateway


def test_budget_ledger_load_counts_usage_not_flushed_yet(tmp_path: Path) -> None:
    """The usage flush runs once a second: a ledger (re)load flushes this gateway's queued
    records first, or the counters it reads from the database would miss them (and a
    reload would drop them until the next one, letting the tenant past its budget)."""
    from scheduler.tenancy import UsageRecord

    _, tenant, gateway = _budgeted_gateway(tmp_path)

    async def run() -> None:
        await gateway.startup()
        try:
            used = UsageRecord(
                "req-1", tenant.id, None, MODEL, 200, datetime.now(UTC), completion_tokens=25
            )
            gateway.writer.submit(used)  # in the WAL, queued for the next flush
            assert gateway.writer.pending == 1
            await gateway._load_ledger(tenant)
            assert gateway.writer.pending == 0
            gateway.admission.admit(tenant)  # 25 of 30 used: one more may start
            gateway.writer.submit(
                UsageRecord(
                    "req-2", tenant.id, None, MODEL, 200, datetime.now(UTC), completion_tokens=5
                )
            )
            await gateway._load_ledger(tenant)  # the reload, as every 10 s
            _budget_spent(gateway.admission, tenant)
        finally:
            await gateway.shutdown()

    asyncio.run(run())


def test_a_restarted_gateway_stores_its_wal_while_serving_and_budgets_count_it(
    tmp_path: Path,
) -> None:
    """Records a killed gateway left in its WAL are the next process's backlog: startup only
    counts them (it serves at once) and a budget's first load stores them first, so they
    count against the budget."""
    from scheduler.gateway.metering import UsageWriter
    from scheduler.tenancy import UsageRecord

    tenancy, tenant, gateway = _budgeted_gateway(tmp_path)
    previous = UsageWriter(tenancy, tmp_path / "gw" / "usage-wal")
    previous.open()
    for i in range(3):
        previous.submit(
            UsageRecord(
                f"req-{i}", tenant.id, None, MODEL, 200, datetime.now(UTC), completion_tokens=10
            )
        )
    assert previous._lock_fd is not None
    os.close(previous._lock_fd)  # killed: no flush, the kernel drops its lock

    async def run() -> None:
        await gateway.startup()
        try:
            assert gateway.writer.backlog == 3  # counted, not stored yet
            assert tenancy.usage_since(tenant.id, datetime.now(UTC) - timedelta(days=1)) == (0, 0.0)
            await gateway._load_ledger(tenant)  # stores them, then reads 30 of 30
            assert gateway.writer.pending == 0
            _budget_spent(gateway.admission, tenant)
        finally:
            await gateway.shutdown()

    asyncio.run(run())


def test_concurrent_first_budget_loads_share_one(tmp_path: Path) -> None:
    """Requests of a tenant whose ledger is not loaded yet wait for one load (which stores
    this gateway's usage first, for up to 5 s) rather than each running its own in turn;
    a request that leaves does not cancel it, and a failed one is not kept."""
    from scheduler.errors import UsageNotStored

    _, tenant, gateway = _budgeted_gateway(tmp_path)
    loads = 0
    real_load = gateway._load_ledger

    async def counted_load(t: Tenant) -> None:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.05)
        if loads == 1:
            raise UsageNotStored("records wait", retry_after_s=5.0)
        await real_load(t)

    gateway._load_ledger = counted_load  # type: ignore[method-assign]

    async def run() -> None:
        await gateway.startup()
        try:
            waiters = [asyncio.ensure_future(gateway._first_load(tenant)) for _ in range(5)]
            results = await asyncio.gather(*waiters, return_exceptions=True)
            assert loads == 1 and all(isinstance(r, UsageNotStored) for r in results)
            leaving = asyncio.ensure_future(asyncio.shield(gateway._first_load(tenant)))
            staying = gateway._first_load(tenant)
            await asyncio.sleep(0)
            leaving.cancel()
            await staying  # the second load, not cancelled by the one that left
            assert loads == 2 and gateway.admission.ledger_need(tenant) is None
        finally:
            await gateway.shutdown()

    asyncio.run(run())


class _InsertsFail:
    """A usage sink whose every insert fails (the database down or refusing writes)."""

    def record_usage(self, records: object) -> int:
        raise OSError("the database refuses inserts")


def test_budget_ledger_is_not_reloaded_over_a_backlog_of_failed_flushes(tmp_path: Path) -> None:
    """Records a failed flush left on disk are not in the database yet, and the counters in
    memory count them already: a reload is put off while they wait (it would store the
    whole backlog at once, or fail while the database is down), leaving the counters as
    they are. A first load stores them first."""
    from scheduler.tenancy import UsageRecord

    tenancy, tenant, gateway = _budgeted_gateway(tmp_path)

    def used(request_id: str, tokens: int) -> None:  # as Gateway.finish records a request
        now = datetime.now(UTC)
        gateway.writer.submit(
            UsageRecord(request_id, tenant.id, None, MODEL, 200, now, completion_tokens=tokens)
        )
        gateway.admission.on_recorded(tenant.id, now, tokens, 0.0)

    async def run() -> None:
        await gateway.startup()
        try:
            used("req-1", 25)
            await gateway._load_ledger(tenant)  # 25 of 30
            used("req-2", 5)  # 30 of 30
            gateway.writer._sink = _InsertsFail()
            await gateway.writer.flush()
            assert gateway.writer.backlog == 1
            gateway.writer._sink = tenancy  # back, but the record waits for the next flush
            await gateway._reload_ledger(tenant)
            _budget_spent(gateway.admission, tenant)
            assert gateway.writer.backlog == 1  # the reload did not read the database
            gateway.admission._tenants.clear()  # as after a restart: a first load
            await gateway._load_ledger(tenant)
            assert gateway.writer.pending == 0
            _budget_spent(gateway.admission, tenant)
        finally:
            await gateway.shutdown()

    asyncio.run(run())


def test_budget_ledger_is_kept_when_storing_usage_fails(tmp_path: Path) -> None:
    """A reload whose flush fails (the database refuses the insert) keeps the counters in
    memory, which count the records that failed, rather than loading the database's,
    which do not; a usage read or a first load answers 503 meanwhile."""
    from scheduler.errors import UsageNotStored
    from scheduler.tenancy import UsageRecord

    tenancy, tenant, gateway = _budgeted_gateway(tmp_path)

    async def run() -> None:
        await gateway.startup()
        try:
            now = datetime.now(UTC)
            gateway.writer.submit(
                UsageRecord("req-1", tenant.id, None, MODEL, 200, now, completion_tokens=25)
            )
            await gateway._load_ledger(tenant)  # 25 of 30 stored
            gateway.writer.submit(
                UsageRecord("req-2", tenant.id, None, MODEL, 200, now, completion_tokens=5)
            )
            gateway.admission.on_recorded(tenant.id, now, 5, 0.0)  # 30 of 30 in memory
            gateway.writer._sink = _InsertsFail()
            assert gateway.writer.backlog == 0  # the reload's own flush is what fails
            await gateway._reload_ledger(tenant)
            _budget_spent(gateway.admission, tenant)
            assert gateway.writer.backlog == 1
            with pytest.raises(UsageNotStored) as refused:
                await gateway.store_usage()  # as GET /v1/usage does
            assert refused.value.status_code == 503 and refused.value.retry_after_s >= 1
            gateway.admission._tenants.clear()  # as after a restart: a first load
            with pytest.raises(UsageNotStored):
                await gateway._load_ledger(tenant)
            gateway.writer._sink = tenancy
            await gateway._load_ledger(tenant)
            _budget_spent(gateway.admission, tenant)
        finally:
            await gateway.shutdown()

    asyncio.run(run())
