"""A real inventory admin API served over HTTP for tests of its clients (agent, join)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from fastapi import FastAPI

from scheduler.api.errors import install_error_handlers
from scheduler.inventory.router import inventory_router
from scheduler.inventory.schemas import SiteIn
from scheduler.inventory.service import InventoryService
from scheduler.store.db import open_database, upgrade
from tests.fakes.servers import serve_in_thread


@contextlib.contextmanager
def served_inventory(tmp_path: Path, token: str) -> Iterator[tuple[str, InventoryService]]:
    """A migrated SQLite inventory with site ``lab``, its admin API on a free port:
    yields (base URL, the service behind it)."""
    url = f"sqlite:///{tmp_path / 'inv.db'}"
    upgrade(url)
    db = open_database(url)
    service = InventoryService(db)
    service.add_site(SiteIn(name="lab", region="t", tariff_yuan_per_kwh=0.6, pue=1.4), actor="t")
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(inventory_router(service, token))
    try:
        with serve_in_thread(app) as base:
            yield base, service
    finally:
        db.dispose()
