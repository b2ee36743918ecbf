"""Runtime state shared between the scheduler and gateways that run as separate processes.

The scheduler's reconciler publishes every replica it runs (one row each); gateways read
the table to route. ``updated_at`` is the scheduler's heartbeat: gateways treat rows that
have not been refreshed for a while as unhealthy, so a dead scheduler cannot leave stale
routes behind. Each gateway process also heartbeats one ``gateway_instances`` row: the live
gateways split every tenant's rate and concurrency limits between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Float, String, Table, delete, insert, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from scheduler.store import Base
from scheduler.store.types import UtcDateTime


class ReplicaEndpointRow(Base):
    __tablename__ = "replica_endpoints"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    engine_model: Mapped[str] = mapped_column(String(128))
    base_url: Mapped[str] = mapped_column(String(256))
    quant: Mapped[str] = mapped_column(String(32))
    device_class: Mapped[str] = mapped_column(String(128))
    site: Mapped[str] = mapped_column(String(64))
    node: Mapped[str] = mapped_column(String(128), default="")
    yuan_per_hour: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


@dataclass(frozen=True)
class EndpointRecord:
    id: str
    model: str
    engine_model: str
    base_url: str
    quant: str
    device_class: str
    site: str
    node: str
    yuan_per_hour: float
    state: str
    updated_at: datetime


def replace_endpoints(session: Session, records: Sequence[EndpointRecord]) -> None:
    """Make the table hold exactly ``records`` (the caller commits)."""
    keep = {r.id for r in records}
    session.execute(delete(ReplicaEndpointRow).where(ReplicaEndpointRow.id.not_in(keep)))
    for r in records:
        session.merge(ReplicaEndpointRow(**r.__dict__))


def load_endpoints(session: Session) -> list[EndpointRecord]:
    rows = session.scalars(select(ReplicaEndpointRow).order_by(ReplicaEndpointRow.id))
    return [
        EndpointRecord(
            id=r.id,
            model=r.model,
            engine_model=r.engine_model,
            base_url=r.base_url,
            quant=r.quant,
            device_class=r.device_class,
            site=r.site,
            node=r.node,
            yuan_per_hour=r.yuan_per_hour,
            state=r.state,
            updated_at=r.updated_at,
        )
        for r in rows
    ]


class GatewayInstanceRow(Base):
    __tablename__ = "gateway_instances"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime())


def gateway_heartbeat(session: Session, gateway_id: str, now: datetime) -> None:
    """Record that ``gateway_id`` is alive at ``now`` (the caller commits). One UPDATE, and
    an INSERT the first time (the ORM's ``merge`` loads the row first: ~3x the CPU, on a
    thread beside the gateway's event loop every heartbeat)."""
    table = cast(Table, GatewayInstanceRow.__table__)
    updated = session.execute(
        update(table).where(table.c.id == gateway_id).values(heartbeat_at=now)
    )
    if not cast(CursorResult[Any], updated).rowcount:
        session.execute(insert(table).values(id=gateway_id, heartbeat_at=now))


def live_gateways(session: Session, since: datetime) -> list[str]:
    """Ids of the gateways that heartbeat at or after ``since``, sorted."""
    query = select(GatewayInstanceRow.id).where(GatewayInstanceRow.heartbeat_at >= since)
    return list(session.scalars(query.order_by(GatewayInstanceRow.id)))


def remove_gateways(session: Session, gateway_id: str, stale_before: datetime) -> None:
    """Drop ``gateway_id`` (stopping) and rows no one heartbeat since ``stale_before``."""
    session.execute(
        delete(GatewayInstanceRow).where(
            (GatewayInstanceRow.id == gateway_id) | (GatewayInstanceRow.heartbeat_at < stale_before)
        )
    )
