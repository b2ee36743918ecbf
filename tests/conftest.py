"""Shared fixtures: a real PostgreSQL server for the session, and two database URLs
parametrised over SQLite (a file) and PostgreSQL (a fresh database per test):
``database_url`` is empty (no schema), ``migrated_database_url`` is at the Alembic head:
migrated once per session, then SQLite copies the file and PostgreSQL empties the tables
(TRUNCATE, and drops tables a test added), so a test pays milliseconds, not ~0.7 s.

PostgreSQL comes from the Debian package (``apt-get install -y postgresql``). initdb
refuses to run as root, so as root the server runs as the ``postgres`` user through
``runuser``. Without the binaries the postgresql cases are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests check behaviour, not speed: no per-example deadline (hypothesis's default
# 200 ms failed a schema property test once on a busy two-core machine). Timing lives in
# bench/.
settings.register_profile("cunliang", deadline=None)
settings.load_profile("cunliang")

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql)  # type: ignore[arg-type]


def _pg_tool(name: str) -> str | None:
    for folder in PG_BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    root = Path(tempfile.mkdtemp(prefix="cunliang-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    user = "postgres"
    subprocess.run(
        _as_postgres(
            [initdb, "-D", str(data), "-U", user, "-A", "trust", "--no-sync", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
    )
    port = _free_port()
    # durability off: test databases are thrown away, and this makes DDL ~10x faster
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    subprocess.run(
        _as_postgres(
            [pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield PostgresServer(host="127.0.0.1", port=port, user=user)
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no schema yet) on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cunliang.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:16]}"
    server.admin(f"CREATE DATABASE {name}")
    try:
        yield server.url(name)
    finally:
        server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def _migrated_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Lazily migrated templates: {"sqlite": file path, "postgresql": template db name}."""
    return {}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def migrated_database_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    _migrated_templates: dict[str, str],
) -> Iterator[str]:
    """A database already at the Alembic head (the real migrations, run once per session)."""
    from scheduler.store.db import upgrade

    if request.param == "sqlite":
        if "sqlite" not in _migrated_templates:
            template = tmp_path_factory.mktemp("template") / "template.db"
            upgrade(f"sqlite:///{template}")
            _migrated_templates["sqlite"] = str(template)
        target = tmp_path / "cunliang.db"
        shutil.copyfile(_migrated_templates["sqlite"], target)
        yield f"sqlite:///{target}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    if "postgresql" not in _migrated_templates:
        server.admin("CREATE DATABASE cunliang_migrated")
        upgrade(server.url("cunliang_migrated"))
        _migrated_templates["postgresql"] = ",".join(_pg_tables(server, "cunliang_migrated"))
    schema_tables = _migrated_templates["postgresql"].split(",")
    _pg_reset(server, "cunliang_migrated", schema_tables)
    yield server.url("cunliang_migrated")


def _pg_tables(server: PostgresServer, database: str) -> list[str]:
    import psycopg

    with psycopg.connect(
        host=server.host, port=server.port, user=server.user, dbname=database
    ) as c:
        rows = c.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return sorted(r[0] for r in rows)


def _pg_reset(server: PostgresServer, database: str, schema_tables: list[str]) -> None:
    """Empty every migrated table (identities restarted) and drop tables tests created."""
    import psycopg

    with psycopg.connect(
        host=server.host, port=server.port, user=server.user, dbname=database, autocommit=True
    ) as conn:
        for extra in set(_pg_tables(server, database)) - set(schema_tables):
            conn.execute(f'DROP TABLE "{extra}" CASCADE')  # type: ignore[arg-type]
        data = ", ".join(f'"{t}"' for t in schema_tables if t != "alembic_version")
        conn.execute(f"TRUNCATE {data} RESTART IDENTITY CASCADE")  # type: ignore[arg-type]
