"""A real Prometheus scrapes a running gateway while requests run; the recorded
tokens-per-yuan series agrees with the usage records in the database.

Expected value, from the database and the cost model (not from Prometheus):

    tokens_per_yuan = (completion tokens stored after Prometheus's first scrape) / 300 s
                      / (class yuan per hour / 3600)

``rate(x[5m])`` divides the increase seen inside the window by 300 s; Prometheus
extrapolates the increase by at most ~one scrape interval (1 s) past the sampled span
(≥ 14 s here, and toward the start only until the counter would reach zero), so the
recorded value may exceed the exact one by up to ~1.1 s / span ≈ 8 %, never fall below
it. TOLERANCE = 10 % covers that; the observed error is printed.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.cost import full_yuan_per_hour, marginal_yuan_per_hour
from tests.observability.prom import RULES, run_prometheus
from tests.observability.stack import MODEL, T4_CLASS, T4_SITE, Stack, run_stack

TOLERANCE = 0.10
FLAT_BEFORE_S = 4.0
LOAD_S = 6.0
FLAT_AFTER_S = 5.0
WINDOW_S = 300.0  # the rules' [5m]


def _load(stack: Stack, key: str, stop: threading.Event, done: list[int], stream: bool) -> None:
    """Requests back to back; streamed ones feed the TTFT/TPOT histograms too."""
    client = stack.openai(key)
    messages: Any = [{"role": "user", "content": "hi there"}]
    while not stop.is_set():
        if not stream:
            r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16)
            done.append(r.usage.completion_tokens if r.usage else 0)
            continue
        chunks = client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
        done.append(sum(c.usage.completion_tokens for c in chunks if c.usage))


def test_recorded_tokens_per_yuan_matches_usage_records(tmp_path: Path) -> None:
    started = time.monotonic()
    since = datetime.now(UTC)
    with run_stack(tmp_path) as stack:
        key = stack.tenant_key("acme")
        # warm-up: creates the counters, so Prometheus's first sample is a known baseline
        stack.openai(key).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "warm"}], max_tokens=16
        )
        stack.wait_usage_flushed()
        baseline = stack.tenancy.usage_summary("acme", since)
        target = stack.url.removeprefix("http://")
        with run_prometheus(tmp_path / "prom", target) as prom:
            prom.wait_for("cunliang_completion_tokens_total")
            prom.wait_for("cunliang_device_yuan_per_hour")
            time.sleep(FLAT_BEFORE_S)
            stop, done = threading.Event(), list[int]()
            workers = [
                threading.Thread(target=_load, args=(stack, key, stop, done, i == 0))
                for i in range(4)
            ]
            for w in workers:
                w.start()
            time.sleep(LOAD_S)
            stop.set()
            for w in workers:
                w.join()
            stack.wait_usage_flushed()
            time.sleep(FLAT_AFTER_S)
            total = stack.tenancy.usage_summary("acme", since)
            tokens = sum(m.completion_tokens for m in total.by_model) - sum(
                m.completion_tokens for m in baseline.by_model
            )
            billed_yuan = total.cost_yuan - baseline.cost_yuan
            assert tokens == sum(done) and tokens > 1000

            fleet, _, _ = stack.inventory.snapshot()
            t4 = next(dc for dc in fleet.classes if dc.id == T4_CLASS)
            yuan_per_hour = {
                "full": t4.count * full_yuan_per_hour(t4),
                "marginal": t4.count * marginal_yuan_per_hour(t4),
            }
            sel = f'{{device_class="{T4_CLASS}",site="{T4_SITE}"}}'
            recorded = prom.value(
                f"device_class_site:cunliang_completion_tokens_per_yuan:rate5m{sel}"
            )
            assert {dict(k)["cost"] for k in recorded} == {"full", "marginal"}
            errors = {}
            for labels, value in recorded.items():
                basis = dict(labels)["cost"]
                expected = tokens / WINDOW_S / (yuan_per_hour[basis] / 3600.0)
                errors[basis] = value / expected - 1.0
                assert value == pytest.approx(expected, rel=TOLERANCE), (basis, value, expected)
            # fleet-wide and per-model series exist and are consistent with the class one
            fleet_tpy = prom.value(':cunliang_completion_tokens_per_yuan:rate5m{cost="full"}')
            assert len(fleet_tpy) == 1
            model_tpy = prom.value(
                f'model:cunliang_completion_tokens_per_yuan:rate5m{{model="{MODEL}",cost="full"}}'
            )
            assert len(model_tpy) == 1
            # what tenants were billed (busy-time shares) against the stored cost_yuan
            billed = prom.value(":cunliang_usage_cost_yuan_per_hour:rate5m")
            expected_billed = billed_yuan / WINDOW_S * 3600.0
            (billed_value,) = billed.values()
            assert billed_value == pytest.approx(expected_billed, rel=TOLERANCE)
            errors["billed"] = billed_value / expected_billed - 1.0
            # inputs the other rules need, as really exported
            ratio = prom.value(f"device_class_site:cunliang_devices:admitted_ratio{sel}")
            assert list(ratio.values()) == [pytest.approx(8 / 10)]
            running = prom.value(f'model:cunliang_replicas:running_ratio{{model="{MODEL}"}}')
            assert list(running.values()) == [1.0]
            watts = prom.value(f"device_class_site:cunliang_device_watts:best{sel}")
            assert list(watts.values()) == [
                pytest.approx(
                    8 * 70 * t4.economics.average_utilisation + 8 * t4.economics.host_watts
                )
            ]
            per_joule = prom.value(
                f"device_class_site:cunliang_completion_tokens_per_joule:rate5m{sel}"
            )
            assert next(iter(per_joule.values())) > 0
            # every recording rule yields a series on what the gateway really exports,
            # except the error ratio: this run had no non-2xx request (its numerator is empty)
            records = {
                r["record"]
                for g in yaml.safe_load(RULES.read_text())["groups"]
                for r in g["rules"]
                if "record" in r  # not the alerts
            }
            empty = {name for name in records if not prom.query(name)}
            assert empty == {"model:cunliang_requests_errors:ratio_rate5m"}, empty
    elapsed = time.monotonic() - started
    print(f"\ntokens={tokens} relative errors={errors} elapsed={elapsed:.1f}s")
    assert elapsed < 60
