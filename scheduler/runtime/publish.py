"""Publishing reconciler status as replica endpoints (the gateway's routing input).

``records_from_statuses`` is pure; ``DbEndpointSink`` writes them to the runtime table so
gateways in other processes (Kubernetes) can route; the embedded stack hands the same
records straight to its in-process gateway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from scheduler.runtime.reconciler import ReplicaState, ReplicaStatus
from scheduler.store.runtime import EndpointRecord, replace_endpoints

# reconciler state -> gateway replica state (failed replicas are "unhealthy")
GATEWAY_STATES: dict[ReplicaState, str] = {
    ReplicaState.READY: "ready",
    ReplicaState.STARTING: "starting",
    ReplicaState.DRAINING: "draining",
}


def records_from_statuses(statuses: Sequence[ReplicaStatus], now: datetime) -> list[EndpointRecord]:
    return [
        EndpointRecord(
            id=s.id,
            model=s.replica.model,
            engine_model=s.replica.model,
            base_url=s.base_url or "",
            quant=str(s.replica.quant),
            device_class=s.replica.device_class_id,
            site=s.replica.device_class_id.split("/", 1)[0],
            node=s.replica.node_id or "",
            yuan_per_hour=s.replica.yuan_per_hour,
            state=GATEWAY_STATES.get(s.state, "unhealthy"),
            updated_at=now,
        )
        for s in statuses
    ]


class DbEndpointSink:
    """EndpointSink writing the runtime table in one transaction per tick."""

    def __init__(
        self, sessions: Any, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._sessions = sessions
        self._clock = clock

    def publish(self, statuses: Sequence[ReplicaStatus]) -> None:
        with self._sessions.begin() as session:
            replace_endpoints(session, records_from_statuses(statuses, self._clock()))


class TableEndpointSink:
    """EndpointSink straight into an in-process gateway's ``ReplicaTable`` (no database)."""

    def __init__(
        self, table: Any, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._table = table
        self._clock = clock

    def publish(self, statuses: Sequence[ReplicaStatus]) -> None:
        from scheduler.gateway.db_directory import endpoint_from_record

        now = self._clock()
        records = records_from_statuses(statuses, now)
        self._table.set(endpoint_from_record(r, now, stale_after_s=float("inf")) for r in records)
