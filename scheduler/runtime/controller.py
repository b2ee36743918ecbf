"""The scheduler's control loop: replan when the world changes, hand the plan to the reconciler.

The world is a snapshot ``(fleet, demands, models)`` of the inventory (admitted devices
only). A plan is recomputed only when the snapshot differs from the last one (devices
admitted, drained or lost; demand or tariffs changed), with the running plan passed as
``current`` so the optimiser keeps replicas in place where moving them is not worth it.
Hosts the node watcher reports lost (``lost_hosts``) are taken out of the fleet before
planning, so a dead node's replicas are re-placed on the remaining admitted hardware at
the next tick, before the inventory has quarantined anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from scheduler.domain import Demand, Fleet, ModelSpec, Plan
from scheduler.runtime.liveness import without_hosts
from scheduler.runtime.reconciler import Reconciler

log = logging.getLogger(__name__)

World = tuple[Fleet, Sequence[Demand], Mapping[str, ModelSpec]]
Planner = Callable[[Fleet, Sequence[Demand], Mapping[str, ModelSpec], Plan | None], Plan]


class Controller:
    def __init__(
        self,
        snapshot: Callable[[], World],
        planner: Planner,
        reconciler: Reconciler,
        *,
        lost_hosts: Callable[[], frozenset[str]] = frozenset,
    ) -> None:
        self._snapshot = snapshot
        self._lost_hosts = lost_hosts
        self._planner = planner
        self._reconciler = reconciler
        self._fingerprint: str | None = None
        self.plan: Plan | None = None
        self.models: Mapping[str, ModelSpec] = {}

    def tick(self) -> Plan | None:
        """Replan if the world changed; returns the new plan, or None when nothing changed."""
        fleet, demands, models = self._snapshot()
        fleet = without_hosts(fleet, self._lost_hosts())
        self.models = models
        # frozen dataclasses hold dicts (not hashable): their repr is a faithful fingerprint
        fingerprint = repr((fleet, tuple(demands), sorted(models.items())))
        if fingerprint == self._fingerprint:
            return None
        plan = self._planner(fleet, demands, models, self.plan)
        log.info(
            "replanned: %s, %d replicas, %.2f yuan/h, %d unplaced",
            plan.status,
            len(plan.replicas),
            plan.yuan_per_hour,
            len(plan.unplaced),
        )
        self._fingerprint = fingerprint
        self.plan = plan
        self._reconciler.apply(plan)
        return plan
