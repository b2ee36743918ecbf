"""Node liveness: Ray node rows -> lost hosts -> real inventory health records (SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.domain import DeviceClass, DeviceKind, DeviceSpec, Fleet, Site
from scheduler.inventory.schemas import DeviceIn, NodeIn, SiteIn
from scheduler.inventory.service import InventoryService
from scheduler.runtime.liveness import (
    InventoryHealth,
    NodeWatcher,
    host_resource,
    sightings,
    without_hosts,
)
from scheduler.store.db import open_database, upgrade

SITE = Site("lab", "test")


def _row(node_id: str, alive: bool, host: str | None = None) -> dict[str, Any]:
    resources = {"CPU": 1.0, **({host_resource(host): 1.0} if host else {})}
    return {"NodeID": node_id, "Alive": alive, "Resources": resources}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.reports: list[tuple[str, bool]] = []

    def report(self, host: str, healthy: bool, detail: str) -> None:
        assert detail
        self.reports.append((host, healthy))


def test_sightings_name_hosts_by_resource_or_recorded_id() -> None:
    rows = [_row("n1", True, "a"), _row("n2", False), _row("n3", True), _row("n4", False, "a")]
    seen = sightings(rows, known_ids={"n2": "b"})
    assert [(s.host, s.ray_node_id, s.alive) for s in seen] == [
        ("a", "n1", True),
        ("b", "n2", False),
    ]


def test_watcher_reports_loss_repeats_it_and_clears_on_return() -> None:
    clock, rec = Clock(), Recorder()
    rows = [_row("n1", True, "a"), _row("n2", True, "b")]
    watcher = NodeWatcher(lambda: rows, rec, report_every_s=5.0, clock=clock)
    assert watcher.tick() == frozenset()
    assert rec.reports == [("a", True), ("b", True)]
    rows[1] = _row("n2", False, "b")
    assert watcher.tick() == {"b"}
    clock.now += 1
    watcher.tick()
    assert rec.reports[2:] == [("b", False)], "no second failure inside report_every_s"
    clock.now += 5
    rows.pop()  # the dead node leaves the table: still lost
    assert watcher.tick() == {"b"} and rec.reports[3:] == [("b", False)]
    rows.append(_row("n9", True, "b"))  # the machine rejoined as a new Ray node
    assert watcher.tick() == frozenset() and rec.reports[4:] == [("b", True)]


def test_without_hosts_shrinks_classes_and_drops_empty_ones() -> None:
    spec = DeviceSpec("t4", DeviceKind.GPU)
    fleet = Fleet(
        (SITE,),
        (
            DeviceClass("lab/t4", SITE, spec, count=4, per_node=2, node_ids=("h1", "h2")),
            DeviceClass("lab/cpu", SITE, spec, count=1, node_ids=("h3",)),
        ),
    )
    out = without_hosts(fleet, {"h2", "h3"})
    assert [(c.id, c.count, c.node_ids) for c in out.classes] == [("lab/t4", 2, ("h1",))]
    assert without_hosts(fleet, ()) is fleet


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[InventoryService]:
    url = f"sqlite:///{tmp_path / 'inv.db'}"
    upgrade(url)
    db = open_database(url)
    service = InventoryService(db)
    service.add_site(SiteIn(name="lab", region="test", tariff_yuan_per_kwh=0.6, pue=1.5), actor="t")
    service.register_node(
        NodeIn(
            host="gpu-1",
            site="lab",
            devices=[DeviceIn(model="Xeon Gold 6248", memory_bytes=64 * 2**30)],
        ),
        actor="t",
    )
    yield service
    db.dispose()


def test_repeated_loss_quarantines_the_node_in_the_inventory(inventory: InventoryService) -> None:
    clock = Clock()
    rows = [_row("n1", True, "gpu-1"), _row("n2", True, "not-registered")]
    watcher = NodeWatcher(lambda: rows, InventoryHealth(inventory), report_every_s=1.0, clock=clock)
    watcher.tick()
    assert inventory.get_node("gpu-1").node.health == "healthy"
    rows[0] = _row("n1", False, "gpu-1")
    for _ in range(3):  # policy: quarantine after 3 consecutive failures
        watcher.tick()
        clock.now += 1
    node = inventory.get_node("gpu-1").node
    assert node.health == "unhealthy" and node.health_failures == 3
    assert node.states == {"quarantined": 1}
