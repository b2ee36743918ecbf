from __future__ import annotations

from collections.abc import Mapping, Sequence

from scheduler.domain import (
    Demand,
    DeviceClass,
    DeviceKind,
    DeviceSpec,
    Engine,
    Fleet,
    ModelSpec,
    Plan,
    PlanStatus,
    Quant,
    Replica,
    Site,
)
from scheduler.runtime.controller import Controller
from scheduler.runtime.reconciler import Reconciler
from tests.fakes.launcher import FakeLauncher, RecordingSink

SITE = Site("local", "local")


def _fleet(count: int) -> Fleet:
    spec = DeviceSpec("cpu", DeviceKind.CPU)
    return Fleet((SITE,), (DeviceClass("local/cpu", SITE, spec, count),))


class World:
    def __init__(self) -> None:
        self.fleet = _fleet(1)
        self.demands: tuple[Demand, ...] = (Demand("m", 1.0),)

    def __call__(self) -> tuple[Fleet, Sequence[Demand], Mapping[str, ModelSpec]]:
        return self.fleet, self.demands, {}


class CountingPlanner:
    def __init__(self) -> None:
        self.calls: list[Plan | None] = []

    def __call__(
        self,
        fleet: Fleet,
        demands: Sequence[Demand],
        models: Mapping[str, ModelSpec],
        current: Plan | None,
    ) -> Plan:
        self.calls.append(current)
        replicas = tuple(
            Replica("m", Quant.FP32, c.id, Engine.VLLM_CPU)
            for c in fleet.classes
            for _ in range(c.count)
        )
        return Plan(PlanStatus.OPTIMAL, replicas)


def test_replans_only_when_the_world_changes_and_passes_the_running_plan() -> None:
    world, planner = World(), CountingPlanner()
    launcher = FakeLauncher()
    reconciler = Reconciler(launcher, RecordingSink())
    controller = Controller(world, planner, reconciler)
    first = controller.tick()
    assert first is not None and len(first.replicas) == 1
    assert controller.tick() is None, "same world: no replan"
    world.fleet = _fleet(2)  # a device admitted
    second = controller.tick()
    assert second is not None and len(second.replicas) == 2
    assert planner.calls == [None, first], "churn-aware: the running plan is passed"
    reconciler.tick()
    assert len(launcher.started) == 2
