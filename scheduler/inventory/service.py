"""The inventory service: the one place with inventory logic (REST API and CLI both call it).

Every public method is one database transaction: it either writes everything (rows and
their audit entries) or nothing. Side effects outside the database (usage records, the
runtime's replica count, the clock) come in through the constructor.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from scheduler.domain import Demand, Fleet, LifecycleState, ModelSpec
from scheduler.errors import Conflict, InvalidInput, NotFound
from scheduler.inventory import admission, assessment, demand, fleet_io, snapshot
from scheduler.inventory.efficiency import EfficiencyCache
from scheduler.inventory.ports import NoRuntime, NoUsage, ReplicaCounter, UsageSource
from scheduler.inventory.records import (
    apply_transitions,
    audit_row,
    chunks,
    resolve_device,
    write_audit,
)
from scheduler.inventory.schemas import (
    AssessmentOut,
    AuditOut,
    DemandIn,
    DemandOut,
    DeviceOut,
    FromUsageIn,
    HealthIn,
    ImportOut,
    ModelIn,
    ModelOut,
    NodeDetail,
    NodeIn,
    NodeOut,
    ProfileIn,
    ProfileOut,
    ProfileResult,
    SiteIn,
    SiteOut,
    SiteReportRow,
    TouBandIn,
    TransitionOut,
)
from scheduler.lifecycle import AdmissionPolicy, check_transition
from scheduler.store.db import Database
from scheduler.store.inventory import AuditRow, DeviceRow, NodeRow, ProfileRow, SiteRow
from scheduler.store.types import utcnow

S = LifecycleState


class InventoryService:
    def __init__(
        self,
        db: Database,
        *,
        policy: AdmissionPolicy | None = None,
        usage: UsageSource | None = None,
        replicas: ReplicaCounter | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self.policy = policy or AdmissionPolicy()
        self._usage: UsageSource = usage or NoUsage()
        self._replicas: ReplicaCounter = replicas or NoRuntime()
        self._clock = clock
        # fitted efficiency factors by (class spec, profiles): snapshot() runs every tick
        self._fits = EfficiencyCache()

    # ── sites ────────────────────────────────────────────────────────────────────
    def add_site(self, site: SiteIn, actor: str) -> SiteOut:
        now = self._clock()
        try:
            with self._db.sessions.begin() as session:
                if session.scalar(select(SiteRow.id).where(SiteRow.name == site.name)):
                    raise Conflict(f"Site {site.name!r} already exists.")
                session.add(_site_row(site, now))
                session.flush()
                write_audit(
                    session,
                    [audit_row(now, "site", site.name, "add", actor, figures=_site_figs(site))],
                )
        except IntegrityError as exc:
            raise Conflict(f"Site {site.name!r} already exists.") from exc
        return SiteOut(**site.model_dump())

    def list_sites(self) -> list[SiteOut]:
        with self._db.readers() as session:
            nodes = dict(
                session.execute(
                    select(NodeRow.site_id, func.count()).group_by(NodeRow.site_id)
                ).all()
            )
            devices = dict(
                session.execute(
                    select(NodeRow.site_id, func.count(DeviceRow.id))
                    .join(DeviceRow, DeviceRow.node_id == NodeRow.id)
                    .group_by(NodeRow.site_id)
                ).all()
            )
            rows = session.scalars(select(SiteRow).order_by(SiteRow.name)).all()
            return [_site_out(r, nodes.get(r.id, 0), devices.get(r.id, 0)) for r in rows]

    def site_report(self, window_hours: float | None = None) -> list[SiteReportRow]:
        """Sites ranked by tokens/yuan over the window (东数西算 hub roll-up)."""
        now = self._clock()
        window = assessment.window_of(self.policy, window_hours)
        with self._db.readers() as session:
            return assessment.site_report(session, self._usage, now, window)

    def site_action(
        self, name: str, action: str, actor: str, reason: str, *, replicas_moved: bool = False
    ) -> TransitionOut:
        """Put a whole site on probation, drain it, or retire it."""
        target = {"probation": S.PROBATION, "drain": S.DRAINING, "retire": S.RETIRED}.get(action)
        if target is None:
            raise InvalidInput(f"Unknown site action {action!r}: probation, drain or retire.")
        with self._db.sessions.begin() as session:
            site_id = session.scalar(select(SiteRow.id).where(SiteRow.name == name))
            if site_id is None:
                raise NotFound(f"Unknown site {name!r}.", fix="list sites: cunliang site list.")
            devices = _device_states(session, NodeRow.site_id == site_id)
            evidence = (
                self._check_no_replicas(devices, replicas_moved) if target is S.RETIRED else {}
            )
            return self._move(session, f"site {name}", devices, target, actor, reason, evidence)

    # ── nodes ────────────────────────────────────────────────────────────────────
    def register_node(self, node: NodeIn, actor: str) -> NodeOut:
        self.register_nodes([node], actor)
        return self.get_node(node.host).node

    def register_nodes(self, nodes: Sequence[NodeIn], actor: str) -> int:
        """Register nodes with their devices in one transaction; returns devices written.

        Unknown site -> NotFound; a host already registered (also by a concurrent caller,
        caught by the unique constraint) -> Conflict; bad device figures -> InvalidInput.
        """
        hosts = [n.host for n in nodes]
        if dupes := sorted(h for h, c in Counter(hosts).items() if c > 1):
            raise InvalidInput(f"Hosts listed twice: {', '.join(dupes[:10])}.")
        device_rows = {n.host: _expand_devices(n) for n in nodes}  # validates before writing
        now = self._clock()
        try:
            with self._db.sessions.begin() as session:
                return self._insert_nodes(session, nodes, device_rows, now, actor)
        except IntegrityError as exc:
            raise Conflict(
                f"A host in this request is already registered ({_first_line(exc)}).",
                fix="list nodes with cunliang node list; hosts are unique.",
            ) from exc

    def _insert_nodes(
        self,
        session: Session,
        nodes: Sequence[NodeIn],
        device_rows: dict[str, list[dict[str, Any]]],
        now: datetime,
        actor: str,
    ) -> int:
        site_names = sorted({n.site for n in nodes})
        sites = dict(
            session.execute(
                select(SiteRow.name, SiteRow.id).where(SiteRow.name.in_(site_names))
            ).all()
        )
        if missing := [s for s in site_names if s not in sites]:
            raise NotFound(
                f"Unknown site {missing[0]!r}.", fix="add it first: cunliang site add NAME ..."
            )
        hosts = [n.host for n in nodes]
        for part in chunks(hosts):
            taken = session.scalars(select(NodeRow.host).where(NodeRow.host.in_(part))).all()
            if taken:
                raise Conflict(
                    f"Host {taken[0]!r} is already registered.",
                    fix="choose another host name, or cunliang node show it.",
                )
        session.execute(
            insert(NodeRow),
            [
                {
                    "host": n.host,
                    "site_id": sites[n.site],
                    "labels": n.labels,
                    "ray_node_id": n.ray_node_id,
                    "health": "unknown",
                    "health_failures": 0,
                    "created_at": now,
                }
                for n in nodes
            ],
        )
        ids: dict[str, int] = {}
        for part in chunks(hosts):
            ids.update(
                session.execute(
                    select(NodeRow.host, NodeRow.id).where(NodeRow.host.in_(part))
                ).all()
            )
        rows = [
            {**d, "node_id": ids[host], "state": str(S.REGISTERED), "state_since": now}
            for host, devs in device_rows.items()
            for d in devs
        ]
        for chunk in chunks(rows, 2000):
            session.execute(insert(DeviceRow), list(chunk))
        write_audit(
            session,
            [
                audit_row(
                    now,
                    "node",
                    n.host,
                    "register",
                    actor,
                    to_state=str(S.REGISTERED),
                    reason=f"site {n.site}",
                    figures={"devices": len(device_rows[n.host])},
                )
                for n in nodes
            ],
        )
        return len(rows)

    def list_nodes(self, site: str | None = None, state: str | None = None) -> list[NodeOut]:
        with self._db.readers() as session:
            query = select(NodeRow, SiteRow.name).join(SiteRow, SiteRow.id == NodeRow.site_id)
            if site:
                query = query.where(SiteRow.name == site)
            nodes = session.execute(query.order_by(NodeRow.host)).all()
            counts: dict[int, dict[str, int]] = defaultdict(dict)
            for node_id, st, n in session.execute(
                select(DeviceRow.node_id, DeviceRow.state, func.count()).group_by(
                    DeviceRow.node_id, DeviceRow.state
                )
            ):
                counts[node_id][st] = n
        out = [_node_out(row, site_name, counts[row.id]) for row, site_name in nodes]
        return [n for n in out if state is None or state in n.states]

    def get_node(self, host: str, audit_limit: int = 50) -> NodeDetail:
        with self._db.readers() as session:
            node, site_name = _node(session, host)
            devices = self._devices(session, DeviceRow.node_id == node.id)
            states = dict(Counter(str(d.state) for d in devices))
            profile = session.scalars(
                select(ProfileRow)
                .where(ProfileRow.node_id == node.id)
                .order_by(ProfileRow.version.desc())
                .limit(1)
            ).first()
            audit = _audit(session, "node", host, audit_limit)
        return NodeDetail(
            node=_node_out(node, site_name, states),
            devices=devices,
            latest_profile=_profile_out(profile, host) if profile else None,
            audit=audit,
        )

    def drain_node(self, host: str, actor: str, reason: str) -> TransitionOut:
        """Mark the node's devices draining: placement stops sending new replicas there;
        the runtime moves running replicas away before the node can be retired."""
        with self._db.sessions.begin() as session:
            node, _ = _node(session, host, lock=True)
            devices = _device_states(session, DeviceRow.node_id == node.id)
            return self._move(session, f"node {host}", devices, S.DRAINING, actor, reason)

    def retire_node(
        self, host: str, actor: str, reason: str, *, replicas_moved: bool = False
    ) -> TransitionOut:
        """Retire a drained node; refuses while the runtime reports (or cannot rule out)
        replicas on it, unless the operator confirms with ``replicas_moved``."""
        with self._db.sessions.begin() as session:
            node, _ = _node(session, host, lock=True)
            devices = _device_states(session, DeviceRow.node_id == node.id)
            evidence = self._check_no_replicas(devices, replicas_moved)
            return self._move(session, f"node {host}", devices, S.RETIRED, actor, reason, evidence)

    def readmit_node(self, host: str, actor: str, reason: str) -> TransitionOut:
        """Back to probation (retired, quarantined) or admitted (a drain called off);
        devices whose newest profile meets policy are admitted at once."""
        now = self._clock()
        with self._db.sessions.begin() as session:
            node, _site_name = _node(session, host, lock=True)
            devices = _device_states(session, DeviceRow.node_id == node.id)
            draining = [d for d in devices if d["state"] == S.DRAINING]
            others = [d for d in devices if d["state"] in (S.RETIRED, S.QUARANTINED)]
            if not draining and not others:
                raise Conflict(
                    f"node {host} has nothing to readmit (no retired, quarantined or "
                    "draining device).",
                )
            moved = self._move(session, f"node {host}", draining, S.ADMITTED, actor, reason)
            moved2 = self._move(session, f"node {host}", others, S.PROBATION, actor, reason)
            results = admission.evaluate_node(session, node, self.policy, now, actor)
        refused = [r for r in results if not r.admitted]
        return TransitionOut(
            subject=f"node {host}",
            to_state=S.PROBATION if refused else S.ADMITTED,
            devices_changed=moved.devices_changed + moved2.devices_changed,
            unchanged=len(devices) - len(draining) - len(others),
        )

    def set_ray_node(self, host: str, ray_node_id: str | None, actor: str) -> NodeOut:
        """Record the Ray node id of a host when it joins the cluster (None: it left)."""
        now = self._clock()
        with self._db.sessions.begin() as session:
            node, site_name = _node(session, host, lock=True)
            before, node.ray_node_id = node.ray_node_id, ray_node_id
            write_audit(
                session,
                [
                    audit_row(
                        now,
                        "node",
                        host,
                        "join" if ray_node_id else "leave",
                        actor,
                        reason=f"ray node {ray_node_id or before or '-'}",
                    )
                ],
            )
            session.flush()
            states = Counter(
                d["state"] for d in _device_states(session, DeviceRow.node_id == node.id)
            )
            return _node_out(node, site_name, dict(states))

    def record_health(self, host: str, health: HealthIn, actor: str) -> NodeOut:
        """Count consecutive health failures; quarantine the node's devices at the limit."""
        now = self._clock()
        with self._db.sessions.begin() as session:
            node, site_name = _node(session, host, lock=True)
            if health.healthy:
                node.health, node.health_failures = "healthy", 0
            else:
                node.health, node.health_failures = "unhealthy", node.health_failures + 1
            limit = self.policy.quarantine_after_failures
            if not health.healthy and node.health_failures >= limit:
                devices = [
                    d
                    for d in _device_states(session, DeviceRow.node_id == node.id)
                    if d["state"] not in (S.QUARANTINED, S.RETIRED)
                ]
                reason = f"{node.health_failures} consecutive health failures: {health.detail}"
                self._move(session, f"node {host}", devices, S.QUARANTINED, actor, reason)
            write_audit(
                session,
                [
                    audit_row(
                        now,
                        "node",
                        host,
                        "health",
                        actor,
                        reason=health.detail,
                        figures={"healthy": health.healthy, "failures": node.health_failures},
                    )
                ],
            )
            session.flush()
            states = dict(
                Counter(d["state"] for d in _device_states(session, DeviceRow.node_id == node.id))
            )
            return _node_out(node, site_name, states)

    def add_profile(self, host: str, profile: ProfileIn, actor: str) -> ProfileResult:
        """Store a new profile version and run the admission policy on the node's devices."""
        now = self._clock()
        try:
            with self._db.sessions.begin() as session:
                node, _ = _node(session, host, lock=True)
                row = admission.store_profile(session, node, profile, now)
                write_audit(
                    session,
                    [
                        audit_row(
                            now,
                            "node",
                            host,
                            "profile",
                            actor,
                            reason=f"profile v{row.version} ({profile.reference_model})",
                            figures={
                                "version": row.version,
                                "output_tokens_per_s": row.output_tokens_per_s,
                                "watts": row.watts,
                            },
                        )
                    ],
                )
                results = admission.evaluate_node(session, node, self.policy, now, actor)
                return ProfileResult(profile=_profile_out(row, host), admission=results)
        except IntegrityError as exc:
            raise Conflict(
                f"Another profile for {host} was stored at the same moment.",
                fix="post the profile again.",
            ) from exc

    # ── devices and audit ────────────────────────────────────────────────────────
    def list_devices(
        self,
        *,
        site: str | None = None,
        state: str | None = None,
        model: str | None = None,
        kind: str | None = None,
        host: str | None = None,
        limit: int | None = None,
    ) -> list[DeviceOut]:
        conditions: list[Any] = []
        if site:
            conditions.append(SiteRow.name == site)
        if state:
            conditions.append(DeviceRow.state == _state(state))
        if model:
            conditions.append(func.lower(DeviceRow.model) == model.lower())
        if kind:
            conditions.append(DeviceRow.kind == kind)
        if host:
            conditions.append(NodeRow.host == host)
        with self._db.readers() as session:
            return self._devices(session, *conditions, limit=limit)

    def _devices(
        self, session: Session, *conditions: Any, limit: int | None = None
    ) -> list[DeviceOut]:
        query = (
            select(DeviceRow, NodeRow.host, SiteRow.name)
            .join(NodeRow, NodeRow.id == DeviceRow.node_id)
            .join(SiteRow, SiteRow.id == NodeRow.site_id)
            .where(*conditions)
            .order_by(NodeRow.host, DeviceRow.slot)
            .limit(limit)
        )
        return [_device_out(d, h, s) for d, h, s in session.execute(query)]

    def audit(
        self, subject_kind: str | None = None, subject: str | None = None, limit: int = 100
    ) -> list[AuditOut]:
        with self._db.readers() as session:
            return _audit(session, subject_kind, subject, limit)

    # ── assessment, models, demand, snapshot, fleet files ───────────────────────
    def assess(self, actor: str = "assessment", window_hours: float | None = None) -> AssessmentOut:
        """One periodic 准入/退出 pass over every device (set-based, one transaction)."""
        window = assessment.window_of(self.policy, window_hours)
        now = self._clock()
        # read usage before taking the write lock: it may be a slow query on a big table
        by_node = dict(self._usage.completion_tokens_by_node(now - window, now))
        with self._db.sessions.begin() as session:
            return assessment.assess_all(
                session, self.policy, by_node, self._replicas, now, window, actor
            )

    def add_model(self, model: ModelIn, actor: str) -> ModelOut:
        try:
            with self._db.sessions.begin() as session:
                return demand.add_model(session, model, self._clock(), actor)
        except IntegrityError as exc:
            raise Conflict(f"Model {model.name!r} already exists.") from exc

    def list_models(self) -> list[ModelOut]:
        with self._db.readers() as session:
            return demand.list_models(session)

    def set_demand(self, model: str, body: DemandIn, actor: str) -> DemandOut:
        with self._db.sessions.begin() as session:
            return demand.set_demand(session, model, body, self._clock(), actor, source="manual")

    def demand_from_usage(self, model: str, body: FromUsageIn, actor: str) -> DemandOut:
        """Demand = measured output tokens/s over the window x (1 + headroom)."""
        with self._db.sessions.begin() as session:
            return demand.from_usage(session, model, body, self._usage, self._clock(), actor)

    def snapshot(self) -> tuple[Fleet, tuple[Demand, ...], dict[str, ModelSpec]]:
        """What the placement optimiser needs: admitted devices aggregated into classes
        (identical devices at one site, ``node_ids`` = hosts), demands and models."""
        with self._db.readers() as session:
            return snapshot.build(session, self._clock(), fits=self._fits)

    def import_fleet(
        self, fleet: Fleet, models: Sequence[ModelSpec], demands: Sequence[Demand], actor: str
    ) -> ImportOut:
        """Register a whole fleet (sites, nodes with devices, models, demand) at once."""
        plan = fleet_io.plan_import(fleet)
        now = self._clock()
        try:
            with self._db.sessions.begin() as session:
                sites = fleet_io.upsert_sites(session, plan.sites, now, actor)
                devices = self._insert_nodes(session, plan.nodes, plan.devices, now, actor)
                n_models, n_demands = demand.import_models(session, models, demands, now, actor)
        except IntegrityError as exc:
            raise Conflict(
                f"Fleet import clashes with existing rows ({_first_line(exc)})."
            ) from exc
        return ImportOut(
            sites=sites, nodes=len(plan.nodes), devices=devices, models=n_models, demands=n_demands
        )

    def export_fleet(self) -> str:
        """The inventory as fleet-file YAML (what ``cunliang fleet import`` reads back)."""
        with self._db.readers() as session:
            return fleet_io.export(session, self._clock())

    # ── internals ────────────────────────────────────────────────────────────────
    def _check_no_replicas(
        self, devices: Sequence[dict[str, Any]], replicas_moved: bool
    ) -> dict[str, Any]:
        """Raise Conflict unless no replica can still run on these devices' hosts; returns
        the evidence (runtime counts, operator confirmation) for the audit log."""
        hosts = sorted({d["host"] for d in devices if d["state"] in (S.DRAINING, S.QUARANTINED)})
        if not hosts:
            return {}
        counts = self._replicas.running_replicas(hosts)
        busy = {h: n for h, n in counts.items() if n > 0}
        if busy:
            host, n = next(iter(sorted(busy.items())))
            raise Conflict(
                f"{host} still runs {n} replica(s); retiring now would drop in-flight work.",
                fix="wait until the runtime has moved them (the drain does that), then retry.",
            )
        unknown = [h for h in hosts if h not in counts]
        if unknown and not replicas_moved:
            raise Conflict(
                f"The runtime cannot confirm that {unknown[0]} runs no replicas.",
                fix="check that its replicas are gone, then retire with --replicas-moved.",
            )
        return {
            "replicas_running": sum(counts.values()),
            "hosts_confirmed_by_runtime": len(hosts) - len(unknown),
            "hosts_confirmed_by_operator": len(unknown),
        }

    def _move(
        self,
        session: Session,
        subject: str,
        devices: Sequence[dict[str, Any]],
        target: LifecycleState,
        actor: str,
        reason: str,
        figures: dict[str, Any] | None = None,
    ) -> TransitionOut:
        """Move devices to ``target`` all-or-nothing; retired devices stay out of node/site
        moves (except readmission), devices already there are left alone."""
        now = self._clock()
        todo = [
            d
            for d in devices
            if d["state"] != target and (d["state"] != S.RETIRED or target is S.PROBATION)
        ]
        for d in todo:
            check_transition(f"{subject} device {d['host']}/{d['slot']}", S(d["state"]), target)
        if not todo and devices and all(d["state"] == S.RETIRED for d in devices):
            raise Conflict(f"{subject} is retired.", fix="readmit it first.")
        apply_transitions(
            session, todo, target, now, actor, reason, {d["id"]: figures or {} for d in todo}
        )
        return TransitionOut(
            subject=subject,
            to_state=target,
            devices_changed=len(todo),
            unchanged=len(devices) - len(todo),
        )


def _device_states(session: Session, *conditions: Any) -> list[dict[str, Any]]:
    query = (
        select(DeviceRow.id, DeviceRow.slot, DeviceRow.state, NodeRow.host)
        .join(NodeRow, NodeRow.id == DeviceRow.node_id)
        .where(*conditions)
        .order_by(NodeRow.host, DeviceRow.slot)
    )
    return [dict(r._mapping) for r in session.execute(query)]


def _node(session: Session, host: str, *, lock: bool = False) -> tuple[NodeRow, str]:
    query = select(NodeRow, SiteRow.name).join(SiteRow).where(NodeRow.host == host)
    if lock:
        # serialise concurrent transitions of one node on PostgreSQL (SQLite: whole-db lock)
        query = query.with_for_update(of=NodeRow)
    found = session.execute(query).first()
    if found is None:
        raise NotFound(f"Unknown node {host!r}.", fix="list nodes: cunliang node list.")
    return found[0], found[1]


def _state(value: str) -> str:
    try:
        return str(S(value))
    except ValueError:
        raise InvalidInput(
            f"Unknown lifecycle state {value!r}; one of {', '.join(s.value for s in S)}."
        ) from None


def _audit(
    session: Session, subject_kind: str | None, subject: str | None, limit: int
) -> list[AuditOut]:
    query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
    if subject is not None and subject_kind == "node":
        # a node's history includes its devices' ("host/slot")
        query = query.where(
            or_(
                (AuditRow.subject_kind == "node") & (AuditRow.subject == subject),
                (AuditRow.subject_kind == "device")
                & AuditRow.subject.startswith(subject + "/", autoescape=True),
            )
        )
    else:
        if subject_kind is not None:
            query = query.where(AuditRow.subject_kind == subject_kind)
        if subject is not None:
            query = query.where(AuditRow.subject == subject)
    return [AuditOut.model_validate(r, from_attributes=True) for r in session.scalars(query)]


def _expand_devices(node: NodeIn) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i, device in enumerate(node.devices):
        resolved = resolve_device(device, f"node {node.host} device {i}")
        for _ in range(device.count):
            rows.append({**resolved, "slot": len(rows)})
    return rows


def _site_row(site: SiteIn, now: datetime) -> SiteRow:
    return SiteRow(
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


def _site_figs(site: SiteIn) -> dict[str, Any]:
    return {"tariff_yuan_per_kwh": site.tariff_yuan_per_kwh, "pue": site.pue}


def _site_out(row: SiteRow, nodes: int, devices: int) -> SiteOut:
    return SiteOut(
        name=row.name,
        region=row.region,
        hub=row.hub,
        tariff_yuan_per_kwh=row.tariff_yuan_per_kwh,
        pue=row.pue,
        tou_bands=[TouBandIn(**b) for b in row.tou_bands],
        latency_class=row.latency_class,
        rtt_ms=row.rtt_ms,
        nodes=nodes,
        devices=devices,
    )


def _node_out(row: NodeRow, site: str, states: dict[str, int]) -> NodeOut:
    return NodeOut(
        host=row.host,
        site=site,
        labels=row.labels,
        ray_node_id=row.ray_node_id,
        health=row.health,
        health_failures=row.health_failures,
        devices=sum(states.values()),
        states=states,
    )


def _device_out(row: DeviceRow, host: str, site: str) -> DeviceOut:
    return DeviceOut.model_validate(
        {**{c: getattr(row, c) for c in _DEVICE_FIELDS}, "host": host, "site": site}
    )


_DEVICE_FIELDS = tuple(f for f in DeviceOut.model_fields if f not in ("host", "site"))


def _profile_out(row: ProfileRow, host: str) -> ProfileOut:
    return ProfileOut(
        host=host,
        version=row.version,
        measured_at=row.measured_at,
        reference_model=row.reference_model,
        output_tokens_per_s=row.output_tokens_per_s,
        watts=row.watts,
        quants=row.quants,
    )


def _first_line(exc: Exception) -> str:
    return str(getattr(exc, "orig", exc)).splitlines()[0][:200]
