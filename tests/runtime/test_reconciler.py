from __future__ import annotations

from scheduler.domain import Engine, Plan, PlanStatus, Quant, Replica
from scheduler.runtime.reconciler import Reconciler, ReplicaState, backoff_s, replica_ids
from tests.fakes.launcher import FakeLauncher, RecordingSink


def _replica(cls: str = "local/cpu") -> Replica:
    return Replica("demo", Quant.FP32, cls, Engine.VLLM_CPU)


def _plan(*replicas: Replica) -> Plan:
    return Plan(PlanStatus.OPTIMAL, tuple(replicas))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ids_number_identical_replicas() -> None:
    ids = list(replica_ids(_plan(_replica(), _replica(), _replica("b"))))
    assert ids == ["demo.fp32.local-cpu.tp1.0", "demo.fp32.local-cpu.tp1.1", "demo.fp32.b.tp1.0"]


def test_starts_missing_and_publishes_ready() -> None:
    launcher, sink = FakeLauncher(polls_to_ready=2), RecordingSink()
    rec = Reconciler(launcher, sink)
    rec.apply(_plan(_replica(), _replica()))
    first = rec.tick()
    assert [s.state for s in first] == [ReplicaState.STARTING] * 2
    assert len(launcher.started) == 2
    second = rec.tick()
    assert all(s.state is ReplicaState.READY and s.base_url for s in second)
    rec.tick()
    assert len(launcher.started) == 2, "idempotent: no duplicate starts"
    assert sink.published[-1] == second


def test_failed_replica_restarts_with_exponential_backoff() -> None:
    clock = Clock()
    launcher = FakeLauncher()
    rec = Reconciler(launcher, RecordingSink(), clock=clock)
    rec.apply(_plan(_replica()))
    rec.tick()
    (rid,) = launcher.running
    launcher.dead.add(rid)
    st = rec.tick()[0]
    assert st.state is ReplicaState.FAILED and "SIGKILL" in (st.last_error or "")
    assert st.retry_at == clock.now + backoff_s(1)
    rec.tick()
    assert launcher.started.count(rid) == 1, "no restart before the backoff expires"
    clock.now += backoff_s(1)
    st = rec.tick()[0]
    assert launcher.started.count(rid) == 2 and st.restarts == 1
    assert rec.tick()[0].state is ReplicaState.READY


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_s(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert backoff_s(20) == 60.0


def test_start_error_is_status_not_crash() -> None:
    launcher = FakeLauncher()
    launcher.fail_start.add("demo.fp32.local-cpu.tp1.0")
    rec = Reconciler(launcher, RecordingSink())
    rec.apply(_plan(_replica()))
    st = rec.tick()[0]
    assert st.state is ReplicaState.FAILED and "no resources" in (st.last_error or "")


def test_removed_replica_drains_until_idle_then_stops() -> None:
    outstanding = {"n": 2}
    launcher = FakeLauncher()
    rec = Reconciler(launcher, RecordingSink(), outstanding=lambda _rid: outstanding["n"])
    rec.apply(_plan(_replica(), _replica("b")))
    rec.tick()
    rec.apply(_plan(_replica("b")))
    states = {s.id: s.state for s in rec.tick()}
    assert states["demo.fp32.local-cpu.tp1.0"] is ReplicaState.DRAINING
    assert launcher.stopped == []
    outstanding["n"] = 0
    states = {s.id: s.state for s in rec.tick()}
    assert "demo.fp32.local-cpu.tp1.0" not in states
    assert launcher.stopped == ["demo.fp32.local-cpu.tp1.0"]


def test_restart_adopts_running_replicas_without_duplicates() -> None:
    rid = "demo.fp32.local-cpu.tp1.0"
    launcher = FakeLauncher(existing={rid: _replica()})
    rec = Reconciler(launcher, RecordingSink())
    rec.apply(_plan(_replica()))
    rec.tick()
    assert launcher.started == []
    assert rec.statuses()[0].state is ReplicaState.READY


def test_moved_replica_keeps_serving_until_its_replacement_is_ready() -> None:
    """Make-before-break: a drain or a move never leaves the model without a ready replica."""
    launcher = FakeLauncher(polls_to_ready=3)
    rec = Reconciler(launcher, RecordingSink())
    rec.apply(_plan(_replica("a")))
    for _ in range(3):
        rec.tick()
    old, new = "demo.fp32.a.tp1.0", "demo.fp32.b.tp1.0"
    rec.apply(_plan(_replica("b")))
    states = {s.id: s.state for s in rec.tick()}
    while states[new] is not ReplicaState.READY:
        assert states == {old: ReplicaState.READY, new: ReplicaState.STARTING}
        assert rec.held() == [old] and launcher.stopped == []
        states = {s.id: s.state for s in rec.tick()}
    states = {s.id: s.state for s in rec.tick()}  # replacement ready: the old one drains
    assert states == {new: ReplicaState.READY}
    assert launcher.stopped == [old] and rec.held() == []


def test_hold_ends_at_its_timeout_when_the_replacement_never_comes_up() -> None:
    clock = Clock()
    launcher = FakeLauncher(polls_to_ready=1000)
    rec = Reconciler(launcher, RecordingSink(), clock=clock, hold_timeout_s=30.0)
    launcher.polls_to_ready = 1
    rec.apply(_plan(_replica("a")))
    rec.tick()
    launcher.polls_to_ready = 1000
    rec.apply(_plan(_replica("b")))
    rec.tick()
    assert rec.held() == ["demo.fp32.a.tp1.0"]
    clock.now += 31
    rec.tick()
    assert launcher.stopped == ["demo.fp32.a.tp1.0"]


def test_drain_waits_the_grace_period_before_stopping_an_idle_replica() -> None:
    clock = Clock()
    launcher = FakeLauncher()
    rec = Reconciler(launcher, RecordingSink(), clock=clock, drain_grace_s=3.0)
    rec.apply(_plan(_replica()))
    rec.tick()
    rec.drain("demo.fp32.local-cpu.tp1.0")
    rec.tick()
    clock.now += 2
    assert rec.tick()[0].state is ReplicaState.DRAINING, "gateways may still route for 3 s"
    clock.now += 1.5
    assert rec.tick() == [] and launcher.stopped == ["demo.fp32.local-cpu.tp1.0"]


def test_unreadable_in_flight_count_does_not_pin_a_draining_replica() -> None:
    def broken(_rid: str) -> int:
        raise OSError("connection refused")

    launcher = FakeLauncher()
    rec = Reconciler(launcher, RecordingSink(), outstanding=broken)
    rec.apply(_plan(_replica()))
    rec.tick()
    rec.apply(_plan())
    assert rec.tick() == []
    assert launcher.stopped == ["demo.fp32.local-cpu.tp1.0"]


def test_dead_replica_that_is_no_longer_wanted_is_not_held() -> None:
    launcher = FakeLauncher(polls_to_ready=1)
    rec = Reconciler(launcher, RecordingSink())
    rec.apply(_plan(_replica("a")))
    rec.tick()
    launcher.dead.add("demo.fp32.a.tp1.0")
    launcher.polls_to_ready = 5
    rec.apply(_plan(_replica("b")))
    rec.tick()
    assert rec.held() == []
    assert "demo.fp32.a.tp1.0" in launcher.stopped


def test_unanswered_health_checks_keep_serving_until_the_grace_period_ends() -> None:
    clock = Clock()
    launcher, sink = FakeLauncher(), RecordingSink()
    rec = Reconciler(launcher, sink, clock=clock, unresponsive_after_s=20.0)
    rec.apply(_plan(_replica()))
    rec.tick()
    (rid,) = launcher.running
    launcher.slow.add(rid)
    for _ in range(3):  # a busy machine: slow answers for 19 s restart nothing
        st = rec.tick()[0]
        assert st.state is ReplicaState.READY and st.base_url, "still routed while slow"
        assert st.unresponsive_since == 0.0
        clock.now += 9.5
    st = rec.tick()[0]
    assert st.state is ReplicaState.FAILED and "for 28 s" in (st.last_error or "")
    assert launcher.stopped == [rid] and st.unresponsive_since is None


def test_an_answer_ends_the_unresponsive_run() -> None:
    clock = Clock()
    launcher = FakeLauncher()
    rec = Reconciler(launcher, RecordingSink(), clock=clock, unresponsive_after_s=20.0)
    rec.apply(_plan(_replica()))
    rec.tick()
    (rid,) = launcher.running
    launcher.slow.add(rid)
    rec.tick()
    clock.now += 15
    launcher.slow.discard(rid)
    assert rec.tick()[0].unresponsive_since is None
    launcher.slow.add(rid)
    clock.now += 15  # 30 s since the first miss, but only just missed again
    st = rec.tick()[0]
    assert st.state is ReplicaState.READY and st.unresponsive_since == 30.0
    assert launcher.stopped == []


def test_a_starting_replica_that_stops_answering_fails_at_once() -> None:
    launcher = FakeLauncher(polls_to_ready=3)
    rec = Reconciler(launcher, RecordingSink(), unresponsive_after_s=20.0)
    rec.apply(_plan(_replica()))
    rec.tick()
    (rid,) = launcher.running
    launcher.slow.add(rid)
    assert rec.tick()[0].state is ReplicaState.FAILED


def test_a_held_replica_is_not_killed_for_slow_answers_while_its_replacement_starts() -> None:
    """Draining a node loads the replacement next door: the held replica answers slowly,
    but stopping it would cut its streams and leave the model with no ready replica."""
    clock = Clock()
    launcher = FakeLauncher()
    rec = Reconciler(
        launcher, RecordingSink(), clock=clock, unresponsive_after_s=20.0, hold_timeout_s=600.0
    )
    rec.apply(_plan(_replica("a")))
    rec.tick()
    old, new = "demo.fp32.a.tp1.0", "demo.fp32.b.tp1.0"
    launcher.polls_to_ready = 1000
    rec.apply(_plan(_replica("b")))
    launcher.slow.add(old)
    for _ in range(10):  # 90 s of unanswered checks while held
        states = {s.id: s.state for s in rec.tick()}
        assert states[old] is ReplicaState.READY and rec.held() == [old]
        clock.now += 10
    assert launcher.stopped == []
    launcher.dead.add(old)  # dead is dead, held or not
    states = {s.id: s.state for s in rec.tick()}
    assert states[old] is ReplicaState.FAILED and launcher.stopped == [old]
    assert new in states
