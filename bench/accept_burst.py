"""New connections to a busy engine: what stalls the c=256 stream runs of bench/gateway.py.

In bench/gateway.py's pinned layout at c=256, every proxy (the gateway, vllm-router) shows
a p99 past 1 s on streams while direct calls do not. The proxies keep engine connections
from the warm-up (200 requests at c=256) and open the rest (~56) when the measured run
starts, while the engine is busy with the others' streams. uvicorn on uvloop (the fake
engine's server, and vLLM's API server's) accepts one connection per event-loop iteration
(libuv's ``uv__server_io`` accepts once per readiness event), and a busy streaming
server's iterations are long (one step of every open stream each): the new connections
wait in the listen queue, one iteration each. This script shows it without a proxy: one
client session opens 200 connections with a first round of streams and keeps them, then
256 workers stream at once, 200 on those connections and 56 on new ones opened while the
engine is busy with the others' streams; against the fake engine on uvloop and on
asyncio's own loop (which accepts every pending connection per event), interleaved per
round. The client and the engine share core 0, as in bench/gateway.py's pinned layout.

    PYTHONPATH=$PWD .venv/bin/python bench/accept_burst.py [--rounds 3]

Writes bench/results/accept_burst.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import print_result, write_result  # noqa: E402
from bench.gateway import MODEL, pin, wait_healthy  # noqa: E402
from tests.fakes.servers import free_port  # noqa: E402

LOOPS = ("uvloop", "asyncio")
BUSY, WORKERS, STREAMS, TOKENS = 200, 256, 3000, 16


async def _burst(url: str) -> list[float]:
    """Latencies (s) of STREAMS streams by WORKERS workers on one session that already
    holds BUSY connections (WORKERS - BUSY workers open new ones as the run starts)."""
    payload = json.dumps(
        {"model": MODEL, "prompt": "hello world", "max_tokens": TOKENS, "stream": True}
    ).encode()
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=4 * WORKERS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def run(n: int, workers: int) -> list[float]:
            todo = iter(range(n))
            latencies: list[float] = []

            async def worker() -> None:
                for _ in todo:
                    started = time.perf_counter()
                    async with session.post(url, data=payload, headers=headers) as response:
                        await response.read()
                        if response.status != 200:  # an error is no fast stream
                            raise RuntimeError(f"the engine answered {response.status}")
                    latencies.append(time.perf_counter() - started)

            await asyncio.gather(*(worker() for _ in range(workers)))
            return latencies

        await run(BUSY, WORKERS)  # BUSY connections open (one request each), kept alive
        return await run(STREAMS, WORKERS)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    samples: dict[str, dict[str, list[float]]] = {loop: {} for loop in LOOPS}
    for round_no in range(args.rounds):
        for loop in LOOPS:
            port = free_port()
            engine = subprocess.Popen(
                [sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(port),
                 "--model", MODEL, "--loop", loop],
                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            )  # fmt: skip
            try:
                url = f"http://127.0.0.1:{port}"
                wait_healthy(url)
                os.sched_setaffinity(0, {0})
                pin(engine.pid, {0})
                latencies = sorted(asyncio.run(_burst(url + "/v1/completions")))
            finally:
                engine.send_signal(signal.SIGTERM)
                engine.wait(timeout=30)
            stats = {
                "p50_ms": latencies[len(latencies) // 2] * 1e3,
                "p99_ms": latencies[int(0.99 * len(latencies))] * 1e3,
                "max_ms": latencies[-1] * 1e3,
                "streams_over_1s": float(sum(1 for s in latencies if s > 1.0)),
            }
            for stat, value in stats.items():
                samples[loop].setdefault(stat, []).append(value)
            print(
                f"round {round_no} engine on {loop}: "
                + " ".join(f"{k}={v:.0f}" for k, v in stats.items()),
                file=sys.stderr,
            )
    metrics = {
        f"engine_{loop}_{stat}": round(statistics.median(values), 1)
        for loop, stats in samples.items()
        for stat, values in stats.items()
    }
    for stat in ("p99_ms", "max_ms"):  # the stalled streams are a few in 3,000: the max shows them
        metrics[f"{stat[:-3]}_uvloop_over_asyncio_ratio"] = round(
            metrics[f"engine_uvloop_{stat}"] / metrics[f"engine_asyncio_{stat}"], 2
        )
    path = write_result(
        "accept_burst",
        metrics,
        config={
            "busy_connections": BUSY,
            "workers": WORKERS,
            "streams": STREAMS,
            "tokens_per_stream": TOKENS,
            "rounds": args.rounds,
            "cpus": "client and fake engine on core 0",
            "statistic": "median over rounds",
        },
    )
    print_result(path, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
