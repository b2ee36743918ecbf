"""Profiles arrive -> store a new version -> run the admission policy on the node's devices.

The judgement itself is ``scheduler.lifecycle.admission_decision`` (pure); this module
gathers its inputs from the rows and writes its outcome (state + audit with figures).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from scheduler.domain import LifecycleState, Site, TouBand
from scheduler.inventory.economics import (
    StoredEconomics,
    estimated_watts,
    full_yuan_per_hour,
    to_economics,
)
from scheduler.inventory.records import apply_transitions, audit_row, write_audit
from scheduler.inventory.schemas import AdmissionOut, ProfileIn
from scheduler.lifecycle import AdmissionFigures, AdmissionPolicy, admission_decision
from scheduler.store.inventory import DeviceRow, NodeRow, ProfileRow, SiteRow

S = LifecycleState


def store_profile(session: Session, node: NodeRow, profile: ProfileIn, now: datetime) -> ProfileRow:
    """Append the next profile version of ``node`` (its key figures + the raw payload)."""
    last = session.scalar(select(func.max(ProfileRow.version)).where(ProfileRow.node_id == node.id))
    devices = session.scalars(select(DeviceRow).where(DeviceRow.node_id == node.id)).all()
    watts = profile.watts
    if watts is None:
        watts = sum(estimated_watts(d.tdp_watts, d.host_watts) for d in devices)
    payload = profile.full_payload()
    payload["device_figures"] = [d.model_dump() for d in profile.devices]
    row = ProfileRow(
        node_id=node.id,
        version=(last or 0) + 1,
        measured_at=profile.measured_at or now,
        reference_model=profile.reference_model,
        output_tokens_per_s=profile.output_tokens_per_s,
        watts=watts,
        quants=list(profile.quants),
        payload=payload,
    )
    session.add(row)
    session.flush()
    return row


def evaluate_node(
    session: Session, node: NodeRow, policy: AdmissionPolicy, now: datetime, actor: str
) -> list[AdmissionOut]:
    """Run admission on the node's devices awaiting it (registered, probation, recovered
    quarantine) against its newest profile; admitted ones move, refusals are audited."""
    profile = session.scalars(
        select(ProfileRow)
        .where(ProfileRow.node_id == node.id)
        .order_by(ProfileRow.version.desc())
        .limit(1)
    ).first()
    site = session.get_one(SiteRow, node.site_id)
    devices = session.scalars(
        select(DeviceRow).where(DeviceRow.node_id == node.id).order_by(DeviceRow.slot)
    ).all()
    if profile is not None:
        waiting = [S.REGISTERED] + ([S.QUARANTINED] if node.health != "unhealthy" else [])
        arrivals = [_ref(d, node) for d in devices if d.state in waiting]
        apply_transitions(
            session, arrivals, S.PROBATION, now, actor, f"profile v{profile.version} received", {}
        )
    results: list[AdmissionOut] = []
    admitted: list[dict[str, Any]] = []
    figures_by_id: dict[int, dict[str, Any]] = {}
    refusals = []
    place = to_site(site)
    for device in devices:
        if device.state != S.PROBATION:
            continue
        figures = _figures(device, profile, place, len(devices), node, now)
        decision = admission_decision(policy, figures, now)
        numbers = dict(decision.figures)
        subject = f"{node.host}/{device.slot}"
        if decision.admit:
            admitted.append(_ref(device, node))
            figures_by_id[device.id] = numbers
        else:
            refusals.append(
                audit_row(
                    now,
                    "device",
                    subject,
                    "admission_refused",
                    actor,
                    reason=decision.summary,
                    from_state=str(S.PROBATION),
                    to_state=str(S.PROBATION),
                    figures=numbers,
                )
            )
        results.append(
            AdmissionOut(
                device=subject,
                admitted=decision.admit,
                state=S.ADMITTED if decision.admit else S.PROBATION,
                reasons=list(decision.reasons),
                figures=numbers,
            )
        )
    apply_transitions(
        session, admitted, S.ADMITTED, now, actor, "meets the admission policy", figures_by_id
    )
    write_audit(session, refusals)
    return results


def _ref(device: DeviceRow, node: NodeRow) -> dict[str, Any]:
    return {"id": device.id, "slot": device.slot, "state": device.state, "host": node.host}


def _figures(
    device: DeviceRow,
    profile: ProfileRow | None,
    site: Site,
    devices_on_node: int,
    node: NodeRow,
    now: datetime,
) -> AdmissionFigures:
    """This device's share of the node profile (per-device figures when the agent sent them)."""
    tokens, watts = 0.0, estimated_watts(device.tdp_watts, device.host_watts)
    if profile is not None:
        per_device = {f["slot"]: f for f in profile.payload.get("device_figures", [])}
        mine = per_device.get(device.slot)
        if mine is not None:
            tokens = float(mine["output_tokens_per_s"])
            watts = float(mine["watts"]) if mine.get("watts") is not None else watts
        else:
            tokens = profile.output_tokens_per_s / devices_on_node
            watts = profile.watts / devices_on_node
    economics = to_economics(stored_economics(device), now.date())
    return AdmissionFigures(
        output_tokens_per_s=tokens,
        watts=watts,
        full_yuan_per_hour=full_yuan_per_hour(watts, site, economics),
        site_pue=site.pue,
        reference_model=profile.reference_model if profile else "",
        profile_measured_at=profile.measured_at if profile else None,
        healthy=node.health != "unhealthy",
    )


def stored_economics(device: Any) -> StoredEconomics:
    """The economics columns of a device row (ORM object or Core row)."""
    return StoredEconomics(
        purchase_yuan=device.purchase_yuan,
        residual_yuan=device.residual_yuan,
        in_service_date=device.in_service_date,
        depreciation_years=device.depreciation_years,
        ops_yuan_per_hour=device.ops_yuan_per_hour,
        host_watts=device.host_watts,
    )


def to_site(row: SiteRow) -> Site:
    return Site(
        name=row.name,
        region=row.region,
        hub=row.hub,
        tariff_yuan_per_kwh=row.tariff_yuan_per_kwh,
        pue=row.pue,
        tou_bands=tuple(TouBand(**b) for b in row.tou_bands),
        rtt_ms=dict(row.rtt_ms),
    )
