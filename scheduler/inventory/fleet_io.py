"""Fleet files <-> inventory rows: register hundreds of machines at once, export them back.

Parsing the YAML is ``scheduler.fleetfile``'s job (one parser for the whole project); this
module turns its domain ``Fleet`` into sites, nodes and devices to insert, and the inventory
back into a document of the same shape.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.domain import GIB, DeviceClass, DeviceKind, Fleet, LifecycleState
from scheduler.errors import Conflict
from scheduler.inventory.admission import stored_economics
from scheduler.inventory.demand import arch_to_dict, model_specs
from scheduler.inventory.economics import residual_and_life
from scheduler.inventory.records import audit_row, resolve_device, write_audit
from scheduler.inventory.schemas import DeviceIn, NodeIn, SiteIn, TouBandIn
from scheduler.store.inventory import DeviceRow, NodeRow, SiteRow


@dataclass(frozen=True)
class ImportPlan:
    sites: tuple[SiteIn, ...]
    nodes: tuple[NodeIn, ...]
    devices: dict[str, list[dict[str, Any]]]  # {host: [device columns]}


def host_name(cls: DeviceClass, index: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", cls.spec.model.lower()).strip("-")
    return f"{cls.site.name}-{slug}-{cls.spec.memory_bytes // GIB}g-{index:04d}"


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
        memory_bandwidth_bytes_per_s=spec.memory_bandwidth_bytes_per_s,
        tdp_watts=spec.tdp_watts,
        residual_yuan=money.residual_yuan,
        depreciation_years=money.remaining_life_years,
        ops_yuan_per_hour=money.ops_yuan_per_hour,
        host_watts=money.host_watts,
    )


def plan_import(fleet: Fleet) -> ImportPlan:
    """Sites as given; each class becomes ceil(count / per_node) nodes named
    ``<site>-<model>-<mem>g-<nnnn>`` holding ``per_node`` devices (the last one the rest)."""
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
    used: defaultdict[str, int] = defaultdict(int)
    for cls in fleet.classes:
        per_node = max(1, cls.per_node)
        left = cls.count
        resolved = resolve_device(_device_in(cls, 1), f"fleet class {cls.id}")
        for _ in range(math.ceil(cls.count / per_node)):
            n = min(per_node, left)
            left -= n
            base = host_name(cls, 0)[:-4]
            used[base] += 1
            host = f"{base}{used[base]:04d}"
            node = NodeIn.model_construct(
                host=host,
                site=cls.site.name,
                labels={"class": cls.id},
                ray_node_id=None,
                devices=[_device_in(cls, n)],
            )
            nodes.append(node)
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


def export(session: Session, now: datetime) -> dict[str, Any]:
    """Everything not retired, grouped like a fleet file (one entry per identical set)."""
    sites = session.scalars(select(SiteRow).order_by(SiteRow.name)).all()
    site_names = {s.id: s.name for s in sites}
    rows = session.execute(
        select(DeviceRow, NodeRow.host, NodeRow.site_id)
        .join(NodeRow, NodeRow.id == DeviceRow.node_id)
        .where(DeviceRow.state != str(LifecycleState.RETIRED))
        .order_by(NodeRow.host, DeviceRow.slot)
    ).all()
    per_host: defaultdict[tuple[str, str], int] = defaultdict(int)
    for d, host, _ in rows:
        per_host[(host, d.model)] += 1
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for d, host, site_id in rows:
        residual, _life = residual_and_life(stored_economics(d), now.date())
        key = (
            site_names[site_id],
            d.model,
            d.memory_bytes,
            per_host[(host, d.model)],
            round(residual, 2),
            d.tdp_watts,
            d.kind,
            d.sockets,
        )
        entry = groups.setdefault(
            key,
            {
                "site": key[0],
                "device": d.model,
                "memory_gb": round(d.memory_bytes / GIB, 3),
                "count": 0,
                "per_node": key[3],
                "residual_yuan": key[4],
                "board_watts": d.tdp_watts,
                **({"kind": "cpu", "sockets": d.sockets} if d.kind == DeviceKind.CPU else {}),
            },
        )
        entry["count"] += 1
    models, demands = model_specs(session)
    return {
        "currency": "CNY",
        "sites": [
            {
                "name": s.name,
                "hub": s.hub,
                "region": s.region,
                "tariff_yuan_per_kwh": s.tariff_yuan_per_kwh,
                "pue": s.pue,
                **({f"rtt_ms_to_{k}": v for k, v in s.rtt_ms.items()}),
            }
            for s in sites
        ],
        "fleet": list(groups.values()),
        "models": [{"name": m.name, **arch_to_dict(m.arch)} for m in models],
        "quantisations": sorted({str(q) for m in models for q in m.allowed_quants}),
        "demand": [
            {
                "model": d.model,
                "output_tokens_per_s": d.output_tokens_per_s,
                "prompt_tokens": d.prompt_tokens,
                "output_tokens": d.output_tokens,
                "tpot_ms": d.tpot_ms,
                "ttft_ms": d.ttft_ms,
                "regions": list(d.regions),
                **({"class": d.klass} if d.klass != "interactive" else {}),
            }
            for d in demands
        ],
    }
