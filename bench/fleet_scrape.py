"""What the fleet collector adds to a /metrics scrape, on the reference fleet.

    PYTHONPATH=$PWD python -m bench.fleet_scrape

Imports /work/shared/scenarios/reference-fleet.yaml (784 devices, 4 sites) into a fresh
SQLite inventory, spreads the devices over lifecycle states (80% admitted, 10% probation,
10% registered: the import registers them all), then times ``generate_latest`` on
  baseline: the gateway's registry without the fleet collector,
  uncached: with the collector computing from the DB on every scrape,
  cached:   with the 5 s cache ``cunliang up`` uses (a second scraper within the TTL).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import text

from bench.common import write_result
from scheduler.fleetfile import load_fleet_file
from scheduler.inventory.service import InventoryService
from scheduler.observability.collector import CachedProvider, install_fleet_collector
from scheduler.observability.metrics import create_metrics
from scheduler.observability.sources import InventoryFleetSource
from scheduler.store.db import open_database, upgrade

FLEET = Path("/work/shared/scenarios/reference-fleet.yaml")
REPEATS = 20


def _median_s(registry: CollectorRegistry) -> tuple[float, bytes]:
    times, out = [], b""
    for _ in range(REPEATS):
        t = time.perf_counter()
        out = generate_latest(registry)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="cl-bench-scrape-"))
    url = f"sqlite:///{folder / 'fleet.db'}"
    upgrade(url)
    db = open_database(url)
    inv = InventoryService(db)
    ff = load_fleet_file(FLEET)
    out = inv.import_fleet(ff.fleet, list(ff.models.values()), ff.demands, "bench")
    with db.sessions.begin() as s:
        s.execute(
            text(
                "UPDATE devices SET state = CASE WHEN id % 10 = 0 THEN 'probation' "
                "WHEN id % 10 = 1 THEN 'registered' ELSE 'admitted' END"
            )
        )
    base = CollectorRegistry()
    create_metrics(base)
    baseline_s, _ = _median_s(base)
    uncached = CollectorRegistry()
    install_fleet_collector(uncached, create_metrics(uncached), InventoryFleetSource(db))
    uncached_s, text_out = _median_s(uncached)
    cached = CollectorRegistry()
    provider = CachedProvider(InventoryFleetSource(db), ttl_s=5.0)
    install_fleet_collector(cached, create_metrics(cached), provider)
    cached_s, _ = _median_s(cached)
    series = sum(
        1
        for line in text_out.decode().splitlines()
        if line.startswith(("cunliang_device", "cunliang_replicas"))
    )
    metrics = {
        "devices": float(out.devices),
        "fleet_series": float(series),
        "baseline_scrape_ms": baseline_s * 1000,
        "uncached_scrape_ms": uncached_s * 1000,
        "cached_scrape_ms": cached_s * 1000,
        "uncached_over_baseline_ms": (uncached_s - baseline_s) * 1000,
        "uncached_vs_cached_ratio": uncached_s / cached_s,
    }
    path = write_result("fleet_scrape", metrics)
    db.dispose()
    print(
        f"| fleet_scrape (reference fleet, {out.devices} devices, {series} series) | "
        f"{baseline_s * 1000:.2f} ms baseline | {uncached_s * 1000:.1f} ms uncached | "
        f"{cached_s * 1000:.2f} ms cached ({uncached_s / cached_s:.0f}x) |"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
