"""The schema comes from the packaged Alembic history and behaves the same on both backends."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError, IntegrityError

import scheduler.store.tenancy  # noqa: F401  (its tables are on Base too)
from scheduler.errors import ConfigError
from scheduler.inventory.service import InventoryService
from scheduler.store import Base
from scheduler.store.db import (
    Database,
    alembic_config,
    current_revision,
    open_database,
    upgrade,
)
from tests.inventory.conftest import GUIAN

HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def test_upgrade_creates_every_table_and_is_idempotent(database_url: str) -> None:
    assert current_revision(database_url) is None
    upgrade(database_url)
    upgrade(database_url)  # second run is a no-op
    assert current_revision(database_url) == HEAD
    db = open_database(database_url)
    try:
        tables = set(inspect(db.engine).get_table_names())
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection)
            drift = compare_metadata(context, Base.metadata)
    finally:
        db.dispose()
    expected = {"sites", "nodes", "devices", "profiles", "audit_log", "models", "demands"}
    assert expected | {"tenants", "api_keys", "usage_records"} <= tables
    # every table on Base is created by the migrations, column for column
    assert [d for d in drift if d[0] in ("add_table", "add_column", "remove_column")] == []


def test_upgrade_does_not_depend_on_working_directory(
    database_url: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")
    upgrade(database_url)
    assert current_revision(database_url) == HEAD


def test_audit_log_is_append_only(service: InventoryService, db: Database) -> None:
    service.add_site(GUIAN, "tester")
    with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'forger'"))
    with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log"))
    assert [a.actor for a in service.audit()] == ["tester"]


def test_check_constraints_guard_the_tables_too(db: Database) -> None:
    # the API validates first; the database refuses what slips past (e.g. a script)
    with pytest.raises(IntegrityError), db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO sites (name, hub, region, tariff_yuan_per_kwh, tou_bands, pue,"
                " latency_class, rtt_ms, created_at) VALUES ('x', '', 'r', 0.5, '[]', 0.9, '',"
                " '{}', CURRENT_TIMESTAMP)"
            )
        )


def test_schema_head_constant_matches_alembic(database_url: str) -> None:
    from alembic.script import ScriptDirectory

    from scheduler.store.db import SCHEMA_HEAD, alembic_config, ensure_schema

    assert (
        ScriptDirectory.from_config(alembic_config(database_url)).get_current_head() == SCHEMA_HEAD
    )
    ensure_schema(database_url)  # fresh database: upgrades
    ensure_schema(database_url)  # up to date: no Alembic at all
    assert current_revision(database_url) == SCHEMA_HEAD


def test_bad_urls_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="Unsupported database backend"):
        open_database("mysql://localhost/x")
    with pytest.raises(ConfigError, match="Invalid database URL"):
        open_database("not a url")


def test_readers_do_not_wait_for_a_writer(service: InventoryService, db: Database) -> None:
    """SQLite writers take the lock up front (BEGIN IMMEDIATE); readers must not queue
    behind them (the assessment reads usage while holding its write transaction)."""
    import time

    service.add_site(GUIAN, "t")
    with db.sessions.begin() as writer:
        writer.execute(text("UPDATE sites SET hub = 'changed'"))
        started = time.perf_counter()
        with db.readers() as reader:
            hub = reader.execute(text("SELECT hub FROM sites")).scalar()
        assert time.perf_counter() - started < 2.0
        assert hub == "guizhou"  # the writer has not committed yet
