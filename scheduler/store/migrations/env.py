"""Alembic environment: one history for every table on ``scheduler.store.Base``."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from sqlalchemy import DateTime

import scheduler.store.inventory
import scheduler.store.models_demand
import scheduler.store.runtime
import scheduler.store.tenancy  # noqa: F401  (registers tables on Base)
from scheduler.store import Base
from scheduler.store.db import open_database
from scheduler.store.types import UtcDateTime

config = context.config
target_metadata = Base.metadata


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    # migrations must not import application types: render UtcDateTime as a plain DateTime
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, DateTime):
        return False
    return False


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    return url or str(config.get_main_option("sqlalchemy.url"))


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    db = open_database(_url())
    try:
        with db.engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=True,  # SQLite ALTER TABLE goes through copy-and-move
                render_item=_render_item,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        db.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
