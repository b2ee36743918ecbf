"""``cunliang agent --join`` for real: a subprocess registers this machine with the
inventory admin API (FastAPI + SQLite over HTTP), runs ``ray start --address`` against
the test cluster's head, records the Ray node id, heartbeats, and on SIGTERM records
that it left. The raylet ``ray start`` spawned is ended by pid (never ``ray stop``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from scheduler.inventory.service import InventoryService
from scheduler.runtime.ray_backend import ray_nodes
from tests.cluster.conftest import RayCluster
from tests.inventory.served import served_inventory

TOKEN = "adm-cl-agent-join-test"
HOST = "joined-1"


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[tuple[str, InventoryService]]:
    with served_inventory(tmp_path, TOKEN) as served:
        yield served


def _spawned_ray_processes(temp_dir: str) -> list[psutil.Process]:
    """Processes of this cluster's temp dir that this test process did not start itself
    (the Cluster's own nodes are its children): the node ``ray start`` daemonised."""
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if temp_dir in cmdline and proc.pid not in mine and proc.pid != os.getpid():
            found.append(proc)
    return found


def _wait(
    what: str, check: Callable[[], bool], agent: subprocess.Popen[str], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            out = agent.stdout.read() if agent.stdout else ""
            raise AssertionError(f"agent exited ({agent.returncode}) before {what}:\n{out[-3000:]}")
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_agent_join_registers_starts_ray_and_heartbeats(
    ray_cluster: RayCluster, inventory: tuple[str, InventoryService], tmp_path: Path
) -> None:
    base, service = inventory
    before = {p.pid for p in _spawned_ray_processes(ray_cluster.temp_dir)}
    env = {**os.environ, "RAY_TMPDIR": ray_cluster.temp_dir, "CUNLIANG_DATA_DIR": str(tmp_path)}
    agent = subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli.main", "agent", "--join",
         ray_cluster.cluster.address, "--post", base, "--admin-token", TOKEN, "--site", "lab",
         "--host", HOST, "--profile", "none", "--num-cpus", "1", "--heartbeat-s", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        _wait(
            "the node registered with its Ray node id",
            lambda: any(n.host == HOST and n.ray_node_id for n in service.list_nodes()),
            agent,
            120,
        )
        node = service.get_node(HOST).node
        rows = [r for r in ray_nodes() if r["NodeID"] == node.ray_node_id]
        assert rows and rows[0]["Alive"]
        resources = rows[0]["Resources"]
        assert resources.get(f"cunliang_host:{HOST}") == 1.0
        classes = [k for k in resources if k.startswith("device_class:lab/")]
        assert len(classes) == 1 and resources[classes[0]] == 1.0, resources
        _wait("a heartbeat", lambda: service.get_node(HOST).node.health == "healthy", agent, 10)
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=30)
        assert agent.returncode == 0, out
        assert f"joined {ray_cluster.cluster.address} as {HOST}" in out
        assert service.get_node(HOST).node.ray_node_id is None, "leave recorded"
    finally:
        if agent.poll() is None:
            agent.kill()
        for proc in _spawned_ray_processes(ray_cluster.temp_dir):
            if proc.pid not in before:
                proc.kill()


def test_scheduler_service_serves_its_metrics(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """`cunliang scheduler` against the real cluster: its control loop ticks, it plans (an
    empty inventory: an empty plan), /metrics says so, and SIGTERM ends it with exit 0."""
    import httpx

    from scheduler.preflight import free_port

    db_url = f"sqlite:///{tmp_path / 'cunliang.db'}"
    env = {**os.environ, "RAY_TMPDIR": ray_cluster.temp_dir, "CUNLIANG_DATA_DIR": str(tmp_path)}
    cli = [sys.executable, "-m", "scheduler.cli.main", "--database-url", db_url]
    subprocess.run([*cli, "db", "upgrade"], check=True, env=env, capture_output=True, timeout=120)
    port = free_port()
    scheduler = subprocess.Popen(
        [*cli, "scheduler", "--ray-address", ray_cluster.cluster.address,
         "--metrics-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    metrics: dict[str, float] = {}

    def scraped() -> bool:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return False
        metrics.clear()
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                metrics[name] = float(value)
        return metrics.get('cunliang_scheduler_control_ticks_total{outcome="ok"}', 0) >= 2

    try:
        try:
            _wait("two control ticks on /metrics", scraped, scheduler, 120)
        except AssertionError:
            scheduler.kill()
            out = scheduler.communicate(timeout=10)[0]
            raise AssertionError(f"last scrape {metrics}; scheduler said:\n{out[-3000:]}") from None
        assert metrics["cunliang_scheduler_replans_total"] == 1, metrics
        assert metrics['cunliang_scheduler_control_ticks_total{outcome="error"}'] == 0
        assert metrics["cunliang_scheduler_last_replan_timestamp_seconds"] > time.time() - 300
        assert metrics["cunliang_scheduler_plan_yuan_per_hour"] == 0  # nothing admitted
        assert metrics["cunliang_scheduler_lost_hosts"] == 0
        scheduler.send_signal(signal.SIGTERM)
        out, _ = scheduler.communicate(timeout=30)
        assert scheduler.returncode == 0, out
        assert f"/metrics on 127.0.0.1:{port}" in out
    finally:
        if scheduler.poll() is None:
            scheduler.kill()
