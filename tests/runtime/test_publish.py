"""Scheduler → runtime table → gateway directory, on a real migrated SQLite database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from scheduler.domain import Engine, Quant, Replica
from scheduler.gateway.db_directory import DbReplicaDirectory
from scheduler.runtime.publish import DbEndpointSink
from scheduler.runtime.reconciler import ReplicaState, ReplicaStatus
from scheduler.store.db import open_database, upgrade


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _status(rid: str, state: ReplicaState, url: str | None = None) -> ReplicaStatus:
    replica = Replica("demo", Quant.BF16, "guian/tesla-t4", Engine.VLLM, yuan_per_hour=0.4)
    return ReplicaStatus(rid, replica, state, base_url=url)


def test_endpoints_round_trip_and_go_stale_without_heartbeat(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    db = open_database(url)
    clock = Clock()
    sink = DbEndpointSink(db.sessions, clock=clock)
    directory = DbReplicaDirectory(db.sessions, stale_after_s=30, clock=clock)
    try:
        sink.publish(
            [
                _status("a", ReplicaState.READY, "http://127.0.0.1:9001"),
                _status("b", ReplicaState.FAILED),
            ]
        )
        directory.refresh()
        by_id = {r.id: r for r in directory.replicas()}
        assert by_id["a"].state == "ready" and by_id["a"].base_url == "http://127.0.0.1:9001"
        assert by_id["a"].site == "guian" and by_id["a"].yuan_per_hour == 0.4
        assert by_id["b"].state == "unhealthy"

        sink.publish([_status("a", ReplicaState.DRAINING, "http://127.0.0.1:9001")])
        directory.refresh()
        assert [(r.id, r.state) for r in directory.replicas()] == [("a", "draining")]

        clock.now += timedelta(seconds=31)  # the scheduler stopped publishing
        directory.refresh()
        assert [r.state for r in directory.replicas()] == ["unhealthy"]
    finally:
        db.dispose()
