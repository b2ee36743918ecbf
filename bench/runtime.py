"""Runtime benchmark: gateway + Ray worker vs bare vLLM, and node loss -> restored capacity.

A real two-worker Ray cluster on this machine (``ray.cluster_utils.Cluster``, private
``RAY_TMPDIR``), the scheduler's runtime (node watcher, controller, reconciler,
RayLauncher) publishing endpoints to the database, and ``cunliang gateway`` in its own
process routing from that table (the cluster deployment's shape), one vLLM CPU replica
of the generated demo model.

* end to end: ``vllm bench serve`` (vLLM's own load generator, random dataset, fixed
  input/output lengths, ignore_eos) at concurrency 1 and 4, ``--rounds`` interleaved
  rounds (order alternating), straight to the engine's own OpenAI server (the baseline:
  bare vLLM) and through the gateway (which routes to that engine); ratios of request and
  output-token throughput and of median TTFT, both of the medians over rounds and as the
  median of per-round ratios (a round's two runs share the machine's state); each
  round's figures are printed (a TPOT near 0 means the tokens of a run arrived bunched);
* node loss: the worker node holding the replica is killed; measured: until the watcher
  reports it lost, until the replacement is started on the other node, until it serves
  (restored capacity); baseline: the cold start of the first replica in the same run.

Two cores serve everything: the engine binds one, the gateway, vLLM's API server and
the load generator share the other.

    PYTHONPATH=$PWD .venv/bin/python bench/runtime.py [--rounds 5] [--concurrency 1,4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_result
from scheduler.domain import (
    Demand,
    DeviceClass,
    DeviceKind,
    DeviceSpec,
    Engine,
    Fleet,
    ModelSpec,
    Plan,
    PlanStatus,
    Quant,
    Replica,
    Site,
)

MODEL = "demo"
SITE = Site("lab", "bench")
WORKERS = {"node-a": "lab/cpu-a", "node-b": "lab/cpu-b"}
ADMIN = "adm-cl-bench-runtime"
CONCURRENCY = (1, 4)
REQUESTS_PER_CLIENT = 16
INPUT_TOKENS = 32
MAX_TOKENS = 32


def _fleet(hosts: Sequence[str]) -> Fleet:
    spec = DeviceSpec("cpu", DeviceKind.CPU)
    return Fleet(
        (SITE,),
        tuple(DeviceClass(WORKERS[h], SITE, spec, 1, node_ids=(h,)) for h in hosts),
    )


def _first_live(fleet: Fleet, _d: Sequence[Demand], _m: Mapping[str, ModelSpec], _c: Any) -> Plan:
    cls = fleet.classes[0]
    replica = Replica(
        MODEL, Quant.FP32, cls.id, Engine.VLLM_CPU, node_id=cls.node_ids[0], dtype="float32"
    )
    return Plan(PlanStatus.OPTIMAL, (replica,))


_RUN_BENCH = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def _load(url: str, api_key: str, clients: int, tokenizer: str, out_dir: Path) -> dict[str, float]:
    """One ``vllm bench serve`` run (the vllm console script does not start with vllm-cpu:
    the module's own parser and main, in a subprocess)."""
    result = out_dir / f"run-{time.monotonic_ns()}.json"
    args = [
        "--backend", "openai-chat",
        "--endpoint", "/v1/chat/completions",
        "--base-url", url,
        "--model", MODEL,
        "--tokenizer", tokenizer,
        "--dataset-name", "random",
        "--random-input-len", str(INPUT_TOKENS),
        "--random-output-len", str(MAX_TOKENS),
        "--num-prompts", str(REQUESTS_PER_CLIENT * clients),
        "--max-concurrency", str(clients),
        "--ignore-eos",
        "--seed", "0",
        "--ready-check-timeout-sec", "0",
        "--disable-tqdm",
        "--save-result",
        "--result-dir", str(out_dir),
        "--result-filename", result.name,
    ]  # fmt: skip
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "OPENAI_API_KEY": api_key}
    done = subprocess.run(
        [sys.executable, "-c", _RUN_BENCH, *args], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed: {done.stderr[-2000:]}")
    data = json.loads(result.read_text())
    if data["failed"]:
        raise RuntimeError(f"vllm bench serve: {data['failed']} failed: {data['errors'][:3]}")
    return {
        "requests_per_s": float(data["request_throughput"]),
        "output_tokens_per_s": float(data["output_throughput"]),
        "p50_ttft_ms": float(data["median_ttft_ms"]),
        "p50_tpot_ms": float(data["median_tpot_ms"]),
    }


def _summary(c: int, rounds: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, float]:
    """Medians over rounds per path, and the medians of the per-round (paired) ratios: a
    round's two runs share the machine's state, so their ratio is steadier than the ratio
    of two medians when the load moves between rounds."""
    out: dict[str, float] = {}
    for path, results in rounds.items():
        for name in results[0]:
            out[f"{path}_c{c}_{name}"] = statistics.median(r[name] for r in results)
    pairs = list(zip(rounds["direct"], rounds["gateway"], strict=True))
    for name in ("requests_per_s", "output_tokens_per_s", "p50_ttft_ms"):
        label = f"gateway_vs_direct_c{c}_{name.removesuffix('_ms')}_ratio"
        out[label] = out[f"gateway_c{c}_{name}"] / out[f"direct_c{c}_{name}"]
        out[f"{label}_median_of_rounds"] = statistics.median(g[name] / d[name] for d, g in pairs)
    out[f"gateway_c{c}_added_p50_ttft_ms"] = (
        out[f"gateway_c{c}_p50_ttft_ms"] - out[f"direct_c{c}_p50_ttft_ms"]
    )
    out[f"gateway_c{c}_added_p50_ttft_ms_median_of_rounds"] = statistics.median(
        g["p50_ttft_ms"] - d["p50_ttft_ms"] for d, g in pairs
    )
    out[f"c{c}_rounds"] = len(pairs)
    return out


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _routes(url: str, key: str) -> bool:
    """The gateway lists the model once it has loaded the endpoint table."""
    try:
        reply = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    except httpx.HTTPError:
        return False
    return reply.status_code == 200 and any(m["id"] == MODEL for m in reply.json()["data"])


def _wait(check: Callable[[], bool], timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if check():
            return time.monotonic() - t0
        time.sleep(0.2)
    raise TimeoutError(f"not within {timeout_s} s")


def main(args: argparse.Namespace) -> int:
    import ray
    from ray.cluster_utils import Cluster

    from scheduler.catalog import arch_from_hf_config
    from scheduler.preflight import free_port
    from scheduler.runtime.actors import vllm_actor_args
    from scheduler.runtime.controller import Controller
    from scheduler.runtime.liveness import NodeWatcher, host_resource
    from scheduler.runtime.publish import DbEndpointSink
    from scheduler.runtime.ray_backend import (
        NAMESPACE,
        RayLauncher,
        device_class_resource,
        ray_nodes,
    )
    from scheduler.runtime.reconciler import Reconciler, ReconcilerLoop, ReplicaState
    from scheduler.settings import Settings
    from scheduler.store.db import open_database, upgrade
    from scheduler.tenancy import TenancyService
    from workers.actor import ReplicaActor
    from workers.demo_model import ensure_demo_model

    data_dir = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    ray_dir = tempfile.mkdtemp(prefix="clb-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = ray_dir
    model_dir = ensure_demo_model(data_dir)
    arch = arch_from_hf_config(json.loads((model_dir / "config.json").read_text()), MODEL)
    spec = ModelSpec(MODEL, str(model_dir), arch, allowed_quants=(Quant.FP32,))
    settings = Settings(data_dir=data_dir, max_model_len=256, kv_cache_gib=1)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = {
        h: cluster.add_node(
            num_cpus=1, resources={device_class_resource(c): 1, host_resource(h): 1}
        )
        for h, c in WORKERS.items()
    }
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    metrics: dict[str, float] = {}
    db_url = f"sqlite:///{data_dir / 'cunliang.db'}"
    upgrade(db_url)
    database = open_database(db_url)
    gateway: subprocess.Popen[bytes] | None = None
    try:
        launcher = RayLauncher(ReplicaActor, vllm_actor_args(settings, lambda: {MODEL: spec}))
        reconciler = Reconciler(launcher, DbEndpointSink(database.sessions))

        class Quiet:
            def report(self, host: str, healthy: bool, detail: str) -> None:
                return None

        watcher = NodeWatcher(ray_nodes, Quiet(), report_every_s=1.0)
        controller = Controller(
            lambda: (_fleet(list(WORKERS)), (), {MODEL: spec}),
            _first_live,
            reconciler,
            lost_hosts=watcher.lost,
        )
        loop = ReconcilerLoop(reconciler, interval_s=0.2)
        stop = threading.Event()

        def control() -> None:
            while not stop.wait(0.5):
                watcher.tick()
                controller.tick()

        tenancy = TenancyService(database.sessions)
        tenancy.create_tenant("bench")
        key = tenancy.create_key("bench").secret
        port = free_port()
        gateway_url = f"http://127.0.0.1:{port}"
        gateway = subprocess.Popen(
            [sys.executable, "-m", "scheduler.cli.main", "--database-url", db_url,
             "gateway", "--port", str(port)],
            env={**os.environ, "CUNLIANG_ADMIN_TOKEN": ADMIN, "CUNLIANG_DATA_DIR": str(data_dir)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def ready() -> bool:
            st = reconciler.statuses()
            return len(st) == 1 and st[0].state is ReplicaState.READY

        t0 = time.monotonic()
        watcher.tick()
        controller.tick()
        loop.start()
        threading.Thread(target=control, daemon=True).start()
        _wait(ready, 600)
        metrics["cold_start_s"] = time.monotonic() - t0
        engine_url = reconciler.statuses()[0].base_url or ""
        _wait(lambda: _healthy(gateway_url), 120)
        _wait(lambda: _routes(gateway_url, key), 30)  # the gateway has read the table
        runs = Path(data_dir / "bench-serve")
        runs.mkdir()
        tokenizer = str(model_dir)
        _load(engine_url, "none", 1, tokenizer, runs)  # warm-up, both paths
        _load(gateway_url, key, 1, tokenizer, runs)
        for c in args.concurrency:
            rounds: dict[str, list[dict[str, float]]] = {"direct": [], "gateway": []}
            for i in range(args.rounds):  # interleaved, order alternating: same background
                order = ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct")
                for path in order:
                    url, api_key = (engine_url, "none") if path == "direct" else (gateway_url, key)
                    rounds[path].append(_load(url, api_key, c, tokenizer, runs))
                d, g = rounds["direct"][-1], rounds["gateway"][-1]
                print(
                    f"c={c} round {i + 1}: direct {d['output_tokens_per_s']:.0f} tok/s TTFT "
                    f"{d['p50_ttft_ms']:.1f} ms TPOT {d['p50_tpot_ms']:.2f} ms | gateway "
                    f"{g['output_tokens_per_s']:.0f} tok/s TTFT {g['p50_ttft_ms']:.1f} ms TPOT "
                    f"{g['p50_tpot_ms']:.2f} ms | load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
            metrics.update(_summary(c, rounds))

        victim = reconciler.statuses()[0].replica.node_id or "node-a"
        lost_at = time.monotonic()
        cluster.remove_node(nodes.pop(victim), allow_graceful=False)
        metrics["node_loss_detect_s"] = _wait(lambda: victim in watcher.lost(), 60)
        metrics["node_loss_replaced_s"] = (
            time.monotonic()
            - lost_at
            + _wait(lambda: any(s.replica.node_id != victim for s in reconciler.statuses()), 60)
        )
        _wait(lambda: ready() and reconciler.statuses()[0].replica.node_id != victim, 600)
        metrics["node_loss_restored_s"] = time.monotonic() - lost_at
        metrics["restored_vs_cold_start_ratio"] = (
            metrics["node_loss_restored_s"] / metrics["cold_start_s"]
        )
        stop.set()
        loop.stop()
        reconciler.stop_all()
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=30)
        database.dispose()
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]
        shutil.rmtree(ray_dir, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
    load = os.getloadavg()
    out = write_result(
        "runtime",
        metrics,
        notes=f"{args.rounds} interleaved rounds; load average at the end {load[0]:.1f}",
    )
    for k, v in metrics.items():
        print(f"{k:45s} {v:10.2f}")
    print(f"wrote {out}")
    print(
        f"| runtime: node loss -> restored capacity (real 2-node Ray, vLLM CPU demo model) | "
        f"lost detected {metrics['node_loss_detect_s']:.1f} s, replacement started "
        f"{metrics['node_loss_replaced_s']:.1f} s, serving again "
        f"{metrics['node_loss_restored_s']:.0f} s | baseline cold start "
        f"{metrics['cold_start_s']:.0f} s (ratio {metrics['restored_vs_cold_start_ratio']:.2f}) "
        f"| `python bench/runtime.py` |"
    )
    cells = "; ".join(
        f"c={c}: {metrics[f'gateway_vs_direct_c{c}_output_tokens_per_s_ratio']:.2f}x output "
        f"tokens/s, p50 TTFT {metrics[f'gateway_vs_direct_c{c}_p50_ttft_ratio']:.2f}x "
        f"({metrics[f'gateway_c{c}_added_p50_ttft_ms']:+.1f} ms); per-round medians "
        f"{metrics[f'gateway_vs_direct_c{c}_output_tokens_per_s_ratio_median_of_rounds']:.2f}x, "
        f"{metrics[f'gateway_vs_direct_c{c}_p50_ttft_ratio_median_of_rounds']:.2f}x "
        f"({metrics[f'gateway_c{c}_added_p50_ttft_ms_median_of_rounds']:+.1f} ms)"
        for c in args.concurrency
    )
    base = ", ".join(
        f"c={c} {metrics[f'direct_c{c}_output_tokens_per_s']:.0f} tok/s, TTFT "
        f"{metrics[f'direct_c{c}_p50_ttft_ms']:.1f} ms"
        for c in args.concurrency
    )
    print(
        f"| runtime: gateway process + Ray worker vs bare vLLM (vllm bench serve, same engine, "
        f"{INPUT_TOKENS} in / {MAX_TOKENS} out, {args.rounds} interleaved rounds) | {cells} | bare vLLM: "
        f"{base} | `python bench/runtime.py` |"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per concurrency")
    parser.add_argument(
        "--concurrency",
        type=lambda v: tuple(int(x) for x in v.split(",")),
        default=CONCURRENCY,
        help="comma-separated client counts (default 1,4)",
    )
    raise SystemExit(main(parser.parse_args()))
