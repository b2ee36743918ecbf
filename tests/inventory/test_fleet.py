"""Fleet files in and out: the reference fleet imports, exports and re-imports identically."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scheduler.domain import DeviceKind, LifecycleState
from scheduler.errors import Conflict
from scheduler.fleetfile import load_fleet_file, parse_fleet
from scheduler.inventory.service import InventoryService
from scheduler.store.db import Database

# the project's copy of ../shared/scenarios/reference-fleet.yaml, byte for byte
REFERENCE = Path(__file__).resolve().parents[2] / "bench" / "data" / "reference-fleet.yaml"


@pytest.fixture
def imported(service: InventoryService) -> InventoryService:
    ff = load_fleet_file(REFERENCE)
    out = service.import_fleet(ff.fleet, tuple(ff.models.values()), ff.demands, "test")
    assert (out.sites, out.devices, out.models, out.demands) == (4, 784, 5, 6)
    return service


def test_reference_fleet_imports(imported: InventoryService) -> None:
    devices = imported.list_devices()
    assert len(devices) == 784
    assert {d.state for d in devices} == {LifecycleState.REGISTERED}
    p40 = imported.list_devices(site="hohhot", model="Tesla P40")
    assert len(p40) == 64 and len({d.host for d in p40}) == 8  # per_node 8
    assert p40[0].residual_yuan == 800 and p40[0].tdp_watts == 250
    xeon = imported.list_devices(kind="cpu", site="hohhot")
    assert len(xeon) == 200 and xeon[0].sockets == 2 and xeon[0].memory_bytes == 384 * 2**30
    models = {m.name: m for m in imported.list_models()}
    assert models["qwen2.5-7b-instruct"].arch["layers"] == 28
    assert {d.klass for d in models["qwen2.5-7b-instruct"].demands} == {"interactive", "batch"}


def test_reimport_conflicts_and_writes_nothing(imported: InventoryService) -> None:
    ff = load_fleet_file(REFERENCE)
    audit_before = len(imported.audit(limit=10_000))
    with pytest.raises(Conflict, match="already registered"):
        imported.import_fleet(ff.fleet, tuple(ff.models.values()), ff.demands, "again")
    assert len(imported.list_devices()) == 784
    assert len(imported.audit(limit=10_000)) == audit_before


def test_export_round_trips_through_the_fleet_file_parser(
    imported: InventoryService, db: Database, tmp_path: Path
) -> None:
    text = imported.export_fleet()
    again = parse_fleet(yaml.safe_load(text), "export")
    assert sum(c.count for c in again.fleet.classes) == 784
    assert {d.model for d in again.demands} == {d.model for d in load_fleet_file(REFERENCE).demands}
    # every exported class names its hosts, so a fresh inventory gets the same machines
    from scheduler.store.db import open_database, upgrade

    url = f"sqlite:///{tmp_path / 'copy.db'}"
    upgrade(url)
    copy_db = open_database(url)
    try:
        copy = InventoryService(copy_db)
        copy.import_fleet(again.fleet, tuple(again.models.values()), again.demands, "copy")
        hosts = {(d.host, d.slot, d.model) for d in imported.list_devices()}
        assert {(d.host, d.slot, d.model) for d in copy.list_devices()} == hosts
    finally:
        copy_db.dispose()


def test_snapshot_of_admitted_reference_fleet(imported: InventoryService) -> None:
    imported.site_action("guian", "probation", "test", "bring guian online")
    fleet, demands, models = imported.snapshot()
    assert fleet.classes == ()  # probation is not admitted
    from tests.inventory.test_service import good_profile

    for node in imported.list_nodes(site="guian"):
        imported.add_profile(node.host, good_profile(tokens_per_s=2000, watts=600), "agent")
    fleet, demands, models = imported.snapshot()
    counts = {c.id: (c.count, c.per_node, len(c.node_ids)) for c in fleet.classes}
    assert counts == {
        "guian/a10": (48, 4, 12),
        "guian/tesla-p100-pcie-16gb": (40, 4, 10),
        "guian/tesla-t4": (160, 4, 40),
    }
    assert len(demands) == 6 and len(models) == 5
    t4 = next(c for c in fleet.classes if "t4" in c.id)
    assert t4.spec.kind is DeviceKind.GPU and t4.economics.residual_yuan == 3500
    assert t4.economics.host_watts == 60  # reference amortisation: 60 W per GPU


def test_snapshot_feeds_the_placement_optimiser(imported: InventoryService) -> None:
    from scheduler.placement import plan
    from tests.inventory.test_service import good_profile

    imported.site_action("guian", "probation", "test", "")
    for node in imported.list_nodes(site="guian"):
        imported.add_profile(node.host, good_profile(tokens_per_s=2000, watts=600), "agent")
    fleet, demands, models = imported.snapshot()
    west = [d for d in demands if d.regions == ("west",)]  # guian is the only admitted site
    result = plan(fleet, west, models)
    assert result.replicas, result.unplaced
    hosts = {n.host for n in imported.list_nodes(site="guian")}
    assert {r.device_class_id for r in result.replicas} <= {c.id for c in fleet.classes}
    assert {r.node_id for r in result.replicas} <= hosts


def test_import_refuses_a_site_that_disagrees_with_the_inventory(service: InventoryService) -> None:
    from scheduler.inventory.schemas import SiteIn

    service.add_site(SiteIn(name="guian", region="west", tariff_yuan_per_kwh=0.99, pue=1.25), "op")
    ff = load_fleet_file(REFERENCE)
    with pytest.raises(Conflict, match="'guian' exists with other region/tariff/PUE"):
        service.import_fleet(ff.fleet, tuple(ff.models.values()), ff.demands, "op")
    assert service.list_devices() == [] and len(service.list_sites()) == 1
