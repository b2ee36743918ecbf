"""SqlUsageSource over the gateway's real ``usage_records`` (migration 0002), written with
the gateway's own ``insert_usage``, on both backends."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from scheduler.inventory.service import InventoryService
from scheduler.inventory.usage import SqlUsageSource
from scheduler.store import tenancy as tenancy_store
from scheduler.store.db import Database, open_database
from scheduler.store.tenancy import USAGE_COLUMNS, TenantRow, UsageRow, insert_usage
from scheduler.tenancy import TenancyService, UsageRecord
from tests.conftest import PostgresServer
from tests.fakes.inventory import FakeClock
from tests.inventory.conftest import GUIAN, t4_node
from tests.inventory.test_service import good_profile


def test_no_table_means_no_usage(tmp_path: Path, clock: FakeClock) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'empty.db'}")  # never migrated
    try:
        source = SqlUsageSource(db)
        assert source.completion_tokens_by_model(clock.now - timedelta(days=1), clock.now) == {}
        assert source.available is False and "usage_records" in source.problem
    finally:
        db.dispose()


def record(db: Database, rows: list[tuple[str, str, int, int, timedelta]], now: datetime) -> int:
    """Store usage as the gateway does: (model, device_class, completion tokens, status, age)."""
    with db.sessions.begin() as session:
        tenant = session.query(TenantRow).filter_by(name="acme").first()
        if tenant is None:
            tenant = TenantRow(name="acme", allowed_models=[], created_at=now)
            session.add(tenant)
            session.flush()
        return insert_usage(
            session,
            [
                UsageRecord(
                    request_id=f"r{i}-{m}-{n}-{age.total_seconds()}",
                    tenant_id=tenant.id,
                    key_id=None,
                    model=m,
                    quant="fp16",
                    replica_id=f"{m}/x",
                    device_class=c,
                    site="guian",
                    prompt_tokens=10,
                    completion_tokens=n,
                    latency_ms=100.0,
                    cost_yuan=0.0,
                    status=s,
                    stream=False,
                    created_at=now - age,
                )
                for i, (m, c, n, s, age) in enumerate(rows)
            ],
        )


def admitted_t4s(db: Database, clock: FakeClock) -> tuple[InventoryService, str]:
    service = InventoryService(db, clock=clock, usage=SqlUsageSource(db))
    service.add_site(GUIAN, "t")
    for host in ("g1", "g2"):
        service.register_node(t4_node(host), "t")
        service.add_profile(host, good_profile(), "agent")
    (cls,) = service.snapshot()[0].classes
    return service, cls.id


def test_tokens_by_model_and_node(db: Database, clock: FakeClock) -> None:
    _, class_id = admitted_t4s(db, clock)
    now = clock.now
    rows = [
        # (model, device_class, completion tokens, status, age)
        ("qwen", class_id, 1000, 200, timedelta(hours=1)),
        ("qwen", class_id, 500, 200, timedelta(hours=2)),
        ("qwen", class_id, 9999, 502, timedelta(hours=1)),  # failed: not served work
        ("qwen", class_id, 7777, 200, timedelta(days=3)),  # outside the window
        ("llama", "gone/class", 300, 200, timedelta(hours=1)),  # class no longer exists
    ]
    stored = record(db, rows, now)
    assert stored == len(rows)
    source = SqlUsageSource(db)
    since = now - timedelta(days=1)
    assert source.completion_tokens_by_model(since, now) == {"qwen": 1500, "llama": 300}
    # class tokens split over its two hosts (4 devices each)
    assert source.completion_tokens_by_node(since, now) == {"g1": 750, "g2": 750}
    assert source.available


def test_assessment_and_demand_from_real_usage_records(db: Database, clock: FakeClock) -> None:
    """The whole loop on the gateway's table: usage -> per-node tokens -> verdicts, demand."""
    service, class_id = admitted_t4s(db, clock)
    week = timedelta(days=7)
    # 8 T4s cost ~0.2 yuan/h each: ~270 yuan a week; 1M tokens is far below 200k tokens/yuan
    record(db, [("qwen", class_id, 1_000_000, 200, timedelta(days=1))], clock.now)
    out = service.assess("test")
    assert (out.assessed, out.watching) == (8, 8)
    assert out.usage_basis == "usage records of 2 node(s)"
    from scheduler.inventory.schemas import FromUsageIn, ModelIn

    service.add_model(ModelIn(name="qwen", source="Qwen/Qwen2.5-7B-Instruct"), "t")
    demand = service.demand_from_usage(
        "qwen", FromUsageIn(window_hours=week / timedelta(hours=1), headroom=0.0), "t"
    )
    assert demand.output_tokens_per_s == pytest.approx(1_000_000 / week.total_seconds(), rel=1e-3)


def test_insert_usage_skips_stored_ids_and_round_trips_every_field(db: Database) -> None:
    """The gateway's flush path (multi-row INSERTs, ON CONFLICT DO NOTHING): the count of
    new rows, duplicates within and across batches skipped, and every field read
    back through the ORM as written (datetimes in UTC to the microsecond)."""
    tenancy = TenancyService(db.sessions)
    tenant = tenancy.create_tenant("globex")
    key = tenancy.create_key("globex").info.id
    shanghai = timezone(timedelta(hours=8))

    def rec(i: int, **over: object) -> UsageRecord:
        fields: dict[str, object] = {
            "request_id": f"req-{i}",
            "tenant_id": tenant.id,
            "key_id": key if i % 2 else None,
            "model": "qwen",
            "status": 200 if i % 3 else 429,
            "created_at": datetime(2026, 12, 6, 13, 0, i, 1000 * i, tzinfo=shanghai),
            "quant": "int8-w8a8",
            "replica_id": f"qwen/{i}",
            "device_class": "cpu-epyc",
            "site": "guian",
            "prompt_tokens": 10 + i,
            "completion_tokens": 3 * i,
            "ttft_ms": None if i % 2 else 12.5 + i,
            "latency_ms": 100.25 + i,
            "cost_yuan": 1e-6 * i,
            "stream": bool(i % 2),
        }
        fields.update(over)
        return UsageRecord(**fields)  # type: ignore[arg-type]

    first = [rec(i) for i in range(5)]
    assert tenancy.record_usage(first) == 5
    # a replayed WAL segment overlapping the database, with a duplicate inside the batch
    again = [rec(3, completion_tokens=999), rec(5), rec(6), rec(6)]
    assert tenancy.record_usage(again) == 2
    assert tenancy.record_usage([]) == 0
    with db.sessions() as session:
        stored = {row.request_id: row for row in session.query(UsageRow)}
    assert sorted(stored) == [f"req-{i}" for i in range(7)]
    for want in [*first, rec(5), rec(6)]:
        row = stored[want.request_id]
        for name in USAGE_COLUMNS:
            got = getattr(row, name)
            if name == "created_at":
                got = got.replace(tzinfo=UTC) if got.tzinfo is None else got
                assert got == want.created_at, name
            else:
                assert got == getattr(want, name), name
    assert stored["req-3"].completion_tokens == 9  # the first write wins


def test_insert_usage_splits_a_flush_into_statements(db: Database) -> None:
    """A flush bigger than one statement's rows goes in several INSERTs: every row stored
    once, new rows counted across statements, a duplicate that straddles a statement
    boundary (its first copy in one statement, its second in the next) skipped. On SQLite,
    a connection that binds only 100 values per statement (SQLite before 3.32 binds 999)
    gets statements of 6 rows (16 values each) rather than a "too many SQL variables"."""
    tenancy = TenancyService(db.sessions)
    tenant = tenancy.create_tenant("initech")
    now = datetime(2026, 12, 6, 17, 0, tzinfo=UTC)

    def rec(i: int) -> UsageRecord:
        return UsageRecord(f"req-{i}", tenant.id, None, "qwen", 200, now, completion_tokens=i)

    per = tenancy_store._ROWS_PER_INSERT
    records = (
        [rec(i) for i in range(per)] + [rec(per - 1)] + [rec(i) for i in range(per, 2 * per + 7)]
    )
    inserts: list[str] = []

    def seen(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement.startswith(f"INSERT INTO {UsageRow.__tablename__}"):
            inserts.append(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        assert tenancy.record_usage(records) == 2 * per + 7
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    # 250 + 250 + 8 rows (more, smaller ones where SQLite binds at most 999 values)
    assert len(inserts) >= 3 and all(s.count("), (") + 1 <= per for s in inserts)
    assert tenancy.record_usage(records[per - 3 : per + 5]) == 0
    with db.sessions() as session:
        assert session.query(UsageRow).count() == 2 * per + 7
        assert sum(r.completion_tokens for r in session.query(UsageRow)) == sum(range(2 * per + 7))
    if db.url.startswith("sqlite"):
        with db.sessions.begin() as session:
            dbapi = session.connection().connection.dbapi_connection
            assert isinstance(dbapi, sqlite3.Connection)
            dbapi.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)
            small = [rec(10_000 + i) for i in range(40)]
            assert insert_usage(session, small) == 40
            with pytest.raises(sqlite3.OperationalError, match="too many SQL variables"):
                dbapi.execute(tenancy_store._insert_sql("?", 7), (0,) * (7 * len(USAGE_COLUMNS)))
        with db.sessions() as session:
            assert session.query(UsageRow).count() == 2 * per + 47


@pytest.mark.postgres
def test_gateway_postgres_connections_give_up_on_a_silent_network(
    postgres_server: PostgresServer,
) -> None:
    """The gateway's sessions reach PostgreSQL with libpq's network timeouts (a partition
    fails a usage flush in about a minute instead of hanging it); the URL's own win."""
    url = postgres_server.url("postgres")
    for query, connect_timeout in (("", "10"), ("?connect_timeout=3", "3")):
        sessions = tenancy_store.session_factory(url + query)
        with sessions() as session:
            raw = session.connection().connection.dbapi_connection
            params = raw.info.get_parameters()  # type: ignore[union-attr]
        sessions.kw["bind"].dispose()
        assert params["connect_timeout"] == connect_timeout
        assert params["tcp_user_timeout"] == "60000"
        assert (params["keepalives_idle"], params["keepalives_count"]) == ("30", "3")
