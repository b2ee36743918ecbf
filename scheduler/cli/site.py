"""``cunliang site add/list/report/probation/drain/retire``: data-centre sites (东数西算 hubs)."""

from __future__ import annotations

import argparse
from typing import Any

from scheduler.cli.inventory_common import (
    actor,
    add_json_flag,
    emit,
    inventory,
    pairs,
    table,
)
from scheduler.errors import InvalidInput
from scheduler.inventory.schemas import SiteIn, parse
from scheduler.settings import Settings


def register(subparsers: Any) -> None:
    site = subparsers.add_parser("site", help="data-centre sites: tariff, PUE, region")
    sub = site.add_subparsers(dest="site_command", metavar="ACTION", required=True)

    add = sub.add_parser("add", help="register a site")
    add.add_argument("name")
    add.add_argument("--region", required=True, help="demand region it serves, e.g. west")
    add.add_argument("--hub", default="", help="national computing hub, e.g. guizhou")
    add.add_argument("--tariff-yuan-per-kwh", type=float, required=True)
    add.add_argument("--pue", type=float, required=True, help="power usage effectiveness >= 1")
    add.add_argument(
        "--tou", action="append", metavar="START-END=YUAN", help="time-of-use band, e.g. 8-22=0.9"
    )
    add.add_argument("--rtt", action="append", metavar="REGION=MS", help="RTT to a region")
    add.add_argument("--latency-class", default="")
    add_json_flag(add)
    add.set_defaults(func=cmd_add)

    ls = sub.add_parser("list", help="list sites with node and device counts")
    add_json_flag(ls)
    ls.set_defaults(func=cmd_list)

    report = sub.add_parser("report", help="rank sites by tokens/yuan, tokens/J, PUE, use")
    report.add_argument("--window-hours", type=float, default=None)
    add_json_flag(report)
    report.set_defaults(func=cmd_report)

    for action, text in (
        ("probation", "put every device of the site on probation"),
        ("drain", "drain every device of the site"),
        ("retire", "retire a drained site"),
    ):
        p = sub.add_parser(action, help=text)
        p.add_argument("name")
        p.add_argument("--reason", default="")
        if action == "retire":
            p.add_argument("--replicas-moved", action="store_true", help="confirm none run there")
        p.set_defaults(func=cmd_action, action=action)


def _bands(values: list[str] | None) -> list[dict[str, Any]]:
    bands = []
    for item in values or ():
        hours, _, price = item.partition("=")
        start, _, end = hours.partition("-")
        try:
            bands.append(
                {
                    "start_hour": int(start),
                    "end_hour": int(end),
                    "tariff_yuan_per_kwh": float(price),
                }
            )
        except ValueError:
            raise InvalidInput(
                f"--tou expects START-END=YUAN (e.g. 8-22=0.9), got {item!r}."
            ) from None
    return bands


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    site = parse(
        SiteIn,
        {
            "name": args.name,
            "region": args.region,
            "hub": args.hub,
            "tariff_yuan_per_kwh": args.tariff_yuan_per_kwh,
            "pue": args.pue,
            "tou_bands": _bands(args.tou),
            "rtt_ms": pairs(args.rtt, "rtt", float),
            "latency_class": args.latency_class,
        },
    )
    with inventory(settings) as service:
        out = service.add_site(site, actor())
    if args.json:
        emit(args, out)
    else:
        print(
            f"site {out.name} added ({out.region}, {out.tariff_yuan_per_kwh} yuan/kWh, PUE {out.pue})"
        )
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    with inventory(settings) as service:
        sites = service.list_sites()
    if args.json:
        emit(args, sites)
        return 0
    table(
        [
            (s.name, s.hub, s.region, s.tariff_yuan_per_kwh, s.pue, s.nodes, s.devices)
            for s in sites
        ],
        ("SITE", "HUB", "REGION", "YUAN/KWH", "PUE", "NODES", "DEVICES"),
    )
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    with inventory(settings) as service:
        rows = service.site_report(args.window_hours)
    if args.json:
        emit(args, rows)
        return 0
    table(
        [
            (
                r.site,
                r.hub,
                r.pue,
                r.admitted_devices,
                r.output_tokens,
                r.tokens_per_yuan,
                r.tokens_per_joule,
                f"{r.utilisation:.1%}",
            )
            for r in rows
        ],
        ("SITE", "HUB", "PUE", "ADMITTED", "TOKENS", "TOKENS/YUAN", "TOKENS/J", "UTIL"),
    )
    return 0


def cmd_action(args: argparse.Namespace, settings: Settings) -> int:
    with inventory(settings) as service:
        out = service.site_action(
            args.name,
            args.action,
            actor(),
            args.reason,
            replicas_moved=getattr(args, "replicas_moved", False),
        )
    print(f"{out.subject}: {out.devices_changed} device(s) -> {out.to_state}")
    return 0
