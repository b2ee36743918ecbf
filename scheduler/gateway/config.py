"""Gateway knobs beyond the shared Settings (all with production defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scheduler.settings import Settings


@dataclass(frozen=True)
class GatewayConfig:
    wal_dir: Path
    max_request_body_bytes: int = 4 * 1024 * 1024
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    routing_policy: str = "least_outstanding"
    upstream_client: str = "h1"  # or "aiohttp", "httpx" (see gateway.clients)
    max_attempts: int = 3  # replicas tried per request before 503 (only before first byte)
    auth_cache_ttl_s: float = 5.0
    # WAL -> database batches (reads of /v1/usage flush first; see metering.UsageWriter):
    # once a second, or sooner once usage_batch_max records wait. Each flush also rotates
    # the WAL to a new segment (reserved, mapped) and deletes the stored ones: flushed at
    # every 512 records, that per-flush work cost the gateway ~12 us of CPU per request at
    # ~4,500 requests/s (the two settings side by side, c=32). Budget ledgers flush before
    # they read the database (Gateway._load_ledger), so the interval does not hide usage
    usage_flush_interval_s: float = 1.0
    usage_batch_max: int = 16384
    usage_fsync: bool = False  # True also survives power loss, at ~1 fsync per request
    usage_wal_mmap: bool = True  # segments reserved and mapped (metering.UsageWriter)
    max_upstream_connections: int = 1024
    no_replica_retry_after_s: float = 5.0
    fast_path: bool = True  # Gateway.serve_now (with the h1 client and gateway/h1server)
    # at shutdown, how long to wait for requests still waiting on engines after their
    # clients left (their usage is recorded when the engines answer)
    shutdown_grace_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayConfig:
        return cls(
            wal_dir=settings.data_dir / "usage-wal",
            max_request_body_bytes=settings.max_request_body_bytes,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            read_timeout_s=settings.upstream_read_timeout_s,
            fast_path=settings.gateway_fast_path,
            usage_wal_mmap=settings.gateway_wal_mmap,
        )
