"""Periodic 准入/退出 assessment and the site roll-up, set-based.

One query loads every assessed device with its site and its node's newest profile; the
usage source answers once per window; the per-device judgement is the pure
``scheduler.lifecycle.assess_device``; state changes and audit rows are written in bulk
(chunked ``UPDATE ... WHERE id IN`` and multi-row INSERT), never row by row through the ORM.

Figures: a device's share of its node's output tokens (split evenly across the node's
admitted devices), its energy = average watts x window (device energy, no PUE: PUE is the
site's, judged separately by the admission policy), its full cost = full yuan/h x window.
The site roll-up counts facility energy (x PUE), which is what a hub's PUE changes.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from scheduler.domain import LifecycleState
from scheduler.inventory.admission import stored_economics, to_site
from scheduler.inventory.economics import estimated_watts, full_yuan_per_hour, to_economics
from scheduler.inventory.ports import ReplicaCounter, UsageSource
from scheduler.inventory.records import apply_transitions, audit_row, chunks, write_audit
from scheduler.inventory.schemas import AssessmentOut, SiteReportRow
from scheduler.lifecycle import Action, AdmissionPolicy, UsageFigures, assess_device
from scheduler.store.inventory import DeviceRow, NodeRow, ProfileRow, SiteRow

S = LifecycleState
ASSESSED = (S.ADMITTED, S.DRAINING)


def window_of(policy: AdmissionPolicy, hours: float | None) -> timedelta:
    return timedelta(hours=hours) if hours else policy.assessment_window


@dataclass(frozen=True)
class DeviceFacts:
    id: int
    slot: int
    state: LifecycleState
    state_since: datetime
    below_policy_since: datetime | None
    host: str
    node_id: int
    site_id: int
    watts: float
    full_yuan_per_hour: float
    capacity_tokens_per_s: float  # share of the node's profiled decode throughput


def load_facts(
    session: Session, now: datetime, states: Sequence[LifecycleState]
) -> list[DeviceFacts]:
    """Every device in ``states`` with watts, full cost and profiled capacity (3 queries)."""
    sites = {s.id: to_site(s) for s in session.scalars(select(SiteRow))}
    newest = (
        select(ProfileRow.node_id, func.max(ProfileRow.version).label("version"))
        .group_by(ProfileRow.node_id)
        .subquery()
    )
    profiles = {
        node_id: (tokens, watts)
        for node_id, tokens, watts in session.execute(
            select(ProfileRow.node_id, ProfileRow.output_tokens_per_s, ProfileRow.watts).join(
                newest,
                (newest.c.node_id == ProfileRow.node_id) & (newest.c.version == ProfileRow.version),
            )
        )
    }
    per_node = dict(
        session.execute(select(DeviceRow.node_id, func.count()).group_by(DeviceRow.node_id)).all()
    )
    rows = session.execute(
        select(
            DeviceRow.id,
            DeviceRow.slot,
            DeviceRow.state,
            DeviceRow.state_since,
            DeviceRow.below_policy_since,
            DeviceRow.tdp_watts,
            DeviceRow.host_watts,
            DeviceRow.purchase_yuan,
            DeviceRow.residual_yuan,
            DeviceRow.in_service_date,
            DeviceRow.depreciation_years,
            DeviceRow.ops_yuan_per_hour,
            NodeRow.host,
            NodeRow.id.label("node_id"),
            NodeRow.site_id,
        )
        .join(NodeRow, NodeRow.id == DeviceRow.node_id)
        .where(DeviceRow.state.in_([str(s) for s in states]))
    ).all()
    today = now.date()
    facts = []
    for r in rows:
        n = per_node[r.node_id]
        tokens, node_watts = profiles.get(r.node_id, (0.0, 0.0))
        watts = node_watts / n if node_watts else estimated_watts(r.tdp_watts, r.host_watts)
        site = sites[r.site_id]
        economics = to_economics(stored_economics(r), today)
        facts.append(
            DeviceFacts(
                id=r.id,
                slot=r.slot,
                state=S(r.state),
                state_since=r.state_since,
                below_policy_since=r.below_policy_since,
                host=r.host,
                node_id=r.node_id,
                site_id=r.site_id,
                watts=watts,
                full_yuan_per_hour=full_yuan_per_hour(watts, site, economics),
                capacity_tokens_per_s=tokens / n,
            )
        )
    return facts


def _tokens_per_device(facts: Sequence[DeviceFacts], by_node: dict[str, int]) -> dict[int, float]:
    """Split each node's served tokens evenly over its admitted devices."""
    admitted_on: Counter[str] = Counter(f.host for f in facts if f.state is S.ADMITTED)
    return {
        f.id: by_node.get(f.host, 0) / admitted_on[f.host] if admitted_on[f.host] else 0.0
        for f in facts
    }


def assess_all(
    session: Session,
    policy: AdmissionPolicy,
    by_node: dict[str, int],
    replicas: ReplicaCounter,
    now: datetime,
    window: timedelta,
    actor: str,
) -> AssessmentOut:
    """Judge every admitted/draining device on ``by_node`` (output tokens per host in the
    window) and apply the verdicts in bulk."""
    started = time.perf_counter()
    facts = load_facts(session, now, ASSESSED)
    tokens = _tokens_per_device(facts, by_node)
    hours, seconds = window.total_seconds() / 3600.0, window.total_seconds()
    verdicts: dict[Action, list[DeviceFacts]] = defaultdict(list)
    figures: dict[int, dict[str, Any]] = {}
    reasons: dict[int, str] = {}
    for f in facts:
        used = UsageFigures(
            output_tokens=tokens[f.id],
            joules=f.watts * seconds,
            full_yuan=f.full_yuan_per_hour * hours,
        )
        verdict = assess_device(policy, f.state, used, f.below_policy_since, f.state_since, now)
        verdicts[verdict.action].append(f)
        if verdict.action is not Action.KEEP:
            reasons[f.id] = verdict.reason
            figures[f.id] = {
                "output_tokens": used.output_tokens,
                "full_yuan": round(used.full_yuan, 4),
                "joules": round(used.joules, 1),
                "tokens_per_yuan": round(used.tokens_per_yuan, 2),
                "tokens_per_joule": round(used.tokens_per_joule, 6),
                "window_hours": hours,
            }
    _set_below_since(
        session, [f.id for f in verdicts[Action.WATCH] if f.below_policy_since is None], now
    )
    _set_below_since(session, [f.id for f in verdicts[Action.RECOVER]], None)
    _transition(session, verdicts[Action.DRAIN], S.DRAINING, now, actor, reasons, figures)
    retire, blocked = _retirable(verdicts[Action.RETIRE], replicas)
    _transition(session, retire, S.RETIRED, now, actor, reasons, figures)
    result = AssessmentOut(
        assessed=len(facts),
        kept=len(verdicts[Action.KEEP]),
        watching=len(verdicts[Action.WATCH]),
        recovered=len(verdicts[Action.RECOVER]),
        drained=len(verdicts[Action.DRAIN]),
        retired=len(retire),
        retire_blocked=len(blocked),
        window_hours=hours,
        usage_basis=f"usage records of {len(by_node)} node(s)",
        seconds=0.0,
    )
    summary = result.model_dump(exclude={"seconds", "usage_basis"})
    write_audit(
        session,
        [
            audit_row(
                now, "fleet", "*", "assessment", actor, reason=result.usage_basis, figures=summary
            )
        ],
    )
    return result.model_copy(update={"seconds": time.perf_counter() - started})


def _set_below_since(session: Session, ids: list[int], value: datetime | None) -> None:
    for part in chunks(ids):
        session.execute(
            update(DeviceRow)
            .where(DeviceRow.id.in_(part))
            .values(below_policy_since=value)
            .execution_options(synchronize_session=False)
        )


def _transition(
    session: Session,
    facts: Sequence[DeviceFacts],
    target: LifecycleState,
    now: datetime,
    actor: str,
    reasons: dict[int, str],
    figures: dict[int, dict[str, Any]],
) -> None:
    # one reason per group keeps the bulk write; each audit row still carries its own figures
    by_reason: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in facts:
        by_reason[reasons.get(f.id, "")].append(
            {"id": f.id, "slot": f.slot, "state": str(f.state), "host": f.host}
        )
    for reason, devices in by_reason.items():
        apply_transitions(session, devices, target, now, actor, reason, figures)


def _retirable(
    facts: Sequence[DeviceFacts], replicas: ReplicaCounter
) -> tuple[list[DeviceFacts], list[DeviceFacts]]:
    """Only devices whose node the runtime confirms empty are retired automatically."""
    if not facts:
        return [], []
    counts = replicas.running_replicas(sorted({f.host for f in facts}))
    ok = [f for f in facts if counts.get(f.host, -1) == 0]
    return ok, [f for f in facts if counts.get(f.host, -1) != 0]


def site_report(
    session: Session, usage: UsageSource, now: datetime, window: timedelta
) -> list[SiteReportRow]:
    """Sites ranked by tokens/yuan (then tokens/joule) over the window."""
    facts = load_facts(session, now, ASSESSED)
    by_node = dict(usage.completion_tokens_by_node(now - window, now))
    tokens = _tokens_per_device(facts, by_node)
    seconds = window.total_seconds()
    sites = {s.id: s for s in session.scalars(select(SiteRow))}
    totals = dict(
        session.execute(
            select(NodeRow.site_id, func.count(DeviceRow.id))
            .join(DeviceRow, DeviceRow.node_id == NodeRow.id)
            .group_by(NodeRow.site_id)
        ).all()
    )
    grouped: dict[int, list[DeviceFacts]] = defaultdict(list)
    for f in facts:
        grouped[f.site_id].append(f)
    rows = []
    for site_id, site in sites.items():
        mine = grouped.get(site_id, [])
        served = sum(tokens[f.id] for f in mine)
        yuan = sum(f.full_yuan_per_hour for f in mine) * seconds / 3600.0
        joules = sum(f.watts for f in mine) * site.pue * seconds
        capacity = sum(f.capacity_tokens_per_s for f in mine) * seconds
        rows.append(
            SiteReportRow(
                site=site.name,
                hub=site.hub,
                region=site.region,
                pue=site.pue,
                admitted_devices=sum(1 for f in mine if f.state is S.ADMITTED),
                devices=totals.get(site_id, 0),
                output_tokens=served,
                full_yuan=round(yuan, 4),
                joules=round(joules, 1),
                tokens_per_yuan=served / yuan if yuan > 0 else 0.0,
                tokens_per_joule=served / joules if joules > 0 else 0.0,
                utilisation=min(1.0, served / capacity) if capacity > 0 else 0.0,
            )
        )
    return sorted(rows, key=lambda r: (-r.tokens_per_yuan, -r.tokens_per_joule, r.pue, r.site))
