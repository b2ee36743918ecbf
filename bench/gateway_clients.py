"""Which HTTP client should the gateway use upstream? httpx vs aiohttp vs its own (h1).

Starts the fake engine and one gateway per client (``serve --upstream-client``), drives
each at concurrency 32 (non-streaming and streaming, 2 interleaved rounds), and reports the
gateway's CPU time per request, throughput and latency. Baseline: httpx (the client the
gateway started with); aiohttp was the default before h1. Writes bench/results/gateway_clients.json and prints a row.

    PYTHONPATH=$PWD .venv/bin/python bench/gateway_clients.py
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway import (  # type: ignore[import-not-found]
    MODEL,
    REPO,
    cpu_s,
    free_port,
    gateway_fixture,
    load,
    machine,
    start,
    wait_healthy,
)

CLIENTS = ("httpx", "aiohttp", "h1")
REQUESTS = {"plain": 2000, "stream": 800}


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="cl-bench-clients-"))
    procs = []
    try:
        up = free_port()
        procs.append(
            start(
                [
                    sys.executable,
                    "-m",
                    "tests.fakes.openai_upstream",
                    "--port",
                    str(up),
                    "--model",
                    MODEL,
                ]
            )
        )
        direct = f"http://127.0.0.1:{up}"
        wait_healthy(direct)
        key, replicas_file = gateway_fixture(tmp, direct, MODEL)
        gateways = {}
        for client in CLIENTS:
            port = free_port()
            proc = start(
                [sys.executable, "-m", "scheduler.gateway.serve", "--replicas", str(replicas_file), "--upstream-client", client],
                env={
                    "CUNLIANG_DATA_DIR": str(tmp / client),
                    "CUNLIANG_DATABASE_URL": f"sqlite:///{tmp / 'gw.db'}",
                    "CUNLIANG_ADMIN_TOKEN": "adm-cl-bench",
                    "CUNLIANG_PORT": str(port),
                },
            )  # fmt: skip
            procs.append(proc)
            wait_healthy(f"http://127.0.0.1:{port}", "/healthz")
            gateways[client] = (f"http://127.0.0.1:{port}", proc)
        headers = {"Authorization": f"Bearer {key}"}
        samples: dict[str, list[float]] = {}
        for _ in range(2):
            for mode, n in REQUESTS.items():
                for client, (url, proc) in gateways.items():
                    kw = {"stream": mode == "stream", "max_tokens": 16 if mode == "stream" else 4}
                    asyncio.run(load(url, 200, 32, headers=headers, **kw))
                    before = cpu_s(proc.pid)
                    run = asyncio.run(load(url, n, 32, headers=headers, **kw))
                    used_us = (cpu_s(proc.pid) - before) / max(1, len(run.latencies_s)) * 1e6
                    tag = f"{mode}_c32_{client}"
                    for stat, value in (
                        ("gateway_cpu_us_per_request", used_us),
                        ("requests_per_s", run.rps),
                        ("p50_ms", run.pct(50) * 1000),
                        ("p99_ms", run.pct(99) * 1000),
                    ):
                        samples.setdefault(f"{tag}_{stat}", []).append(value)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=15)
        shutil.rmtree(tmp, ignore_errors=True)
    metrics = {k: round(statistics.median(v), 2) for k, v in samples.items()}
    for mode in REQUESTS:
        for client in CLIENTS[1:]:
            metrics[f"{mode}_c32_{client}_vs_httpx_cpu_ratio"] = round(
                metrics[f"{mode}_c32_{client}_gateway_cpu_us_per_request"]
                / metrics[f"{mode}_c32_httpx_gateway_cpu_us_per_request"],
                3,
            )
    result = {
        "benchmark": "gateway_clients",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {"concurrency": 32, "requests": REQUESTS, "rounds": 2, "baseline": "httpx"},
        "metrics": metrics,
    }
    out = REPO / "bench" / "results" / "gateway_clients.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    m = metrics
    cpu = "plain_c32_{}_gateway_cpu_us_per_request"
    stream_cpu = "stream_c32_{}_gateway_cpu_us_per_request"
    rps = "plain_c32_{}_requests_per_s"
    print(
        "| gateway upstream client (c=32, fake engine) | CPU/request "
        + " → ".join(f"{c} {m[cpu.format(c)]:.0f} µs" for c in CLIENTS)
        + " (streams: "
        + " → ".join(f"{m[stream_cpu.format(c)]:.0f}" for c in CLIENTS)
        + " µs) | "
        + " → ".join(f"{m[rps.format(c)]:.0f}" for c in CLIENTS)
        + " req/s | `python bench/gateway_clients.py` |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
