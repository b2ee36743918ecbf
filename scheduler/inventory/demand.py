"""Served models and their demand: rows <-> domain ``ModelSpec`` / ``Demand``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from scheduler.catalog import arch_from_hf_config, lookup_model
from scheduler.domain import Demand, ModelArch, ModelSpec, Quant
from scheduler.errors import Conflict, InvalidInput, ModelNotFound
from scheduler.inventory.ports import UsageSource
from scheduler.inventory.records import audit_row, write_audit
from scheduler.inventory.schemas import DemandIn, DemandOut, FromUsageIn, ModelIn, ModelOut
from scheduler.store.models_demand import DemandRow, ModelRow

_ARCH_INTS = {f.name for f in fields(ModelArch) if f.type in ("int", int)}


def arch_to_dict(arch: ModelArch) -> dict[str, float]:
    return {k: v for k, v in asdict(arch).items() if k != "name"}


def arch_from_dict(name: str, values: dict[str, float]) -> ModelArch:
    known = {f.name for f in fields(ModelArch)} - {"name"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInput(f"Unknown architecture field(s): {', '.join(unknown)}.")
    try:
        typed: dict[str, Any] = {
            k: int(v) if k in _ARCH_INTS else float(v) for k, v in values.items()
        }
        return ModelArch(name=name, **typed)
    except TypeError as exc:
        raise InvalidInput(
            f"Incomplete architecture for {name!r}: {exc}.",
            fix="give params_b, layers, hidden, heads, kv_heads and head_dim.",
        ) from exc


def resolve_arch(body: ModelIn) -> ModelArch:
    """Stated arch, else the catalogue (by name or source id), else the source's config.json."""
    if body.arch is not None:
        return arch_from_dict(body.name, body.arch)
    for key in (body.name, body.source.rstrip("/").rsplit("/", 1)[-1].lower()):
        if (known := lookup_model(key)) is not None:
            return arch_from_dict(body.name, arch_to_dict(known))
    config = Path(body.source) / "config.json"
    if config.is_file():
        return arch_from_hf_config(json.loads(config.read_text("utf-8")), body.name)
    raise InvalidInput(
        f"Architecture of {body.name!r} is unknown (not in the catalogue, no config.json at "
        f"{body.source!r}).",
        fix="pass the architecture (params_b, layers, hidden, heads, kv_heads, head_dim).",
    )


def add_model(session: Session, body: ModelIn, now: datetime, actor: str) -> ModelOut:
    if session.scalar(select(ModelRow.id).where(ModelRow.name == body.name)):
        raise Conflict(f"Model {body.name!r} already exists.")
    arch = resolve_arch(body)
    row = ModelRow(
        name=body.name,
        source=body.source,
        allowed_quants=[str(q) for q in body.quants],
        arch=arch_to_dict(arch),
        variant_sources={str(q): s for q, s in body.variant_sources.items()},
        tpot_ms=body.tpot_ms,
        ttft_ms=body.ttft_ms,
        regions=body.regions,
        created_at=now,
    )
    session.add(row)
    session.flush()
    write_audit(
        session,
        [
            audit_row(
                now,
                "model",
                body.name,
                "add",
                actor,
                reason=body.source,
                figures={"quants": row.allowed_quants, "params_b": arch.params_b},
            )
        ],
    )
    return _model_out(row, [])


def list_models(session: Session) -> list[ModelOut]:
    demands: dict[int, list[DemandOut]] = {}
    models = session.scalars(select(ModelRow).order_by(ModelRow.name)).all()
    names = {m.id: m.name for m in models}
    for d in session.scalars(select(DemandRow).order_by(DemandRow.klass)):
        demands.setdefault(d.model_id, []).append(_demand_out(d, names[d.model_id]))
    return [_model_out(m, demands.get(m.id, [])) for m in models]


def _model(session: Session, name: str) -> ModelRow:
    row = session.scalars(select(ModelRow).where(ModelRow.name == name)).first()
    if row is None:
        raise ModelNotFound(f"Unknown model {name!r}.", fix="add it: cunliang model add NAME ...")
    return row


def set_demand(
    session: Session, name: str, body: DemandIn, now: datetime, actor: str, *, source: str
) -> DemandOut:
    """Create or replace the demand of one model and class; SLO defaults to the model's."""
    model = _model(session, name)
    row = session.scalars(
        select(DemandRow).where(DemandRow.model_id == model.id, DemandRow.klass == body.klass)
    ).first()
    if row is None:
        row = DemandRow(model_id=model.id, klass=body.klass)
        session.add(row)
    row.output_tokens_per_s = body.output_tokens_per_s
    row.prompt_tokens = body.prompt_tokens
    row.output_tokens = body.output_tokens
    row.tpot_ms = body.tpot_ms or model.tpot_ms
    row.ttft_ms = body.ttft_ms or model.ttft_ms
    row.regions = body.regions if body.regions is not None else model.regions
    row.source = source
    row.updated_at = now
    session.flush()
    write_audit(
        session,
        [
            audit_row(
                now,
                "model",
                name,
                "demand",
                actor,
                reason=f"{body.klass} ({source})",
                figures={"output_tokens_per_s": row.output_tokens_per_s},
            )
        ],
    )
    return _demand_out(row, name)


def from_usage(
    session: Session, name: str, body: FromUsageIn, usage: UsageSource, now: datetime, actor: str
) -> DemandOut:
    """Mean measured output tokens/s over the window, plus headroom for peaks and growth."""
    _model(session, name)
    window = timedelta(hours=body.window_hours)
    tokens = usage.completion_tokens_by_model(now - window, now).get(name, 0)
    if tokens <= 0:
        raise InvalidInput(
            f"No output tokens recorded for {name!r} in the last {body.window_hours:g} h.",
            fix="widen --window-hours, or set the demand by hand: cunliang demand set.",
        )
    rate = tokens / window.total_seconds() * (1.0 + body.headroom)
    existing = session.scalars(
        select(DemandRow)
        .join(ModelRow)
        .where(ModelRow.name == name, DemandRow.klass == "interactive")
    ).first()
    demand = DemandIn(
        output_tokens_per_s=round(rate, 3),
        prompt_tokens=existing.prompt_tokens if existing else 512,
        output_tokens=existing.output_tokens if existing else 128,
    )
    return set_demand(session, name, demand, now, actor, source="usage")


def import_models(
    session: Session,
    models: Sequence[ModelSpec],
    demands: Sequence[Demand],
    now: datetime,
    actor: str,
) -> tuple[int, int]:
    """Add models the inventory does not have yet, then set every demand (upsert)."""
    have = set(session.scalars(select(ModelRow.name)))
    added = 0
    for spec in models:
        if spec.name in have:
            continue
        add_model(
            session,
            ModelIn(
                name=spec.name,
                source=spec.source or spec.name,
                quants=list(spec.allowed_quants),
                arch=arch_to_dict(spec.arch),
            ),
            now,
            actor,
        )
        have.add(spec.name)
        added += 1
    for d in demands:
        set_demand(
            session,
            d.model,
            DemandIn(
                output_tokens_per_s=d.output_tokens_per_s,
                klass=d.klass,
                prompt_tokens=d.prompt_tokens,
                output_tokens=d.output_tokens,
                tpot_ms=d.tpot_ms,
                ttft_ms=d.ttft_ms,
                regions=list(d.regions),
            ),
            now,
            actor,
            source="import",
        )
    return added, len(demands)


def model_specs(session: Session) -> tuple[tuple[ModelSpec, ...], tuple[Demand, ...]]:
    models = session.scalars(select(ModelRow).order_by(ModelRow.name)).all()
    names = {m.id: m.name for m in models}
    specs = tuple(
        ModelSpec(
            name=m.name,
            source=m.source,
            arch=arch_from_dict(m.name, m.arch),
            allowed_quants=tuple(Quant(q) for q in m.allowed_quants),
            variant_sources={Quant(q): s for q, s in m.variant_sources.items()},
        )
        for m in models
    )
    demands = tuple(
        Demand(
            model=names[d.model_id],
            output_tokens_per_s=d.output_tokens_per_s,
            prompt_tokens=d.prompt_tokens,
            output_tokens=d.output_tokens,
            tpot_ms=d.tpot_ms,
            ttft_ms=d.ttft_ms,
            regions=tuple(d.regions),
            klass=d.klass,
        )
        for d in session.scalars(select(DemandRow).order_by(DemandRow.model_id, DemandRow.klass))
    )
    return specs, demands


def _model_out(row: ModelRow, demands: list[DemandOut]) -> ModelOut:
    return ModelOut(
        name=row.name,
        source=row.source,
        quants=row.allowed_quants,
        tpot_ms=row.tpot_ms,
        ttft_ms=row.ttft_ms,
        regions=row.regions,
        arch=row.arch,
        demands=demands,
    )


def _demand_out(row: DemandRow, model: str) -> DemandOut:
    return DemandOut(
        model=model,
        klass=row.klass,
        output_tokens_per_s=row.output_tokens_per_s,
        prompt_tokens=row.prompt_tokens,
        output_tokens=row.output_tokens,
        tpot_ms=row.tpot_ms,
        ttft_ms=row.ttft_ms,
        regions=row.regions,
        source=row.source,
        updated_at=row.updated_at,
    )
