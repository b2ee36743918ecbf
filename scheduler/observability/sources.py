"""Where the fleet collector's figures come from: the inventory store and the reconciler.

I/O edge: reads the inventory database (devices per lifecycle state, each class's
economics, the newest profile per node for measured power) and the reconciler's statuses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from scheduler.domain import LifecycleState
from scheduler.inventory import snapshot
from scheduler.observability.fleet import (
    POWERED_STATES,
    FleetFigures,
    class_figures,
    merge_states,
    replica_counts,
)
from scheduler.store.inventory import NodeRow, ProfileRow

ReplicaCounts = Callable[[], Mapping[str, Mapping[str, int]]]


def no_replicas() -> Mapping[str, Mapping[str, int]]:
    return {}


class InventoryFleetSource:
    """``FleetFigures`` from an inventory ``Database`` (``readers`` sessionmaker) plus
    replica counts from ``replicas`` (e.g. ``reconciler_replica_counts``)."""

    def __init__(
        self,
        database: Any,
        replicas: ReplicaCounts = no_replicas,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        hour: int | None = None,
    ) -> None:
        self._db = database
        self._replicas = replicas
        self._clock = clock
        self._hour = hour

    def __call__(self) -> FleetFigures:
        now = self._clock()
        counts: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        with self._db.readers() as session:
            for state in LifecycleState:
                fleet, _, _ = snapshot.build(session, now, states=(state,))
                for dc in fleet.classes:
                    counts[(dc.id, dc.site.name)][str(state)] = dc.count
            powered, _, _ = snapshot.build(session, now, states=POWERED_STATES)
            hosts = sorted({h for dc in powered.classes for h in dc.node_ids})
            payloads = _newest_payloads(session, hosts)
        figures = [
            class_figures(
                dc, {}, {h: payloads[h] for h in dc.node_ids if h in payloads}, self._hour
            )
            for dc in powered.classes
        ]
        return FleetFigures(merge_states(figures, counts), self._replicas())


def _newest_payloads(session: Any, hosts: Sequence[str]) -> dict[str, Mapping[str, Any]]:
    if not hosts:
        return {}
    newest = (
        select(ProfileRow.node_id, func.max(ProfileRow.version).label("version"))
        .group_by(ProfileRow.node_id)
        .subquery()
    )
    query = (
        select(NodeRow.host, ProfileRow.payload)
        .join(ProfileRow, ProfileRow.node_id == NodeRow.id)
        .join(
            newest,
            (newest.c.node_id == ProfileRow.node_id) & (newest.c.version == ProfileRow.version),
        )
        .where(NodeRow.host.in_(list(hosts)))
    )
    return {host: payload or {} for host, payload in session.execute(query)}


def reconciler_replica_counts(reconciler: Any) -> ReplicaCounts:
    """Planned = replicas the reconciler is keeping (not draining/stopped); running = ready."""
    from scheduler.runtime.reconciler import ReplicaState

    def counts() -> Mapping[str, Mapping[str, int]]:
        planned: dict[str, int] = defaultdict(int)
        running: dict[str, int] = defaultdict(int)
        for st in reconciler.statuses():
            if st.state not in (ReplicaState.DRAINING, ReplicaState.STOPPED):
                planned[st.replica.model] += 1
            if st.state is ReplicaState.READY:
                running[st.replica.model] += 1
        return replica_counts(planned, running)

    return counts


def directory_replica_counts(directory: Any) -> ReplicaCounts:
    """For a gateway without a reconciler: running = ready endpoints it routes to; planned =
    every endpoint the scheduler published (it publishes one row per planned replica)."""

    def counts() -> Mapping[str, Mapping[str, int]]:
        planned: dict[str, int] = defaultdict(int)
        running: dict[str, int] = defaultdict(int)
        for r in directory.replicas():
            if r.state != "draining":
                planned[r.model] += 1
            if r.state == "ready":
                running[r.model] += 1
        return replica_counts(planned, running)

    return counts
