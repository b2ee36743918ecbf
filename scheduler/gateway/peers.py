"""How many gateway processes share the tenants' limits, and which one this is.

Tenant rate and concurrency limits are enforced in each gateway's memory (no database
round trip per request). When several gateways serve the same tenants (the Helm chart runs
2 or more behind one Service), each enforces its share of every limit, so the limits hold
across all of them (see ``gateway.limits``). ``Alone`` is the one gateway of ``cunliang up``;
``db_directory.DbGatewayPeers`` counts the gateways that heartbeat the shared database.
"""

from __future__ import annotations

from typing import Protocol


class GatewayPeers(Protocol):
    def share(self) -> tuple[int, int]:
        """(this gateway's rank among the live ones, how many are live); count >= 1."""
        ...


class Alone:
    """A gateway that shares its tenants with no other gateway."""

    def share(self) -> tuple[int, int]:
        return 0, 1
