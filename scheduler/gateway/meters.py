"""The gateway's per-request metric updates: plain arithmetic now, Prometheus at scrape time.

A request updates up to eight labelled series (requests, prompt and completion tokens, yuan,
three latency histograms). Through prometheus_client each update takes a lock, checks the
metric is observable and, for a histogram, walks its buckets in Python: about as much CPU
as the rest of the request's bookkeeping. ``GatewayMeters`` instead adds to plain numbers
(a histogram observation is one ``bisect`` and two additions) and ``flush()`` folds what
accumulated into the registry's children; the gateway's ``/metrics`` route flushes before
it renders, so every scrape sees every request finished before it.

Event-loop only (no locks): the request path and the ``/metrics`` route both run on the
gateway's event loop. The pending entries hold exactly the series the registry holds
(same label cardinality), so they are bounded the same.

Histogram children are filled through prometheus_client's per-bucket values (``_sum``,
``_buckets``, ``_upper_bounds``: stable since 0.4; tests/gateway/test_meters.py checks the
exposition is identical to ``observe()`` per request, so an upgrade that moves them fails
there).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from scheduler.gateway.replicas import ReplicaEndpoint
from scheduler.observability.metrics import Metrics


class _Histogram:
    """Observations of one histogram child since the last flush."""

    __slots__ = ("bounds", "child", "counts", "pending", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: tuple[float, ...] = tuple(child._upper_bounds)  # ends with +Inf
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.pending = False

    def observe(self, value: float) -> None:
        # the first bucket whose upper bound is >= value, as Histogram.observe picks it
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.pending = True

    def flush(self) -> None:
        if not self.pending:
            return
        buckets = self.child._buckets
        for i, n in enumerate(self.counts):
            if n:
                buckets[i].inc(n)
                self.counts[i] = 0
        self.child._sum.inc(self.total)
        self.total = 0.0
        self.pending = False


class _Usage:
    """Token and yuan totals of one (model, device class, site, tenant) since the last flush."""

    __slots__ = ("children", "completion", "cost_yuan", "prompt")

    def __init__(self, children: tuple[Any, Any, Any]) -> None:
        self.children = children
        self.prompt = 0
        self.completion = 0
        self.cost_yuan = 0.0

    def flush(self) -> None:
        prompt, completion, cost = self.children
        if self.prompt:
            prompt.inc(self.prompt)
            self.prompt = 0
        if self.completion:
            completion.inc(self.completion)
            self.completion = 0
        if self.cost_yuan:
            cost.inc(self.cost_yuan)
            self.cost_yuan = 0.0


class GatewayMeters:
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        self._requests: dict[tuple[str, str, int], list[Any]] = {}  # {key: [child, count]}
        self._usage: dict[tuple[str, str, str, str], _Usage] = {}
        self._latency: dict[str, tuple[_Histogram, _Histogram, _Histogram]] = {}

    # ---- the request path ----------------------------------------------------------------

    def request(self, model: str, tenant: str, status: int) -> None:
        key = (model, tenant, status)
        entry = self._requests.get(key)
        if entry is None:
            entry = self._requests[key] = [self._m.requests.labels(model, tenant, str(status)), 0]
        entry[1] += 1

    def usage(
        self,
        model: str,
        replica: ReplicaEndpoint,
        tenant: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_yuan: float,
    ) -> None:
        key = (model, replica.device_class, replica.site, tenant)
        usage = self._usage.get(key)
        if usage is None:
            m = self._m
            usage = self._usage[key] = _Usage(
                (
                    m.prompt_tokens.labels(*key),
                    m.completion_tokens.labels(*key),
                    m.cost_yuan.labels(*key),
                )
            )
        usage.prompt += prompt_tokens
        usage.completion += completion_tokens
        usage.cost_yuan += cost_yuan

    def latency(self, model: str, e2e_s: float, ttft_s: float | None, tpot_s: float | None) -> None:
        series = self._latency.get(model)
        if series is None:
            m = self._m
            series = self._latency[model] = (
                _Histogram(m.e2e_latency_s.labels(model)),
                _Histogram(m.ttft_s.labels(model)),
                _Histogram(m.tpot_s.labels(model)),
            )
        e2e, ttft, tpot = series
        e2e.observe(e2e_s)
        if ttft_s is not None:
            ttft.observe(ttft_s)
        if tpot_s is not None:
            tpot.observe(tpot_s)

    # ---- scrape time ---------------------------------------------------------------------

    def flush(self) -> None:
        """Fold everything accumulated since the last flush into the registry."""
        for entry in self._requests.values():
            if entry[1]:
                entry[0].inc(entry[1])
                entry[1] = 0
        for usage in self._usage.values():
            usage.flush()
        for series in self._latency.values():
            for histogram in series:
                histogram.flush()
