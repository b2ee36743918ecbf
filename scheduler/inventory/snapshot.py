"""Inventory -> the placement optimiser's view: ``(Fleet, demands, models)``.

Only admitted devices are offered. Identical devices at one site — same kind, model,
memory and devices-per-node — form one ``DeviceClass`` whose ``node_ids`` are the hosts
holding them; economics are the class average (devices of one class are bought alike).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from statistics import fmean
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.catalog import lookup_device
from scheduler.domain import (
    Demand,
    DeviceClass,
    DeviceKind,
    DeviceSpec,
    Economics,
    Fleet,
    LifecycleState,
    ModelSpec,
    Quant,
)
from scheduler.fleetfile import slug
from scheduler.inventory.admission import stored_economics, to_site
from scheduler.inventory.demand import model_specs
from scheduler.inventory.economics import to_economics
from scheduler.inventory.efficiency import EfficiencyCache
from scheduler.store.inventory import DeviceRow, NodeRow, ProfileRow, SiteRow


@dataclass(frozen=True)
class _Key:
    site: str
    kind: str
    model: str
    memory_bytes: int
    per_node: int


def to_spec(row: Any) -> DeviceSpec:
    """Catalogue figures for the model, overridden by what the inventory knows."""
    base = lookup_device(row.model) or DeviceSpec(model=row.model, kind=DeviceKind(row.kind))
    cc = None
    if row.compute_capability:
        major, minor = row.compute_capability.split(".")
        cc = (int(major), int(minor))
    sockets = row.sockets if row.kind == DeviceKind.CPU else 1
    return replace(
        base,
        kind=DeviceKind(row.kind),
        # catalogue CPU figures are per socket; bandwidth and TDP are stored as totals
        fp16_flops=base.fp16_flops * sockets,
        fp32_flops=base.fp32_flops * sockets,
        int8_ops=base.int8_ops * sockets,
        vendor=row.vendor or base.vendor,
        memory_bytes=row.memory_bytes,
        memory_bandwidth_bytes_per_s=row.memory_bandwidth_bytes_per_s
        or base.memory_bandwidth_bytes_per_s,
        tdp_watts=row.tdp_watts or base.tdp_watts,
        compute_capability=cc or base.compute_capability,
        isa_flags=frozenset(row.isa_flags) or base.isa_flags,
        cores=base.cores * sockets,
        # the inventory stores no cache size: catalogue CPUs get their L3 per socket,
        # others none (no cache tier; real models outgrow any LLC anyway)
        llc_bytes=base.llc_bytes * sockets,
    )


def class_id(key: _Key, ambiguous: bool = False) -> str:
    """``<site>/<model slug>``: the id fleet files and the Helm chart's Ray resources use.

    Only when one site holds the same model in different memory sizes or server shapes
    (``ambiguous``) is ``-<GiB>g-x<per node>`` appended to tell the classes apart.
    """
    base = f"{key.site}/{slug(key.model)}"
    return f"{base}-{key.memory_bytes // 2**30}g-x{key.per_node}" if ambiguous else base


def _class_ids(keys: list[_Key]) -> dict[_Key, str]:
    stems = Counter((k.site, k.model) for k in keys)
    return {k: class_id(k, ambiguous=stems[(k.site, k.model)] > 1) for k in keys}


def build(
    session: Session,
    now: datetime,
    states: tuple[LifecycleState, ...] = (LifecycleState.ADMITTED,),
    fits: EfficiencyCache | None = None,
) -> tuple[Fleet, tuple[Demand, ...], dict[str, ModelSpec]]:
    """Devices in ``states`` (placement: admitted only) as classes, plus demands and models.

    A class's ``efficiency`` is fitted on the engine rows of its hosts' newest profiles
    that measured its devices (see :mod:`scheduler.inventory.efficiency`); empty (the
    perf model's defaults) when none did. ``fits`` keeps fits across calls.
    """
    fits = fits if fits is not None else EfficiencyCache()
    sites = {s.id: s for s in session.scalars(select(SiteRow).order_by(SiteRow.name))}
    rows = session.execute(
        select(DeviceRow, NodeRow.host, NodeRow.site_id)
        .join(NodeRow, NodeRow.id == DeviceRow.node_id)
        .where(DeviceRow.state.in_([str(s) for s in states]))
        .order_by(NodeRow.host, DeviceRow.slot)
    ).all()
    per_node: dict[tuple[str, str, int], int] = defaultdict(int)
    for device, host, _ in rows:
        per_node[(host, device.model, device.memory_bytes)] += 1
    groups: dict[_Key, list[tuple[DeviceRow, str]]] = defaultdict(list)
    for device, host, site_id in rows:
        key = _Key(
            site=sites[site_id].name,
            kind=device.kind,
            model=device.model,
            memory_bytes=device.memory_bytes,
            per_node=per_node[(host, device.model, device.memory_bytes)],
        )
        groups[key].append((device, host))
    newest = _newest_profiles(session)
    site_by_name = {s.name: to_site(s) for s in sites.values()}
    today = now.date()
    ids = _class_ids(list(groups))
    classes = []
    for key, members in sorted(groups.items(), key=lambda kv: ids[kv[0]]):
        hosts = tuple(sorted({h for _, h in members}))
        proven = [newest[h].quants if h in newest else frozenset[Quant]() for h in hosts]
        # a quantisation counts as proven for the class only if every node proved it
        measured = frozenset.intersection(*proven) if all(proven) else frozenset[Quant]()
        spec = to_spec(members[0][0])
        classes.append(
            DeviceClass(
                id=ids[key],
                site=site_by_name[key.site],
                spec=spec,
                count=len(members),
                per_node=key.per_node,
                economics=_mean_economics(
                    [to_economics(stored_economics(d), today) for d, _ in members]
                ),
                measured_quants=measured,
                efficiency=_class_efficiency(session, spec, members, newest, fits),
                node_ids=hosts,
            )
        )
    models, demands = model_specs(session)
    fleet = Fleet(sites=tuple(site_by_name.values()), classes=tuple(classes))
    return fleet, demands, {m.name: m for m in models}


def _mean_economics(items: list[Economics]) -> Economics:
    return Economics(
        residual_yuan=fmean(e.residual_yuan for e in items),
        remaining_life_years=fmean(e.remaining_life_years for e in items),
        ops_yuan_per_hour=fmean(e.ops_yuan_per_hour for e in items),
        host_watts=fmean(e.host_watts for e in items),
        average_utilisation=fmean(e.average_utilisation for e in items),
    )


@dataclass(frozen=True)
class _Newest:
    """A host's newest profile: its row id and version, and the quantisations it proved."""

    profile_id: int
    version: int
    quants: frozenset[Quant]


def _newest_profiles(session: Session) -> dict[str, _Newest]:
    """Each host's newest profile (quants empty = none stated). Payloads are not loaded."""
    newest = (
        select(ProfileRow.node_id, func.max(ProfileRow.version).label("version"))
        .group_by(ProfileRow.node_id)
        .subquery()
    )
    query = (
        select(NodeRow.host, ProfileRow.id, ProfileRow.version, ProfileRow.quants)
        .join(ProfileRow, ProfileRow.node_id == NodeRow.id)
        .join(
            newest,
            (newest.c.node_id == ProfileRow.node_id) & (newest.c.version == ProfileRow.version),
        )
    )
    out: dict[str, _Newest] = {}
    for host, profile_id, version, quants in session.execute(query):
        valid = [Quant(q) for q in quants if q in Quant._value2member_map_]
        out[host] = _Newest(profile_id, version, frozenset(valid))
    return out


def _class_efficiency(
    session: Session,
    spec: DeviceSpec,
    members: list[tuple[DeviceRow, str]],
    newest: dict[str, _Newest],
    fits: EfficiencyCache,
) -> dict[str, float]:
    """Factors fitted on the newest profiles of the class's hosts, where a profile's
    ``device_figures`` name one of the class's devices on that host; {} when none do."""
    slots: dict[str, set[int]] = defaultdict(set)
    for device, host in members:
        if host in newest:
            slots[host].add(device.slot)
    if not slots:
        return {}
    profiles = {newest[h].profile_id: frozenset(s) for h, s in slots.items()}

    def load(ids: Sequence[int]) -> list[tuple[int, dict[str, Any]]]:
        out = []
        for start in range(0, len(ids), 500):  # bounded IN lists
            chunk = list(ids[start : start + 500])
            query = select(ProfileRow.id, ProfileRow.payload).where(ProfileRow.id.in_(chunk))
            out += [(i, p if isinstance(p, dict) else {}) for i, p in session.execute(query)]
        return out

    return fits.get(spec, profiles, load)
