"""Fleet files <-> inventory rows: register hundreds of machines at once, export them back.

Parsing the YAML is ``scheduler.fleetfile``'s job (one parser for the whole project); this
module turns its domain ``Fleet`` into sites, nodes and devices to insert, and the inventory
back into a document of the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.catalog import lookup_device
from scheduler.domain import GIB, DeviceClass, DeviceKind, Fleet, LifecycleState
from scheduler.errors import Conflict, InvalidInput
from scheduler.fleetfile import FleetFile, dump_fleet_file, slug
from scheduler.inventory import snapshot
from scheduler.inventory.records import audit_row, resolve_device, write_audit
from scheduler.inventory.schemas import DeviceIn, NodeIn, SiteIn, TouBandIn
from scheduler.store.inventory import SiteRow


@dataclass(frozen=True)
class ImportPlan:
    sites: tuple[SiteIn, ...]
    nodes: tuple[NodeIn, ...]
    devices: dict[str, list[dict[str, Any]]]  # {host: [device columns]}


def host_names(cls: DeviceClass) -> list[str]:
    """The class's own node ids when the file gives them, else ``<site>-<device>-<mem>g-<nnnn>``."""
    nodes = math.ceil(cls.count / max(1, cls.per_node))
    if cls.node_ids:
        return list(cls.node_ids[:nodes])
    stem = f"{cls.site.name}-{slug(cls.spec.model)}-{cls.spec.memory_bytes // GIB}g"
    return [f"{stem}-{i:04d}" for i in range(1, nodes + 1)]


def _sockets(cls: DeviceClass) -> int:
    """A CPU class's spec is a whole server: sockets = its cores / the catalogue's per socket."""
    base = lookup_device(cls.spec.model)
    if cls.spec.kind is not DeviceKind.CPU or base is None or not base.cores:
        return 1
    return max(1, round(cls.spec.cores / base.cores))


def _device_in(cls: DeviceClass, count: int) -> DeviceIn:
    spec, money = cls.spec, cls.economics
    cc = spec.compute_capability
    return DeviceIn(
        model=spec.model,
        kind=spec.kind,
        vendor=spec.vendor,
        count=count,
        memory_bytes=spec.memory_bytes,
        compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
        isa_flags=sorted(spec.isa_flags),
        sockets=_sockets(cls),
        memory_bandwidth_bytes_per_s=spec.memory_bandwidth_bytes_per_s,
        tdp_watts=spec.tdp_watts,
        residual_yuan=money.residual_yuan,
        purchase_yuan=money.purchase_yuan,
        depreciation_years=money.remaining_life_years,  # no in-service date: remaining life
        ops_yuan_per_hour=money.ops_yuan_per_hour,
        host_watts=money.host_watts,
    )


def plan_import(fleet: Fleet) -> ImportPlan:
    """Sites as given; each class becomes ceil(count / per_node) nodes holding ``per_node``
    devices each (the last one the rest), named by the file's node_ids or generated."""
    sites = tuple(
        SiteIn(
            name=s.name,
            region=s.region,
            hub=s.hub,
            tariff_yuan_per_kwh=s.tariff_yuan_per_kwh,
            pue=s.pue,
            tou_bands=[TouBandIn(**vars(b)) for b in s.tou_bands],
            rtt_ms=dict(s.rtt_ms),
        )
        for s in fleet.sites
    )
    nodes: list[NodeIn] = []
    devices: dict[str, list[dict[str, Any]]] = {}
    for cls in fleet.classes:
        per_node = max(1, cls.per_node)
        resolved = resolve_device(_device_in(cls, 1), f"fleet class {cls.id}")
        left = cls.count
        for host in host_names(cls):
            n = min(per_node, left)
            left -= n
            if host in devices:
                raise InvalidInput(f"fleet class {cls.id}: host {host!r} appears twice.")
            # already validated as a whole above; skip re-validating thousands of rows
            nodes.append(
                NodeIn.model_construct(
                    host=host,
                    site=cls.site.name,
                    labels={"class": cls.id},
                    ray_node_id=None,
                    devices=[],
                )
            )
            devices[host] = [{**resolved, "slot": slot} for slot in range(n)]
    return ImportPlan(sites=sites, nodes=tuple(nodes), devices=devices)


def upsert_sites(session: Session, sites: Sequence[SiteIn], now: datetime, actor: str) -> int:
    """Insert sites that do not exist; an existing site must match (or it is a Conflict)."""
    existing = {s.name: s for s in session.scalars(select(SiteRow))}
    added = []
    for site in sites:
        row = existing.get(site.name)
        if row is not None:
            if (row.region, row.tariff_yuan_per_kwh, row.pue) != (
                site.region,
                site.tariff_yuan_per_kwh,
                site.pue,
            ):
                raise Conflict(
                    f"Site {site.name!r} exists with other region/tariff/PUE than the file's.",
                    fix="rename the site in the file, or align the figures.",
                )
            continue
        session.add(
            SiteRow(
                name=site.name,
                hub=site.hub,
                region=site.region,
                tariff_yuan_per_kwh=site.tariff_yuan_per_kwh,
                tou_bands=[b.model_dump() for b in site.tou_bands],
                pue=site.pue,
                latency_class=site.latency_class,
                rtt_ms=site.rtt_ms,
                created_at=now,
            )
        )
        added.append(audit_row(now, "site", site.name, "add", actor, reason="fleet import"))
    session.flush()
    write_audit(session, added)
    return len(added)


def export(session: Session, now: datetime) -> str:
    """Everything not retired as fleet-file YAML (``scheduler.fleetfile`` format): one
    entry per identical device set, its hosts as ``node_ids`` so an import restores them."""
    live = tuple(s for s in LifecycleState if s is not LifecycleState.RETIRED)
    fleet, demands, models = snapshot.build(session, now, states=live)
    return dump_fleet_file(FleetFile(fleet=fleet, models=models, demands=demands))
