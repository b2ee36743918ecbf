"""A restarted scheduler, as its own process: connect to the cluster, build a fresh
launcher + reconciler (what ``cunliang scheduler`` does at start), apply the plan given
as JSON and tick until every replica is ready; print what it adopted and started.

    python -m tests.cluster.restarted_scheduler RAY_ADDRESS PLAN_JSON
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from scheduler.domain import Plan, PlanStatus, Replica
from scheduler.runtime.ray_backend import RayLauncher, init_ray, replica_from_info
from scheduler.runtime.reconciler import Reconciler, ReplicaState, ReplicaStatus
from workers.actor import ReplicaActor


class CountingLauncher(RayLauncher):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started: list[str] = []

    def start(self, replica_id: str, replica: Replica) -> None:
        self.started.append(replica_id)
        super().start(replica_id, replica)


class NoSink:
    def publish(self, statuses: Any) -> None:
        return None


def main(address: str, plan_json: str) -> int:
    init_ray(address)
    replicas = tuple(replica_from_info(r) for r in json.loads(plan_json))

    def no_args(_rid: str, _r: Replica) -> tuple[tuple[Any, ...], dict[str, Any]]:
        raise RuntimeError("a restarted scheduler must adopt, not start")

    launcher = CountingLauncher(ReplicaActor, no_args, detached=True)
    reconciler = Reconciler(launcher, NoSink())
    adopted = sorted(s.id for s in reconciler.statuses())
    reconciler.apply(Plan(PlanStatus.OPTIMAL, replicas))
    deadline = time.monotonic() + 60
    statuses: list[ReplicaStatus] = []
    while time.monotonic() < deadline:
        statuses = reconciler.tick()
        if statuses and all(s.state is ReplicaState.READY for s in statuses):
            break
        time.sleep(0.5)
    print(
        json.dumps(
            {
                "adopted": adopted,
                "started": launcher.started,
                "ready": sorted(s.id for s in statuses if s.state is ReplicaState.READY),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
