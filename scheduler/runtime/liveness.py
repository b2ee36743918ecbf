"""Node liveness: which hosts' Ray nodes are gone, fed to the inventory and the controller.

``NodeWatcher.tick()`` reads the Ray node table (``ray.nodes()`` rows, injected as a
callable so the logic is tested with plain rows) and maps each Ray node to an inventory
host: by the ``cunliang_host:<host>`` resource ``cunliang agent --join`` advertises, or by
the Ray node id the inventory recorded at join. A host whose node is dead (or whose node
disappeared) is *lost*: the inventory's health record gets a failure on every change and
every ``report_every_s`` while it stays lost (repeated failures quarantine the node), the
first healthy sighting clears it. ``without_hosts`` removes lost hosts from the fleet so
the controller replans their replicas onto the remaining admitted hardware.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from scheduler.domain import Fleet

log = logging.getLogger(__name__)

HOST_RESOURCE_PREFIX = "cunliang_host:"


def host_resource(host: str) -> str:
    """The Ray custom resource (amount 1) a joined node advertises to name its host."""
    return HOST_RESOURCE_PREFIX + host


@dataclass(frozen=True)
class NodeSighting:
    host: str
    ray_node_id: str
    alive: bool


def sightings(
    ray_nodes: Iterable[Mapping[str, Any]], known_ids: Mapping[str, str] | None = None
) -> list[NodeSighting]:
    """Ray node rows -> host sightings. ``known_ids``: ``{ray_node_id: host}`` from the
    inventory, for nodes started without the host resource. Rows naming no host are
    skipped. When a host has several rows (a restarted node), a live one wins."""
    by_host: dict[str, NodeSighting] = {}
    for row in ray_nodes:
        node_id = str(row.get("NodeID", ""))
        host = next(
            (
                name.removeprefix(HOST_RESOURCE_PREFIX)
                for name in (row.get("Resources") or {})
                if name.startswith(HOST_RESOURCE_PREFIX)
            ),
            (known_ids or {}).get(node_id),
        )
        if not host:
            continue
        seen = NodeSighting(host, node_id, bool(row.get("Alive", False)))
        if host not in by_host or (seen.alive and not by_host[host].alive):
            by_host[host] = seen
    return sorted(by_host.values(), key=lambda s: s.host)


def without_hosts(fleet: Fleet, hosts: Iterable[str]) -> Fleet:
    """The fleet minus the devices of ``hosts`` (classes left empty are dropped)."""
    gone = set(hosts)
    if not gone:
        return fleet
    classes = []
    for cls in fleet.classes:
        lost = [h for h in cls.node_ids if h in gone]
        if not lost:
            classes.append(cls)
            continue
        count = cls.count - len(lost) * max(1, cls.per_node)
        if count > 0:
            kept = tuple(h for h in cls.node_ids if h not in gone)
            classes.append(replace(cls, count=count, node_ids=kept))
    return replace(fleet, classes=tuple(classes))


class HealthReporter(Protocol):
    def report(self, host: str, healthy: bool, detail: str) -> None:
        """Record one health observation of a host (the inventory's ``record_health``)."""


class InventoryHealth:
    """HealthReporter over ``InventoryService.record_health``; unknown hosts are skipped."""

    def __init__(self, inventory: Any, actor: str = "runtime:liveness") -> None:
        self._inventory = inventory
        self._actor = actor

    def report(self, host: str, healthy: bool, detail: str) -> None:
        from scheduler.errors import NotFound
        from scheduler.inventory.schemas import HealthIn

        try:
            self._inventory.record_health(
                host, HealthIn(healthy=healthy, detail=detail), self._actor
            )
        except NotFound:
            log.info("liveness: host %s is not in the inventory", host)


class NodeWatcher:
    """Tracks lost hosts from Ray's node table; thread-safe ``lost()``."""

    def __init__(
        self,
        ray_nodes: Callable[[], Sequence[Mapping[str, Any]]],
        reporter: HealthReporter,
        *,
        known_ids: Callable[[], Mapping[str, str]] = dict,
        report_every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ray_nodes = ray_nodes
        self._reporter = reporter
        self._known_ids = known_ids
        self._report_every_s = report_every_s
        self._clock = clock
        self._lost: dict[str, float] = {}  # host -> clock time of the last failure report
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def lost(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._lost)

    def tick(self) -> frozenset[str]:
        """Read the node table once; report changes; return the lost hosts."""
        now = self._clock()
        rows = sightings(self._ray_nodes(), self._known_ids())
        alive = {s.host for s in rows if s.alive}
        # a host seen alive before and now dead or absent from the table is lost
        missing = (self._seen | {s.host for s in rows}) - alive
        reports: list[tuple[str, bool, str]] = []
        with self._lock:
            for host in sorted(missing):
                last = self._lost.get(host)
                if last is None or now - last >= self._report_every_s:
                    self._lost[host] = now
                    reports.append((host, False, "ray node lost (not alive in ray.nodes())"))
            for host in sorted(alive):
                if host in self._lost:
                    del self._lost[host]
                    reports.append((host, True, "ray node alive"))
                elif host not in self._seen:
                    reports.append((host, True, "ray node joined"))
            self._seen |= alive
            lost = frozenset(self._lost)
        for host, healthy, detail in reports:
            try:
                self._reporter.report(host, healthy, detail)
            except Exception as exc:  # the watcher must keep watching
                log.warning("liveness: reporting %s failed: %s", host, exc)
        if reports:
            log.info("liveness: lost hosts now %s", sorted(lost) or "none")
        return lost
