"""One call that gives a gateway its fleet metrics and its dashboard.

    obs = observability(database, inventory, tenancy, directory, replicas, admin_token)
    app = create_app(..., obs.registry, extra_routers=[..., obs.router])
    obs.install(app)   # the fleet collector takes the fleet gauges' place on the registry

Both read the same cached fleet figures, so a scrape and a page view share one DB read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from prometheus_client import CollectorRegistry

from scheduler.dashboard.router import DashboardSources, dashboard_router
from scheduler.dashboard.usage import usage_reader
from scheduler.observability.collector import CachedProvider, install_fleet_collector
from scheduler.observability.sources import InventoryFleetSource, ReplicaCounts, no_replicas


@dataclass(frozen=True)
class Observability:
    registry: CollectorRegistry
    fleet: CachedProvider
    router: APIRouter

    def install(self, app: Any) -> None:
        """Register the fleet collector on the app's gateway metrics (after create_app)."""
        install_fleet_collector(self.registry, app.state.gateway.metrics, self.fleet)


def observability(
    database: Any,
    inventory: Any,
    tenancy: Any,
    directory: Any,
    admin_token: str,
    replicas: ReplicaCounts = no_replicas,
    cache_ttl_s: float = 5.0,
) -> Observability:
    """``database``: the inventory/tenancy ``Database`` (one DB holds both tables)."""
    fleet = CachedProvider(
        InventoryFleetSource(database, replicas), ttl_s=cache_ttl_s, background=True
    )
    sources = DashboardSources(
        inventory=inventory,
        tenancy=tenancy,
        fleet=fleet,
        directory=directory,
        usage=usage_reader(database.readers),
    )
    return Observability(CollectorRegistry(), fleet, dashboard_router(sources, admin_token))
