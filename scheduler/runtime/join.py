"""Joining a machine to the cluster: ``cunliang agent --join ADDRESS``.

Steps (each a small function; the I/O behind ``InventoryApi`` and ``CommandRunner``):

1. register the node with the inventory (``POST /admin/v1/nodes``; an existing
   registration is kept: re-joining is idempotent);
2. ``ray start --address ADDRESS --resources {...}`` advertising one
   ``device_class:<site>/<model slug>`` resource per device class of this machine (the
   ids ``scheduler/inventory/snapshot.py`` builds) plus ``cunliang_host:<host>`` (how the
   scheduler's node watcher names the machine);
3. record the Ray node id (``PUT /admin/v1/nodes/<host>/ray``);
4. (the CLI then profiles the machine and posts the profile: admission)
5. heartbeat ``POST /admin/v1/nodes/<host>/health`` while the local raylet lives.

Class ids here are the plain ``<site>/<model slug>``; a site holding one model in two
memory sizes gets suffixed ids in the snapshot (``-<GiB>g-x<n>``), which an agent cannot
know alone: register such machines with ``--device-class`` overrides.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from scheduler.errors import CunliangError
from scheduler.fleetfile import slug
from scheduler.runtime.liveness import host_resource
from scheduler.runtime.ray_backend import device_class_resource


class HttpResponse(Protocol):
    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...


class HttpClient(Protocol):
    """The slice of ``httpx.Client`` the agent needs."""

    def request(
        self, method: str, url: str, *, json: Any, headers: Mapping[str, str], timeout: float
    ) -> HttpResponse: ...


class CommandRunner(Protocol):
    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        """Run a command to completion: (exit status, combined output)."""


@dataclass(frozen=True)
class LocalDevice:
    """One device group of this machine as the inventory registers it."""

    model: str
    count: int
    body: Mapping[str, Any]  # the DeviceIn JSON


def class_resources(site: str, devices: Sequence[LocalDevice]) -> dict[str, float]:
    """``{"device_class:<site>/<model slug>": count}`` summed per class."""
    out: dict[str, float] = {}
    for d in devices:
        key = device_class_resource(f"{site}/{slug(d.model)}")
        out[key] = out.get(key, 0.0) + d.count
    return out


def ray_start_argv(
    address: str,
    resources: Mapping[str, float],
    host: str,
    *,
    num_cpus: int | None = None,
    temp_dir: str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The ``ray start`` command (Ray's CLI module under this interpreter: the console
    script need not be on PATH); ``address == "head"`` starts a head node instead."""
    advertised = {**resources, host_resource(host): 1.0}
    argv = [python, "-m", "ray.scripts.scripts", "start"]
    argv += ["--head"] if address == "head" else ["--address", address]
    argv += ["--resources", json.dumps(advertised, sort_keys=True)]
    if num_cpus is not None:
        argv += ["--num-cpus", str(num_cpus)]
    if temp_dir:
        argv += ["--temp-dir", temp_dir]
    return argv


def node_id_from_rows(rows: Sequence[Mapping[str, Any]], host: str) -> str | None:
    """The live Ray node advertising ``cunliang_host:<host>`` (``ray.nodes()`` rows)."""
    for row in rows:
        if row.get("Alive") and host_resource(host) in (row.get("Resources") or {}):
            return str(row["NodeID"])
    return None


class InventoryApi:
    """The inventory's admin API over an injected HTTP client."""

    def __init__(self, client: HttpClient, base_url: str, admin_token: str) -> None:
        self._client = client
        self._base = base_url.rstrip("/") + "/admin/v1"
        self._headers = {"Authorization": f"Bearer {admin_token}"}

    def _call(self, method: str, path: str, body: Any, ok: tuple[int, ...] = ()) -> Any:
        try:
            response = self._client.request(
                method, self._base + path, json=body, headers=self._headers, timeout=30.0
            )
        except httpx.HTTPError as exc:
            raise CunliangError(
                f"{method} {self._base + path} failed: {exc}",
                fix="check the inventory URL (--post) and that the gateway runs",
            ) from exc
        if 200 <= response.status_code < 300 or response.status_code in ok:
            return json.loads(response.text) if response.text else {}
        raise CunliangError(
            f"{method} {self._base + path} failed: HTTP {response.status_code} "
            f"{response.text[:300]}",
            fix="check the inventory URL and the admin token",
        )

    def register(self, host: str, site: str, devices: Sequence[LocalDevice]) -> bool:
        """Register the node; False when it was registered already (kept as it is)."""
        body = {"host": host, "site": site, "devices": [dict(d.body) for d in devices]}
        answer = self._call("POST", "/nodes", body, ok=(409,))
        return "host" in answer

    def set_ray_node(self, host: str, ray_node_id: str | None) -> None:
        self._call("PUT", f"/nodes/{host}/ray", {"ray_node_id": ray_node_id})

    def health(self, host: str, healthy: bool, detail: str) -> None:
        self._call("POST", f"/nodes/{host}/health", {"healthy": healthy, "detail": detail})


@dataclass(frozen=True)
class JoinResult:
    host: str
    registered: bool  # False: the inventory knew the node already
    resources: Mapping[str, float]
    ray_output: str


def join(
    inventory: InventoryApi,
    run: CommandRunner,
    *,
    address: str,
    host: str,
    site: str,
    devices: Sequence[LocalDevice],
    num_cpus: int | None = None,
    temp_dir: str | None = None,
    python: str = sys.executable,
) -> JoinResult:
    """Register, then start the Ray node. Raises CunliangError when ``ray start`` fails."""
    if not devices:
        raise CunliangError("no device found on this machine to join with.")
    registered = inventory.register(host, site, devices)
    resources = class_resources(site, devices)
    argv = ray_start_argv(
        address, resources, host, num_cpus=num_cpus, temp_dir=temp_dir, python=python
    )
    status, output = run(argv)
    if status != 0:
        tail = output.strip().splitlines()[-3:]
        raise CunliangError(
            f"`ray start {' '.join(argv[4:6])} ...` failed (exit {status}): {' / '.join(tail)}",
            fix="check that ADDRESS is the Ray head's host:port and reachable from here",
        )
    return JoinResult(host, registered, resources, output)
