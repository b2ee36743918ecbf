"""``cunliang device list``: every device with filters (site, state, model, kind, host)."""

from __future__ import annotations

import argparse
from typing import Any

from scheduler.cli.inventory_common import add_json_flag, emit, inventory, table
from scheduler.domain import GIB
from scheduler.settings import Settings


def register(subparsers: Any) -> None:
    device = subparsers.add_parser("device", help="GPUs and CPU socket sets")
    sub = device.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="list devices")
    ls.add_argument("--site")
    ls.add_argument(
        "--state", help="registered, probation, admitted, draining, retired, quarantined"
    )
    ls.add_argument("--model", help="device model, case-insensitive")
    ls.add_argument("--kind", choices=("gpu", "cpu"))
    ls.add_argument("--host")
    ls.add_argument("--limit", type=int)
    add_json_flag(ls)
    ls.set_defaults(func=cmd_list)


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    with inventory(settings) as service:
        devices = service.list_devices(
            site=args.site,
            state=args.state,
            model=args.model,
            kind=args.kind,
            host=args.host,
            limit=args.limit,
        )
    if args.json:
        emit(args, devices)
        return 0
    table(
        [
            (
                d.host,
                d.slot,
                d.site,
                d.kind,
                d.model,
                f"{d.memory_bytes / GIB:g}",
                d.compute_capability or ",".join(d.isa_flags[:3]),
                d.state,
                d.residual_yuan,
            )
            for d in devices
        ],
        ("HOST", "SLOT", "SITE", "KIND", "MODEL", "GIB", "CC/ISA", "STATE", "RESIDUAL YUAN"),
    )
    print(f"{len(devices)} device(s)")
    return 0
