"""Per-replica load accounting: outstanding requests and each request's share of busy time.

Cost formula (documented contract for metering):

    cost_yuan = yuan_per_hour / 3600 * busy_share_s
    busy_share_s = ∫ over the request's lifetime of dt / n(t)

where n(t) is the number of requests in flight on that replica through this gateway (n ≥ 1
while the request is in flight, as it counts itself). The shares of all requests add up to
exactly the time the replica was busy, so tenants together pay for every busy second and a
request sharing a replica with 7 others pays an eighth of the wall time. Idle time is not
billed to tenants (it shows up as lower fleet tokens per yuan instead).

Implemented in O(1) per event with a running integral A(t) = ∫ dt / n(t) per replica: a
request remembers A at its start; its share is A(end) − A(start).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple


@dataclass
class _ReplicaAccount:
    in_flight: int = 0
    integral_s: float = 0.0  # A(t): ∫ dt / n(t) while n > 0
    updated_at_s: float = 0.0

    def advance(self, now_s: float) -> None:
        if self.in_flight > 0 and now_s > self.updated_at_s:
            self.integral_s += (now_s - self.updated_at_s) / self.in_flight
        self.updated_at_s = max(now_s, self.updated_at_s)


class LoadTicket(NamedTuple):  # immutable; a tuple's construction (a frozen dataclass's 4x)
    replica_id: str
    integral_at_start_s: float


class ReplicaLoad:
    """Outstanding counts and busy-time shares. Used from the event loop only (no lock)."""

    def __init__(self) -> None:
        self._accounts: dict[str, _ReplicaAccount] = {}  # {replica_id: account}
        self._in_flight: dict[str, int] = {}  # {replica_id: in-flight requests}

    def outstanding(self) -> Mapping[str, int]:
        """{replica_id: in-flight requests} for replicas with any history (a live view)."""
        return self._in_flight

    def in_flight(self, replica_id: str) -> int:
        account = self._accounts.get(replica_id)
        return account.in_flight if account else 0

    def start(self, replica_id: str, now_s: float) -> LoadTicket:
        account = self._accounts.setdefault(replica_id, _ReplicaAccount(updated_at_s=now_s))
        account.advance(now_s)
        account.in_flight += 1
        self._in_flight[replica_id] = account.in_flight
        return LoadTicket(replica_id, account.integral_s)

    def finish(self, ticket: LoadTicket, now_s: float) -> float:
        """End a request; returns its busy share in seconds."""
        account = self._accounts[ticket.replica_id]
        account.advance(now_s)
        account.in_flight = max(0, account.in_flight - 1)
        self._in_flight[ticket.replica_id] = account.in_flight
        return max(0.0, account.integral_s - ticket.integral_at_start_s)


def cost_yuan(yuan_per_hour: float, busy_share_s: float) -> float:
    return yuan_per_hour / 3600.0 * busy_share_s
