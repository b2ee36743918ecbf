"""The usage writer against a real PostgreSQL that goes away and comes back: no completed
request's record is lost or stored twice, memory holds only the records since the last try
(the rest wait in the WAL), and /metrics shows the backlog and the failed flushes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from scheduler.gateway.metering import UsageWriter
from scheduler.gateway.routes.health import refresh_usage_meters
from scheduler.observability.metrics import create_metrics
from scheduler.store.db import open_database
from scheduler.store.tenancy import UsageRow
from scheduler.tenancy import TenancyService, UsageRecord
from tests.conftest import PostgresServer


@pytest.fixture
def outage(postgres_server: PostgresServer, migrated_database_url: str) -> Iterator[Outage]:
    database = migrated_database_url.rsplit("/", 1)[1]
    down = Outage(postgres_server, database)
    try:
        yield down
    finally:
        down.end()


class Outage:
    """Takes one database away from its clients (new connections refused, open ones cut),
    as a restarting or unreachable server does, without stopping the shared test server."""

    def __init__(self, server: PostgresServer, database: str) -> None:
        self.server, self.database = server, database

    def begin(self) -> None:
        self.server.admin(f"ALTER DATABASE {self.database} ALLOW_CONNECTIONS false")
        self.server.admin(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            f"WHERE datname = '{self.database}' AND pid <> pg_backend_pid()"
        )

    def end(self) -> None:
        self.server.admin(f"ALTER DATABASE {self.database} ALLOW_CONNECTIONS true")


async def _until(condition: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.postgres
@pytest.mark.parametrize("migrated_database_url", ["postgresql"], indirect=True)
def test_usage_rides_out_a_database_outage(
    migrated_database_url: str, outage: Outage, tmp_path: Path
) -> None:
    db = open_database(migrated_database_url)
    tenancy = TenancyService(db.sessions)
    tenant = tenancy.create_tenant("acme")
    registry = CollectorRegistry()
    gateway = SimpleNamespace(
        metrics=create_metrics(registry), writer=None, flush_failures_reported=0
    )

    def record(i: int) -> UsageRecord:
        return UsageRecord(
            request_id=f"req-{i}",
            tenant_id=tenant.id,
            key_id=None,
            model="demo",
            status=200,
            created_at=datetime.now(UTC),
            completion_tokens=i,
        )

    def sample(name: str) -> float | None:
        return registry.get_sample_value(name)

    async def run() -> None:
        writer = UsageWriter(tenancy, tmp_path / "wal", flush_interval_s=0.05)
        gateway.writer = writer
        writer.open()
        await writer.start()
        for i in range(100):
            writer.submit(record(i))
        await _until(lambda: writer.pending == 0)  # stored while the database is up
        outage.begin()
        outage_began = time.time()
        for i in range(100, 400):  # requests go on completing during the outage
            writer.submit(record(i))
            if i % 50 == 0:
                await asyncio.sleep(0.05)
        await _until(lambda: writer.failed_flushes >= 3)
        assert writer.pending == 300
        refresh_usage_meters(gateway)  # type: ignore[arg-type]
        assert sample("cunliang_usage_pending_records") == 300
        last_stored = sample("cunliang_usage_last_stored_timestamp_seconds")
        assert last_stored is not None and last_stored <= outage_began
        failures = sample("cunliang_usage_flush_failures_total")
        assert failures is not None and failures >= 3
        # the room left for the WAL, from its file system (what the volume alert watches)
        size = sample("cunliang_usage_wal_volume_size_bytes")
        available = sample("cunliang_usage_wal_volume_available_bytes")
        fs = os.statvfs(tmp_path / "wal")
        assert size == fs.f_blocks * fs.f_frsize
        assert available is not None and 0 < available <= size
        assert abs(available - fs.f_bavail * fs.f_frsize) < 64 << 20
        outage.end()
        await _until(lambda: writer.pending == 0)
        refresh_usage_meters(gateway)  # type: ignore[arg-type]
        assert sample("cunliang_usage_pending_records") == 0
        assert sample("cunliang_usage_flush_failures_total") == writer.failed_flushes
        back = sample("cunliang_usage_last_stored_timestamp_seconds")
        assert back is not None and back > outage_began
        await writer.stop()

    try:
        asyncio.run(run())
        with db.sessions() as session:
            rows = session.execute(
                select(func.count(), func.count(func.distinct(UsageRow.request_id)))
            ).one()
        assert tuple(rows) == (400, 400)  # every record, each once
        assert not [p for p in (tmp_path / "wal").glob("usage-*.wal") if p.stat().st_size]
    finally:
        db.dispose()
