"""Opening the database and bringing its schema to the newest Alembic revision.

    db = open_database("sqlite:///.data/cunliang.db")   # or postgresql+psycopg://...
    upgrade(db.url)                                    # idempotent; run at every start
    with db.sessions.begin() as session: ...   # writes (SQLite: BEGIN IMMEDIATE)
    with db.readers() as session: ...          # reads (SQLite: deferred, never waits on a writer)

The Alembic scripts ship inside the package (``scheduler/store/migrations``) with their
own ``alembic.ini``, so upgrades never depend on the working directory. From a shell:
``alembic -c scheduler/store/alembic.ini -x url=<URL> upgrade head``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from scheduler.errors import ConfigError

# Newest revision under migrations/versions (tests/inventory/test_store.py checks it
# against Alembic's head): lets every CLI call skip importing Alembic when up to date.
SCHEMA_HEAD = "0004"

# SQLite waits this long for a competing writer before failing with "database is locked"
SQLITE_BUSY_TIMEOUT_S = 30.0
# execution option marking read-only work (see Database.readers)
READ_ONLY = "cunliang_read_only"


@dataclass(frozen=True)
class Database:
    url: str
    engine: Engine
    sessions: sessionmaker[Session]  # read-write
    readers: sessionmaker[Session]  # read-only work; on SQLite a deferred transaction

    def read_connection(self) -> Connection:
        return self.engine.execution_options(**{READ_ONLY: True}).connect()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        folder = Path(parsed.database).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"Cannot create the database folder {folder}: {exc.strerror}.",
                fix="set --data-dir or CUNLIANG_DATABASE_URL to a writable place.",
            ) from exc
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # let SQLAlchemy, not the sqlite3 module, decide when transactions begin
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front: two writers queue on the busy timeout
        # instead of one failing when it upgrades a read lock (SQLITE_BUSY_SNAPSHOT).
        # Readers begin deferred: under WAL they see a snapshot and never wait on a writer.
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def open_database(url: str, *, echo: bool = False) -> Database:
    """An engine and session factory for ``url`` (SQLite file or PostgreSQL)."""
    try:
        backend = make_url(url).get_backend_name()
    except Exception as exc:
        raise ConfigError(
            f"Invalid database URL {url!r}.",
            fix="use sqlite:///PATH or postgresql+psycopg://user:pass@host/db.",
        ) from exc
    if backend == "sqlite":
        engine = _sqlite_engine(url)
    elif backend == "postgresql":
        engine = create_engine(url, pool_pre_ping=True, echo=echo)
    else:
        raise ConfigError(
            f"Unsupported database backend {backend!r}.",
            fix="use sqlite:///PATH or postgresql+psycopg://user:pass@host/db.",
        )
    return Database(
        url=url,
        engine=engine,
        sessions=sessionmaker(engine, expire_on_commit=False),
        readers=sessionmaker(engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False),
    )


def alembic_config(url: str) -> Any:
    """The packaged Alembic configuration pointed at ``url``."""
    from alembic.config import Config

    here = resources.files("scheduler.store")
    config = Config(str(here.joinpath("alembic.ini")))
    config.set_main_option("script_location", str(here.joinpath("migrations")))
    # ConfigParser interpolates '%': escape it so passwords with % survive
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` to ``revision`` (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def ensure_schema(url: str) -> None:
    """``upgrade(url)`` unless the database already is at ``SCHEMA_HEAD`` (cheap check)."""
    db = open_database(url)
    try:
        with db.engine.connect() as connection:
            version = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except DBAPIError:
        version = None  # a fresh database: no alembic_version table yet
    finally:
        db.dispose()
    if version != SCHEMA_HEAD:
        upgrade(url)


def current_revision(url: str) -> str | None:
    """The Alembic revision the database is at, None when never migrated."""
    from alembic.runtime.migration import MigrationContext

    db = open_database(url)
    try:
        with db.engine.connect() as connection:
            rev: str | None = MigrationContext.configure(connection).get_current_revision()
            return rev
    finally:
        db.dispose()
