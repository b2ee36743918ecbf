"""Tenancy tables and the queries on them: tenants, API keys (hashes only), usage records.

Only this module (in the tenancy area) imports sqlalchemy; ``scheduler.tenancy`` turns the
rows into frozen dataclasses. Functions take an open ``Session`` and never commit: the caller
owns the transaction.
"""

from __future__ import annotations

import functools
import operator
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from scheduler.store import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class TenantRow(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    allowed_models: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    requests_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_per_min: Mapped[int | None] = mapped_column(Integer, nullable=True)
    daily_token_budget: Mapped[int | None] = mapped_column(Integer, nullable=True)
    monthly_token_budget: Mapped[int | None] = mapped_column(Integer, nullable=True)
    daily_yuan_budget: Mapped[float | None] = mapped_column(Float, nullable=True)
    monthly_yuan_budget: Mapped[float | None] = mapped_column(Float, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)  # visible, e.g. sk-cl-Ab3x
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class UsageRow(Base):
    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    model: Mapped[str] = mapped_column(String(128), nullable=False)
    quant: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    replica_id: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    device_class: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    site: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    cost_yuan: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    status: Mapped[int] = mapped_column(Integer, nullable=False)  # HTTP status sent
    stream: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


# ---- queries ---------------------------------------------------------------------------


def tenant_by_name(session: Session, name: str) -> TenantRow | None:
    return session.scalars(select(TenantRow).where(TenantRow.name == name)).first()


def all_tenants(session: Session) -> Sequence[TenantRow]:
    return session.scalars(select(TenantRow).order_by(TenantRow.name)).all()


def key_by_hash(session: Session, key_sha256: str) -> tuple[ApiKeyRow, TenantRow] | None:
    row = session.execute(
        select(ApiKeyRow, TenantRow)
        .join(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
        .where(ApiKeyRow.key_sha256 == key_sha256)
    ).first()
    return (row[0], row[1]) if row else None


def keys_of(session: Session, tenant_id: int | None) -> Sequence[tuple[ApiKeyRow, str]]:
    query = select(ApiKeyRow, TenantRow.name).join(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
    if tenant_id is not None:
        query = query.where(ApiKeyRow.tenant_id == tenant_id)
    rows = session.execute(query.order_by(ApiKeyRow.created_at, ApiKeyRow.id)).all()
    return [(r[0], r[1]) for r in rows]


# the columns a usage record fills, in table order (the id is the database's)
USAGE_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in cast(Table, UsageRow.__table__).columns if c.name != "id"
)
_usage_values = operator.attrgetter(*USAGE_COLUMNS)
_CREATED_AT = USAGE_COLUMNS.index("created_at")


def insert_usage(session: Session, records: Sequence[Any]) -> int:
    """Insert usage records (objects with an attribute per ``USAGE_COLUMNS`` name, e.g.
    ``tenancy.UsageRecord``; ``created_at`` timezone-aware) whose request id is not stored
    yet; returns how many were new.

    The gateway's flush moves a second of traffic at a time (thousands of rows), in a thread
    that shares the GIL with the gateway's event loop: ``INSERT ... VALUES (...), (...), ...
    ON CONFLICT (request_id) DO NOTHING`` of up to ``_ROWS_PER_INSERT`` rows per statement,
    values straight from the records to the driver, without SQLAlchemy's per-row bind
    processing (~60% more CPU per row). Statements of many rows rather than an executemany
    of one row each: the driver lets go of the GIL around every statement it runs, so the
    flush handed the GIL to the event loop and waited for it back once per row; with them,
    the flush threads' share of the gateway process's CPU fell from 11% to 9% (c=32,
    flushes of ~500 rows) and an insert's CPU per row by ~20%."""
    if not records:
        return 0
    connection = session.connection()
    dialect = connection.dialect
    sqlite = dialect.name == "sqlite"
    per_statement = _ROWS_PER_INSERT
    if sqlite:  # SQLite before 3.32 binds at most 999 values per statement
        limit = _sqlite_variable_limit(connection) // len(USAGE_COLUMNS)
        per_statement = max(1, min(per_statement, limit))
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    inserted = 0
    for start in range(0, len(records), per_statement):
        chunk = records[start : start + per_statement]
        values: list[Any] = []
        for record in chunk:
            row = _usage_values(record)
            values.extend(row)
            created_at = row[_CREATED_AT].astimezone(UTC)
            # SQLite: how SQLAlchemy's DateTime stores a value, naive UTC text with always 6
            # digits of us ("YYYY-MM-DD HH:MM:SS.ffffff"), cut from isoformat's
            # ("...ffffff+00:00"): 40% less CPU per row than strftime("%Y-%m-%d %H:%M:%S.%f")
            values[_CREATED_AT - len(row)] = (
                created_at.isoformat(" ", "microseconds")[:26] if sqlite else created_at
            )
        result = connection.exec_driver_sql(_insert_sql(mark, len(chunk)), tuple(values))
        inserted += int(result.rowcount)
    return inserted


_ROWS_PER_INSERT = 250  # rows per INSERT statement (4,000 values)


@functools.lru_cache(maxsize=16)  # a full statement's, and the last ones of each flush
def _insert_sql(mark: str, rows: int) -> str:
    one = f"({', '.join([mark] * len(USAGE_COLUMNS))})"
    return (
        f"INSERT INTO {UsageRow.__tablename__} ({', '.join(USAGE_COLUMNS)}) "
        f"VALUES {', '.join([one] * rows)} ON CONFLICT (request_id) DO NOTHING"
    )


def _sqlite_variable_limit(connection: Any) -> int:
    """How many values one SQLite statement may bind on this connection."""
    dbapi = connection.connection.dbapi_connection
    return int(dbapi.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))


def usage_totals(
    session: Session, tenant_id: int, since: datetime, until: datetime | None = None
) -> Sequence[tuple[str, int, int, int, float]]:
    """[(model, requests, prompt_tokens, completion_tokens, cost_yuan)] for a tenant."""
    query = select(
        UsageRow.model,
        func.count(UsageRow.id),
        func.coalesce(func.sum(UsageRow.prompt_tokens), 0),
        func.coalesce(func.sum(UsageRow.completion_tokens), 0),
        func.coalesce(func.sum(UsageRow.cost_yuan), 0.0),
    ).where(UsageRow.tenant_id == tenant_id, UsageRow.created_at >= since)
    if until is not None:
        query = query.where(UsageRow.created_at < until)
    rows = session.execute(query.group_by(UsageRow.model).order_by(UsageRow.model)).all()
    return [(str(m), int(n), int(p), int(c), float(y)) for m, n, p, c, y in rows]


# libpq parameters: a database that stops answering (a network partition) fails a usage
# flush in about a minute, its records then waiting in the WAL as for one that refuses,
# rather than hanging it for TCP's retransmissions (~15 min) while records pile up in memory
POSTGRES_NETWORK_TIMEOUTS: dict[str, Any] = {
    "connect_timeout": 10,  # s, per connection attempt
    "keepalives": 1,
    "keepalives_idle": 30,  # s without traffic before the first probe
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,  # ms that sent data may stay unacknowledged
}


def session_factory(url: str, *, create_tables: bool = False) -> sessionmaker[Session]:
    """A sessionmaker for ``url``; SQLite gets WAL journalling and a busy timeout so the
    gateway's usage writer and admin reads do not fail on each other's locks; PostgreSQL
    gets network timeouts (``POSTGRES_NETWORK_TIMEOUTS``, where the URL does not set them)."""
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args = {k: v for k, v in POSTGRES_NETWORK_TIMEOUTS.items() if k not in parsed.query}
    engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    if create_tables:
        Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)
