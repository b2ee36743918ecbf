"""Served models and their demand (output tokens/s at an SLO, per model and class)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, CheckConstraint, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.store import Base
from scheduler.store.types import UtcDateTime


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(String(500))  # Hugging Face id or local path
    allowed_quants: Mapped[list[str]] = mapped_column(JSON, default=list)
    # published architecture: {"params_b", "layers", "hidden", "heads", "kv_heads", ...}
    arch: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    variant_sources: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    # default SLO and residency for this model's demand
    tpot_ms: Mapped[float] = mapped_column(Float, default=100.0)
    ttft_ms: Mapped[float] = mapped_column(Float, default=2000.0)
    regions: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DemandRow(Base):
    __tablename__ = "demands"
    __table_args__ = (
        UniqueConstraint("model_id", "klass", name="uq_demands_model_klass"),
        CheckConstraint("output_tokens_per_s >= 0", name="tokens_not_negative"),
        CheckConstraint("tpot_ms > 0 AND ttft_ms > 0", name="slo_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    klass: Mapped[str] = mapped_column(String(40), default="interactive")
    output_tokens_per_s: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=512)
    output_tokens: Mapped[int] = mapped_column(Integer, default=128)
    tpot_ms: Mapped[float] = mapped_column(Float, default=100.0)
    ttft_ms: Mapped[float] = mapped_column(Float, default=2000.0)
    regions: Mapped[list[str]] = mapped_column(JSON, default=list)
    source: Mapped[str] = mapped_column(String(40), default="manual")  # manual | usage
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
