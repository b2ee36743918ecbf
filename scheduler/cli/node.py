"""``cunliang node register/list/show/drain/retire/readmit/profile`` and ``cunliang audit list``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from scheduler.cli.inventory_common import (
    actor,
    add_json_flag,
    add_policy_flag,
    emit,
    inventory,
    pairs,
    table,
)
from scheduler.domain import GIB
from scheduler.errors import InvalidInput
from scheduler.inventory.schemas import AuditOut, NodeIn, ProfileIn, parse
from scheduler.settings import Settings


def register(subparsers: Any) -> None:
    node = subparsers.add_parser("node", help="servers: register, inspect, drain, retire")
    sub = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)

    reg = sub.add_parser("register", help="register a server and its devices")
    reg.add_argument("host")
    reg.add_argument("--site", required=True)
    reg.add_argument(
        "--device",
        action="append",
        required=True,
        metavar="MODEL[:COUNT]",
        help="catalogue device name, e.g. 'Tesla T4:4' (repeat for mixed servers)",
    )
    reg.add_argument("--memory-gb", type=float, help="per device (CPU servers: installed RAM)")
    reg.add_argument("--sockets", type=int, default=1, help="CPU sockets in one device")
    reg.add_argument("--kind", choices=("gpu", "cpu"))
    reg.add_argument("--tdp-watts", type=float)
    reg.add_argument("--residual-yuan", type=float, default=0.0, help="market value per device")
    reg.add_argument("--purchase-yuan", type=float, default=0.0, help="price paid per device")
    reg.add_argument("--in-service-date", help="YYYY-MM-DD")
    reg.add_argument("--depreciation-years", type=float, default=3.0)
    reg.add_argument("--ops-yuan-per-hour", type=float, default=0.05)
    reg.add_argument("--host-watts", type=float, default=0.0, help="server share per device")
    reg.add_argument("--label", action="append", metavar="KEY=VALUE")
    add_json_flag(reg)
    reg.set_defaults(func=cmd_register)

    ls = sub.add_parser("list", help="list nodes with device states")
    ls.add_argument("--site")
    ls.add_argument("--state")
    add_json_flag(ls)
    ls.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="a node, its devices, newest profile and audit history")
    show.add_argument("host")
    show.add_argument("--audit-limit", type=int, default=50)
    add_json_flag(show)
    show.set_defaults(func=cmd_show)

    for action, text in (
        ("drain", "stop new replicas; the runtime moves running ones away"),
        ("retire", "retire a drained node (refused while replicas may run)"),
        ("readmit", "back to probation / admitted after reprofiling"),
    ):
        p = sub.add_parser(action, help=text)
        p.add_argument("host")
        p.add_argument("--reason", default="")
        add_policy_flag(p)
        if action == "retire":
            p.add_argument(
                "--replicas-moved",
                action="store_true",
                help="confirm no replica runs there (no runtime attached to the CLI)",
            )
        p.set_defaults(func=cmd_transition, action=action)

    prof = sub.add_parser("profile", help="store a profile JSON (as the agent posts it)")
    prof.add_argument("host")
    prof.add_argument("file", type=Path)
    add_policy_flag(prof)
    prof.set_defaults(func=cmd_profile)

    audit = subparsers.add_parser("audit", help="the append-only lifecycle audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    al = audit_sub.add_parser("list", help="newest entries first")
    al.add_argument("--subject-kind", choices=("site", "node", "device", "model", "fleet"))
    al.add_argument("--subject", help="site name, host, or host/slot")
    al.add_argument("--limit", type=int, default=50)
    add_json_flag(al)
    al.set_defaults(func=cmd_audit)


def _devices(args: argparse.Namespace) -> list[dict[str, Any]]:
    devices = []
    for item in args.device:
        model, _, count = item.rpartition(":") if ":" in item else (item, "", "1")
        try:
            n = int(count)
        except ValueError:
            raise InvalidInput(f"--device expects MODEL[:COUNT], got {item!r}.") from None
        devices.append(
            {
                "model": model,
                "count": n,
                "kind": args.kind,
                "memory_bytes": int(args.memory_gb * GIB) if args.memory_gb else None,
                "sockets": args.sockets,
                "tdp_watts": args.tdp_watts,
                "residual_yuan": args.residual_yuan,
                "purchase_yuan": args.purchase_yuan,
                "in_service_date": args.in_service_date,
                "depreciation_years": args.depreciation_years,
                "ops_yuan_per_hour": args.ops_yuan_per_hour,
                "host_watts": args.host_watts,
            }
        )
    return devices


def cmd_register(args: argparse.Namespace, settings: Settings) -> int:
    node = parse(
        NodeIn,
        {
            "host": args.host,
            "site": args.site,
            "labels": pairs(args.label, "label"),
            "devices": _devices(args),
        },
    )
    with inventory(settings) as service:
        out = service.register_node(node, actor())
    if args.json:
        emit(args, out)
    else:
        print(f"node {out.host} registered at {out.site} with {out.devices} device(s)")
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    with inventory(settings) as service:
        nodes = service.list_nodes(args.site, args.state)
    if args.json:
        emit(args, nodes)
        return 0
    table(
        [(n.host, n.site, n.devices, n.states, n.health, n.ray_node_id) for n in nodes],
        ("HOST", "SITE", "DEVICES", "STATES", "HEALTH", "RAY NODE"),
    )
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    with inventory(settings) as service:
        detail = service.get_node(args.host, args.audit_limit)
    if args.json:
        emit(args, detail)
        return 0
    n = detail.node
    print(f"{n.host}  site={n.site}  health={n.health}  labels={n.labels or '-'}")
    table(
        [
            (
                d.slot,
                d.kind,
                d.model,
                f"{d.memory_bytes / GIB:g} GiB",
                d.state,
                d.state_since.strftime("%Y-%m-%d %H:%M"),
            )
            for d in detail.devices
        ],
        ("SLOT", "KIND", "MODEL", "MEMORY", "STATE", "SINCE"),
    )
    p = detail.latest_profile
    if p:
        print(
            f"profile v{p.version} {p.measured_at:%Y-%m-%d %H:%M}: {p.reference_model} "
            f"{p.output_tokens_per_s:g} tokens/s at {p.watts:g} W, quants {','.join(p.quants) or '-'}"
        )
    else:
        print("no profile yet (run: cunliang agent --post)")
    print("audit history (newest first):")
    print_audit(detail.audit)
    return 0


def print_audit(entries: list[AuditOut]) -> None:
    table(
        [
            (
                a.at.strftime("%Y-%m-%d %H:%M:%S"),
                a.subject,
                a.action,
                f"{a.from_state or ''}->{a.to_state or ''}" if a.to_state else "",
                a.actor,
                a.reason,
                json.dumps(a.figures, ensure_ascii=False) if a.figures else "",
            )
            for a in entries
        ],
        ("AT", "SUBJECT", "ACTION", "STATE", "ACTOR", "REASON", "FIGURES"),
    )


def cmd_transition(args: argparse.Namespace, settings: Settings) -> int:
    with inventory(settings, args.policy) as service:
        if args.action == "drain":
            out = service.drain_node(args.host, actor(), args.reason)
        elif args.action == "retire":
            out = service.retire_node(
                args.host, actor(), args.reason, replicas_moved=args.replicas_moved
            )
        else:
            out = service.readmit_node(args.host, actor(), args.reason)
    print(f"{out.subject}: {out.devices_changed} device(s) -> {out.to_state}")
    return 0


def cmd_profile(args: argparse.Namespace, settings: Settings) -> int:
    try:
        data = json.loads(args.file.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"cannot read profile {args.file}: {exc}") from None
    profile = parse(ProfileIn, data)
    with inventory(settings, args.policy) as service:
        result = service.add_profile(args.host, profile, actor())
    print(f"profile v{result.profile.version} stored for {args.host}")
    for a in result.admission:
        verdict = "admitted" if a.admitted else "refused: " + "; ".join(a.reasons)
        print(f"  {a.device}: {verdict}")
    return 0


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    with inventory(settings) as service:
        entries = service.audit(args.subject_kind, args.subject, args.limit)
    if args.json:
        emit(args, entries)
    else:
        print_audit(entries)
    return 0
