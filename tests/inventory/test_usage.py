"""SqlUsageSource over a ``usage_records`` table of the gateway's shape (same columns the
gateway's tenancy store defines), on both backends."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Boolean, Column, DateTime, Float, Integer, MetaData, String, Table, insert

from scheduler.inventory.service import InventoryService
from scheduler.inventory.usage import SqlUsageSource
from scheduler.store.db import Database
from tests.fakes.inventory import FakeClock
from tests.inventory.conftest import GUIAN, t4_node
from tests.inventory.test_service import good_profile


def gateway_usage_table(db: Database) -> Table:
    """The columns of the gateway's usage_records (scheduler/store/tenancy.py on its branch)."""
    table = Table(
        "usage_records",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("request_id", String(64), unique=True, nullable=False),
        Column("tenant_id", Integer, nullable=False),
        Column("model", String(128), nullable=False),
        Column("replica_id", String(128), nullable=False, default=""),
        Column("device_class", String(128), nullable=False, default=""),
        Column("site", String(64), nullable=False, default=""),
        Column("prompt_tokens", Integer, nullable=False, default=0),
        Column("completion_tokens", Integer, nullable=False, default=0),
        Column("latency_ms", Float, nullable=False, default=0.0),
        Column("status", Integer, nullable=False),
        Column("stream", Boolean, nullable=False, default=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    table.create(db.engine)
    return table


def test_no_table_means_no_usage(db: Database, clock: FakeClock) -> None:
    source = SqlUsageSource(db)
    assert source.completion_tokens_by_model(clock.now - timedelta(days=1), clock.now) == {}
    assert source.available is False and "usage_records" in source.problem


def test_tokens_by_model_and_node(db: Database, clock: FakeClock) -> None:
    service = InventoryService(db, clock=clock)
    service.add_site(GUIAN, "t")
    for host in ("g1", "g2"):
        service.register_node(t4_node(host), "t")
        service.add_profile(host, good_profile(), "agent")
    (cls,) = service.snapshot()[0].classes
    table = gateway_usage_table(db)
    now = clock.now
    rows = [
        # (model, device_class, completion tokens, status, age)
        ("qwen", cls.id, 1000, 200, timedelta(hours=1)),
        ("qwen", cls.id, 500, 200, timedelta(hours=2)),
        ("qwen", cls.id, 9999, 502, timedelta(hours=1)),  # failed: not served work
        ("qwen", cls.id, 7777, 200, timedelta(days=3)),  # outside the window
        ("llama", "gone/class", 300, 200, timedelta(hours=1)),  # class no longer exists
    ]
    with db.engine.begin() as conn:
        conn.execute(
            insert(table),
            [
                {
                    "request_id": f"r{i}",
                    "tenant_id": 1,
                    "model": m,
                    "device_class": c,
                    "completion_tokens": n,
                    "status": s,
                    "created_at": now - age,
                }
                for i, (m, c, n, s, age) in enumerate(rows)
            ],
        )
    source = SqlUsageSource(db)
    since = now - timedelta(days=1)
    assert source.completion_tokens_by_model(since, now) == {"qwen": 1500, "llama": 300}
    # class tokens split over its two hosts (4 devices each)
    assert source.completion_tokens_by_node(since, now) == {"g1": 750, "g2": 750}
    assert source.available
