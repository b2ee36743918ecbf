"""plan(): the reference fleet, baselines, infeasibility, churn, node assignment, `up`."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

import pytest

from scheduler.cost import CostBasis
from scheduler.domain import (
    GIB,
    Demand,
    DeviceClass,
    DeviceKind,
    DeviceSpec,
    Engine,
    Fleet,
    ModelArch,
    ModelSpec,
    PlanStatus,
    Quant,
    Site,
    TouBand,
)
from scheduler.fleetfile import FleetFile
from scheduler.placement import (
    BASELINES,
    PlacementPolicy,
    Strategy,
    diff_plans,
    plan,
    robustness,
)


def test_reference_fleet_plan_is_optimal_fast_and_beats_every_baseline(
    reference: FleetFile,
) -> None:
    started = time.perf_counter()
    best = plan(reference.fleet, reference.demands, reference.models)
    assert time.perf_counter() - started < 10.0
    assert best.status is PlanStatus.OPTIMAL and not best.unplaced
    total = sum(d.output_tokens_per_s for d in reference.demands)
    assert best.output_tokens_per_s == pytest.approx(total)
    for strategy in BASELINES:
        other = plan(
            reference.fleet, reference.demands, reference.models, PlacementPolicy(strategy=strategy)
        )
        assert other.output_tokens_per_s <= best.output_tokens_per_s + 1e-6
        assert best.yuan_per_hour < other.yuan_per_hour, strategy
    # every replica satisfies its class's availability and the demand's regions
    used = Counter[str]()
    for r in best.replicas:
        used[r.device_class_id] += r.tp
    classes = {c.id: c for c in reference.fleet.classes}
    assert all(used[c] <= classes[c].count for c in used)
    east_only = {r.device_class_id for r in best.replicas if r.model == "llama-3.1-8b-instruct"}
    assert all(classes[c].site.region == "east" for c in east_only)


def test_full_cost_basis_prices_capex(reference: FleetFile) -> None:
    marginal = plan(reference.fleet, reference.demands, reference.models)
    full = plan(
        reference.fleet,
        reference.demands,
        reference.models,
        PlacementPolicy(cost_basis=CostBasis.FULL),
    )
    assert full.status is PlanStatus.OPTIMAL
    assert full.yuan_per_hour > marginal.yuan_per_hour


def test_oversubscribed_demand_gives_best_partial_plan_with_reasons(
    reference: FleetFile,
) -> None:
    greedy = [replace(d, output_tokens_per_s=d.output_tokens_per_s * 50) for d in reference.demands]
    result = plan(reference.fleet, greedy, reference.models)
    assert result.status is PlanStatus.PARTIAL
    assert result.replicas and result.unplaced
    for u in result.unplaced:
        assert u.binding == "availability"
        assert u.missing_output_tokens_per_s > 0
        assert "C2 availability binds" in u.reason and "more" in u.reason
    served = sum(d.output_tokens_per_s for d in greedy) - sum(
        u.missing_output_tokens_per_s for u in result.unplaced
    )
    assert result.output_tokens_per_s == pytest.approx(served)


def test_demand_no_device_can_serve_names_the_binding_constraint(reference: FleetFile) -> None:
    # 32B in the east within 3 ms per token: nothing is that fast
    impossible = Demand("qwen2.5-32b-instruct", 100, 1024, 128, tpot_ms=3, regions=("east",))
    result = plan(reference.fleet, [impossible], reference.models)
    assert result.status is PlanStatus.INFEASIBLE and not result.replicas
    (u,) = result.unplaced
    assert u.binding == "slo" and "TPOT" in u.reason and u.missing_output_tokens_per_s == 100


def test_replanning_with_nothing_changed_moves_nothing(reference: FleetFile) -> None:
    classes = tuple(
        replace(c, node_ids=tuple(f"{c.id}/n{i}" for i in range(-(-c.count // c.per_node))))
        for c in reference.fleet.classes
    )
    fleet = replace(reference.fleet, classes=classes)
    first = plan(fleet, reference.demands, reference.models)
    assert all(r.node_id for r in first.replicas)
    again = plan(fleet, reference.demands, reference.models, current=first)
    delta = diff_plans(first, again)
    assert delta.started == () and delta.stopped == ()
    assert delta.kept == len(first.replicas)
    assert any(n.startswith("churn: kept") for n in again.notes)


def test_replanning_after_losing_devices_keeps_the_rest(reference: FleetFile) -> None:
    first = plan(reference.fleet, reference.demands, reference.models)
    busiest = Counter(r.device_class_id for r in first.replicas).most_common(1)[0][0]
    shrunk = tuple(
        replace(c, count=c.count // 2) if c.id == busiest else c for c in reference.fleet.classes
    )
    fleet = replace(reference.fleet, classes=shrunk)
    aware = plan(fleet, reference.demands, reference.models, current=first)
    fresh = plan(fleet, reference.demands, reference.models)
    assert not aware.unplaced
    assert len(diff_plans(first, aware).stopped) <= len(diff_plans(first, fresh).stopped)
    untouched = {r.key for r in first.replicas if r.device_class_id != busiest}
    kept = Counter(r.key for r in aware.replicas)
    before = Counter(r.key for r in first.replicas)
    assert all(kept[k] >= before[k] for k in untouched)


def test_nodes_are_filled_within_their_size(reference: FleetFile) -> None:
    t4 = next(c for c in reference.fleet.classes if c.id == "guian/tesla-t4")
    t4 = replace(t4, count=6, per_node=4, node_ids=("t4-a", "t4-b"))
    model = reference.models["qwen2.5-7b-instruct"]
    spec = replace(model, allowed_quants=(Quant.FP16,))  # needs tp=2 on 16 GB T4s
    demand = Demand("qwen2.5-7b-instruct", 100_000, 1024, 256, regions=())
    result = plan(Fleet((t4.site,), (t4,)), [demand], {model.name: spec})
    per_node = Counter[str]()
    for r in result.replicas:
        assert r.tp == 2 and r.node_id in ("t4-a", "t4-b")
        per_node[r.node_id] += r.tp
    assert per_node == {"t4-a": 4, "t4-b": 2}
    assert result.status is PlanStatus.PARTIAL


def test_cunliang_up_plan_is_one_vllm_cpu_replica() -> None:
    site = Site("local", "local", tariff_yuan_per_kwh=0.6, pue=1.5)
    cpu = DeviceSpec("local CPU", DeviceKind.CPU, memory_bytes=16 * GIB, cores=2, tdp_watts=65)
    fleet = Fleet((site,), (DeviceClass("local/cpu", site, cpu, count=1),))
    arch = ModelArch("cunliang-demo", 0.004, 2, 128, 4, 4, 32, 32000, 512, 256)
    models = {"cunliang-demo": ModelSpec("cunliang-demo", "/data/demo", arch, (Quant.FP32,))}
    result = plan(fleet, [Demand("cunliang-demo", 1.0, 64, 32)], models)
    assert result.status is PlanStatus.OPTIMAL
    (replica,) = result.replicas
    assert replica.engine is Engine.VLLM_CPU and replica.dtype == "float32"
    assert replica.quant is Quant.FP32 and replica.tp == 1


def test_robustness_report_degrades_with_shortfall(reference: FleetFile) -> None:
    best = plan(reference.fleet, reference.demands, reference.models)
    report = robustness(best, reference.demands, shortfalls=(0.1, 0.2, 0.3))
    assert report.uniform[0.1] == pytest.approx(1.0)  # inside the 15% margin
    assert report.uniform[0.1] >= report.uniform[0.2] >= report.uniform[0.3]
    assert 0.0 < report.random_worst <= report.random_mean <= 1.0


def test_unknown_model_in_demand_is_reported_not_raised(reference: FleetFile) -> None:
    result = plan(reference.fleet, [Demand("nope", 10.0)], reference.models)
    assert result.status is PlanStatus.INFEASIBLE
    assert result.unplaced[0].model == "nope"
    assert any("no ModelSpec" in n for n in result.notes)


@pytest.mark.parametrize("strategy", list(Strategy))
def test_every_strategy_returns_a_plan_on_an_empty_fleet(strategy: Strategy) -> None:
    result = plan(Fleet((), ()), [Demand("m", 5.0)], {}, PlacementPolicy(strategy=strategy))
    assert result.status is PlanStatus.INFEASIBLE and result.unplaced


@pytest.mark.parametrize("strategy", list(Strategy))
def test_nothing_to_place_is_an_empty_optimal_plan(strategy: Strategy) -> None:
    """A scheduler started on an empty inventory plans every tick: no error, no replicas."""
    result = plan(Fleet((), ()), [], {}, PlacementPolicy(strategy=strategy))
    # baselines never claim optimality
    expected = PlanStatus.OPTIMAL if strategy is Strategy.OPTIMAL else PlanStatus.FEASIBLE
    assert result.status is expected
    assert result.replicas == () and result.unplaced == () and result.yuan_per_hour == 0


def test_time_of_use_hour_changes_the_price(reference: FleetFile) -> None:
    bands = (TouBand(8, 22, 1.2), TouBand(22, 8, 0.2))
    sites = {s.name: replace(s, tou_bands=bands) for s in reference.fleet.sites}
    classes = tuple(replace(c, site=sites[c.site.name]) for c in reference.fleet.classes)
    fleet = Fleet(tuple(sites.values()), classes)
    night = plan(fleet, reference.demands, reference.models, PlacementPolicy(hour=3))
    day = plan(fleet, reference.demands, reference.models, PlacementPolicy(hour=12))
    assert night.status is day.status is PlanStatus.OPTIMAL
    assert night.yuan_per_hour < day.yuan_per_hour
