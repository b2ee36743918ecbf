"""The gateway's per-request metric updates, with labelled children looked up once.

``Counter.labels(...)`` takes a lock and builds a key on every call; a request updates up to
eight labelled series. The children are cached here per label tuple: the cache holds exactly
the series the registry already holds (same label cardinality), so it is bounded the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scheduler.gateway.replicas import ReplicaEndpoint
from scheduler.observability.metrics import Metrics


@dataclass(frozen=True)
class TokenSeries:
    prompt: Any
    completion: Any
    cost_yuan: Any


@dataclass(frozen=True)
class LatencySeries:
    e2e: Any
    ttft: Any
    tpot: Any


class MetricChildren:
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        self._requests: dict[tuple[str, str, int], Any] = {}  # {(model, tenant, status): child}
        self._tokens: dict[tuple[str, str, str, str], TokenSeries] = {}
        self._latency: dict[str, LatencySeries] = {}  # {model: series}
        self._outstanding: dict[tuple[str, str, str, str], Any] = {}

    def requests(self, model: str, tenant: str, status: int) -> Any:
        key = (model, tenant, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self._m.requests.labels(model, tenant, str(status))
        return child

    def tokens(self, model: str, replica: ReplicaEndpoint, tenant: str) -> TokenSeries:
        key = (model, replica.device_class, replica.site, tenant)
        series = self._tokens.get(key)
        if series is None:
            m = self._m
            series = self._tokens[key] = TokenSeries(
                m.prompt_tokens.labels(*key),
                m.completion_tokens.labels(*key),
                m.cost_yuan.labels(*key),
            )
        return series

    def latency(self, model: str) -> LatencySeries:
        series = self._latency.get(model)
        if series is None:
            m = self._m
            series = self._latency[model] = LatencySeries(
                m.e2e_latency_s.labels(model), m.ttft_s.labels(model), m.tpot_s.labels(model)
            )
        return series

    def outstanding(self, r: ReplicaEndpoint) -> Any:
        key = (r.id, r.model, r.device_class, r.site)
        child = self._outstanding.get(key)
        if child is None:
            child = self._outstanding[key] = self._m.replica_outstanding.labels(*key)
        return child
