"""The metric names and labels are a contract (recording rules are written against them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from scheduler.observability.metrics import create_metrics

CONTRACT = {
    "cunliang_requests": ("counter", {"model", "tenant", "status"}),
    "cunliang_prompt_tokens": ("counter", {"model", "device_class", "site", "tenant"}),
    "cunliang_completion_tokens": ("counter", {"model", "device_class", "site", "tenant"}),
    "cunliang_usage_cost_yuan": ("counter", {"model", "device_class", "site", "tenant"}),
    "cunliang_ttft_seconds": ("histogram", {"model"}),
    "cunliang_tpot_seconds": ("histogram", {"model"}),
    "cunliang_e2e_latency_seconds": ("histogram", {"model"}),
    "cunliang_replica_outstanding_requests": (
        "gauge",
        {"replica", "model", "device_class", "site"},
    ),
    "cunliang_replica_up": ("gauge", {"replica", "model", "device_class", "site", "state"}),
    "cunliang_usage_pending_records": ("gauge", set()),
    "cunliang_usage_flush_failures": ("counter", set()),
    "cunliang_usage_last_stored_timestamp_seconds": ("gauge", set()),
    "cunliang_usage_wal_volume_size_bytes": ("gauge", set()),
    "cunliang_usage_wal_volume_available_bytes": ("gauge", set()),
    "cunliang_device_yuan_per_hour": ("gauge", {"device_class", "site", "cost"}),
    "cunliang_device_watts": ("gauge", {"device_class", "site", "source"}),
    "cunliang_devices": ("gauge", {"device_class", "site", "state"}),
    "cunliang_replicas": ("gauge", {"model", "state"}),
}


def test_every_contract_metric_is_declared_with_its_labels() -> None:
    registry = CollectorRegistry()
    m = create_metrics(registry)
    m.requests.labels("m", "t", "200").inc()
    m.prompt_tokens.labels("m", "c", "s", "t").inc()
    m.completion_tokens.labels("m", "c", "s", "t").inc()
    m.cost_yuan.labels("m", "c", "s", "t").inc()
    for h in (m.ttft_s, m.tpot_s, m.e2e_latency_s):
        h.labels("m").observe(0.1)
    m.replica_outstanding.labels("r", "m", "c", "s").set(1)
    m.replica_up.labels("r", "m", "c", "s", "ready").set(1)
    m.usage_pending.set(3)
    m.usage_flush_failures.inc()
    m.usage_last_stored.set(1.8e9)
    m.usage_wal_volume_size.set(4 << 30)
    m.usage_wal_volume_available.set(1 << 30)
    m.device_yuan_per_hour.labels("c", "s", "full").set(1)
    m.device_watts.labels("c", "s", "nvml").set(1)
    m.devices.labels("c", "s", "admitted").set(1)
    m.replicas.labels("m", "ready").set(1)
    found = {metric.name: metric for metric in registry.collect()}
    assert set(found) == set(CONTRACT)
    for name, (kind, labels) in CONTRACT.items():
        assert found[name].type == kind
        sample_labels = {k for s in found[name].samples for k in s.labels if k != "le"}
        assert sample_labels == labels, name
    # a second registry is independent: no process-wide state
    assert create_metrics(CollectorRegistry()) is not None
