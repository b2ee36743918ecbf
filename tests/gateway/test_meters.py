"""GatewayMeters (counts accumulated per request, folded into Prometheus at scrape time)
exposes exactly what updating the prometheus_client children per request exposes."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, generate_latest

from scheduler.gateway.meters import GatewayMeters
from scheduler.gateway.replicas import ReplicaEndpoint
from scheduler.observability.metrics import (
    E2E_BUCKETS_S,
    TPOT_BUCKETS_S,
    TTFT_BUCKETS_S,
    create_metrics,
)

REPLICAS = [
    ReplicaEndpoint("r1", "demo", "demo", "http://x", "fp32", "cpu-a", "hub-1", 1.0, "ready"),
    ReplicaEndpoint("r2", "demo", "demo", "http://y", "int8", "cpu-b", "hub-2", 2.0, "ready"),
]


def _requests(
    seed: int, n: int
) -> list[tuple[str, str, int, int, int, float, float, float | None]]:
    rnd = random.Random(seed)
    # values on and around every bucket bound: "<=" picks the bucket as observe() does
    edges = [*E2E_BUCKETS_S, *TTFT_BUCKETS_S, *TPOT_BUCKETS_S, 0.0, 1e9]
    out = []
    for _ in range(n):
        model = rnd.choice(["demo", "other"])
        tenant = rnd.choice(["acme", "globex"])
        status = rnd.choice([200, 200, 200, 429, 502])
        e2e = rnd.choice(edges) if rnd.random() < 0.5 else rnd.uniform(0, 400)
        ttft = rnd.choice([None, rnd.choice(edges), rnd.uniform(0, 70)])
        out.append(
            (model, tenant, status, rnd.randint(0, 900), rnd.randint(0, 300), 1e-5 * rnd.random(),
             e2e, ttft)
        )  # fmt: skip
    return out


def _direct(registry: CollectorRegistry, requests: list) -> None:  # type: ignore[type-arg]
    m = create_metrics(registry)
    for i, (model, tenant, status, prompt, completion, cost, e2e, ttft) in enumerate(requests):
        r = REPLICAS[i % 2]
        m.requests.labels(model, tenant, str(status)).inc()
        key = (model, r.device_class, r.site, tenant)
        m.prompt_tokens.labels(*key).inc(prompt)
        m.completion_tokens.labels(*key).inc(completion)
        m.cost_yuan.labels(*key).inc(cost)
        m.e2e_latency_s.labels(model).observe(e2e)
        if ttft is not None:
            m.ttft_s.labels(model).observe(ttft)
            m.tpot_s.labels(model).observe(ttft / 10)


def _strip_created(text: str) -> list[str]:
    return [line for line in text.splitlines() if "_created" not in line]


def test_flushed_exposition_equals_per_request_updates() -> None:
    requests = _requests(seed=7, n=3000)
    direct = CollectorRegistry()
    _direct(direct, requests)

    registry = CollectorRegistry()
    meters = GatewayMeters(create_metrics(registry))
    # three scrapes in the middle: what a flush folded in is not added twice
    for chunk in range(4):
        for i in range(chunk * 750, (chunk + 1) * 750):
            model, tenant, status, prompt, completion, cost, e2e, ttft = requests[i]
            meters.request(model, tenant, status)
            meters.usage(model, REPLICAS[i % 2], tenant, prompt, completion, cost)
            meters.latency(model, e2e, ttft, None if ttft is None else ttft / 10)
        meters.flush()
    meters.flush()  # nothing pending: a no-op

    got = _strip_created(generate_latest(registry).decode())
    want = _strip_created(generate_latest(direct).decode())
    # sums of floats added in another grouping may differ in the last digits only
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if g.startswith("cunliang_usage_cost_yuan_total") or "_sum{" in g:
            g_name, g_value = g.rsplit(" ", 1)
            w_name, w_value = w.rsplit(" ", 1)
            assert g_name == w_name
            assert abs(float(g_value) - float(w_value)) <= 1e-9 * max(1.0, abs(float(w_value)))
        else:
            assert g == w


def test_nothing_reaches_the_registry_before_a_flush() -> None:
    registry = CollectorRegistry()
    meters = GatewayMeters(create_metrics(registry))
    meters.request("demo", "acme", 200)
    meters.usage("demo", REPLICAS[0], "acme", 10, 5, 0.5)
    meters.latency("demo", 0.2, 0.05, 0.01)
    sample = 'cunliang_requests_total{model="demo",status="200",tenant="acme"}'
    assert f"{sample} 0.0" in generate_latest(registry).decode()
    meters.flush()
    text = generate_latest(registry).decode()
    assert f"{sample} 1.0" in text
    assert 'cunliang_ttft_seconds_bucket{le="0.05",model="demo"} 1.0' in text
    assert 'cunliang_ttft_seconds_bucket{le="0.025",model="demo"} 0.0' in text
    assert 'cunliang_tpot_seconds_count{model="demo"} 1.0' in text
