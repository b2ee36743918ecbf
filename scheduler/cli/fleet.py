"""``cunliang fleet import FILE`` / ``fleet export`` / ``fleet assess``: the whole fleet at once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from scheduler.cli.inventory_common import (
    actor,
    add_json_flag,
    add_policy_flag,
    emit,
    inventory,
    load_policy,
)
from scheduler.errors import InvalidInput
from scheduler.fleetfile import load_fleet_file
from scheduler.inventory.schemas import PolicyIn
from scheduler.lifecycle import AdmissionPolicy
from scheduler.settings import Settings


def register(subparsers: Any) -> None:
    fleet = subparsers.add_parser("fleet", help="import/export fleet files, run assessment")
    sub = fleet.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)

    imp = sub.add_parser("import", help="register sites, nodes, devices, models, demand")
    imp.add_argument("file", type=Path)
    add_json_flag(imp)
    imp.set_defaults(func=cmd_import)

    exp = sub.add_parser("export", help="write the inventory as a fleet file (YAML)")
    exp.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    exp.set_defaults(func=cmd_export)

    assess = sub.add_parser("assess", help="one 准入/退出 assessment pass over every device")
    assess.add_argument("--window-hours", type=float, default=None)
    add_policy_flag(assess)
    pol = sub.add_parser("policy", help="print the admission policy in force (YAML)")
    add_policy_flag(pol)
    pol.set_defaults(func=cmd_policy)
    add_json_flag(assess)
    assess.set_defaults(func=cmd_assess)


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    parsed = load_fleet_file(args.file)
    with inventory(settings) as service:
        out = service.import_fleet(
            parsed.fleet, tuple(parsed.models.values()), parsed.demands, actor()
        )
    if args.json:
        emit(args, out)
    else:
        print(
            f"imported {out.devices} device(s) on {out.nodes} node(s), {out.sites} new site(s), "
            f"{out.models} new model(s), {out.demands} demand(s) from {args.file}"
        )
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    with inventory(settings) as service:
        text = service.export_fleet()
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, "utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write {args.output}: {exc.strerror}") from None
    print(f"wrote {args.output}")
    return 0


def cmd_assess(args: argparse.Namespace, settings: Settings) -> int:
    with inventory(settings, args.policy) as service:
        out = service.assess(actor(), args.window_hours)
    if args.json:
        emit(args, out)
    else:
        print(
            f"assessed {out.assessed} device(s) over {out.window_hours:g} h ({out.usage_basis}): "
            f"{out.kept} kept, {out.watching} watched, {out.recovered} recovered, "
            f"{out.drained} drained, {out.retired} retired, {out.retire_blocked} retire blocked "
            f"in {out.seconds:.2f} s"
        )
    return 0


def cmd_policy(args: argparse.Namespace, settings: Settings) -> int:
    policy = load_policy(args.policy) if args.policy else AdmissionPolicy()
    sys.stdout.write(yaml.safe_dump(PolicyIn.of(policy).model_dump(), sort_keys=False))
    return 0
