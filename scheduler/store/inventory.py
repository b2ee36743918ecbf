"""Inventory tables: sites, nodes, devices (with economics and lifecycle state), profiles,
and the append-only audit log.

Lifecycle state lives on devices (the unit the optimiser and the assessment reason about);
node and site commands move all their devices at once. Economics are columns of the device
row (one device, one price) so the assessment reads everything it needs in one query.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.store import Base
from scheduler.store.types import UtcDateTime


class SiteRow(Base):
    __tablename__ = "sites"
    __table_args__ = (
        CheckConstraint("pue >= 1.0", name="pue_at_least_one"),
        CheckConstraint("tariff_yuan_per_kwh >= 0", name="tariff_not_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    hub: Mapped[str] = mapped_column(String(100), default="")
    region: Mapped[str] = mapped_column(String(100))
    tariff_yuan_per_kwh: Mapped[float] = mapped_column(Float)
    # [{"start_hour": 8, "end_hour": 22, "tariff_yuan_per_kwh": 0.9}, ...]
    tou_bands: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    pue: Mapped[float] = mapped_column(Float)
    latency_class: Mapped[str] = mapped_column(String(40), default="")
    # {"east": 38.0}: round-trip time to each demand region
    rtt_ms: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class NodeRow(Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(255), unique=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="RESTRICT"), index=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    ray_node_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    health: Mapped[str] = mapped_column(String(20), default="unknown")
    health_failures: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DeviceRow(Base):
    __tablename__ = "devices"
    __table_args__ = (
        UniqueConstraint("node_id", "slot", name="uq_devices_node_slot"),
        CheckConstraint("memory_bytes > 0", name="memory_positive"),
        CheckConstraint("purchase_yuan >= 0 AND residual_yuan >= 0", name="price_not_negative"),
        Index("ix_devices_state_model", "state", "model"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    slot: Mapped[int] = mapped_column(Integer)  # GPU index or CPU socket set index in the node
    kind: Mapped[str] = mapped_column(String(10))
    vendor: Mapped[str] = mapped_column(String(40), default="")
    model: Mapped[str] = mapped_column(String(100))
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    compute_capability: Mapped[str | None] = mapped_column(String(10), nullable=True)
    isa_flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    sockets: Mapped[int] = mapped_column(Integer, default=1)
    memory_bandwidth_bytes_per_s: Mapped[float] = mapped_column(Float, default=0.0)
    tdp_watts: Mapped[float] = mapped_column(Float, default=0.0)
    interconnect_group: Mapped[str] = mapped_column(String(40), default="")  # PCIe/NVLink group
    # economics
    purchase_yuan: Mapped[float] = mapped_column(Float, default=0.0)
    residual_yuan: Mapped[float] = mapped_column(Float, default=0.0)
    in_service_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    depreciation_years: Mapped[float] = mapped_column(Float, default=3.0)
    ops_yuan_per_hour: Mapped[float] = mapped_column(Float, default=0.05)
    host_watts: Mapped[float] = mapped_column(Float, default=0.0)
    # lifecycle
    state: Mapped[str] = mapped_column(String(20), default="registered")
    state_since: Mapped[datetime] = mapped_column(UtcDateTime())
    # first assessment at which the device fell below policy; cleared when it recovers
    below_policy_since: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class ProfileRow(Base):
    """One versioned measurement set of a node: the raw JSON plus the key figures."""

    __tablename__ = "profiles"
    __table_args__ = (UniqueConstraint("node_id", "version", name="uq_profiles_node_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    measured_at: Mapped[datetime] = mapped_column(UtcDateTime())
    reference_model: Mapped[str] = mapped_column(String(100))
    # decode throughput of the whole node on the reference model at its best batch size
    output_tokens_per_s: Mapped[float] = mapped_column(Float)
    watts: Mapped[float] = mapped_column(Float)  # measured (or TDP-estimated) node power
    quants: Mapped[list[str]] = mapped_column(JSON, default=list)  # proven to run
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AuditRow(Base):
    """Append-only: a trigger (see the migration) refuses UPDATE and DELETE."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_subject", "subject_kind", "subject"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    subject_kind: Mapped[str] = mapped_column(String(20))  # site | node | device | model
    subject: Mapped[str] = mapped_column(String(255))  # "site", "host", "host/slot"
    action: Mapped[str] = mapped_column(String(40))
    from_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    to_state: Mapped[str | None] = mapped_column(String(20), nullable=True)
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(String(2000), default="")
    figures: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
