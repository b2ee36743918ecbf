"""A hand-written ReplicaLauncher fake: replicas come up after a number of polls."""

from __future__ import annotations

from collections.abc import Mapping

from scheduler.domain import Replica
from scheduler.runtime.reconciler import Observation, ReplicaState


class FakeLauncher:
    def __init__(self, polls_to_ready: int = 1, existing: Mapping[str, Replica] | None = None):
        self.polls_to_ready = polls_to_ready
        self.running: dict[str, Replica] = dict(existing or {})
        self._polls: dict[str, int] = {}
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.dead: set[str] = set()  # replicas whose process "died"
        self.slow: set[str] = set()  # alive but not answering their health check
        self.fail_start: set[str] = set()

    def start(self, replica_id: str, replica: Replica) -> None:
        if replica_id in self.fail_start:
            raise RuntimeError("no resources")
        self.started.append(replica_id)
        self.running[replica_id] = replica
        self._polls[replica_id] = 0
        self.dead.discard(replica_id)

    def poll(self, replica_id: str) -> Observation:
        if replica_id in self.dead:
            return Observation(ReplicaState.FAILED, error="engine process exited (SIGKILL)")
        if replica_id in self.slow:
            return Observation(
                ReplicaState.FAILED, error="health check timed out", unresponsive=True
            )
        self._polls[replica_id] = self._polls.get(replica_id, 0) + 1
        if self._polls[replica_id] >= self.polls_to_ready:
            return Observation(ReplicaState.READY, base_url=f"http://127.0.0.1/{replica_id}")
        return Observation(ReplicaState.STARTING)

    def stop(self, replica_id: str) -> None:
        self.stopped.append(replica_id)
        self.running.pop(replica_id, None)

    def existing(self) -> Mapping[str, Replica]:
        return dict(self.running)


class RecordingSink:
    def __init__(self) -> None:
        self.published: list[list[object]] = []

    def publish(self, statuses: object) -> None:
        self.published.append(list(statuses))  # type: ignore[call-overload]
