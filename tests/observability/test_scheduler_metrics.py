"""The scheduler's /metrics, rendered by prometheus-client from live reconciler state."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from scheduler.domain import Engine, Plan, PlanStatus, Quant, Replica, Unplaced
from scheduler.observability.scheduler_metrics import (
    ControlStats,
    SchedulerCollector,
    scheduler_registry,
)
from scheduler.runtime.reconciler import ReplicaState, ReplicaStatus


def _status(rid: str, model: str, state: ReplicaState, **kw: object) -> ReplicaStatus:
    replica = Replica(model, Quant.FP32, "lab/cpu", Engine.VLLM_CPU)
    return ReplicaStatus(rid, replica, state, **kw)  # type: ignore[arg-type]


def _samples(collector: SchedulerCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(scheduler_registry(collector)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_replica_states_plan_and_loop_counters() -> None:
    statuses = [
        _status("a.0", "qwen", ReplicaState.READY, restarts=2, unresponsive_since=5.0),
        _status("a.1", "qwen", ReplicaState.STARTING),
        _status("b.0", "llama", ReplicaState.FAILED, restarts=1),
    ]
    plan = Plan(
        PlanStatus.OPTIMAL,
        (),
        unplaced=(Unplaced("big", 50.0, "no device has the memory"),),
        yuan_per_hour=2.0,
        output_tokens_per_s=100.0,
    )
    stats = ControlStats()
    stats.tick(ok=True, replanned=True, now_unix_s=1_700_000_000.0)
    stats.tick(ok=False, replanned=False)
    got = _samples(
        SchedulerCollector(lambda: statuses, lambda: plan, lambda: frozenset({"h"}), stats)
    )

    def one(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert one("cunliang_scheduler_replicas", model="qwen", state="ready") == 1
    assert one("cunliang_scheduler_replicas", model="qwen", state="starting") == 1
    assert one("cunliang_scheduler_replicas", model="qwen", state="failed") == 0
    assert one("cunliang_scheduler_replicas", model="llama", state="failed") == 1
    assert one("cunliang_scheduler_replica_restarts_total", replica="a.0", model="qwen") == 2
    assert one("cunliang_scheduler_unresponsive_replicas") == 1
    assert one("cunliang_scheduler_plan_yuan_per_hour") == 2.0
    assert one("cunliang_scheduler_plan_tokens_per_yuan") == 100.0 * 3600 / 2.0
    assert one("cunliang_scheduler_plan_unplaced_models") == 1
    assert one("cunliang_scheduler_lost_hosts") == 1
    assert one("cunliang_scheduler_control_ticks_total", outcome="ok") == 1
    assert one("cunliang_scheduler_control_ticks_total", outcome="error") == 1
    assert one("cunliang_scheduler_replans_total") == 1
    assert one("cunliang_scheduler_last_replan_timestamp_seconds") == 1_700_000_000.0


def test_no_plan_yet_exports_no_plan_gauges() -> None:
    got = _samples(SchedulerCollector(list, lambda: None, frozenset, ControlStats()))
    names = {name for name, _ in got}
    assert not any(n.startswith("cunliang_scheduler_plan_") for n in names)
    assert ("cunliang_scheduler_replans_total", ()) in got
