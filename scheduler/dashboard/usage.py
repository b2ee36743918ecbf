"""Usage records for the dashboard: one read query (I/O edge) and pure bucketing.

Chart definitions (per time bucket of ``bucket_s`` seconds):
  throughput       = completion tokens / bucket_s                      (tokens/s)
  tokens per yuan  = completion tokens / (fleet full yuan/h x bucket_s / 3600)
  utilisation      = billed yuan / (ready replicas' yuan/h x bucket_s / 3600)
The gateway bills each request its busy-time share of its replica's yuan/hour
(gateway/load.py), so billed yuan / replica cost is exactly the busy share of the
replicas' time; the fleet and replica costs are today's (the inventory has no history).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from scheduler.store.tenancy import TenantRow, UsageRow

# a dashboard window reads at most this many records (newest first): bounded memory
MAX_POINTS = 200_000


@dataclass(frozen=True)
class UsagePoint:
    created_at: datetime
    tenant: str
    model: str
    device_class: str
    site: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    cost_yuan: float


UsageReader = Callable[[datetime, datetime], Sequence[UsagePoint]]


def usage_reader(sessions: Any) -> UsageReader:
    """Reads usage records in ``[since, until)`` through a SQLAlchemy sessionmaker."""

    def read(since: datetime, until: datetime) -> list[UsagePoint]:
        query = (
            select(UsageRow, TenantRow.name)
            .join(TenantRow, TenantRow.id == UsageRow.tenant_id)
            .where(UsageRow.created_at >= since, UsageRow.created_at < until)
            .order_by(UsageRow.created_at.desc())
            .limit(MAX_POINTS)
        )
        with sessions() as session:
            return [
                UsagePoint(
                    created_at=_aware(u.created_at),
                    tenant=name,
                    model=u.model,
                    device_class=u.device_class,
                    site=u.site,
                    status=u.status,
                    prompt_tokens=u.prompt_tokens,
                    completion_tokens=u.completion_tokens,
                    cost_yuan=u.cost_yuan,
                )
                for u, name in session.execute(query)
            ]

    return read


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Bucket:
    start: datetime
    requests: int = 0
    completion_tokens: int = 0
    cost_yuan: float = 0.0


def bucket_usage(
    points: Sequence[UsagePoint], since: datetime, until: datetime, buckets: int
) -> tuple[list[Bucket], float]:
    """``buckets`` equal buckets over ``[since, until)`` and their width in seconds."""
    width_s = max(1e-9, (until - since).total_seconds() / buckets)
    acc = [[0, 0, 0.0] for _ in range(buckets)]
    for p in points:
        i = int((p.created_at - since).total_seconds() // width_s)
        if 0 <= i < buckets:
            acc[i][0] += 1
            acc[i][1] += p.completion_tokens
            acc[i][2] += p.cost_yuan
    out = [
        Bucket(since + timedelta(seconds=width_s * i), int(a[0]), int(a[1]), float(a[2]))
        for i, a in enumerate(acc)
    ]
    return out, width_s


@dataclass(frozen=True)
class ChartData:
    labels: tuple[str, ...]
    throughput_tokens_per_s: tuple[float, ...]
    tokens_per_yuan: tuple[float, ...]
    utilisation: tuple[float, ...]


def chart_data(
    buckets: Sequence[Bucket],
    width_s: float,
    fleet_full_yuan_per_hour: float,
    ready_yuan_per_hour: float,
) -> ChartData:
    """The three chart series (definitions in the module docstring); 0 where undefined."""
    fleet_yuan = fleet_full_yuan_per_hour * width_s / 3600.0
    replica_yuan = ready_yuan_per_hour * width_s / 3600.0
    fmt = "%H:%M:%S" if width_s < 60 else "%m-%d %H:%M"
    return ChartData(
        labels=tuple(b.start.strftime(fmt) for b in buckets),
        throughput_tokens_per_s=tuple(b.completion_tokens / width_s for b in buckets),
        tokens_per_yuan=tuple(
            b.completion_tokens / fleet_yuan if fleet_yuan > 0 else 0.0 for b in buckets
        ),
        utilisation=tuple(
            min(1.0, b.cost_yuan / replica_yuan) if replica_yuan > 0 else 0.0 for b in buckets
        ),
    )
