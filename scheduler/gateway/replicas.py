"""Replica directory: the contract between the runtime (which starts engines) and the gateway.

The runtime owns a ``ReplicaTable`` and calls ``set``/``mark`` as replicas start, drain or
fail; the gateway only reads ``replicas()``, a consistent snapshot (a tuple that is replaced,
never mutated, so readers need no lock).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

REPLICA_STATES = ("ready", "starting", "draining", "unhealthy")


@dataclass(frozen=True)
class ReplicaEndpoint:
    """One serving engine as the gateway sees it."""

    id: str
    model: str  # public model name tenants use
    engine_model: str  # name the engine serves it under (sent upstream)
    base_url: str  # engine OpenAI server root, e.g. http://127.0.0.1:41234 (no /v1)
    quant: str
    device_class: str
    site: str
    yuan_per_hour: float  # cost of the devices this replica holds
    state: str  # "ready" | "starting" | "draining" | "unhealthy"

    def __post_init__(self) -> None:
        if self.state not in REPLICA_STATES:
            raise ValueError(f"replica state {self.state!r} not in {REPLICA_STATES}")
        if self.yuan_per_hour < 0:
            raise ValueError("yuan_per_hour must be >= 0")


class ReplicaDirectory(Protocol):
    """What the gateway needs from the runtime: the current replicas, any state."""

    def replicas(self) -> Sequence[ReplicaEndpoint]: ...


class ReplicaTable:
    """Thread-safe ``ReplicaDirectory`` the runtime updates (from Ray callbacks, ticks...)."""

    def __init__(self, replicas: Iterable[ReplicaEndpoint] = ()) -> None:
        self._lock = threading.Lock()
        self._replicas: tuple[ReplicaEndpoint, ...] = ()
        self.set(replicas)

    def replicas(self) -> Sequence[ReplicaEndpoint]:
        return self._replicas  # an immutable tuple swapped atomically: no lock to read

    def set(self, replicas: Iterable[ReplicaEndpoint]) -> None:
        """Replace the whole table (ids must be unique)."""
        new = tuple(replicas)
        ids = [r.id for r in new]
        if len(ids) != len(set(ids)):
            raise ValueError("replica ids must be unique")
        with self._lock:
            self._replicas = new

    def upsert(self, replica: ReplicaEndpoint) -> None:
        with self._lock:
            others = tuple(r for r in self._replicas if r.id != replica.id)
            self._replicas = (*others, replica)

    def remove(self, replica_id: str) -> None:
        with self._lock:
            self._replicas = tuple(r for r in self._replicas if r.id != replica_id)

    def mark(self, replica_id: str, state: str) -> None:
        """Change one replica's state; KeyError if unknown, ValueError if bad state."""
        with self._lock:
            found = False
            updated = []
            for r in self._replicas:
                if r.id == replica_id:
                    r = replace(r, state=state)
                    found = True
                updated.append(r)
            if not found:
                raise KeyError(replica_id)
            self._replicas = tuple(updated)
