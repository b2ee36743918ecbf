"""Routing policies: pure functions of a snapshot, never of the HTTP request.

A policy gets a ``RoutingSnapshot`` (the eligible replicas and their outstanding request
counts) and returns the replicas in the order to try them; the proxy walks that order when
it retries before the first byte. Policies are looked up by name in ``POLICIES`` (add one by
adding an entry, not a branch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from scheduler.gateway.replicas import ReplicaEndpoint


@dataclass(frozen=True)
class RoutingSnapshot:
    """What a policy may look at.

    candidates: ready replicas serving the model, minus those already tried for this request.
    outstanding: {replica_id: requests in flight through this gateway}.
    sequence: a per-request counter, used only to rotate among exact ties.
    """

    model: str
    candidates: tuple[ReplicaEndpoint, ...]
    outstanding: Mapping[str, int]
    sequence: int = 0


class RoutingPolicy(Protocol):
    name: str

    def order(self, snapshot: RoutingSnapshot) -> tuple[ReplicaEndpoint, ...]:
        """All candidates, best first (empty when there are none)."""
        ...


class LeastOutstanding:
    """Fewest outstanding requests first; ties go to the cheaper replica (yuan per hour),
    then rotate by request sequence so identical replicas share load evenly."""

    name = "least_outstanding"

    def order(self, snapshot: RoutingSnapshot) -> tuple[ReplicaEndpoint, ...]:
        n = len(snapshot.candidates)
        if n <= 1:
            return snapshot.candidates
        rotated = {r.id: (i - snapshot.sequence) % n for i, r in enumerate(snapshot.candidates)}
        return tuple(
            sorted(
                snapshot.candidates,
                key=lambda r: (
                    snapshot.outstanding.get(r.id, 0),
                    r.yuan_per_hour,
                    rotated[r.id],
                ),
            )
        )


class CheapestFirst:
    """Cheapest replica first regardless of load (fills cheap hardware before dear)."""

    name = "cheapest_first"

    def order(self, snapshot: RoutingSnapshot) -> tuple[ReplicaEndpoint, ...]:
        return tuple(
            sorted(
                snapshot.candidates,
                key=lambda r: (r.yuan_per_hour, snapshot.outstanding.get(r.id, 0)),
            )
        )


POLICIES: Mapping[str, Callable[[], RoutingPolicy]] = {
    LeastOutstanding.name: LeastOutstanding,
    CheapestFirst.name: CheapestFirst,
}


def eligible(replicas: Sequence[ReplicaEndpoint], model: str) -> tuple[ReplicaEndpoint, ...]:
    """Replicas that may take a new request for ``model``: only ``ready`` ones."""
    return tuple(r for r in replicas if r.model == model and r.state == "ready")
