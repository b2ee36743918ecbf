"""Faults and draining on a real multi-node Ray cluster with real vLLM engines.

Three worker nodes advertise three device classes (see conftest). The runtime under test
is the scheduler's: node watcher (``ray.nodes()``) -> real inventory health records,
controller (lost hosts taken out of the fleet) -> reconciler -> RayLauncher with
detached named actors -> vLLM CPU engines, published to the real gateway, which tenants
call with the real ``openai`` client. The planner is a deterministic spread (two
replicas over the live classes, keeping running ones): the MILP's choice is not what is
tested here. The tests run in file order and share the cluster:

1. an engine SIGKILLed -> restarted with backoff; no request fails meanwhile;
2. a scheduler restart adopts the running replicas (no duplicate actors, same engines);
3. a whole Ray node lost -> inventory marks it unhealthy, then quarantined; its replica
   re-placed on the remaining class within 30 s;
4. `cunliang node drain` (the real CLI, on the inventory database) under a stream of
   concurrent requests -> the inventory marks the node's devices draining, the controller's
   snapshot drops it, the replacement starts first and the drained replica stops after; no
   request fails; every request has a usage record.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from sqlalchemy import func, select

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
from scheduler.runtime.reconciler import Reconciler, ReconcilerLoop, ReplicaState, ReplicaStatus
from tests.cluster.conftest import WORKERS, RayCluster

pytestmark = pytest.mark.engine

MODEL = "demo"
SITE = Site("lab", "test")
ADMIN = "adm-cl-cluster-test"


def _fleet(hosts: Sequence[str]) -> Fleet:
    classes = tuple(
        DeviceClass(
            id=WORKERS[h][0],
            site=SITE,
            spec=DeviceSpec(model=f"cpu-{h}", kind=DeviceKind.CPU),
            count=WORKERS[h][1],
            per_node=WORKERS[h][1],
            node_ids=(h,),
        )
        for h in hosts
    )
    return Fleet(sites=(SITE,), classes=classes)


def spread_planner(replicas: int) -> Callable[..., Plan]:
    """Keep current replicas on classes still in the fleet, fill up in fleet order."""

    def plan(
        fleet: Fleet, _d: Sequence[Demand], _m: Mapping[str, ModelSpec], current: Plan | None
    ) -> Plan:
        free = {c.id: c.count for c in fleet.classes}
        hosts = {c.id: c.node_ids[0] for c in fleet.classes}
        chosen: list[Replica] = []
        for r in current.replicas if current else ():
            if free.get(r.device_class_id, 0) > 0 and len(chosen) < replicas:
                free[r.device_class_id] -= 1
                chosen.append(r)
        # one per class first, then a second on the classes with room
        for _round in range(2):
            for cls in fleet.classes:
                used = sum(r.device_class_id == cls.id for r in chosen)
                if len(chosen) < replicas and free[cls.id] > 0 and used <= _round:
                    free[cls.id] -= 1
                    chosen.append(_replica(cls.id, hosts[cls.id]))
        return Plan(PlanStatus.OPTIMAL, tuple(chosen))

    return plan


def _replica(class_id: str, host: str) -> Replica:
    return Replica(
        MODEL,
        Quant.FP32,
        class_id,
        Engine.VLLM_CPU,
        node_id=host,
        dtype="float32",
        yuan_per_hour=0.1,
    )


@dataclass
class World:
    """The controller's snapshot: the test's device classes, minus the hosts the real
    inventory says are draining (``cunliang node drain``)."""

    spec: ModelSpec
    inventory: Any = None

    def drained(self) -> set[str]:
        return {n.host for n in self.inventory.list_nodes() if n.states.get("draining")}

    def snapshot(self) -> tuple[Fleet, tuple[Demand, ...], dict[str, ModelSpec]]:
        drained = self.drained()
        return _fleet([h for h in WORKERS if h not in drained]), (), {MODEL: self.spec}


@dataclass
class Stack:
    world: World
    reconciler: Reconciler
    loop: ReconcilerLoop
    controller: Any
    watcher: Any
    inventory: Any
    gateway_url: str
    api_key: str
    usage_sessions: Any
    launcher_factory: Callable[[], Any]
    stop_ticker: threading.Event
    db_url: str

    def by_host(self) -> dict[str, list[ReplicaStatus]]:
        out: dict[str, list[ReplicaStatus]] = {}
        for s in self.reconciler.statuses():
            out.setdefault(s.replica.node_id or "", []).append(s)
        return out

    def client(self) -> openai.OpenAI:
        # a generous timeout: on two cores an engine reloading next door slows the others
        # a lot; a request still in flight when the traffic stops is reported as hung
        return openai.OpenAI(
            base_url=f"{self.gateway_url}/v1", api_key=self.api_key, max_retries=0, timeout=300
        )


# an engine (re)start: ~75 s alone on two cores, over 200 s while other jobs load the machine
ENGINE_START_S = 420


def wait_for(what: str, check: Callable[[], bool], timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def all_ready(stack: Stack, n: int) -> Callable[[], bool]:
    def check() -> bool:
        st = stack.reconciler.statuses()
        return len(st) == n and all(s.state is ReplicaState.READY for s in st)

    return check


@pytest.fixture(scope="module")
def stack(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    import ray

    from scheduler.catalog import arch_from_hf_config
    from scheduler.gateway.app import create_app
    from scheduler.gateway.replicas import ReplicaTable
    from scheduler.inventory.schemas import DeviceIn, NodeIn, ProfileIn, SiteIn
    from scheduler.inventory.service import InventoryService
    from scheduler.runtime.actors import vllm_actor_args
    from scheduler.runtime.controller import Controller
    from scheduler.runtime.liveness import InventoryHealth, NodeWatcher
    from scheduler.runtime.load import EngineLoad
    from scheduler.runtime.publish import TableEndpointSink
    from scheduler.runtime.ray_backend import RayLauncher
    from scheduler.settings import Settings
    from scheduler.store.db import open_database, upgrade
    from scheduler.store.tenancy import session_factory
    from scheduler.tenancy import TenancyService
    from tests.fakes.servers import serve_in_thread
    from workers.actor import ReplicaActor
    from workers.demo_model import ensure_demo_model

    # several engines share this machine's cores here (one per machine in production):
    # vLLM's auto binding would pin every one of them to the same core, and unbound
    # two-thread OpenMP pools in three engines on two cores spin on each other's barriers
    # (seconds per step under load), so each engine computes on one thread
    previous_env = {k: os.environ.get(k) for k in ("VLLM_CPU_OMP_THREADS_BIND", "OMP_NUM_THREADS")}
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    os.environ["OMP_NUM_THREADS"] = "1"
    data_dir = tmp_path_factory.mktemp("cluster")
    model_dir = ensure_demo_model(data_dir)
    import json

    arch = arch_from_hf_config(json.loads((model_dir / "config.json").read_text()), MODEL)
    spec = ModelSpec(MODEL, str(model_dir), arch, allowed_quants=(Quant.FP32,))
    world = World(spec)
    settings = Settings(data_dir=data_dir, max_model_len=256, kv_cache_gib=1)

    db_url = f"sqlite:///{data_dir / 'inventory.db'}"
    upgrade(db_url)
    database = open_database(db_url)
    inventory = InventoryService(database)
    inventory.add_site(
        SiteIn(name="lab", region="test", tariff_yuan_per_kwh=0.6, pue=1.5), actor="test"
    )
    for host in WORKERS:
        inventory.register_node(
            NodeIn(
                host=host,
                site="lab",
                devices=[DeviceIn(model="Xeon Gold 6248", memory_bytes=64 * 2**30)],
            ),
            actor="test",
        )
        # a profile takes the node off "registered" (probation), so it can be drained
        inventory.add_profile(
            host,
            ProfileIn(reference_model=MODEL, output_tokens_per_s=50.0, watts=150.0),
            actor="test",
        )
    world.inventory = inventory

    def launcher() -> RayLauncher:
        return RayLauncher(
            ReplicaActor, vllm_actor_args(settings, lambda: {MODEL: spec}), detached=True
        )

    table = ReplicaTable()
    holder: dict[str, Reconciler] = {}
    load = EngineLoad(lambda rid: holder["r"].base_url_of(rid))
    reconciler = Reconciler(
        launcher(), TableEndpointSink(table), outstanding=load, drain_grace_s=2.0
    )
    holder["r"] = reconciler
    watcher = NodeWatcher(ray.nodes, InventoryHealth(inventory), report_every_s=1.0)
    controller = Controller(world.snapshot, spread_planner(2), reconciler, lost_hosts=watcher.lost)
    loop = ReconcilerLoop(reconciler, interval_s=0.5)

    stop = threading.Event()

    def ticker() -> None:  # the scheduler service's outer loop, at test speed
        while not stop.wait(0.5):
            try:
                watcher.tick()
                controller.tick()
            except Exception as exc:  # keep ticking; the test's waits report the symptom
                print(f"ticker: {exc}")

    usage_sessions = session_factory(f"sqlite:///{data_dir / 'gw.db'}", create_tables=True)
    tenancy = TenancyService(usage_sessions)
    tenancy.create_tenant("acme")
    key = tenancy.create_key("acme").secret
    app = create_app(settings, tenancy, table, admin_token=ADMIN)
    with serve_in_thread(app) as url:
        watcher.tick()
        controller.tick()
        loop.start()
        thread = threading.Thread(target=ticker, daemon=True)
        thread.start()
        s = Stack(
            world,
            reconciler,
            loop,
            controller,
            watcher,
            inventory,
            url,
            key,
            usage_sessions,
            launcher,
            stop,
            db_url,
        )
        try:
            yield s
        finally:
            stop.set()
            thread.join(timeout=10)
            s.loop.stop()
            s.reconciler.stop_all()
            database.dispose()
            for name, value in previous_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


class Traffic:
    """``clients`` threads calling the gateway until stopped; every outcome recorded."""

    def __init__(self, stack: Stack, clients: int, *, stream: bool) -> None:
        self._stack = stack
        self._stream = stream
        self._stop = threading.Event()
        self.ok = 0
        self.errors: list[str] = []
        self.slowest_s = 0.0  # the longest request, failed or not
        self.in_flight = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=330)
        if self.in_flight:
            self.errors.append(f"{self.in_flight} request(s) still in flight after 330 s")

    def _run(self) -> None:
        client = self._stack.client()
        messages: Any = [{"role": "user", "content": "count to ten"}]
        while not self._stop.is_set():
            started = time.monotonic()
            with self._lock:
                self.in_flight += 1
            try:
                if self._stream:
                    chunks = client.chat.completions.create(
                        model=MODEL,
                        messages=messages,
                        max_tokens=16,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    usage = [c.usage for c in chunks if c.usage is not None]
                    assert usage and usage[0].completion_tokens > 0, "stream without usage"
                else:
                    resp = client.chat.completions.create(
                        model=MODEL, messages=messages, max_tokens=8
                    )
                    assert resp.usage is not None and resp.usage.completion_tokens > 0
                with self._lock:
                    self.ok += 1
            except Exception as exc:
                took = time.monotonic() - started
                with self._lock:
                    self.errors.append(f"{type(exc).__name__} after {took:.1f} s: {str(exc)[:200]}")
            finally:
                with self._lock:
                    self.in_flight -= 1
                    self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            time.sleep(0.1)  # two cores: leave the engines room to (re)load


def usage_count(stack: Stack, status: int = 200) -> int:
    from scheduler.store.tenancy import UsageRow

    with stack.usage_sessions() as session:
        return int(
            session.scalar(select(func.count(UsageRow.id)).where(UsageRow.status == status)) or 0
        )


def engine_pid(replica_id: str) -> int:
    import ray

    from scheduler.runtime.ray_backend import NAMESPACE

    info = ray.get(ray.get_actor(replica_id, namespace=NAMESPACE).info.remote(), timeout=10)
    return int(info["pid"])


def api_server_pid(group: int) -> int:
    """The vLLM OpenAI server process inside an engine's process group."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or ())
            # the supervisor's own command line names the server too: skip it
            if (
                os.getpgid(proc.pid) == group
                and "vllm.entrypoints.openai.api_server" in cmdline
                and "workers.supervise" not in cmdline
            ):
                return int(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    raise AssertionError(f"no vLLM API server in process group {group}")


def test_replicas_start_on_both_workers(stack: Stack) -> None:
    took = wait_for("two ready replicas", all_ready(stack, 2), ENGINE_START_S)
    assert sorted(stack.by_host()) == ["node-a", "node-b"]
    resp = stack.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert resp.usage is not None and resp.usage.completion_tokens == 4
    print(f"two engines ready in {took:.0f} s")


def test_engine_sigkill_restarts_with_backoff_and_no_request_fails(stack: Stack) -> None:
    (victim,) = stack.by_host()["node-b"]
    pid = engine_pid(victim.id)
    server = api_server_pid(pid)
    before, cut_before = usage_count(stack), usage_count(stack, status=502)
    with (
        Traffic(stack, clients=1, stream=False) as traffic,
        Traffic(stack, clients=1, stream=True) as streams,
    ):
        time.sleep(2)
        os.kill(server, signal.SIGKILL)
        wait_for(
            "the killed replica to fail",
            lambda: any(
                s.id == victim.id and (s.restarts >= 1 or s.state is ReplicaState.FAILED)
                for s in stack.reconciler.statuses()
            ),
            30,
        )
        took = wait_for("the replica restarted and ready", all_ready(stack, 2), ENGINE_START_S)
        time.sleep(1)
    (after,) = [s for s in stack.reconciler.statuses() if s.id == victim.id]
    assert after.restarts == 1 and after.state is ReplicaState.READY
    assert engine_pid(victim.id) != pid
    # not yet answering: retried on the other replica, so no non-streaming request fails
    assert traffic.errors == [], traffic.errors[:5]
    assert traffic.ok > 0 and streams.ok > 0
    ok = traffic.ok + streams.ok
    wait_for("usage of every request", lambda: usage_count(stack) - before >= ok, 15)
    # a stream cut mid-way ends in an error for the client and a 502 usage record
    cut = usage_count(stack, status=502) - cut_before
    assert cut == len(streams.errors), (cut, streams.errors[:3])
    print(
        f"engine restart: ready again {took:.0f} s after failure; {ok} requests ok, "
        f"{cut} streams cut mid-way (recorded as 502); slowest request "
        f"{max(traffic.slowest_s, streams.slowest_s):.1f} s"
    )


def test_scheduler_restart_adopts_replicas_without_duplicates(
    stack: Stack, ray_cluster: RayCluster
) -> None:
    """A second scheduler process on the same plan adopts the named detached actors."""
    import json
    import subprocess
    import sys

    import ray

    from scheduler.runtime.ray_backend import replica_to_info

    before = {s.id: engine_pid(s.id) for s in stack.reconciler.statuses()}
    actors_before = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True))
    plan = json.dumps([replica_to_info(r) for r in stack.controller.plan.replicas])
    env = {**os.environ, "RAY_TMPDIR": ray_cluster.temp_dir}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.cluster.restarted_scheduler",
         ray_cluster.cluster.address, plan],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["adopted"] == sorted(before) and result["started"] == []
    assert result["ready"] == sorted(before)
    assert {rid: engine_pid(rid) for rid in before} == before, "same engines"
    actors_after = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True))
    assert actors_after == actors_before, "no duplicate replica actors"


def test_lost_node_is_replaced_within_30s_and_quarantined(
    stack: Stack, ray_cluster: RayCluster
) -> None:
    lost_at = time.monotonic()
    ray_cluster.remove("node-b")
    replaced = wait_for(
        "a replica placed on node-c",
        lambda: "node-c" in stack.by_host() and "node-b" not in stack.by_host(),
        30,
    )
    assert "node-b" in stack.watcher.lost()
    took = wait_for("capacity restored (two ready)", all_ready(stack, 2), ENGINE_START_S)
    node = stack.inventory.get_node("node-b").node
    assert node.health == "unhealthy"
    wait_for(
        "node-b quarantined after repeated failures",
        lambda: stack.inventory.get_node("node-b").node.states.get("quarantined", 0) == 1,
        15,
    )
    print(
        f"node loss: replica re-placed after {replaced:.1f} s, capacity restored after "
        f"{time.monotonic() - lost_at:.0f} s (engine load {took:.0f} s)"
    )


def test_drain_moves_replicas_first_and_loses_no_request(stack: Stack) -> None:
    before, cut_before = usage_count(stack), usage_count(stack, status=502)
    (drained,) = stack.by_host()["node-a"]
    with Traffic(stack, clients=2, stream=True) as traffic:
        time.sleep(3)
        drain = subprocess.run(
            [sys.executable, "-m", "scheduler.cli.main", "--database-url", stack.db_url,
             "node", "drain", "node-a", "--reason", "hardware maintenance"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert drain.returncode == 0, drain.stderr
        assert "node node-a: 1 device(s) -> draining" in drain.stdout
        wait_for(
            "the drained replica held while its replacement starts",
            lambda: drained.id in stack.reconciler.held(),
            10,
        )
        wait_for(
            "both replicas on node-c and the drained one stopped",
            lambda: sorted(stack.by_host()) == ["node-c"] and all_ready(stack, 2)(),
            ENGINE_START_S,
        )
        time.sleep(2)
    assert traffic.errors == [], traffic.errors[:5]
    assert traffic.ok > 0
    wait_for("usage of every request", lambda: usage_count(stack) - before >= traffic.ok, 15)
    assert usage_count(stack, status=502) == cut_before, "no stream cut by the drain"
    (audit,) = [a for a in stack.inventory.get_node("node-a").audit if a.to_state == "draining"]
    assert audit.reason == "hardware maintenance"
    print(f"drain: {traffic.ok} streamed requests, none failed; slowest {traffic.slowest_s:.1f} s")
