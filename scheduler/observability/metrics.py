"""Every cunliang Prometheus metric, declared in one place against an injected registry.

The names and labels are a CONTRACT: recording rules, dashboards and alerts are written
against them. Labels are bounded (models, tenants, replicas, device classes, sites, states,
HTTP status codes); never a request id.

Gateway:
  cunliang_requests_total{model,tenant,status}                       counter, status = HTTP code
  cunliang_prompt_tokens_total{model,device_class,site,tenant}       counter
  cunliang_completion_tokens_total{model,device_class,site,tenant}   counter
  cunliang_usage_cost_yuan_total{model,device_class,site,tenant}     counter
  cunliang_ttft_seconds{model} / cunliang_tpot_seconds{model} / cunliang_e2e_latency_seconds{model}
  cunliang_replica_outstanding_requests{replica,model,device_class,site}  gauge
  cunliang_replica_up{replica,model,device_class,site,state}              gauge (1 per replica)
  cunliang_usage_pending_records       gauge, usage records not in the database yet
  cunliang_usage_flush_failures_total  counter, usage flushes that failed
  cunliang_usage_last_stored_timestamp_seconds  gauge, when usage records were last stored
  cunliang_usage_wal_volume_size_bytes / _available_bytes  gauges, the usage WAL's file system
Runtime / inventory:
  cunliang_device_yuan_per_hour{device_class,site,cost}   gauge, cost = "marginal" | "full"
  cunliang_device_watts{device_class,site,source}         gauge, source = "nvml" | "rapl" | "tdp"
  cunliang_devices{device_class,site,state}               gauge, state = lifecycle state
  cunliang_replicas{model,state}                          gauge, state = planned | running
The four runtime/inventory gauges are computed at scrape time by
``observability.collector.FleetCollector`` (``install_fleet_collector`` puts it in their
place on the registry); meanings in ``observability/fleet.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# TTFT spans a warm GPU (tens of ms) to a CPU prefill of a long prompt (tens of s).
TTFT_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
# Per output token: 10 ms (fast GPU) to 1 s (old CPU, large model).
TPOT_BUCKETS_S = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
E2E_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)

REPLICA_LABELS = ("replica", "model", "device_class", "site")
USAGE_LABELS = ("model", "device_class", "site", "tenant")


@dataclass(frozen=True)
class Metrics:
    requests: Counter
    prompt_tokens: Counter
    completion_tokens: Counter
    cost_yuan: Counter
    ttft_s: Histogram
    tpot_s: Histogram
    e2e_latency_s: Histogram
    replica_outstanding: Gauge
    replica_up: Gauge
    usage_pending: Gauge
    usage_flush_failures: Counter
    usage_last_stored: Gauge
    usage_wal_volume_size: Gauge
    usage_wal_volume_available: Gauge
    device_yuan_per_hour: Gauge
    device_watts: Gauge
    devices: Gauge
    replicas: Gauge


def create_metrics(registry: CollectorRegistry) -> Metrics:
    """Register every metric on ``registry`` (call once per registry)."""
    return Metrics(
        requests=Counter(
            "cunliang_requests",
            "Tenant API requests by HTTP status code.",
            ("model", "tenant", "status"),
            registry=registry,
        ),
        prompt_tokens=Counter(
            "cunliang_prompt_tokens", "Prompt tokens processed.", USAGE_LABELS, registry=registry
        ),
        completion_tokens=Counter(
            "cunliang_completion_tokens",
            "Completion (output) tokens generated.",
            USAGE_LABELS,
            registry=registry,
        ),
        cost_yuan=Counter(
            "cunliang_usage_cost_yuan",
            "Yuan of device time billed to requests (busy-time share, see gateway.load).",
            USAGE_LABELS,
            registry=registry,
        ),
        ttft_s=Histogram(
            "cunliang_ttft_seconds",
            "Time to first token seen by the gateway.",
            ("model",),
            buckets=TTFT_BUCKETS_S,
            registry=registry,
        ),
        tpot_s=Histogram(
            "cunliang_tpot_seconds",
            "Time per output token after the first.",
            ("model",),
            buckets=TPOT_BUCKETS_S,
            registry=registry,
        ),
        e2e_latency_s=Histogram(
            "cunliang_e2e_latency_seconds",
            "Request latency from arrival to last byte.",
            ("model",),
            buckets=E2E_BUCKETS_S,
            registry=registry,
        ),
        replica_outstanding=Gauge(
            "cunliang_replica_outstanding_requests",
            "Requests in flight to a replica through this gateway.",
            REPLICA_LABELS,
            registry=registry,
        ),
        replica_up=Gauge(
            "cunliang_replica_up",
            "1 for each known replica, labelled with its current state.",
            (*REPLICA_LABELS, "state"),
            registry=registry,
        ),
        usage_pending=Gauge(
            "cunliang_usage_pending_records",
            "Usage records not in the database yet: queued for the next flush, and left in "
            "the write-ahead log by failed flushes (the gateway stores them once it can).",
            registry=registry,
        ),
        usage_flush_failures=Counter(
            "cunliang_usage_flush_failures",
            "Usage flushes that failed (the database down or locked, or the write-ahead log's "
            "next segment not opened); their records wait in the write-ahead log.",
            registry=registry,
        ),
        usage_last_stored=Gauge(
            "cunliang_usage_last_stored_timestamp_seconds",
            "When usage records were last stored in the database (or the gateway started): "
            "with records pending, an old one means flushes fail or hang.",
            registry=registry,
        ),
        usage_wal_volume_size=Gauge(
            "cunliang_usage_wal_volume_size_bytes",
            "Size of the file system that holds the gateway's usage write-ahead log.",
            registry=registry,
        ),
        usage_wal_volume_available=Gauge(
            "cunliang_usage_wal_volume_available_bytes",
            "Bytes the gateway may still write on the file system of its usage write-ahead "
            "log (records of a database outage wait there).",
            registry=registry,
        ),
        device_yuan_per_hour=Gauge(
            "cunliang_device_yuan_per_hour",
            "Cost of a device class per device-hour (cost = marginal | full).",
            ("device_class", "site", "cost"),
            registry=registry,
        ),
        device_watts=Gauge(
            "cunliang_device_watts",
            "Power drawn per device class (source = nvml | rapl | tdp).",
            ("device_class", "site", "source"),
            registry=registry,
        ),
        devices=Gauge(
            "cunliang_devices",
            "Devices per class and lifecycle state.",
            ("device_class", "site", "state"),
            registry=registry,
        ),
        replicas=Gauge(
            "cunliang_replicas",
            "Replicas per model and state.",
            ("model", "state"),
            registry=registry,
        ),
    )
