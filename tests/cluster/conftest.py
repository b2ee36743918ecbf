"""A real multi-node Ray cluster on this machine, owned by the test session.

``ray.cluster_utils.Cluster`` starts a head and separate raylet processes per worker
node (what ``ray start --head`` / ``ray start --address`` start), each worker node with
its own ``device_class:<id>`` and ``cunliang_host:<host>`` resources. ``RAY_TMPDIR``
points Ray at a short private temp dir, so the cluster's address file and sessions stay
out of ``/tmp/ray`` (other users' clusters on this machine). Teardown kills only the
processes this cluster started (``Cluster.shutdown``), never a machine-wide ``ray stop``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from scheduler.runtime.liveness import host_resource
from scheduler.runtime.ray_backend import NAMESPACE, device_class_resource

# host -> (device class id, devices): three worker nodes with different device classes
WORKERS: dict[str, tuple[str, int]] = {
    "node-a": ("lab/cpu-a", 2),
    "node-b": ("lab/cpu-b", 1),
    "node-c": ("lab/cpu-c", 2),
}


@dataclass
class RayCluster:
    cluster: Any
    temp_dir: str
    nodes: dict[str, Any] = field(default_factory=dict)  # host -> ray._private.node.Node

    def remove(self, host: str) -> None:
        """Kill every process of one worker node (a machine lost), not gracefully."""
        self.cluster.remove_node(self.nodes.pop(host), allow_graceful=False)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    import ray
    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="clc-", dir="/tmp")
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    rc = RayCluster(cluster, temp_dir)
    try:
        for host, (class_id, devices) in WORKERS.items():
            rc.nodes[host] = cluster.add_node(
                num_cpus=1,
                resources={device_class_resource(class_id): devices, host_resource(host): 1},
            )
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
        yield rc
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        if previous is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous
        shutil.rmtree(temp_dir, ignore_errors=True)
