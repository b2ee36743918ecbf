"""``cunliang model add/list`` and ``cunliang demand set/from-usage``."""

from __future__ import annotations

import argparse
from typing import Any

from scheduler.cli.inventory_common import actor, add_json_flag, csv_list, emit, inventory, table
from scheduler.inventory.schemas import DemandIn, FromUsageIn, ModelIn, parse
from scheduler.settings import Settings


def register(subparsers: Any) -> None:
    model = subparsers.add_parser("model", help="models to serve and their allowed quantisations")
    sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add a model")
    add.add_argument("name")
    add.add_argument("--source", required=True, help="Hugging Face id or local path")
    add.add_argument("--quant", default="bf16,fp16", help="allowed, e.g. int4-awq,int8-w8a8")
    add.add_argument("--tpot-ms", type=float, default=100.0, help="default per-token SLO")
    add.add_argument("--ttft-ms", type=float, default=2000.0, help="default first-token SLO")
    add.add_argument("--regions", default="", help="where it may run, e.g. west,east")
    add_json_flag(add)
    add.set_defaults(func=cmd_add)
    ls = sub.add_parser("list", help="models with their demand")
    add_json_flag(ls)
    ls.set_defaults(func=cmd_list)

    demand = subparsers.add_parser("demand", help="peak demand per model (output tokens/s)")
    dsub = demand.add_subparsers(dest="demand_command", metavar="ACTION", required=True)
    dset = dsub.add_parser("set", help="set a model's demand")
    dset.add_argument("name")
    dset.add_argument("--output-tokens-per-s", type=float, required=True)
    dset.add_argument("--class", dest="klass", default="interactive")
    dset.add_argument("--prompt-tokens", type=int, default=512)
    dset.add_argument("--output-tokens", type=int, default=128)
    dset.add_argument("--tpot-ms", type=float)
    dset.add_argument("--ttft-ms", type=float)
    dset.add_argument("--regions")
    add_json_flag(dset)
    dset.set_defaults(func=cmd_demand_set)
    usage = dsub.add_parser("from-usage", help="demand = measured tokens/s x (1 + headroom)")
    usage.add_argument("name")
    usage.add_argument("--window-hours", type=float, default=24.0)
    usage.add_argument("--headroom", type=float, default=0.3)
    add_json_flag(usage)
    usage.set_defaults(func=cmd_demand_from_usage)


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    body = parse(
        ModelIn,
        {
            "name": args.name,
            "source": args.source,
            "quants": csv_list(args.quant),
            "tpot_ms": args.tpot_ms,
            "ttft_ms": args.ttft_ms,
            "regions": csv_list(args.regions),
        },
    )
    with inventory(settings) as service:
        out = service.add_model(body, actor())
    if args.json:
        emit(args, out)
    else:
        print(
            f"model {out.name} added ({out.arch.get('params_b', 0):.2f}B, {','.join(out.quants)})"
        )
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    with inventory(settings) as service:
        models = service.list_models()
    if args.json:
        emit(args, models)
        return 0
    table(
        [
            (
                m.name,
                m.source,
                m.quants,
                m.tpot_ms,
                m.ttft_ms,
                m.regions,
                "; ".join(f"{d.klass} {d.output_tokens_per_s:g}/s ({d.source})" for d in m.demands),
            )
            for m in models
        ],
        ("MODEL", "SOURCE", "QUANTS", "TPOT MS", "TTFT MS", "REGIONS", "DEMAND"),
    )
    return 0


def cmd_demand_set(args: argparse.Namespace, settings: Settings) -> int:
    body = parse(
        DemandIn,
        {
            "output_tokens_per_s": args.output_tokens_per_s,
            "klass": args.klass,
            "prompt_tokens": args.prompt_tokens,
            "output_tokens": args.output_tokens,
            "tpot_ms": args.tpot_ms,
            "ttft_ms": args.ttft_ms,
            "regions": csv_list(args.regions) if args.regions is not None else None,
        },
    )
    with inventory(settings) as service:
        out = service.set_demand(args.name, body, actor())
    if args.json:
        emit(args, out)
    else:
        print(f"demand {out.model}/{out.klass}: {out.output_tokens_per_s:g} output tokens/s")
    return 0


def cmd_demand_from_usage(args: argparse.Namespace, settings: Settings) -> int:
    body = parse(FromUsageIn, {"window_hours": args.window_hours, "headroom": args.headroom})
    with inventory(settings) as service:
        out = service.demand_from_usage(args.name, body, actor())
    if args.json:
        emit(args, out)
    else:
        print(
            f"demand {out.model}/{out.klass}: {out.output_tokens_per_s:g} output tokens/s "
            f"(measured over {args.window_hours:g} h + {args.headroom:.0%} headroom)"
        )
    return 0
