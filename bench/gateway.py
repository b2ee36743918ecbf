"""Gateway overhead benchmark: added latency and max throughput vs direct to the engine.

Isolation upstream: tests/fakes/openai_upstream.py (instant answers, so every microsecond
measured is transport + gateway). Three processes on one machine: the fake engine, the
gateway (python -m scheduler.gateway.serve, uvloop + httptools, one process), and this load
generator (aiohttp, closed loop at fixed concurrency). Direct and gateway runs alternate per
concurrency level, same generator, same request. vllm-router (the Rust router of the vLLM
project) is measured side by side when its binary exists (see --vllm-router).

The machine has 2 cores, so where each process runs decides what is measured. Two layouts,
both in every round (affinity set on every thread of each process):

- ``pinned``: load generator + engine on core 0, the proxy (gateway or vllm-router) alone on
  core 1; direct runs keep the generator + engine on core 0 (core 1 idle). The proxy gets
  its own core, as in a deployment: this measures whether it limits throughput/latency.
- ``shared``: every process may run on both cores. The proxy's CPU competes with the
  generator's and the engine's, so throughput vs direct shows what each proxy costs in CPU.
- ``proxy-core``: as shared, but the proxy is kept on core 1 (which generator and engine
  still share with it): what an operator gets by pinning the proxy (the gateway's
  ``CUNLIANG_GATEWAY_CPUS``; ``taskset`` for vllm-router). Not in the default set.

CPU time per request (user + system, from /proc) is reported for every process.

    PYTHONPATH=$PWD .venv/bin/python bench/gateway.py [--quick]

Writes bench/results/gateway.json and prints markdown rows.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import gateway_fixture, machine  # noqa: E402
from scheduler.gateway.serve import pin_threads as pin  # noqa: E402
from tests.fakes.servers import free_port  # noqa: E402

MODEL = "bench-model"
ADMIN = "adm-cl-bench"


@dataclass
class Run:
    latencies_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0
    error_causes: collections.Counter[str] = field(default_factory=collections.Counter)
    wall_s: float = 0.0

    def pct(self, q: float, values: list[float] | None = None) -> float:
        data = sorted(values if values is not None else self.latencies_s)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, int(q / 100 * len(data)))]

    @property
    def rps(self) -> float:
        return len(self.latencies_s) / self.wall_s if self.wall_s else 0.0


async def load(
    url: str, n: int, concurrency: int, *, stream: bool, max_tokens: int, headers: dict[str, str]
) -> Run:
    body = {"model": MODEL, "prompt": "hello world", "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    payload = json.dumps(body).encode()
    run = Run()
    todo = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency * 2, force_close=False)
    hdrs = {"content-type": "application/json", **headers}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in todo:
                t0 = time.perf_counter()
                try:
                    async with session.post(
                        url + "/v1/completions", data=payload, headers=hdrs
                    ) as r:
                        if r.status != 200:
                            run.errors += 1
                            body = await r.read()
                            run.error_causes[f"HTTP {r.status}: {body[:120]!r}"] += 1
                            continue
                        if not stream:
                            await r.read()
                        else:
                            first = None
                            async for line in r.content:
                                if line.startswith(b"data: {") and b'"text":"t' in line:
                                    run.tokens += 1
                                    if first is None:
                                        first = time.perf_counter()
                            if first is not None:
                                run.ttft_s.append(first - t0)
                except aiohttp.ClientError as exc:
                    run.errors += 1
                    run.error_causes[repr(exc)[:160]] += 1
                    continue
                run.latencies_s.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.wall_s = time.perf_counter() - start
    return run


def user_sys_s(pid: int, tid: int | str | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds a process (or its thread ``tid``) used so far (Linux
    /proc)."""
    stat = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process used so far."""
    return sum(user_sys_s(pid))


def wait_healthy(url: str, path: str = "/v1/models", timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    )


LAYOUTS = {
    # layout: (cpus of the generator and the engine, cpus of the proxy)
    "pinned": ({0}, {1}),
    "shared": ({0, 1}, {0, 1}),
    "proxy-core": ({0, 1}, {1}),
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the request counts (longer runs)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument(
        "--vllm-router", default="/tmp/vr-venv/bin/vllm-router", help="router binary if any"
    )
    parser.add_argument("--layouts", default="pinned,shared", help="comma-separated LAYOUTS")
    parser.add_argument(
        "--name", default="gateway", help="results file bench/results/<name>.json (and benchmark)"
    )
    parser.add_argument(
        "--concurrency", default="1,32,256", help="comma-separated levels (of 1, 32, 256)"
    )
    parser.add_argument(
        "--compare-repo", help="also measure the gateway of this checkout (e.g. the last release)"
    )
    args = parser.parse_args()
    layouts = [name for name in args.layouts.split(",") if name]
    if os.cpu_count() != 2 or any(name not in LAYOUTS for name in layouts):
        print("bench/gateway.py: needs a 2-core machine and layouts from", list(LAYOUTS))
        return 2
    scale = 0.2 if args.quick else args.scale
    chosen = {int(c) for c in args.concurrency.split(",") if c}
    levels = {1: int(300 * scale), 32: int(2000 * scale), 256: int(3000 * scale)}
    stream_levels = {1: int(150 * scale), 32: int(800 * scale), 256: int(1500 * scale)}
    if not chosen or not chosen <= set(levels):
        print("bench/gateway.py: --concurrency takes levels from", list(levels))
        return 2
    levels = {c: n for c, n in levels.items() if c in chosen}
    stream_levels = {c: n for c, n in stream_levels.items() if c in chosen}
    stream_tokens = 16

    tmp = Path(tempfile.mkdtemp(prefix="cl-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up_port = free_port()
        procs.append(
            start(
                [
                    sys.executable,
                    "-m",
                    "tests.fakes.openai_upstream",
                    "--port",
                    str(up_port),
                    "--model",
                    MODEL,
                ]
            )
        )
        direct = f"http://127.0.0.1:{up_port}"
        wait_healthy(direct)
        key, replicas_file = gateway_fixture(tmp, direct, MODEL)
        pids = {"upstream": procs[0]}
        targets: dict[str, tuple[str, dict[str, str]]] = {"direct": (direct, {})}
        # the gateway of this checkout, and optionally one of another checkout side by side
        checkouts = {"gateway": REPO}
        if args.compare_repo:
            checkouts["gateway_base"] = Path(args.compare_repo).resolve()
        for name, checkout in checkouts.items():
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "scheduler.gateway.serve", "--replicas", str(replicas_file)],
                cwd=checkout,
                env={
                    **os.environ,
                    "PYTHONPATH": str(checkout),
                    "CUNLIANG_DATA_DIR": str(tmp / f"data-{name}"),
                    "CUNLIANG_DATABASE_URL": f"sqlite:///{tmp / 'gw.db'}",
                    "CUNLIANG_ADMIN_TOKEN": ADMIN,
                    "CUNLIANG_PORT": str(port),
                },
            )  # fmt: skip
            procs.append(proc)
            pids[name] = proc
            wait_healthy(f"http://127.0.0.1:{port}", "/healthz")
            targets[name] = (f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"})
        router_bin = Path(args.vllm_router)
        if router_bin.exists():
            rt_port = free_port()
            procs.append(
                start(
                    [
                        str(router_bin),
                        "--worker-urls",
                        direct,
                        "--port",
                        str(rt_port),
                        "--host",
                        "127.0.0.1",
                        "--policy",
                        "round_robin",
                    ]
                )
            )
            try:
                wait_healthy(f"http://127.0.0.1:{rt_port}", "/health", timeout_s=30)
                targets["vllm_router"] = (f"http://127.0.0.1:{rt_port}", {})
                pids["vllm_router"] = procs[-1]
            except RuntimeError:
                print("vllm-router did not start; measured without it", file=sys.stderr)

        # samples[(layout, mode, c, target)][stat] = one value per round; rounds interleave
        # layouts and targets so background load on the shared machine hits them alike;
        # medians are reported
        samples: dict[tuple[str, str, int, str], dict[str, list[float]]] = {}
        for round_no in range(args.rounds):
            for layout in layouts:
                near, proxy_cpus = LAYOUTS[layout]
                os.sched_setaffinity(0, near)  # this process: the load generator
                pin(pids["upstream"].pid, near)
                for name, proc in pids.items():
                    if name != "upstream":
                        pin(proc.pid, proxy_cpus)
                for mode, table in (("plain", levels), ("stream", stream_levels)):
                    for c, n in table.items():
                        for name, (url, headers) in targets.items():
                            kw: dict[str, Any] = {
                                "stream": mode == "stream",
                                "max_tokens": stream_tokens if mode == "stream" else 4,
                                "headers": headers,
                            }
                            asyncio.run(load(url, min(200, n), c, **kw))  # warm-up: pools
                            cpu0 = {k: cpu_s(p.pid) for k, p in pids.items()}
                            gen0 = time.process_time()
                            run = asyncio.run(load(url, n, c, **kw))
                            gen_s = time.process_time() - gen0
                            done = max(1, len(run.latencies_s))
                            cpu = {
                                k: (cpu_s(p.pid) - cpu0[k]) / done * 1e6 for k, p in pids.items()
                            }
                            stats = samples.setdefault((layout, mode, c, name), {})
                            ttft = run.pct(50, run.ttft_s) * 1000 if run.ttft_s else 0.0
                            for stat, value in (
                                ("p50_ms", run.pct(50) * 1000),
                                ("p99_ms", run.pct(99) * 1000),
                                ("requests_per_s", run.rps),
                                ("errors", float(run.errors)),
                                ("ttft_p50_ms", ttft),
                                ("generator_cpu_us_per_request", gen_s / done * 1e6),
                                ("upstream_cpu_us_per_request", cpu["upstream"]),
                                ("proxy_cpu_us_per_request", cpu.get(name, 0.0)),
                            ):
                                stats.setdefault(stat, []).append(value)
                            print(
                                f"round {round_no} {layout} {mode} c={c} {name}: "
                                f"n={len(run.latencies_s)} p50={run.pct(50) * 1000:.2f}ms "
                                f"p99={run.pct(99) * 1000:.2f}ms rps={run.rps:.0f} "
                                f"err={run.errors} proxy_cpu={cpu.get(name, 0.0):.0f}us "
                                f"load={os.getloadavg()[0]:.1f}",
                                file=sys.stderr,
                            )
                            for cause, count in run.error_causes.most_common(5):
                                print(f"  {count} x {cause}", file=sys.stderr)
        metrics = summarise(samples, layouts, levels, stream_tokens)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "benchmark": args.name,
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            "requests": levels,
            "stream_requests": stream_levels,
            "stream_tokens": stream_tokens,
            "upstream": "tests/fakes/openai_upstream.py (instant)",
            "baseline": "direct to the same upstream, same load generator, same layout, same run",
            "layouts": {
                k: {
                    "generator_and_engine_cpus": sorted(LAYOUTS[k][0]),
                    "proxy_cpus": sorted(LAYOUTS[k][1]),
                }
                for k in layouts
            },
            "quick": args.quick,
            "rounds": args.rounds,
            "statistic": "median over rounds of each round's p50/p99/throughput/CPU",
            "load_average_1m_at_end": os.getloadavg()[0],
        },
        "metrics": metrics,
    }
    out = REPO / "bench" / "results" / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for layout in layouts:
        print(markdown_row(metrics, layout))
    return 0


def summarise(
    samples: dict[tuple[str, str, int, str], dict[str, list[float]]],
    layouts: list[str],
    levels: dict[int, int],
    stream_tokens: int,
) -> dict[str, float]:
    metrics: dict[str, float] = {}
    med = {
        key: {stat: statistics.median(v) for stat, v in stats.items()}
        for key, stats in samples.items()
    }
    for (layout, mode, c, name), stats in med.items():
        for stat, value in stats.items():
            if stat == "ttft_p50_ms" and mode != "stream":
                continue
            if stat == "proxy_cpu_us_per_request" and name == "direct":
                continue
            metrics[f"{layout}_{mode}_c{c}_{name}_{stat}"] = round(value, 3)
        if name == "direct":
            continue
        d = med[(layout, mode, c, "direct")]
        tag = f"{layout}_{mode}_c{c}_{name}"
        metrics[f"{tag}_added_p50_ms"] = round(stats["p50_ms"] - d["p50_ms"], 3)
        metrics[f"{tag}_added_p99_ms"] = round(stats["p99_ms"] - d["p99_ms"], 3)
        metrics[f"{tag}_throughput_ratio"] = round(stats["requests_per_s"] / d["requests_per_s"], 3)
        # paired per round (proxy and direct ran back to back): robust to a round where
        # the whole machine was slower, which moves medians of the two series apart
        raw, direct_raw = samples[(layout, mode, c, name)], samples[(layout, mode, c, "direct")]
        for stat, paired in (
            ("throughput_ratio", lambda p, q: p["requests_per_s"] / q["requests_per_s"]),
            ("added_p50_ms", lambda p, q: p["p50_ms"] - q["p50_ms"]),
            ("added_p99_ms", lambda p, q: p["p99_ms"] - q["p99_ms"]),
        ):
            per_round = [
                paired({k: v[i] for k, v in raw.items()}, {k: v[i] for k, v in direct_raw.items()})
                for i in range(len(raw["p50_ms"]))
            ]
            metrics[f"{tag}_{stat}_median_of_rounds"] = round(statistics.median(per_round), 3)
        if mode == "stream":
            metrics[f"{tag}_added_per_token_p50_ms"] = round(
                (stats["p50_ms"] - d["p50_ms"]) / stream_tokens, 4
            )
    for layout in layouts:
        names = {key[3] for key in med if key[0] == layout}
        for name in sorted(names):
            metrics[f"{layout}_max_{name}_requests_per_s"] = round(
                max(med[(layout, "plain", c, name)]["requests_per_s"] for c in levels), 1
            )
        for name in sorted(names - {"direct"}):
            metrics[f"{layout}_max_{name}_throughput_ratio"] = round(
                metrics[f"{layout}_max_{name}_requests_per_s"]
                / metrics[f"{layout}_max_direct_requests_per_s"],
                3,
            )
    return metrics


def markdown_row(m: dict[str, float], layout: str) -> str:
    def proxy(name: str) -> str:
        t = f"{layout}_plain_c"
        # the level the row details: c=32 where measured, else the first one that was
        lv = next(c for c in (32, 1, 256) if f"{t}{c}_{name}_throughput_ratio" in m)
        s = f"{layout}_stream_c{lv}_{name}"
        added = ", ".join(
            f"c={c} {m[f'{t}{c}_{name}_added_p50_ms']}/{m[f'{t}{c}_{name}_added_p99_ms']} ms"
            for c in (1, 32, 256)
            if f"{t}{c}_{name}_added_p50_ms" in m
        )
        return (
            f"{name}: added p50/p99 {added}; c={lv} throughput "
            f"{m[f'{t}{lv}_{name}_throughput_ratio']:.0%} (per-round median "
            f"{m[f'{t}{lv}_{name}_throughput_ratio_median_of_rounds']:.0%}, added p50/p99 "
            f"{m[f'{t}{lv}_{name}_added_p50_ms_median_of_rounds']}/"
            f"{m[f'{t}{lv}_{name}_added_p99_ms_median_of_rounds']} ms; streams "
            f"{m[f'{s}_throughput_ratio']:.0%}, +{m[f'{s}_added_per_token_p50_ms']} ms/token); "
            f"CPU {m[f'{t}{lv}_{name}_proxy_cpu_us_per_request']:.0f} µs/request, "
            f"{m[f'{s}_proxy_cpu_us_per_request']:.0f} µs/stream"
        )

    names = [
        n
        for n in ("gateway", "gateway_base", "vllm_router")
        if f"{layout}_max_{n}_requests_per_s" in m
    ]
    return (
        f"| gateway vs direct, {layout} cores (fake engine) | "
        + "; ".join(proxy(n) for n in names)
        + f" | direct max {m[f'{layout}_max_direct_requests_per_s']} req/s; gateway max "
        f"{m[f'{layout}_max_gateway_requests_per_s']} "
        f"({m[f'{layout}_max_gateway_throughput_ratio']:.0%}) | `python bench/gateway.py` |"
    )


if __name__ == "__main__":
    sys.exit(main())
