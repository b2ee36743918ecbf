"""The scheduler service's own /metrics: the control loop, the plan and the replicas.

``cunliang scheduler`` runs in its own process (a sidecar of the Ray head), so what only
it knows is exported here, computed at scrape time from the live objects:

  cunliang_scheduler_replicas{model,state}             gauge, reconciler state
                                                       (starting|ready|failed|draining)
  cunliang_scheduler_replica_restarts_total{replica,model}  counter, restarts after failures
  cunliang_scheduler_unresponsive_replicas             gauge, ready replicas missing checks
  cunliang_scheduler_plan_yuan_per_hour                gauge, the current plan's cost
  cunliang_scheduler_plan_output_tokens_per_second     gauge, the current plan's prediction
  cunliang_scheduler_plan_tokens_per_yuan              gauge, their ratio
  cunliang_scheduler_plan_unplaced_models              gauge, models the plan could not serve
  cunliang_scheduler_lost_hosts                        gauge, hosts Ray reports gone
  cunliang_scheduler_control_ticks_total{outcome}      counter, outcome = ok | error
  cunliang_scheduler_replans_total                     counter
  cunliang_scheduler_last_replan_timestamp_seconds     gauge (unix time)

Labels stay bounded (models, replica ids of the plan, reconciler states). The gateway's
fleet gauges (``cunliang_replicas``, ``cunliang_devices``...) are not repeated here, so a
Prometheus scraping both processes never counts them twice.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scheduler.domain import Plan
from scheduler.runtime.reconciler import ReplicaState, ReplicaStatus

REPORTED_STATES = (
    ReplicaState.STARTING,
    ReplicaState.READY,
    ReplicaState.FAILED,
    ReplicaState.DRAINING,
)


@dataclass
class ControlStats:
    """What the control loop counts as it runs (thread-safe increments)."""

    ok: int = 0
    errors: int = 0
    replans: int = 0
    last_replan_unix_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def tick(self, *, ok: bool, replanned: bool, now_unix_s: float | None = None) -> None:
        with self._lock:
            if ok:
                self.ok += 1
            else:
                self.errors += 1
            if replanned:
                self.replans += 1
                self.last_replan_unix_s = time.time() if now_unix_s is None else now_unix_s


class SchedulerCollector(Collector):
    def __init__(
        self,
        statuses: Callable[[], Sequence[ReplicaStatus]],
        plan: Callable[[], Plan | None],
        lost_hosts: Callable[[], frozenset[str]],
        stats: ControlStats,
    ) -> None:
        self._statuses = statuses
        self._plan = plan
        self._lost_hosts = lost_hosts
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        statuses = list(self._statuses())
        replicas = GaugeMetricFamily(
            "cunliang_scheduler_replicas",
            "Replicas per model and reconciler state.",
            labels=("model", "state"),
        )
        per_state = Tally((s.replica.model, s.state) for s in statuses)
        for model in sorted({s.replica.model for s in statuses}):
            for state in REPORTED_STATES:
                replicas.add_metric((model, str(state)), per_state.get((model, state), 0))
        yield replicas

        restarts = CounterMetricFamily(
            "cunliang_scheduler_replica_restarts",
            "Restarts of a replica after failures (since the scheduler started it).",
            labels=("replica", "model"),
        )
        for s in statuses:
            restarts.add_metric((s.id, s.replica.model), s.restarts)
        yield restarts
        yield GaugeMetricFamily(
            "cunliang_scheduler_unresponsive_replicas",
            "Ready replicas whose health checks go unanswered (failed after a grace period).",
            value=sum(s.unresponsive_since is not None for s in statuses),
        )

        plan = self._plan()
        if plan is not None:
            yield GaugeMetricFamily(
                "cunliang_scheduler_plan_yuan_per_hour",
                "Cost of the current placement plan.",
                value=plan.yuan_per_hour,
            )
            yield GaugeMetricFamily(
                "cunliang_scheduler_plan_output_tokens_per_second",
                "Output tokens/s the current plan is predicted to serve.",
                value=plan.output_tokens_per_s,
            )
            yield GaugeMetricFamily(
                "cunliang_scheduler_plan_tokens_per_yuan",
                "Predicted output tokens per yuan of the current plan.",
                value=plan.tokens_per_yuan,
            )
            yield GaugeMetricFamily(
                "cunliang_scheduler_plan_unplaced_models",
                "Models (or parts of their demand) the current plan could not place.",
                value=len(plan.unplaced),
            )
        yield GaugeMetricFamily(
            "cunliang_scheduler_lost_hosts",
            "Hosts the node watcher reports lost from the Ray cluster.",
            value=len(self._lost_hosts()),
        )
        ticks = CounterMetricFamily(
            "cunliang_scheduler_control_ticks",
            "Control-loop ticks by outcome.",
            labels=("outcome",),
        )
        ticks.add_metric(("ok",), self._stats.ok)
        ticks.add_metric(("error",), self._stats.errors)
        yield ticks
        yield CounterMetricFamily(
            "cunliang_scheduler_replans", "Placement plans computed.", value=self._stats.replans
        )
        yield GaugeMetricFamily(
            "cunliang_scheduler_last_replan_timestamp_seconds",
            "Unix time of the last replan (0: none yet).",
            value=self._stats.last_replan_unix_s,
        )


def scheduler_registry(collector: SchedulerCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry
