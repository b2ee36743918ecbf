"""Inventory fixtures: a migrated database on each backend and a service over it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scheduler.inventory.schemas import DeviceIn, NodeIn, SiteIn
from scheduler.inventory.service import InventoryService
from scheduler.store.db import Database, open_database
from tests.fakes.inventory import FakeClock, FakeReplicas, FakeUsage


@pytest.fixture
def db(migrated_database_url: str) -> Iterator[Database]:
    database = open_database(migrated_database_url)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def usage() -> FakeUsage:
    return FakeUsage()


@pytest.fixture
def replicas() -> FakeReplicas:
    return FakeReplicas()


@pytest.fixture
def service(
    db: Database, clock: FakeClock, usage: FakeUsage, replicas: FakeReplicas
) -> InventoryService:
    return InventoryService(db, usage=usage, replicas=replicas, clock=clock)


GUIAN = SiteIn(name="guian", hub="guizhou", region="west", tariff_yuan_per_kwh=0.35, pue=1.25)
SHANGHAI = SiteIn(
    name="shanghai", hub="yangtze-delta", region="east", tariff_yuan_per_kwh=0.82, pue=1.55
)


def t4_node(host: str, site: str = "guian", count: int = 4) -> NodeIn:
    return NodeIn(
        host=host, site=site, devices=[DeviceIn(model="Tesla T4", count=count, residual_yuan=3500)]
    )


@pytest.fixture
def two_sites(service: InventoryService) -> InventoryService:
    service.add_site(GUIAN, "test")
    service.add_site(SHANGHAI, "test")
    return service
