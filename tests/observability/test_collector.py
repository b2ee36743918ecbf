"""The fleet collector over a real inventory: exported families, values and label sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from scheduler.cost import full_yuan_per_hour, marginal_yuan_per_hour
from scheduler.domain import DeviceKind
from scheduler.observability.collector import (
    CachedProvider,
    FleetCollector,
    install_fleet_collector,
)
from scheduler.observability.fleet import FleetFigures, measured_reading
from scheduler.observability.metrics import create_metrics
from scheduler.observability.sources import InventoryFleetSource, replica_counts
from tests.observability.fleet_data import build_fleet


def _samples(registry: CollectorRegistry) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_fleet_gauges_from_inventory(tmp_path: Path) -> None:
    db, inv = build_fleet(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        registry = CollectorRegistry()
        metrics = create_metrics(registry)
        source = InventoryFleetSource(db, lambda: replica_counts({"demo": 2}, {"demo": 1}))
        install_fleet_collector(registry, metrics, source)
        got = _samples(registry)
        fleet, _, _ = inv.snapshot()  # admitted only: the guian T4 class (8 devices)
        t4 = next(dc for dc in fleet.classes if dc.id == "guian/tesla-t4")
        assert t4.count == 8
        cost = got["cunliang_device_yuan_per_hour"]
        key = (("cost", "full"), ("device_class", "guian/tesla-t4"), ("site", "guian"))
        assert cost[key] == pytest.approx(8 * full_yuan_per_hour(t4))
        key = (("cost", "marginal"), ("device_class", "guian/tesla-t4"), ("site", "guian"))
        assert cost[key] == pytest.approx(8 * marginal_yuan_per_hour(t4))
        # the drained shanghai V100s still draw power: priced, labelled by their class
        assert any(dict(k)["site"] == "shanghai" for k in cost)
        devices = got["cunliang_devices"]
        by_state = {(dict(k)["device_class"], dict(k)["state"]): v for k, v in devices.items()}
        assert by_state == {
            ("guian/tesla-t4", "admitted"): 8,
            ("guian/tesla-t4", "registered"): 2,
            ("shanghai/tesla-v100-pcie-32gb", "draining"): 2,
        }
        # g1 measured by NVML but g2 not: the class is modelled as a whole (T4 TDP 70 W)
        watts = got["cunliang_device_watts"]
        t4_watts = {dict(k)["source"]: v for k, v in watts.items() if "tesla-t4" in str(k)}
        assert set(t4_watts) == {"tdp"} and t4_watts["tdp"] > 0
        replicas = {dict(k)["state"]: v for k, v in got["cunliang_replicas"].items()}
        assert replicas == {"planned": 2, "running": 1}
    finally:
        db.dispose()


def test_measured_power_when_every_node_of_the_class_has_it(tmp_path: Path) -> None:
    from tests.observability.fleet_data import _nvml_payload, profile

    db, inv = build_fleet(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        inv.add_profile("g2", profile(800.0, 220.0, _nvml_payload(4, 50.0)), "test")
        fig = InventoryFleetSource(db)()
        t4 = next(c for c in fig.classes if c.device_class == "guian/tesla-t4")
        assert (t4.watts_source, t4.watts) == ("nvml", pytest.approx(4 * 55.0 + 4 * 50.0))
    finally:
        db.dispose()


def test_measured_reading_rules() -> None:
    rapl = {"host": {"cpu_power": {"source": "rapl", "watts": 140.0}}}
    assert measured_reading(rapl, DeviceKind.CPU, 1) == ("rapl", 140.0)
    assert measured_reading({"host": {"cpu_power": {"source": "none"}}}, DeviceKind.CPU, 1) is None
    two = {"host": {"gpus": [{"power": {"source": "nvml", "watts": 60.0}}] * 2}}
    assert measured_reading(two, DeviceKind.GPU, 2) == ("nvml", 120.0)
    assert measured_reading(two, DeviceKind.GPU, 4) is None  # mixed node: cannot split
    assert measured_reading({}, DeviceKind.GPU, 1) is None


def test_failing_provider_keeps_the_scrape_alive_and_cache_shares_work() -> None:
    calls = []

    def broken() -> FleetFigures:
        calls.append(1)
        raise RuntimeError("db down")

    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    metrics.requests.labels("m", "t", "200").inc()
    install_fleet_collector(registry, metrics, broken)
    text = generate_latest(registry).decode()
    assert 'cunliang_requests_total{model="m",status="200",tenant="t"} 1.0' in text
    assert "cunliang_devices{" not in text
    now = [0.0]
    cached = CachedProvider(lambda: FleetFigures(), ttl_s=5, clock=lambda: now[0])
    assert cached() is cached()
    now[0] = 6.0
    first = cached()
    assert cached() is first
    assert len(list(FleetCollector(cached).describe())) == 4


def test_background_cache_serves_the_old_value_while_one_thread_refreshes() -> None:
    import threading

    gate, calls = threading.Event(), []

    def slow() -> FleetFigures:
        calls.append(1)
        if len(calls) > 1:
            gate.wait(5)
        return FleetFigures(replicas={"m": {"planned": len(calls)}})

    now = [0.0]
    cached = CachedProvider(slow, ttl_s=1, clock=lambda: now[0], background=True)
    first = cached()  # the first call computes inline
    now[0] = 2.0
    assert cached() is first and cached() is first  # stale: served at once, one refresh
    gate.set()
    for _ in range(250):
        if cached().replicas["m"]["planned"] == 2:
            break
        threading.Event().wait(0.02)
    assert cached().replicas["m"]["planned"] == 2 and len(calls) == 2
