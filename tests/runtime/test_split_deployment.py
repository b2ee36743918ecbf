"""The cluster deployment's processes: `cunliang db upgrade`, `cunliang gateway` routing from
the runtime table the scheduler publishes, and the tenant CLI — real subprocesses, real
SQLite, real HTTP, the real openai client (the engine is the fast fake upstream)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from scheduler.domain import Engine, Quant, Replica
from scheduler.preflight import free_port
from scheduler.runtime.publish import DbEndpointSink
from scheduler.runtime.reconciler import ReplicaState, ReplicaStatus
from scheduler.store.db import open_database
from tests.fakes.openai_upstream import FakeUpstream
from tests.fakes.servers import serve_in_thread

TOKEN = "adm-cl-split-deployment-test"
_CLI = (sys.executable, "-m", "scheduler.cli.main")


def _env(db_url: str) -> dict[str, str]:
    data_dir = db_url.removeprefix("sqlite:///").rsplit("/", 1)[0]
    return {**os.environ, "CUNLIANG_ADMIN_TOKEN": TOKEN, "CUNLIANG_DATA_DIR": data_dir}


def _cli(db_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*_CLI, "--database-url", db_url, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(db_url),
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_gateway_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    proc = _cli(f"sqlite:///{tmp_path / 'db'}", "gateway", "--port", str(free_port()), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "cunliang db upgrade" in proc.stderr


def test_scheduler_without_a_reachable_ray_cluster_is_a_one_line_error(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'cunliang.db'}"
    _cli(db_url, "db", "upgrade")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    proc = _cli(db_url, "scheduler", "--ray-address", address, "--metrics-port", "0", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert f"no Ray cluster reachable at '{address}'" in proc.stderr


def test_gateway_routes_what_the_scheduler_publishes(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'cunliang.db'}"
    out = _cli(db_url, "db", "upgrade").stdout
    assert "revision" in out
    port = free_port()
    gateway_url = f"http://127.0.0.1:{port}"
    with serve_in_thread(FakeUpstream(served_model="demo")) as upstream_url:
        db = open_database(db_url)
        replica = Replica("demo", Quant.BF16, "guian/tesla-t4", Engine.VLLM, yuan_per_hour=0.36)
        sink = DbEndpointSink(db.sessions)
        sink.publish([ReplicaStatus("demo.0", replica, ReplicaState.READY, base_url=upstream_url)])
        gateway = subprocess.Popen(
            [*_CLI, "--database-url", db_url, "gateway", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(db_url),
        )
        try:
            _wait_healthy(gateway_url, gateway)
            _cli(db_url, "tenant", "add", "acme", "--url", gateway_url)
            key = json.loads(
                _cli(db_url, "key", "create", "acme", "--url", gateway_url, "--json").stdout
            )
            client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=key["key"])
            resp = client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            assert resp.usage is not None and resp.usage.completion_tokens == 4
            # the scheduler drains the replica: the gateway stops routing to it
            sink.publish(
                [ReplicaStatus("demo.0", replica, ReplicaState.DRAINING, base_url=upstream_url)]
            )
            time.sleep(2.5)  # two refresh periods of the gateway's directory
            with pytest.raises(openai.InternalServerError) as err:
                client.chat.completions.create(
                    model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=4
                )
            assert err.value.status_code == 503
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
            db.dispose()


def _wait_healthy(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("gateway did not become healthy")
