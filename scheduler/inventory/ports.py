"""What the inventory needs from the rest of the system, as small Protocols.

``UsageSource``: measured traffic (the gateway's usage records) for assessment and for
demand estimated from usage. ``ReplicaCounter``: the runtime's word on whether a node
still runs replicas, so retirement never drops in-flight work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class UsageSource(Protocol):
    def completion_tokens_by_model(self, since: datetime, until: datetime) -> Mapping[str, int]:
        """Output tokens generated per served model name in [since, until)."""
        ...

    def completion_tokens_by_node(self, since: datetime, until: datetime) -> Mapping[str, int]:
        """Output tokens generated per node host in [since, until); absent = no record."""
        ...


class ReplicaCounter(Protocol):
    def running_replicas(self, hosts: Sequence[str]) -> Mapping[str, int]:
        """Replicas running on each host; a host missing from the answer is unknown."""
        ...


@dataclass(frozen=True)
class NoUsage:
    """No traffic recorded anywhere (a fresh install, or no gateway attached)."""

    def completion_tokens_by_model(self, since: datetime, until: datetime) -> Mapping[str, int]:
        return {}

    def completion_tokens_by_node(self, since: datetime, until: datetime) -> Mapping[str, int]:
        return {}


@dataclass(frozen=True)
class NoRuntime:
    """No runtime to ask: every host's replica count is unknown, so retire needs an
    operator's explicit confirmation (``--replicas-moved``)."""

    def running_replicas(self, hosts: Sequence[str]) -> Mapping[str, int]:
        return {}
