"""Runtime benchmark: node loss -> restored capacity, and gateway + Ray worker vs bare vLLM.

A real two-worker Ray cluster on this machine (``ray.cluster_utils.Cluster``, private
``RAY_TMPDIR``), the scheduler's runtime (node watcher, controller, reconciler,
RayLauncher) and the real gateway, one vLLM CPU replica of the generated demo model.

* end to end: the same requests at concurrency 1 and 4, three interleaved rounds
  (medians), straight to the engine's own OpenAI server (the baseline: bare vLLM) and
  through the gateway (which routes to that engine); ratio of throughput and added
  median latency. The gateway runs in a thread of this process, sharing the GIL with
  the load generator: its overhead here is an upper bound;
* node loss: the worker node holding the replica is killed; measured: until the watcher
  reports it lost, until the replacement is started on the other node, until it serves
  (restored capacity); baseline: the cold start of the first replica in the same run.

    PYTHONPATH=$PWD .venv/bin/python bench/runtime.py
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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


def _load(url: str, headers: dict[str, str], clients: int) -> dict[str, float]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "count to ten"}],
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
    }
    latencies: list[float] = []
    tokens = 0

    def one_client() -> None:
        nonlocal tokens
        with httpx.Client(timeout=120) as client:
            for _ in range(REQUESTS_PER_CLIENT):
                t0 = time.perf_counter()
                r = client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)
                tokens += int(r.json()["usage"]["completion_tokens"])

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(one_client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - started
    return {
        "requests_per_s": len(latencies) / wall,
        "output_tokens_per_s": tokens / wall,
        "p50_ms": statistics.median(latencies) * 1000,
    }


def _wait(check: Callable[[], bool], timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if check():
            return time.monotonic() - t0
        time.sleep(0.2)
    raise TimeoutError(f"not within {timeout_s} s")


def main() -> int:
    import ray
    from ray.cluster_utils import Cluster

    from scheduler.catalog import arch_from_hf_config
    from scheduler.gateway.app import create_app
    from scheduler.gateway.replicas import ReplicaTable
    from scheduler.runtime.actors import vllm_actor_args
    from scheduler.runtime.controller import Controller
    from scheduler.runtime.liveness import NodeWatcher, host_resource
    from scheduler.runtime.publish import TableEndpointSink
    from scheduler.runtime.ray_backend import (
        NAMESPACE,
        RayLauncher,
        device_class_resource,
        ray_nodes,
    )
    from scheduler.runtime.reconciler import Reconciler, ReconcilerLoop, ReplicaState
    from scheduler.settings import Settings
    from scheduler.store.tenancy import session_factory
    from scheduler.tenancy import TenancyService
    from tests.fakes.servers import serve_in_thread
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
    try:
        table = ReplicaTable()
        launcher = RayLauncher(ReplicaActor, vllm_actor_args(settings, lambda: {MODEL: spec}))
        reconciler = Reconciler(launcher, TableEndpointSink(table))

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

        sessions = session_factory(f"sqlite:///{data_dir / 'gw.db'}", create_tables=True)
        tenancy = TenancyService(sessions)
        tenancy.create_tenant("bench")
        key = tenancy.create_key("bench").secret
        app = create_app(settings, tenancy, table, admin_token=ADMIN)

        def ready() -> bool:
            st = reconciler.statuses()
            return len(st) == 1 and st[0].state is ReplicaState.READY

        with serve_in_thread(app) as gateway_url:
            t0 = time.monotonic()
            watcher.tick()
            controller.tick()
            loop.start()
            threading.Thread(target=control, daemon=True).start()
            _wait(ready, 600)
            metrics["cold_start_s"] = time.monotonic() - t0
            engine_url = reconciler.statuses()[0].base_url or ""
            auth = {"Authorization": f"Bearer {key}"}
            _load(engine_url, {}, 1)  # warm-up
            for c in CONCURRENCY:
                rounds: dict[str, list[dict[str, float]]] = {"direct": [], "gateway": []}
                for _ in range(3):  # interleaved: both see the same background load
                    rounds["direct"].append(_load(engine_url, {}, c))
                    rounds["gateway"].append(_load(gateway_url, auth, c))
                for path, results in rounds.items():
                    for name in ("requests_per_s", "output_tokens_per_s", "p50_ms"):
                        value = statistics.median(r[name] for r in results)
                        metrics[f"{path}_c{c}_{name.replace('_ms', '_latency_ms')}"] = value
                metrics[f"gateway_vs_direct_c{c}_throughput_ratio"] = (
                    metrics[f"gateway_c{c}_requests_per_s"] / metrics[f"direct_c{c}_requests_per_s"]
                )
                metrics[f"gateway_c{c}_added_p50_latency_ms"] = (
                    metrics[f"gateway_c{c}_p50_latency_ms"] - metrics[f"direct_c{c}_p50_latency_ms"]
                )

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
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]
        shutil.rmtree(ray_dir, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
    load = os.getloadavg()
    out = write_result(
        "runtime",
        metrics,
        notes=f"2 cores shared with other jobs; load average at the end {load[0]:.1f}",
    )
    for k, v in metrics.items():
        print(f"{k:45s} {v:10.2f}")
    print(f"wrote {out}")
    c_hi = CONCURRENCY[-1]
    print(
        f"| runtime: node loss -> restored capacity (real 2-node Ray, vLLM CPU demo model) | "
        f"lost detected {metrics['node_loss_detect_s']:.1f} s, replacement started "
        f"{metrics['node_loss_replaced_s']:.1f} s, serving again "
        f"{metrics['node_loss_restored_s']:.0f} s | baseline cold start "
        f"{metrics['cold_start_s']:.0f} s (ratio {metrics['restored_vs_cold_start_ratio']:.2f}) "
        f"| `python bench/runtime.py` |"
    )
    print(
        f"| runtime: gateway + Ray worker vs bare vLLM (same engine, {MAX_TOKENS} tokens) | "
        f"c=1 {metrics['gateway_vs_direct_c1_throughput_ratio']:.2f}x throughput, "
        f"+{metrics['gateway_c1_added_p50_latency_ms']:.1f} ms p50; c={c_hi} "
        f"{metrics[f'gateway_vs_direct_c{c_hi}_throughput_ratio']:.2f}x, "
        f"+{metrics[f'gateway_c{c_hi}_added_p50_latency_ms']:.1f} ms p50 | bare vLLM "
        f"c={c_hi} {metrics[f'direct_c{c_hi}_requests_per_s']:.2f} req/s | "
        f"`python bench/runtime.py` |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
