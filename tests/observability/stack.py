"""A real gateway (uvicorn) over a real inventory + tenancy database (one migrated SQLite
file), fast fake engines, and the fleet collector on the gateway's registry."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from prometheus_client import CollectorRegistry

from scheduler.dashboard.wiring import observability
from scheduler.gateway.app import create_app
from scheduler.gateway.replicas import ReplicaEndpoint, ReplicaTable
from scheduler.inventory.service import InventoryService
from scheduler.observability.sources import directory_replica_counts
from scheduler.settings import Settings
from scheduler.store.db import Database
from scheduler.tenancy import TenancyService
from tests.fakes.openai_upstream import FakeUpstream
from tests.fakes.servers import serve_in_thread
from tests.observability.fleet_data import build_fleet

ADMIN_TOKEN = "adm-cl-obs-test-token"
MODEL = "demo"
T4_CLASS, T4_SITE = "guian/tesla-t4", "guian"


@dataclass
class Stack:
    url: str
    db: Database
    inventory: InventoryService
    tenancy: TenancyService
    table: ReplicaTable
    registry: CollectorRegistry
    upstreams: list[FakeUpstream]
    clients: list[Any] = field(default_factory=list)

    def tenant_key(self, name: str) -> str:
        self.tenancy.create_tenant(name)
        secret: str = self.tenancy.create_key(name).secret
        return secret

    def openai(self, key: str) -> openai.OpenAI:
        client = openai.OpenAI(api_key=key, base_url=self.url + "/v1", max_retries=0)
        self.clients.append(client)
        return client

    def wait_usage_flushed(self, timeout_s: float = 10.0) -> None:
        """Until the gateway's usage WAL has nothing pending (records are in the DB)."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=5) as c:
            while c.get("/healthz").json().get("usage_records_pending", 0) > 0:
                assert time.monotonic() < deadline, "usage records not flushed"
                time.sleep(0.05)


def _replica(rid: str, url: str, yuan_per_hour: float) -> ReplicaEndpoint:
    return ReplicaEndpoint(
        id=rid,
        base_url=url,
        model=MODEL,
        engine_model="engine-demo",
        quant="fp16",
        device_class=T4_CLASS,
        site=T4_SITE,
        yuan_per_hour=yuan_per_hour,
        state="ready",
    )


@contextlib.contextmanager
def run_stack(
    tmp: Path, setup: Callable[[InventoryService], None] | None = None
) -> Iterator[Stack]:
    """The gateway wired as ``cunliang up`` wires it (fleet collector + dashboard);
    ``setup(inventory)`` adds to the fleet before the gateway starts."""
    db, inventory = build_fleet(f"sqlite:///{tmp / 'cunliang.db'}")
    if setup is not None:
        setup(inventory)
    tenancy = TenancyService(db.sessions)
    ups = [FakeUpstream(served_model="engine-demo", record=False) for _ in range(2)]
    try:
        with (
            serve_in_thread(ups[0], lifespan="off") as u0,
            serve_in_thread(ups[1], lifespan="off") as u1,
        ):
            table = ReplicaTable([_replica("r0", u0, 0.2), _replica("r1", u1, 0.2)])
            obs = observability(
                db,
                inventory,
                tenancy,
                table,
                ADMIN_TOKEN,
                replicas=directory_replica_counts(table),
                cache_ttl_s=0.5,
            )
            app = create_app(
                Settings(data_dir=tmp),
                tenancy,
                table,
                obs.registry,
                admin_token=ADMIN_TOKEN,
                extra_routers=[obs.router],
            )
            obs.install(app)
            with serve_in_thread(app) as url:
                stack = Stack(url, db, inventory, tenancy, table, obs.registry, ups)
                try:
                    yield stack
                finally:
                    for c in stack.clients:
                        c.close()
    finally:
        db.dispose()
