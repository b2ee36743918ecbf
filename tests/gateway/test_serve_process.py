"""The serving process's own settings: CPU pinning (CUNLIANG_GATEWAY_CPUS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from scheduler.errors import ConfigError
from scheduler.gateway.serve import pin_process
from scheduler.settings import Settings, parse_cpu_list
from scheduler.store.tenancy import session_factory
from tests.fakes.servers import free_port
from tests.gateway.test_durability import REPO, start_gateway


def test_parses_cpu_lists_as_taskset_does() -> None:
    assert parse_cpu_list("1") == {1}
    assert parse_cpu_list("0-3") == {0, 1, 2, 3}
    assert parse_cpu_list("2-3, 6") == {2, 3, 6}
    for bad in ("", "x", "3-1", "-1", "1-", "1,,2", "0-4000000000"):
        with pytest.raises(ValueError, match="not a cpu-list"):
            parse_cpu_list(bad)
    with pytest.raises(ValidationError, match="not a cpu-list"):  # at start, from the env
        Settings(gateway_cpus="one")


def test_refuses_cpus_the_process_may_not_use() -> None:
    beyond = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(ConfigError, match="not all among"):
        pin_process({beyond})


def _affinities(pid: int) -> list[set[int]]:
    return [os.sched_getaffinity(int(t)) for t in os.listdir(f"/proc/{pid}/task")]


def test_gateway_process_runs_on_the_cpus_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replicas = tmp_path / "replicas.json"
    replica = {
        "id": "r0", "model": "m", "engine_model": "m", "base_url": "http://127.0.0.1:9",
        "quant": "fp32", "device_class": "cpu", "site": "local", "yuan_per_hour": 1.0,
        "state": "ready",
    }  # fmt: skip
    replicas.write_text(json.dumps([replica]))  # /healthz answers 200 with a ready replica
    session_factory(f"sqlite:///{tmp_path / 'gw.db'}", create_tables=True)
    cpu = min(os.sched_getaffinity(0))
    monkeypatch.setenv("CUNLIANG_GATEWAY_CPUS", str(cpu))
    gateway = start_gateway(tmp_path, free_port(), replicas)
    try:
        threads = _affinities(gateway.pid)
        assert len(threads) > 1  # the event loop and its helper threads, all of them
        assert all(a == {cpu} for a in threads)
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)


def test_a_malformed_cpu_list_stops_the_gateway_with_one_line(tmp_path: Path) -> None:
    replicas = tmp_path / "replicas.json"
    replicas.write_text("[]")
    done = subprocess.run(
        [sys.executable, "-m", "scheduler.gateway.serve", "--replicas", str(replicas)],
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "CUNLIANG_DATA_DIR": str(tmp_path / "data"),
            "CUNLIANG_DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}",
            "CUNLIANG_ADMIN_TOKEN": "adm-cl-cpus",
            "CUNLIANG_GATEWAY_CPUS": "one",
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "gateway_cpus 'one' is not a cpu-list" in lines[0], lines
