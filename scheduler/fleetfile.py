"""Fleet files: a YAML snapshot of sites, device classes, models and demand.

The format is the one of ``scenarios/reference-fleet.yaml``::

    currency: CNY
    amortisation: {remaining_life_years, ops_yuan_per_device_hour, host_watts_per_gpu}
    sites:  [{name, region, hub, tariff_yuan_per_kwh, pue, rtt_ms_to_east, tou_bands}]
    fleet:  [{site, device, memory_gb, count, per_node, sockets, residual_yuan,
              board_watts, kind, ...optional spec and economics overrides}]
    models: [{name, params_b, layers, hidden, heads, kv_heads, head_dim, ...}]
    quantisations: [bf16, fp16, ...]        # allowed for every model (per-model override)
    demand: [{model, output_tokens_per_s, prompt_tokens, output_tokens, tpot_ms,
              ttft_ms, regions, class}]

Pydantic validates each row on its own so an error names the row; the result is
converted once into frozen domain types. ``dump_fleet_file`` writes every
resolved figure explicitly, so ``load(dump(x)) == x`` without the catalogue.

Conventions: a fleet row's device spec comes from the catalogue, multiplied by
``sockets`` for CPU servers (cores, bandwidth, flops, LLC), then overridden by any
spec field the row gives; ``board_watts`` is the device's power at load (it
replaces the catalogue TDP); GPUs get ``host_watts_per_gpu`` of server power on
top, CPU rows are whole servers and get none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scheduler import catalog
from scheduler.domain import (
    GIB,
    Demand,
    DeviceClass,
    DeviceKind,
    DeviceSpec,
    Economics,
    Fleet,
    ModelArch,
    ModelSpec,
    Quant,
    Site,
    TouBand,
)
from scheduler.errors import InvalidInput

GB = 10**9
TERA = 10**12
M = TypeVar("M", bound=BaseModel)


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AmortisationRow(_Row):
    remaining_life_years: float = Field(default=3.0, gt=0)
    ops_yuan_per_device_hour: float = Field(default=0.05, ge=0)
    host_watts_per_gpu: float = Field(default=0.0, ge=0)
    average_utilisation: float = Field(default=0.8, gt=0, le=1)


class TouBandRow(_Row):
    start_hour: int = Field(ge=0, le=23)
    end_hour: int = Field(ge=1, le=24)
    tariff_yuan_per_kwh: float = Field(ge=0)


class SiteRow(_Row):
    name: str = Field(min_length=1)
    region: str = Field(min_length=1)
    hub: str = ""
    tariff_yuan_per_kwh: float = Field(ge=0)  # required: a site without a tariff has no cost
    pue: float = Field(ge=1.0, le=5.0)
    rtt_ms_to_east: float | None = Field(default=None, ge=0)
    rtt_ms: dict[str, float] = Field(default_factory=dict)
    tou_bands: list[TouBandRow] = Field(default_factory=list)


class FleetRow(_Row):
    site: str
    device: str = Field(min_length=1)
    count: int = Field(ge=0)
    per_node: int = Field(default=1, ge=1)
    sockets: int = Field(default=1, ge=1)
    memory_gb: float | None = Field(default=None, gt=0)
    residual_yuan: float = Field(default=0.0, ge=0)
    purchase_yuan: float = Field(default=0.0, ge=0)
    board_watts: float | None = Field(default=None, gt=0)
    measured_watts: float | None = Field(default=None, gt=0)
    kind: DeviceKind | None = None
    # spec overrides / specs of devices the catalogue does not know (totals for the row device)
    vendor: str | None = None
    memory_bandwidth_gbs: float | None = Field(default=None, gt=0)
    fp16_tflops: float | None = Field(default=None, ge=0)
    fp32_tflops: float | None = Field(default=None, ge=0)
    int8_tops: float | None = Field(default=None, ge=0)
    compute_capability: str | None = Field(default=None, pattern=r"^\d+\.\d+$")
    cores: int | None = Field(default=None, ge=1)
    isa_flags: list[str] | None = None
    release_year: int | None = None
    nvlink: bool | None = None
    llc_mib: float | None = Field(default=None, ge=0)  # CPUs: last-level cache, all sockets
    # per-row economics overrides
    remaining_life_years: float | None = Field(default=None, gt=0)
    ops_yuan_per_hour: float | None = Field(default=None, ge=0)
    host_watts: float | None = Field(default=None, ge=0)
    average_utilisation: float | None = Field(default=None, gt=0, le=1)
    # profile facts
    measured_quants: list[Quant] = Field(default_factory=list)
    efficiency: dict[str, float] = Field(default_factory=dict)
    node_ids: list[str] = Field(default_factory=list)
    id: str | None = None


class ModelRow(_Row):
    name: str = Field(min_length=1)
    params_b: float = Field(gt=0)
    layers: int = Field(ge=1)
    hidden: int = Field(ge=1)
    heads: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    vocab: int | None = Field(default=None, ge=1)
    intermediate: int | None = Field(default=None, ge=0)
    max_model_len: int | None = Field(default=None, ge=1)
    source: str | None = None
    quantisations: list[Quant] | None = None


class DemandRow(_Row):
    model: str
    output_tokens_per_s: float = Field(ge=0)
    prompt_tokens: int = Field(default=512, ge=1)
    output_tokens: int = Field(default=128, ge=1)
    tpot_ms: float = Field(default=100.0, gt=0)
    ttft_ms: float = Field(default=2000.0, gt=0)
    regions: list[str] = Field(default_factory=list)
    klass: Literal["interactive", "batch"] = Field(default="interactive", alias="class")


class TopLevel(_Row):
    currency: Literal["CNY", "RMB"] = "CNY"
    amortisation: AmortisationRow = AmortisationRow()
    sites: list[dict[str, Any]]
    fleet: list[dict[str, Any]] = Field(default_factory=list)
    models: list[dict[str, Any]] = Field(default_factory=list)
    quantisations: list[Quant] = Field(default_factory=lambda: [Quant.BF16, Quant.FP16])
    demand: list[dict[str, Any]] = Field(default_factory=list)


@dataclass(frozen=True)
class FleetFile:
    """A loaded fleet file: the fleet, the models it may serve, and peak demand."""

    fleet: Fleet
    models: dict[str, ModelSpec]
    demands: tuple[Demand, ...]
    currency: str = "CNY"


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "row"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _validate(cls: type[M], raw: object, label: str) -> M:
    if not isinstance(raw, dict):
        raise InvalidInput(f"{label}: expected a mapping, got {type(raw).__name__}")
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"{label}: {_explain(exc)}", fix="correct that row") from None


def slug(text: str) -> str:
    """``Tesla V100 PCIe 32GB`` -> ``tesla-v100-pcie-32gb`` (class ids, node ids)."""
    return re.sub(r"[^a-z0-9]+", "-", text.casefold()).strip("-")


def _site(row: SiteRow) -> Site:
    rtt = dict(row.rtt_ms)
    if row.rtt_ms_to_east is not None:
        rtt.setdefault("east", row.rtt_ms_to_east)
    bands = tuple(TouBand(b.start_hour, b.end_hour, b.tariff_yuan_per_kwh) for b in row.tou_bands)
    return Site(
        name=row.name,
        region=row.region,
        hub=row.hub,
        tariff_yuan_per_kwh=row.tariff_yuan_per_kwh,
        pue=row.pue,
        tou_bands=bands,
        rtt_ms=rtt,
    )


def _has_own_specs(row: FleetRow) -> bool:
    return (
        row.memory_gb is not None
        and row.memory_bandwidth_gbs is not None
        and (row.fp16_tflops is not None or row.fp32_tflops is not None)
    )


def _spec(row: FleetRow, label: str) -> DeviceSpec:
    base = catalog.lookup_device(row.device)
    if base is None:
        if not _has_own_specs(row):
            raise InvalidInput(
                f"{label}: unknown device {row.device!r} and no specs given",
                fix="use a name from data/device_specs.csv or give memory_gb, "
                "memory_bandwidth_gbs and fp16_tflops/fp32_tflops (plus kind, tdp via board_watts)",
            )
        base = DeviceSpec(model=row.device, kind=row.kind or DeviceKind.GPU)
    elif row.kind is not None and row.kind is not base.kind:
        raise InvalidInput(f"{label}: kind {row.kind} but {row.device!r} is a {base.kind}")
    s = row.sockets
    spec = replace(
        base,
        memory_bandwidth_bytes_per_s=base.memory_bandwidth_bytes_per_s * s,
        fp16_flops=base.fp16_flops * s,
        fp32_flops=base.fp32_flops * s,
        int8_ops=base.int8_ops * s,
        tdp_watts=base.tdp_watts * s,
        cores=base.cores * s,
        llc_bytes=base.llc_bytes * s,
    )
    cc = row.compute_capability
    overrides: dict[str, Any] = {
        "vendor": row.vendor,
        "memory_bytes": int(row.memory_gb * GIB) if row.memory_gb is not None else None,
        "memory_bandwidth_bytes_per_s": _scale(row.memory_bandwidth_gbs, GB),
        "fp16_flops": _scale(row.fp16_tflops, TERA),
        "fp32_flops": _scale(row.fp32_tflops, TERA),
        "int8_ops": _scale(row.int8_tops, TERA),
        "tdp_watts": row.board_watts,
        "compute_capability": tuple(int(x) for x in cc.split(".")) if cc else None,
        "cores": row.cores,
        "isa_flags": frozenset(row.isa_flags) if row.isa_flags is not None else None,
        "release_year": row.release_year,
        "nvlink": row.nvlink,
        "llc_bytes": round(row.llc_mib * 2**20) if row.llc_mib is not None else None,
    }
    spec = replace(spec, **{k: v for k, v in overrides.items() if v is not None})
    if spec.memory_bytes <= 0:
        raise InvalidInput(f"{label}: memory_gb is required for {row.device!r}")
    if spec.memory_bandwidth_bytes_per_s <= 0:
        raise InvalidInput(f"{label}: memory_bandwidth_gbs is required for {row.device!r}")
    if spec.tdp_watts <= 0:
        raise InvalidInput(f"{label}: board_watts is required for {row.device!r}")
    return spec


def _scale(value: float | None, unit: float) -> float | None:
    return None if value is None else value * unit


def _device_class(row: FleetRow, site: Site, amort: AmortisationRow, label: str) -> DeviceClass:
    spec = _spec(row, label)
    default_host = amort.host_watts_per_gpu if spec.kind is DeviceKind.GPU else 0.0
    economics = Economics(
        residual_yuan=row.residual_yuan,
        remaining_life_years=row.remaining_life_years or amort.remaining_life_years,
        ops_yuan_per_hour=(
            row.ops_yuan_per_hour
            if row.ops_yuan_per_hour is not None
            else amort.ops_yuan_per_device_hour
        ),
        host_watts=row.host_watts if row.host_watts is not None else default_host,
        average_utilisation=row.average_utilisation or amort.average_utilisation,
        purchase_yuan=row.purchase_yuan,
        measured_watts=row.measured_watts,
    )
    if row.node_ids and len(row.node_ids) * row.per_node < row.count:
        raise InvalidInput(
            f"{label}: {len(row.node_ids)} node_ids x per_node {row.per_node} < count {row.count}"
        )
    return DeviceClass(
        id=row.id or f"{site.name}/{slug(row.device)}",
        site=site,
        spec=spec,
        count=row.count,
        per_node=row.per_node,
        economics=economics,
        measured_quants=frozenset(row.measured_quants),
        efficiency=dict(row.efficiency),
        node_ids=tuple(row.node_ids),
    )


def _model(row: ModelRow, default_quants: list[Quant]) -> ModelSpec:
    known = catalog.lookup_model(row.name)
    arch = ModelArch(
        name=row.name,
        params_b=row.params_b,
        layers=row.layers,
        hidden=row.hidden,
        heads=row.heads,
        kv_heads=row.kv_heads,
        head_dim=row.head_dim,
        vocab=row.vocab or (known.vocab if known else 32000),
        intermediate=row.intermediate
        if row.intermediate is not None
        else (known.intermediate if known else 0),
        max_model_len=row.max_model_len or (known.max_model_len if known else 4096),
    )
    quants = row.quantisations if row.quantisations is not None else default_quants
    return ModelSpec(
        name=row.name, source=row.source or row.name, arch=arch, allowed_quants=tuple(quants)
    )


def parse_fleet(data: object, origin: str = "fleet file") -> FleetFile:
    """Validate a parsed YAML/JSON document; raises InvalidInput naming the bad row."""
    top = _validate(TopLevel, data, origin)
    sites: dict[str, Site] = {}
    for i, raw in enumerate(top.sites):
        row = _validate(SiteRow, raw, f"{origin}: sites[{i}] ({raw.get('name', '?')})")
        if row.name in sites:
            raise InvalidInput(f"{origin}: sites[{i}]: duplicate site {row.name!r}")
        sites[row.name] = _site(row)
    classes: dict[str, DeviceClass] = {}
    for i, raw in enumerate(top.fleet):
        label = f"{origin}: fleet[{i}] ({raw.get('site', '?')}/{raw.get('device', '?')})"
        frow = _validate(FleetRow, raw, label)
        if frow.site not in sites:
            raise InvalidInput(f"{label}: unknown site {frow.site!r}", fix="add it under sites:")
        dc = _device_class(frow, sites[frow.site], top.amortisation, label)
        if dc.id in classes:
            raise InvalidInput(f"{label}: duplicate class id {dc.id!r}", fix="give the row an id:")
        classes[dc.id] = dc
    models: dict[str, ModelSpec] = {}
    for i, raw in enumerate(top.models):
        mrow = _validate(ModelRow, raw, f"{origin}: models[{i}] ({raw.get('name', '?')})")
        models[mrow.name] = _model(mrow, top.quantisations)
    regions = {s.region for s in sites.values()}
    demands = []
    for i, raw in enumerate(top.demand):
        label = f"{origin}: demand[{i}] ({raw.get('model', '?')})"
        drow = _validate(DemandRow, raw, label)
        if drow.model not in models:
            raise InvalidInput(f"{label}: model {drow.model!r} is not under models:")
        if unknown := set(drow.regions) - regions:
            raise InvalidInput(f"{label}: no site in region(s) {sorted(unknown)}")
        demands.append(_demand(drow))
    fleet = Fleet(sites=tuple(sites.values()), classes=tuple(classes.values()))
    return FleetFile(fleet=fleet, models=models, demands=tuple(demands), currency=top.currency)


def load_fleet_file(path: Path) -> FleetFile:
    """Read and validate a fleet file; InvalidInput on unreadable or bad content."""
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read fleet file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    return parse_fleet(data, origin=str(path))


def load_demand_file(path: Path, models: dict[str, ModelSpec]) -> tuple[Demand, ...]:
    """A demand-only file (a ``demand:`` list, or a bare list) checked against ``models``."""
    try:
        data = yaml.safe_load(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise InvalidInput(f"cannot read demand file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    rows = data.get("demand") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise InvalidInput(f"{path}: expected a 'demand:' list")
    out = []
    for i, raw in enumerate(rows):
        label = f"{path}: demand[{i}] ({raw.get('model', '?') if isinstance(raw, dict) else '?'})"
        drow = _validate(DemandRow, raw, label)
        if drow.model not in models:
            raise InvalidInput(f"{label}: model {drow.model!r} is not in the fleet file's models")
        out.append(_demand(drow))
    return tuple(out)


def _demand(row: DemandRow) -> Demand:
    return Demand(
        model=row.model,
        output_tokens_per_s=row.output_tokens_per_s,
        prompt_tokens=row.prompt_tokens,
        output_tokens=row.output_tokens,
        tpot_ms=row.tpot_ms,
        ttft_ms=row.ttft_ms,
        regions=tuple(row.regions),
        klass=row.klass,
    )


# ---- export -----------------------------------------------------------------------------


def _num_out(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 9)


def _site_to_row(site: Site) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": site.name,
        "hub": site.hub,
        "region": site.region,
        "tariff_yuan_per_kwh": site.tariff_yuan_per_kwh,
        "pue": site.pue,
    }
    if site.rtt_ms:
        row["rtt_ms"] = dict(site.rtt_ms)
    if site.tou_bands:
        row["tou_bands"] = [
            {
                "start_hour": b.start_hour,
                "end_hour": b.end_hour,
                "tariff_yuan_per_kwh": b.tariff_yuan_per_kwh,
            }
            for b in site.tou_bands
        ]
    return row


def _class_to_row(dc: DeviceClass) -> dict[str, Any]:
    s, e = dc.spec, dc.economics
    row: dict[str, Any] = {
        "id": dc.id,
        "site": dc.site.name,
        "device": s.model,
        "kind": str(s.kind),
        "vendor": s.vendor,
        "count": dc.count,
        "per_node": dc.per_node,
        "memory_gb": _num_out(s.memory_bytes / GIB),
        "memory_bandwidth_gbs": _num_out(s.memory_bandwidth_bytes_per_s / GB),
        "fp16_tflops": _num_out(s.fp16_flops / TERA),
        "fp32_tflops": _num_out(s.fp32_flops / TERA),
        "int8_tops": _num_out(s.int8_ops / TERA),
        "board_watts": s.tdp_watts,
        "cores": s.cores or None,
        "isa_flags": sorted(s.isa_flags),
        "release_year": s.release_year,
        "nvlink": s.nvlink,
        "llc_mib": _num_out(s.llc_bytes / 2**20) if s.llc_bytes else None,
        "compute_capability": ".".join(map(str, s.compute_capability))
        if s.compute_capability
        else None,
        "residual_yuan": e.residual_yuan,
        "purchase_yuan": e.purchase_yuan,
        "remaining_life_years": e.remaining_life_years,
        "ops_yuan_per_hour": e.ops_yuan_per_hour,
        "host_watts": e.host_watts,
        "average_utilisation": e.average_utilisation,
        "measured_watts": e.measured_watts,
        "measured_quants": sorted(str(q) for q in dc.measured_quants),
        "efficiency": dict(dc.efficiency),
        "node_ids": list(dc.node_ids),
    }
    return {k: v for k, v in row.items() if v is not None}


def _model_to_row(m: ModelSpec) -> dict[str, Any]:
    a = m.arch
    return {
        "name": m.name,
        "source": m.source,
        "params_b": a.params_b,
        "layers": a.layers,
        "hidden": a.hidden,
        "heads": a.heads,
        "kv_heads": a.kv_heads,
        "head_dim": a.head_dim,
        "vocab": a.vocab,
        "intermediate": a.intermediate,
        "max_model_len": a.max_model_len,
        "quantisations": [str(q) for q in m.allowed_quants],
    }


def _demand_to_row(d: Demand) -> dict[str, Any]:
    return {
        "model": d.model,
        "output_tokens_per_s": d.output_tokens_per_s,
        "prompt_tokens": d.prompt_tokens,
        "output_tokens": d.output_tokens,
        "tpot_ms": d.tpot_ms,
        "ttft_ms": d.ttft_ms,
        "regions": list(d.regions),
        "class": d.klass,
    }


def dump_fleet_file(ff: FleetFile) -> str:
    """YAML text of ``ff`` with every figure explicit; ``parse_fleet`` reads it back equal."""
    doc = {
        "currency": ff.currency,
        "sites": [_site_to_row(s) for s in ff.fleet.sites],
        "fleet": [_class_to_row(c) for c in ff.fleet.classes],
        "models": [_model_to_row(m) for m in ff.models.values()],
        "demand": [_demand_to_row(d) for d in ff.demands],
    }
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
