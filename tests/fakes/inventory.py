"""Hand-written stand-ins for the inventory's ports (usage records, runtime, clock)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


@dataclass
class FakeUsage:
    """Output tokens per node host and per model, the same for any window asked."""

    by_node: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, int] = field(default_factory=dict)
    windows: list[tuple[datetime, datetime]] = field(default_factory=list)

    def completion_tokens_by_model(self, since: datetime, until: datetime) -> Mapping[str, int]:
        self.windows.append((since, until))
        return dict(self.by_model)

    def completion_tokens_by_node(self, since: datetime, until: datetime) -> Mapping[str, int]:
        self.windows.append((since, until))
        return dict(self.by_node)


@dataclass
class FakeReplicas:
    """What the runtime would say: replicas per host; hosts not listed are unknown."""

    running: dict[str, int] = field(default_factory=dict)
    asked: list[tuple[str, ...]] = field(default_factory=list)

    def running_replicas(self, hosts: Sequence[str]) -> Mapping[str, int]:
        self.asked.append(tuple(hosts))
        return {h: self.running[h] for h in hosts if h in self.running}


@dataclass
class FakeClock:
    now: datetime = field(default_factory=lambda: datetime(2026, 3, 1, 8, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)
