"""Where the gateway's CPU goes per request: a short profiling harness (not a benchmark).

Starts the fake engine (tests/fakes/openai_upstream.py) and one gateway process
(``scheduler.gateway.serve``, uvloop + httptools, as bench/gateway.py runs it), optionally
under cProfile, drives it with bench/gateway.py's load generator, and prints the gateway's
CPU per request (from /proc; also that of its threads other than the event loop's, the
usage flush's chiefly) and, when profiled, its hottest functions. On the 2-core
machine the gateway runs alone on core 1, generator and engine on core 0.

    PYTHONPATH=$PWD .venv/bin/python bench/gateway_profile.py [--mode plain|stream]
        [--profile] [-n 4000] [-c 32] [--repo <checkout>]

cProfile adds overhead per Python call, so its times are inflated where calls are many and
short; use it for where the time goes, and the unprofiled CPU figure for how much.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import gateway_fixture  # noqa: E402
from bench.gateway import (  # noqa: E402
    ADMIN,
    MODEL,
    cpu_s,
    load,
    pin,
    user_sys_s,
    wait_healthy,
)
from tests.fakes.servers import free_port  # noqa: E402

_GC_WATCH = """
import gc, signal, sys, time
from scheduler.gateway.serve import main
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
stats = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
full_ms = []  # each full collection, including one a gateway runs itself before serving
started = [0.0]
def watch(phase, info):
    if phase == "start":
        started[0] = time.thread_time()
    else:
        entry = stats[info["generation"]]
        entry[0] += 1
        entry[1] += time.thread_time() - started[0]
        if info["generation"] == 2:
            full_ms.append(round((time.thread_time() - started[0]) * 1e3, 1))
gc.callbacks.append(watch)
try:
    main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as out:
        for gen, (count, total_s) in stats.items():
            out.write(f"gc generation {gen}: {count} collections, {total_s * 1e3:.1f} ms CPU in all\\n")
        out.write(f"full collections (ms CPU, in order): {full_ms}\\n")
"""

_PROFILED = """
import cProfile, signal, sys, time
from scheduler.gateway.serve import main
# uvicorn re-raises SIGTERM after its graceful shutdown: exit through the finally below
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
# CPU time of the event-loop thread: waiting (off-CPU) is not charged to what waited
profiler = cProfile.Profile(time.thread_time)
profiler.enable()
try:
    main(sys.argv[2:])
finally:
    profiler.disable()
    profiler.dump_stats(sys.argv[1])
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("plain", "stream"), default="plain")
    parser.add_argument("--profile", action="store_true", help="run the gateway under cProfile")
    parser.add_argument("--gc", action="store_true", help="count the gateway's GC pauses")
    parser.add_argument("-n", type=int, default=4000, help="requests measured")
    parser.add_argument("-c", type=int, default=32, help="concurrency")
    parser.add_argument("--rounds", type=int, default=1, help="measured runs (CPU per run)")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose gateway runs")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    repo = args.repo.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="cl-prof-"))
    try:
        return _profile(args, repo, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _profile(args: argparse.Namespace, repo: Path, tmp: Path) -> int:
    up_port, gw_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(up_port),
         "--model", MODEL],
        cwd=REPO, env=env,
    )  # fmt: skip
    gateway = None
    try:
        direct = f"http://127.0.0.1:{up_port}"
        wait_healthy(direct)
        key, replicas_file = gateway_fixture(tmp, direct, MODEL)
        serve_args = ["--replicas", str(replicas_file)]
        if args.profile:
            cmd = [sys.executable, "-c", _PROFILED, str(tmp / "gw.prof"), *serve_args]
        elif args.gc:
            cmd = [sys.executable, "-c", _GC_WATCH, str(tmp / "gc.txt"), *serve_args]
        else:
            cmd = [sys.executable, "-m", "scheduler.gateway.serve", *serve_args]
        gateway = subprocess.Popen(
            cmd,
            cwd=repo,
            env={
                **os.environ,
                "PYTHONPATH": str(repo),
                "CUNLIANG_DATA_DIR": str(tmp / "data"),
                "CUNLIANG_DATABASE_URL": f"sqlite:///{tmp / 'gw.db'}",
                "CUNLIANG_ADMIN_TOKEN": ADMIN,
                "CUNLIANG_PORT": str(gw_port),
            },
        )
        url = f"http://127.0.0.1:{gw_port}"
        wait_healthy(url, "/healthz")
        os.sched_setaffinity(0, {0})
        pin(upstream.pid, {0})
        pin(gateway.pid, {1})
        kw = {
            "stream": args.mode == "stream",
            "max_tokens": 16 if args.mode == "stream" else 4,
            "headers": {"Authorization": f"Bearer {key}"},
        }
        asyncio.run(load(url, 300, args.c, **kw))  # warm-up
        for _ in range(args.rounds):
            cpu0 = cpu_s(gateway.pid)
            us0 = user_sys_s(gateway.pid)
            others0 = _other_threads_cpu_s(gateway.pid)
            t0 = time.perf_counter()
            run = asyncio.run(load(url, args.n, args.c, **kw))
            wall = time.perf_counter() - t0
            cpu = cpu_s(gateway.pid) - cpu0
            others = _cpu_since(others0, _other_threads_cpu_s(gateway.pid))
            user_s, sys_s = (b - a for a, b in zip(us0, user_sys_s(gateway.pid), strict=True))
            done = max(1, len(run.latencies_s))
            print(
                f"{args.mode} c={args.c} n={done} errors={run.errors} "
                f"rps={done / wall:.0f} p50={run.pct(50) * 1e3:.2f}ms "
                f"p99={run.pct(99) * 1e3:.2f}ms gateway_cpu={cpu / done * 1e6:.0f}us/request "
                f"(user {user_s / done * 1e6:.0f}, system {sys_s / done * 1e6:.0f}; "
                f"threads other than the event loop's {others / done * 1e6:.0f}) "
                f"load={os.getloadavg()[0]:.1f}"
            )
            for cause, count in run.error_causes.most_common(5):
                print(f"  {count} x {cause}")
    finally:
        for proc in (gateway, upstream):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    if args.gc:
        print((tmp / "gc.txt").read_text(), end="")
    if args.profile:
        stats = pstats.Stats(str(tmp / "gw.prof"))
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
    return 0


def _other_threads_cpu_s(pid: int) -> dict[str, float]:
    """{thread id: CPU seconds used so far} of the process's threads other than its main
    one (the event loop's): the usage flush into the database, chiefly."""
    cpu: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        if task.name == str(pid):
            continue
        try:
            cpu[task.name] = sum(user_sys_s(pid, task.name))
        except OSError:  # ended meanwhile
            continue
    return cpu


def _cpu_since(before: dict[str, float], after: dict[str, float]) -> float:
    """CPU seconds the threads of ``after`` used since ``before`` (a thread that ended in
    between is missed; one that started counts from zero)."""
    return sum(used - before.get(tid, 0.0) for tid, used in after.items())


if __name__ == "__main__":
    sys.exit(main())
