"""`cunliang plan` and `cunliang predict`: what-if placement and single-replica predictions.

    cunliang plan --fleet FILE|--from-inventory [--demand FILE] [--cost marginal|full] [--margin 0.85]
                  [--hour 0-23] [--json]
    cunliang predict --device "Tesla T4" --model qwen2.5-7b-instruct --quant int4-awq
                     --batch 8 --prompt 1024 --output 256 [--tp 1] [--model-config config.json]
                     [--tpot-ms 100 --ttft-ms 2000] [--json]

``--from-inventory`` takes the fleet (admitted devices only), models and demand from the
inventory's snapshot; ``plan_report`` / ``render`` take domain values, not files.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scheduler import catalog
from scheduler.cost import CostBasis
from scheduler.domain import Demand, Fleet, ModelArch, ModelSpec, Plan, Quant
from scheduler.errors import InvalidInput
from scheduler.fleetfile import load_demand_file, load_fleet_file
from scheduler.perf import PerfResult, Workload, max_batch_at_slo, predict
from scheduler.placement import (
    BASELINES,
    PlacementPolicy,
    RobustnessReport,
    Strategy,
    plan,
    robustness,
)
from scheduler.settings import Settings

# ---- plan -------------------------------------------------------------------------------


DEFAULT_POLICY = PlacementPolicy()


@dataclass(frozen=True)
class PlanReport:
    """The optimiser's plan, each baseline's plan on the same inputs, and robustness."""

    best: Plan
    baselines: Mapping[str, Plan]
    robustness: RobustnessReport
    demands: tuple[Demand, ...]
    policy: PlacementPolicy


def plan_report(
    fleet: Fleet,
    demands: Sequence[Demand],
    models: Mapping[str, ModelSpec],
    policy: PlacementPolicy = DEFAULT_POLICY,
) -> PlanReport:
    """Plan with the optimiser and every baseline; the hook ``--from-inventory`` calls."""
    cache: dict[tuple[object, ...], PerfResult] = {}
    best = plan(fleet, demands, models, policy, cache=cache)
    others = {
        str(s): plan(
            fleet,
            demands,
            models,
            PlacementPolicy(**{**asdict(policy), "strategy": s}),
            cache=cache,
        )
        for s in BASELINES
    }
    return PlanReport(best, others, robustness(best, demands), tuple(demands), policy)


def _per_variant(result: Plan) -> list[dict[str, Any]]:
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in result.replicas:
        key = (r.model, r.demand_klass, str(r.quant), r.device_class_id, str(r.engine), str(r.tp))
        row = rows.setdefault(
            key,
            {
                "model": r.model,
                "class": r.demand_klass,
                "quant": str(r.quant),
                "device_class": r.device_class_id,
                "engine": str(r.engine),
                "tp": r.tp,
                "batch": r.batch,
                "replicas": 0,
                "devices": 0,
                "predicted_tokens_per_s": 0.0,
                "yuan_per_hour": 0.0,
            },
        )
        row["replicas"] += 1
        row["devices"] += r.tp
        row["predicted_tokens_per_s"] += r.predicted_output_tokens_per_s
        row["yuan_per_hour"] += r.yuan_per_hour
    return sorted(rows.values(), key=lambda x: (x["model"], x["class"], -x["yuan_per_hour"]))


def _per_model(result: Plan, demands: Sequence[Demand]) -> list[dict[str, Any]]:
    missing: dict[str, float] = {}
    for u in result.unplaced:
        missing[u.model] = missing.get(u.model, 0.0) + u.missing_output_tokens_per_s
    wanted: dict[str, float] = {}
    for d in demands:
        wanted[d.model] = wanted.get(d.model, 0.0) + d.output_tokens_per_s
    out = []
    for model, want in sorted(wanted.items()):
        served = want - missing.get(model, 0.0)
        cost = sum(r.yuan_per_hour for r in result.replicas if r.model == model)
        out.append(
            {
                "model": model,
                "demand_tokens_per_s": want,
                "served_tokens_per_s": served,
                "yuan_per_hour": cost,
                "tokens_per_yuan": served * 3600 / cost if cost > 0 else 0.0,
            }
        )
    return out


def _summary(result: Plan) -> dict[str, Any]:
    return {
        "status": str(result.status),
        "solver": result.solver,
        "yuan_per_hour": result.yuan_per_hour,
        "served_tokens_per_s": result.output_tokens_per_s,
        "tokens_per_yuan": result.tokens_per_yuan,
        "replicas": len(result.replicas),
        "devices": sum(r.tp for r in result.replicas),
        "solve_seconds": result.solve_seconds,
        "mip_gap": result.mip_gap,
    }


def report_json(report: PlanReport) -> dict[str, Any]:
    best = report.best
    return {
        "cost_basis": str(report.policy.cost_basis),
        "plan": {
            **_summary(best),
            "variants": _per_variant(best),
            "models": _per_model(best, report.demands),
            "unplaced": [asdict(u) for u in best.unplaced],
            "notes": list(best.notes),
        },
        "baselines": {
            name: {**_summary(p), "models": _per_model(p, report.demands)}
            for name, p in report.baselines.items()
        },
        "robustness": {
            "served_share_at_uniform_shortfall": {
                f"{s:.0%}": v for s, v in report.robustness.uniform.items()
            },
            "served_share_random_mean": report.robustness.random_mean,
            "served_share_random_worst": report.robustness.random_worst,
        },
    }


def _cell(text: str, width: int) -> str:
    # numbers right-aligned, words left-aligned
    return text.rjust(width) if text[:1].isdigit() or text[:1] == "-" else text.ljust(width)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(_cell(c, w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def render(report: PlanReport) -> str:
    """The human-readable report `cunliang plan` prints."""
    best = report.best
    out = [
        f"plan: {best.status}, {best.solver}, {best.solve_seconds:.2f} s, "
        f"cost basis {report.policy.cost_basis}, planned on {report.policy.slo_margin:.0%} "
        f"of predicted throughput",
        "",
    ]
    variants = _per_variant(best)
    if variants:
        headers = [
            "model",
            "class",
            "quant",
            "device class",
            "engine",
            "tp",
            "batch",
            "replicas",
            "tokens/s",
            "yuan/h",
        ]
        rows = [
            [
                v["model"],
                v["class"],
                v["quant"],
                v["device_class"],
                v["engine"],
                str(v["tp"]),
                str(v["batch"]),
                str(v["replicas"]),
                f"{v['predicted_tokens_per_s']:,.0f}",
                f"{v['yuan_per_hour']:,.2f}",
            ]
            for v in variants
        ]
        out += [_table(headers, rows), ""]
    models = _per_model(best, report.demands)
    rows = [
        [
            m["model"],
            f"{m['demand_tokens_per_s']:,.0f}",
            f"{m['served_tokens_per_s']:,.0f}",
            f"{m['yuan_per_hour']:,.2f}",
            f"{m['tokens_per_yuan']:,.0f}",
        ]
        for m in models
    ]
    rows.append(
        [
            "TOTAL",
            f"{sum(d.output_tokens_per_s for d in report.demands):,.0f}",
            f"{best.output_tokens_per_s:,.0f}",
            f"{best.yuan_per_hour:,.2f}",
            f"{best.tokens_per_yuan:,.0f}",
        ]
    )
    out += [_table(["model", "demand tok/s", "served tok/s", "yuan/h", "tokens/yuan"], rows), ""]
    for u in best.unplaced:
        out.append(
            f"UNPLACED {u.model} [{u.klass}] {u.missing_output_tokens_per_s:,.0f} tok/s: {u.reason}"
        )
    base_rows = [
        [
            name,
            str(p.status),
            f"{p.yuan_per_hour:,.2f}",
            f"{p.output_tokens_per_s:,.0f}",
            f"{p.tokens_per_yuan:,.0f}",
            f"{best.tokens_per_yuan / p.tokens_per_yuan:.2f}x" if p.tokens_per_yuan else "-",
        ]
        for name, p in [("optimiser", best), *report.baselines.items()]
    ]
    out += [
        "",
        _table(
            ["strategy", "status", "yuan/h", "served tok/s", "tokens/yuan", "optimiser gain"],
            base_rows,
        ),
        "",
    ]
    rob = report.robustness
    shares = ", ".join(f"-{s:.0%}: {v:.1%}" for s, v in rob.uniform.items())
    out.append(
        f"robustness (demand served within SLO if real throughput is lower): {shares}; "
        f"random per class -30%..+10%: mean {rob.random_mean:.1%}, worst {rob.random_worst:.1%}"
    )
    return "\n".join(out)


def _inventory_world(
    settings: Settings,
) -> tuple[Fleet, Sequence[Demand], Mapping[str, ModelSpec]]:
    """The admitted fleet, models and demand as the inventory has them now."""
    from scheduler.inventory.service import InventoryService
    from scheduler.store.db import ensure_schema, open_database

    url = settings.resolved_database_url
    ensure_schema(url)
    db = open_database(url)
    try:
        return InventoryService(db).snapshot()
    finally:
        db.dispose()


def _cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    if bool(args.fleet) == bool(args.from_inventory):
        raise InvalidInput("pass exactly one of --fleet FILE and --from-inventory")
    fleet: Fleet
    demands: Sequence[Demand]
    models: Mapping[str, ModelSpec]
    if args.fleet:
        ff = load_fleet_file(Path(args.fleet))
        fleet, models, demands = ff.fleet, ff.models, ff.demands
    else:
        fleet, demands, models = _inventory_world(settings)
    if args.demand:
        demands = load_demand_file(Path(args.demand), dict(models))
    if not 0 < args.margin <= 1:
        raise InvalidInput(f"--margin must be in (0, 1], got {args.margin}")
    if args.hour is not None and not 0 <= args.hour <= 23:
        raise InvalidInput(f"--hour must be 0-23, got {args.hour}")
    policy = PlacementPolicy(
        cost_basis=CostBasis(args.cost), slo_margin=args.margin, hour=args.hour
    )
    report = plan_report(fleet, demands, models, policy)
    print(json.dumps(report_json(report), indent=2) if args.json else render(report))
    return 0


# ---- predict ----------------------------------------------------------------------------


def _arch(args: argparse.Namespace) -> ModelArch:
    if args.model_config:
        path = Path(args.model_config)
        try:
            config = json.loads(path.read_text("utf-8"))
            return catalog.arch_from_hf_config(config, args.model or path.parent.name)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"cannot read model config {path}: {exc!r}") from None
    arch = catalog.lookup_model(args.model or "")
    if arch is None:
        raise InvalidInput(
            f"unknown model {args.model!r}",
            fix=f"use one of {', '.join(sorted(catalog.MODELS))} or pass --model-config",
        )
    return arch


def _cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    spec = catalog.lookup_device(args.device)
    if spec is None:
        raise InvalidInput(
            f"unknown device {args.device!r}",
            fix=f"use a catalogue name, e.g. {', '.join(sorted(catalog.devices())[:6])}, ...",
        )
    if args.memory_gb:
        spec = catalog.with_memory(spec, int(args.memory_gb * 2**30))
    arch = _arch(args)
    quant = Quant(args.quant)
    for name in ("batch", "prompt", "output", "tp"):
        if getattr(args, name) < 1:
            raise InvalidInput(f"--{name} must be >= 1")
    result = predict(arch, quant, spec, Workload(args.batch, args.prompt, args.output), args.tp)
    at_slo = None
    if args.tpot_ms or args.ttft_ms:
        at_slo = max_batch_at_slo(
            arch,
            quant,
            spec,
            args.prompt,
            args.output,
            args.tpot_ms or 1e9,
            args.ttft_ms or 1e9,
            tp=args.tp,
        )
    if args.json:
        doc = {"device": spec.model, "model": arch.name, "quant": str(quant), **asdict(result)}
        if at_slo is not None:
            doc["at_slo"] = asdict(at_slo)
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(_render_prediction(spec.model, arch.name, quant, result, at_slo))
    return 0 if result.ok else 1


def _render_prediction(
    device: str, model: str, quant: Quant, r: PerfResult, at_slo: PerfResult | None
) -> str:
    head = f"{model} {quant} on {device} (tp={r.tp})"
    if not r.ok:
        return f"{head}: cannot run: {r.reason}"
    lines = [
        f"{head} via {r.engine} dtype={r.dtype}, batch {r.batch} (max {r.max_batch} by KV memory)",
        f"  decode   {r.decode_tokens_per_s:,.1f} output tokens/s  TPOT {r.tpot_ms:.1f} ms "
        f"(step {r.step_ms:.1f} ms, {r.bound}-bound)",
        f"  prefill  {r.prefill_tokens_per_s:,.0f} tokens/s  TTFT {r.ttft_ms:.0f} ms",
        f"  memory   {r.memory_bytes_per_device / 2**30:.1f} GiB per device "
        f"(weights {r.weight_bytes_per_device / 2**30:.1f} GiB, "
        f"KV {r.kv_bytes_per_token / 1024:.0f} KiB/token)",
    ]
    if at_slo is not None:
        lines.append(
            f"  at SLO   batch {at_slo.batch}: {at_slo.decode_tokens_per_s:,.1f} tokens/s"
            if at_slo.ok
            else f"  at SLO   {at_slo.reason}"
        )
    return "\n".join(lines)


# ---- registration -----------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add `plan` and `predict` to the `cunliang` parser."""
    p = subparsers.add_parser("plan", help="place demand on a fleet at least yuan/hour")
    p.add_argument("--fleet", help="fleet file (YAML, reference-fleet format)")
    p.add_argument(
        "--from-inventory",
        action="store_true",
        help="plan the inventory's admitted devices, models and demand (--database-url)",
    )
    p.add_argument("--demand", help="demand file (default: the demand in the fleet file)")
    p.add_argument("--cost", choices=[b.value for b in CostBasis], default="marginal")
    p.add_argument("--margin", type=float, default=0.85, help="plan on this share of predictions")
    p.add_argument("--hour", type=int, help="price power at this hour's time-of-use tariff")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_plan)

    q = subparsers.add_parser("predict", help="roofline prediction for one replica")
    q.add_argument("--device", required=True, help='catalogue name, e.g. "Tesla T4"')
    q.add_argument("--model", help="catalogue model name (or a label with --model-config)")
    q.add_argument("--model-config", help="Hugging Face config.json of the model")
    q.add_argument("--quant", choices=[x.value for x in Quant], default="fp16")
    q.add_argument("--batch", type=int, default=1)
    q.add_argument("--prompt", type=int, default=512)
    q.add_argument("--output", type=int, default=128)
    q.add_argument("--tp", type=int, default=1)
    q.add_argument("--memory-gb", type=float, help="device memory (CPU servers)")
    q.add_argument("--tpot-ms", type=float, help="also report the largest batch meeting this")
    q.add_argument("--ttft-ms", type=float)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_cmd_predict)


__all__ = ["PlanReport", "Strategy", "plan_report", "register", "render", "report_json"]
