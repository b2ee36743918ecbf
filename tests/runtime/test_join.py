"""``agent --join`` pieces: the ray start command, class resources, and the inventory
admin API for real (FastAPI + SQLite served over HTTP, httpx client)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from scheduler.errors import CunliangError
from scheduler.inventory.service import InventoryService
from scheduler.runtime.join import (
    InventoryApi,
    LocalDevice,
    class_resources,
    join,
    node_id_from_rows,
    ray_start_argv,
)
from tests.inventory.served import served_inventory

TOKEN = "adm-cl-join-test"
CPU = LocalDevice(
    "Xeon Gold 6248",
    1,
    {"model": "Xeon Gold 6248", "kind": "cpu", "memory_bytes": 64 * 2**30},
)
T4 = LocalDevice("Tesla T4", 2, {"model": "Tesla T4", "kind": "gpu", "count": 2})


def test_class_resources_use_snapshot_ids() -> None:
    assert class_resources("guian", [CPU, T4, T4]) == {
        "device_class:guian/xeon-gold-6248": 1.0,
        "device_class:guian/tesla-t4": 4.0,
    }


def test_ray_start_argv_joins_or_starts_a_head() -> None:
    argv = ray_start_argv(
        "10.0.0.1:6379", {"device_class:g/t4": 2}, "gpu-7", num_cpus=8, python="py"
    )
    assert argv[:6] == ["py", "-m", "ray.scripts.scripts", "start", "--address", "10.0.0.1:6379"]
    resources = json.loads(argv[argv.index("--resources") + 1])
    assert resources == {"device_class:g/t4": 2, "cunliang_host:gpu-7": 1.0}
    assert argv[-2:] == ["--num-cpus", "8"]
    assert ray_start_argv("head", {}, "h", temp_dir="/tmp/r")[4:5] == ["--head"]
    assert ray_start_argv("head", {}, "h", temp_dir="/tmp/r")[-2:] == ["--temp-dir", "/tmp/r"]


def test_node_id_is_the_live_node_with_the_host_resource() -> None:
    rows = [
        {"NodeID": "dead", "Alive": False, "Resources": {"cunliang_host:h": 1}},
        {"NodeID": "other", "Alive": True, "Resources": {"cunliang_host:x": 1}},
        {"NodeID": "live", "Alive": True, "Resources": {"cunliang_host:h": 1}},
    ]
    assert node_id_from_rows(rows, "h") == "live"
    assert node_id_from_rows(rows, "nope") is None


@pytest.fixture
def inventory_url(tmp_path: Path) -> Iterator[tuple[str, InventoryService]]:
    with served_inventory(tmp_path, TOKEN) as served:
        yield served


class Runner:
    def __init__(self, status: int = 0, output: str = "Ray runtime started.") -> None:
        self.calls: list[list[str]] = []
        self.status, self.output = status, output

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.calls.append(list(argv))
        return self.status, self.output


def test_join_registers_once_starts_ray_and_records_the_node(
    inventory_url: tuple[str, InventoryService],
) -> None:
    base, service = inventory_url
    with httpx.Client() as client:
        api = InventoryApi(client, base, TOKEN)
        runner = Runner()
        first = join(api, runner, address="head:6379", host="w1", site="lab", devices=[CPU])
        again = join(api, runner, address="head:6379", host="w1", site="lab", devices=[CPU])
        assert first.registered and not again.registered, "re-joining keeps the registration"
        assert runner.calls[0][3:6] == ["start", "--address", "head:6379"]
        api.set_ray_node("w1", "abc123")
        api.health("w1", True, "agent heartbeat")
    node = service.get_node("w1").node
    assert node.ray_node_id == "abc123" and node.health == "healthy" and node.devices == 1


def test_join_reports_a_failed_ray_start_and_a_bad_token(
    inventory_url: tuple[str, InventoryService],
) -> None:
    base, _ = inventory_url
    with httpx.Client() as client:
        failing = Runner(1, "ConnectionError: could not reach GCS at head:6379")
        with pytest.raises(CunliangError, match=r"exit 1.*could not reach GCS"):
            join(
                InventoryApi(client, base, TOKEN),
                failing,
                address="head:6379",
                host="w2",
                site="lab",
                devices=[CPU],
            )
        with pytest.raises(CunliangError, match=r"HTTP 40[13]"):
            InventoryApi(client, base, "wrong").register("w3", "lab", [CPU])
