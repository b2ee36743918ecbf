"""GET /healthz and GET /metrics (no tenant auth: for probes and Prometheus)."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from scheduler.gateway.deps import GatewayDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz(gateway: GatewayDep) -> JSONResponse:
    """200 while at least one replica is ready, else 503 (the gateway cannot serve)."""
    replicas = gateway.directory.replicas()
    states = Counter(r.state for r in replicas)
    ready_models = sorted({r.model for r in replicas if r.state == "ready"})
    ok = states["ready"] > 0
    body = {
        "status": "ok" if ok else "unavailable",
        "replicas": dict(states),
        "ready_models": ready_models,
        "usage_records_pending": gateway.writer.pending,
    }
    headers = {} if ok else {"Retry-After": str(int(gateway.config.no_replica_retry_after_s))}
    return JSONResponse(body, status_code=200 if ok else 503, headers=headers)


@router.get("/metrics")
async def metrics(gateway: GatewayDep) -> Response:
    """Prometheus text exposition of the injected registry."""
    gateway.meters.flush()  # the request path's counts since the last scrape
    refresh_replica_gauges(gateway)
    refresh_usage_meters(gateway)
    return Response(generate_latest(gateway.registry), media_type=CONTENT_TYPE_LATEST)


def refresh_usage_meters(gateway: GatewayDep) -> None:
    """The usage writer's records not stored yet, its failed flushes (counted since the
    last scrape), when it last stored what it tried, and the room left for its WAL."""
    m, writer = gateway.metrics, gateway.writer
    m.usage_pending.set(writer.pending)
    m.usage_last_stored.set(writer.last_stored_s)
    volume = writer.volume()
    if volume is not None:
        m.usage_wal_volume_size.set(volume[0])
        m.usage_wal_volume_available.set(volume[1])
    failed = writer.failed_flushes - gateway.flush_failures_reported
    if failed > 0:
        m.usage_flush_failures.inc(failed)
        gateway.flush_failures_reported = writer.failed_flushes


def refresh_replica_gauges(gateway: GatewayDep) -> None:
    """Rebuild the per-replica state gauges from the directory (replicas come and go)."""
    m = gateway.metrics
    m.replica_up.clear()
    for r in gateway.directory.replicas():
        m.replica_up.labels(r.id, r.model, r.device_class, r.site, r.state).set(1)
        m.replica_outstanding.labels(r.id, r.model, r.device_class, r.site).set(
            gateway.load.in_flight(r.id)
        )
