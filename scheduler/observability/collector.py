"""A prometheus-client custom Collector for the fleet gauges, computed at scrape time.

The gateway's ``create_metrics`` declares the four fleet gauges as plain ``Gauge`` objects
nobody sets; ``install_fleet_collector`` takes their place on the registry with a
collector that asks an injected provider for ``FleetFigures`` on every scrape (so the
values are never stale and no thread has to push them).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scheduler.observability.fleet import FleetFigures
from scheduler.observability.metrics import Metrics

log = logging.getLogger(__name__)

FleetProvider = Callable[[], FleetFigures]


def _families() -> tuple[GaugeMetricFamily, ...]:
    return (
        GaugeMetricFamily(
            "cunliang_device_yuan_per_hour",
            "Cost of a device class's powered devices per hour (cost = marginal | full).",
            labels=("device_class", "site", "cost"),
        ),
        GaugeMetricFamily(
            "cunliang_device_watts",
            "Average power of a device class's powered devices (source = nvml | rapl | tdp).",
            labels=("device_class", "site", "source"),
        ),
        GaugeMetricFamily(
            "cunliang_devices",
            "Devices per class and lifecycle state.",
            labels=("device_class", "site", "state"),
        ),
        GaugeMetricFamily(
            "cunliang_replicas",
            "Replicas per model: planned by placement, running (ready) in the runtime.",
            labels=("model", "state"),
        ),
    )


class FleetCollector(Collector):
    """Exports ``FleetFigures`` from ``provider``; a failing provider exports nothing
    (logged) rather than failing the whole scrape: gateway metrics still come through."""

    def __init__(self, provider: FleetProvider) -> None:
        self._provider = provider

    def describe(self) -> Iterable[Metric]:
        return _families()

    def collect(self) -> Iterator[Metric]:
        cost, watts, devices, replicas = _families()
        try:
            figures = self._provider()
        except Exception:
            log.exception("fleet figures unavailable for this scrape")
            figures = FleetFigures()
        for c in figures.classes:
            if c.full_yuan_per_hour or c.marginal_yuan_per_hour or c.watts:
                cost.add_metric((c.device_class, c.site, "full"), c.full_yuan_per_hour)
                cost.add_metric((c.device_class, c.site, "marginal"), c.marginal_yuan_per_hour)
                watts.add_metric((c.device_class, c.site, c.watts_source), c.watts)
            for state, n in sorted(c.states.items()):
                devices.add_metric((c.device_class, c.site, state), n)
        for model, counts in sorted(figures.replicas.items()):
            for state, n in sorted(counts.items()):
                replicas.add_metric((model, state), n)
        yield from (cost, watts, devices, replicas)


class CachedProvider:
    """Wraps a provider so scrapes closer than ``ttl_s`` share one computation.

    The gateway serves /metrics on its event loop, and the inventory read takes ~100 ms
    on a 784-device fleet: with ``background=True`` a stale value is returned at once
    while one thread recomputes it, so only the very first call waits on the database.
    """

    def __init__(
        self,
        provider: FleetProvider,
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        background: bool = False,
    ) -> None:
        self._provider = provider
        self._ttl_s = ttl_s
        self._clock = clock
        self._background = background
        self._lock = threading.Lock()
        self._value: FleetFigures | None = None
        self._at = 0.0
        self._refreshing = False

    def __call__(self) -> FleetFigures:
        with self._lock:
            now = self._clock()
            fresh = self._value is not None and now - self._at < self._ttl_s
            if fresh or (self._value is not None and self._refreshing):
                assert self._value is not None
                return self._value
            if self._value is not None and self._background:
                self._refreshing = True
                threading.Thread(target=self._refresh, name="fleet-figures", daemon=True).start()
                return self._value
            self._value, self._at = self._provider(), now
            return self._value

    def _refresh(self) -> None:
        try:
            value = self._provider()
        except Exception:
            log.exception("fleet figures refresh failed; serving the previous ones")
            value = None
        with self._lock:
            if value is not None:
                self._value, self._at = value, self._clock()
            self._refreshing = False


def install_fleet_collector(
    registry: CollectorRegistry, metrics: Metrics, provider: FleetProvider
) -> FleetCollector:
    """Replace the never-set fleet gauges of ``metrics`` on ``registry`` with a collector."""
    for gauge in (
        metrics.device_yuan_per_hour,
        metrics.device_watts,
        metrics.devices,
        metrics.replicas,
    ):
        with contextlib.suppress(KeyError):  # not on this registry: nothing to replace
            registry.unregister(gauge)
    collector = FleetCollector(provider)
    registry.register(collector)
    return collector
