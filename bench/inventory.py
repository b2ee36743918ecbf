"""Inventory benchmark: register 10,000 devices from a fleet file, list them filtered, and run
one assessment pass over all of them, on SQLite and on PostgreSQL.

Baseline (measured in the same run, same database, same rows): a plain SQLAlchemy Core
bulk insert of the node and device rows the import writes. Every figure is reported in
seconds and as a ratio to that baseline. Goal: the assessment of 10,000 devices < 2 s.

    PYTHONPATH=. python bench/inventory.py [--devices 10000]

Writes bench/results/inventory.json and prints the markdown rows (bench/ROWS-inventory.md).
PostgreSQL comes from the Debian package; the benchmark starts a throwaway server.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, text, update

from bench.common import machine
from scheduler.fleetfile import dump_fleet_file, load_fleet_file
from scheduler.inventory.fleet_io import plan_import
from scheduler.inventory.service import InventoryService
from scheduler.store.db import open_database, upgrade
from scheduler.store.inventory import DeviceRow, NodeRow, SiteRow

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "bench" / "data" / "reference-fleet.yaml"  # copy of ../shared's
NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def scaled_fleet_file(devices: int, folder: Path) -> Path:
    """The reference fleet with every class scaled so the total is exactly ``devices``."""
    ff = load_fleet_file(REFERENCE)
    total = sum(c.count for c in ff.fleet.classes)
    classes = []
    left = devices
    for i, cls in enumerate(ff.fleet.classes):
        last = i == len(ff.fleet.classes) - 1
        count = left if last else math.floor(cls.count * devices / total)
        left -= count
        classes.append(replace(cls, count=count))
    scaled = replace(ff, fleet=replace(ff.fleet, classes=tuple(classes)))
    path = folder / f"fleet-{devices}.yaml"
    path.write_text(dump_fleet_file(scaled), "utf-8")
    return path


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class BenchUsage:
    """Output tokens per host: most nodes earn their keep, a fifth serve too little."""

    def __init__(self, hosts: list[str], seed: int = 7) -> None:
        rng = random.Random(seed)
        self.by_node = {
            h: rng.choice([2_000_000, 800_000_000]) if rng.random() < 0.2 else 800_000_000
            for h in hosts
        }

    def completion_tokens_by_model(self, since: datetime, until: datetime) -> dict[str, int]:
        return {}

    def completion_tokens_by_node(self, since: datetime, until: datetime) -> dict[str, int]:
        return self.by_node


class AllMoved:
    def running_replicas(self, hosts: Any) -> dict[str, int]:
        return dict.fromkeys(hosts, 0)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def baseline_bulk_insert(url: str, fleet_path: Path) -> float:
    """Plain Core executemany of the same node and device rows into a fresh schema."""
    upgrade(url)
    db = open_database(url)
    try:
        ff = load_fleet_file(fleet_path)
        plan = plan_import(ff.fleet)
        with db.sessions.begin() as s:
            for site in plan.sites:
                s.add(
                    SiteRow(**site.model_dump(exclude={"tou_bands"}), tou_bands=[], created_at=NOW)
                )
        with db.sessions() as s:
            site_ids = dict(s.execute(select(SiteRow.name, SiteRow.id)).all())
        nodes = [
            {
                "host": n.host,
                "site_id": site_ids[n.site],
                "labels": n.labels,
                "ray_node_id": None,
                "health": "unknown",
                "health_failures": 0,
                "created_at": NOW,
            }
            for n in plan.nodes
        ]

        def run() -> None:
            with db.engine.begin() as conn:
                conn.execute(insert(NodeRow), nodes)
                ids = dict(conn.execute(select(NodeRow.host, NodeRow.id)).all())
                rows = [
                    {**d, "node_id": ids[host], "state": "registered", "state_since": NOW}
                    for host, devs in plan.devices.items()
                    for d in devs
                ]
                conn.execute(insert(DeviceRow), rows)

        seconds, _ = timed(run)
        return seconds
    finally:
        db.dispose()


def bench_backend(
    name: str, url: str, baseline_url: str, fleet_path: Path, devices: int
) -> dict[str, float]:
    metrics: dict[str, float] = {}
    base = baseline_bulk_insert(baseline_url, fleet_path)
    metrics[f"{name}_bulk_insert_baseline_s"] = base
    upgrade(url)
    db = open_database(url)
    clock = Clock()
    try:
        service = InventoryService(db, clock=clock, replicas=AllMoved())

        def register() -> Any:
            ff = load_fleet_file(fleet_path)
            return service.import_fleet(ff.fleet, tuple(ff.models.values()), ff.demands, "bench")

        seconds, out = timed(register)
        assert out.devices == devices, out
        metrics[f"{name}_register_{devices}_s"] = seconds
        metrics[f"{name}_register_vs_baseline"] = seconds / base

        seconds, listed = timed(lambda: service.list_devices(site="hohhot", state="registered"))
        metrics[f"{name}_list_filtered_s"] = seconds
        metrics[f"{name}_list_filtered_devices"] = len(listed)
        metrics[f"{name}_list_vs_baseline"] = seconds / base
        seconds, listed = timed(lambda: service.list_devices())
        metrics[f"{name}_list_all_s"] = seconds

        def plain_select() -> list[Any]:
            # second baseline: the same filtered rows as raw tuples, no models built
            with db.engine.connect() as conn:
                return list(
                    conn.execute(
                        select(DeviceRow.__table__, NodeRow.host, SiteRow.name)
                        .join(NodeRow, NodeRow.id == DeviceRow.node_id)
                        .join(SiteRow, SiteRow.id == NodeRow.site_id)
                        .where(SiteRow.name == "hohhot", DeviceRow.state == "registered")
                    )
                )

        seconds, rows = timed(plain_select)
        assert len(rows) == metrics[f"{name}_list_filtered_devices"]
        metrics[f"{name}_list_plain_select_baseline_s"] = seconds

        # set-up (not timed): everything admitted a month ago, a quarter already below policy
        # for longer than the grace period, so the pass drains and retires real rows
        with db.sessions.begin() as s:
            s.execute(
                update(DeviceRow).values(state="admitted", state_since=NOW - timedelta(days=30))
            )
            s.execute(
                update(DeviceRow)
                .where(DeviceRow.id % 4 == 0)
                .values(below_policy_since=NOW - timedelta(days=10))
            )
            s.execute(
                update(DeviceRow)
                .where(DeviceRow.id % 10 == 1)
                .values(state="draining", state_since=NOW - timedelta(days=3))
            )
        hosts = [n.host for n in service.list_nodes()]
        assessor = InventoryService(db, clock=clock, usage=BenchUsage(hosts), replicas=AllMoved())
        seconds, result = timed(lambda: assessor.assess("bench"))
        metrics[f"{name}_assess_{devices}_s"] = seconds
        metrics[f"{name}_assess_vs_baseline"] = seconds / base
        metrics[f"{name}_assess_drained"] = result.drained
        metrics[f"{name}_assess_retired"] = result.retired
        metrics[f"{name}_assess_watching"] = result.watching
        with db.engine.connect() as conn:
            audit_rows = conn.execute(text("SELECT COUNT(*) FROM audit_log")).scalar_one()
        metrics[f"{name}_audit_rows"] = audit_rows
    finally:
        db.dispose()
    return metrics


@contextmanager
def postgres() -> Iterator[Callable[[str], str] | None]:
    """A throwaway PostgreSQL server; yields a function database name -> URL (None: absent)."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if not bins:
        yield None
        return
    initdb, pg_ctl = str(bins[0] / "initdb"), str(bins[0] / "pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="cunliang-bench-pg-"))
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run(
        [*as_pg, initdb, "-D", str(root / "d"), "-U", "postgres", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    # default durability settings (fsync on): the benchmark measures a real server
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*as_pg, pg_ctl, "-D", str(root / "d"), "-o", opts, "-l", str(root / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        import psycopg

        def make(db: str) -> str:
            with psycopg.connect(
                host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
            ) as conn:
                conn.execute(f"CREATE DATABASE {db}")  # type: ignore[arg-type]
            return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{db}"

        yield make
    finally:
        subprocess.run(
            [*as_pg, pg_ctl, "-D", str(root / "d"), "-m", "fast", "-w", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    args = parser.parse_args()
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fleet_path = scaled_fleet_file(args.devices, folder)
        metrics.update(
            bench_backend(
                "sqlite",
                f"sqlite:///{folder / 'inv.db'}",
                f"sqlite:///{folder / 'base.db'}",
                fleet_path,
                args.devices,
            )
        )
        with postgres() as make:
            if make is None:
                print("PostgreSQL not installed: sqlite only", file=sys.stderr)
            else:
                metrics.update(
                    bench_backend(
                        "postgresql",
                        make("bench_inv"),
                        make("bench_base"),
                        fleet_path,
                        args.devices,
                    )
                )
    result = {
        "benchmark": "inventory",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "metrics": {k: round(v, 4) for k, v in metrics.items()},
    }
    out = ROOT / "bench" / "results" / "inventory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    n = args.devices
    rows = [
        "| benchmark | backend | register N devices (s, x baseline) | list filtered (s) | "
        "assess N devices (s, x baseline) | bulk-insert baseline (s) |",
        "|---|---|---|---|---|---|",
    ]
    for backend in ("sqlite", "postgresql"):
        if f"{backend}_bulk_insert_baseline_s" not in metrics:
            continue
        m = {k.removeprefix(f"{backend}_"): v for k, v in metrics.items() if k.startswith(backend)}
        rows.append(
            f"| inventory (N={n}) | {backend} | {m[f'register_{n}_s']:.2f} "
            f"({m['register_vs_baseline']:.1f}x) | {m['list_filtered_s']:.3f} "
            f"({int(m['list_filtered_devices'])} rows; raw SELECT {m['list_plain_select_baseline_s']:.3f}) | "
            f"{m[f'assess_{n}_s']:.2f} "
            f"({m['assess_vs_baseline']:.1f}x) | {m['bulk_insert_baseline_s']:.2f} |"
        )
    print("\n".join(rows))
    (ROOT / "bench" / "ROWS-inventory.md").write_text("\n".join(rows) + "\n", "utf-8")
    print(json.dumps(result["metrics"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
