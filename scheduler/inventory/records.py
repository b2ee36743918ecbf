"""Row-level helpers shared by the inventory service modules: audit rows, device resolution,
row -> schema conversion, chunked IN queries. Only the store's row classes are touched."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from scheduler.catalog import lookup_device
from scheduler.domain import DeviceKind, LifecycleState
from scheduler.errors import InvalidInput
from scheduler.inventory.schemas import (
    MAX_CPU_MEMORY_BYTES,
    MAX_GPU_MEMORY_BYTES,
    MIN_MEMORY_BYTES,
    DeviceIn,
)
from scheduler.store.inventory import AuditRow, DeviceRow

T = TypeVar("T")

# keep IN (...) lists well under SQLite's 32k bound-parameter limit and PostgreSQL's 65k
CHUNK = 900


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def audit_row(
    at: datetime,
    subject_kind: str,
    subject: str,
    action: str,
    actor: str,
    *,
    reason: str = "",
    from_state: str | None = None,
    to_state: str | None = None,
    figures: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "at": at,
        "subject_kind": subject_kind,
        "subject": subject,
        "action": action,
        "from_state": from_state,
        "to_state": to_state,
        "actor": actor,
        "reason": reason[:2000],
        "figures": figures or {},
    }


def write_audit(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    for part in chunks(rows, 2000):
        session.execute(insert(AuditRow), list(part))


def resolve_device(device: DeviceIn, where: str) -> dict[str, Any]:
    """Columns of one device: what the operator said, gaps filled from the catalogue.

    Raises InvalidInput for an unknown model without its figures, or an impossible memory size.
    """
    spec = lookup_device(device.model)
    kind = device.kind or (spec.kind if spec else None)
    if kind is None:
        raise InvalidInput(
            f"{where}: device model {device.model!r} is not in the catalogue.",
            fix="give kind, memory_bytes and tdp_watts for devices the catalogue does not know.",
        )
    memory = device.memory_bytes if device.memory_bytes is not None else None
    if memory is None and spec is not None and spec.memory_bytes > 0:
        memory = spec.memory_bytes
    if memory is None:
        raise InvalidInput(
            f"{where}: memory size of {device.model!r} is unknown.",
            fix="give memory_bytes (CPU servers: the installed RAM).",
        )
    limit = MAX_GPU_MEMORY_BYTES if kind is DeviceKind.GPU else MAX_CPU_MEMORY_BYTES
    if not MIN_MEMORY_BYTES <= memory <= limit:
        raise InvalidInput(
            f"{where}: memory_bytes={memory} is impossible for a {kind} "
            f"(allowed {MIN_MEMORY_BYTES} to {limit}).",
            fix="give the size in bytes (24 GiB = 25769803776).",
            param="memory_bytes",
        )
    cc = device.compute_capability
    if cc is None and spec is not None and spec.compute_capability is not None:
        cc = f"{spec.compute_capability[0]}.{spec.compute_capability[1]}"
    # catalogue CPU figures are per socket; a CPU device is a socket set: store totals
    per_socket = device.sockets if kind is DeviceKind.CPU else 1
    tdp = device.tdp_watts
    if tdp is None:
        tdp = spec.tdp_watts * per_socket if spec else 0.0
    bandwidth = device.memory_bandwidth_bytes_per_s
    if bandwidth is None:
        bandwidth = spec.memory_bandwidth_bytes_per_s * per_socket if spec else 0.0
    flags = device.isa_flags or (sorted(spec.isa_flags) if spec else [])
    return {
        "kind": str(kind),
        "vendor": device.vendor or (spec.vendor if spec else ""),
        "model": spec.model if spec else device.model,
        "memory_bytes": memory,
        "compute_capability": cc if kind is DeviceKind.GPU else None,
        "isa_flags": flags,
        "sockets": device.sockets,
        "memory_bandwidth_bytes_per_s": bandwidth,
        "tdp_watts": tdp,
        "interconnect_group": device.interconnect_group,
        "purchase_yuan": device.purchase_yuan,
        "residual_yuan": device.residual_yuan,
        "in_service_date": device.in_service_date,
        "depreciation_years": device.depreciation_years,
        "ops_yuan_per_hour": device.ops_yuan_per_hour,
        "host_watts": device.host_watts,
    }


def apply_transitions(
    session: Session,
    devices: Sequence[dict[str, Any]],
    target: LifecycleState,
    now: datetime,
    actor: str,
    reason: str,
    figures: dict[int, dict[str, Any]],
) -> None:
    """Set state in bulk and append one audit row per device (figures keyed by device id)."""
    if not devices:
        return
    ids = [d["id"] for d in devices]
    for part in chunks(ids):
        session.execute(
            update(DeviceRow)
            .where(DeviceRow.id.in_(part))
            .values(state=str(target), state_since=now, below_policy_since=None)
        )
    write_audit(
        session,
        [
            audit_row(
                now,
                "device",
                f"{d['host']}/{d['slot']}",
                "transition",
                actor,
                reason=reason,
                from_state=str(d["state"]),
                to_state=str(target),
                figures=figures.get(d["id"], {}),
            )
            for d in devices
        ],
    )
