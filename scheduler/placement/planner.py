"""``plan()``: the one interface the runtime, ``cunliang up`` and ``cunliang plan`` call.

Filter -> score -> solve -> assign:
1. candidates: (demand, quant, class, tp) that pass region, engine-support, memory and
   SLO filters, scored by the perf model at the SLO batch (x SLO margin) and the cost
   model (``candidates.py``);
2. solve: the MILP (``milp.py``) or a baseline (``baselines.py``), same inputs;
3. assign: replicas to nodes, churn against ``current``, explanations for what is left
   unplaced (``assemble.py``).
Never raises on an infeasible fleet: the Plan says partial/infeasible and why.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from scheduler.cost import CostBasis
from scheduler.domain import Demand, Fleet, ModelSpec, Plan
from scheduler.placement import baselines
from scheduler.placement.assemble import build_plan, served_share
from scheduler.placement.candidates import Candidate, CandidateSet, PerfCache, build_candidates
from scheduler.placement.milp import solve_milp


class Strategy(StrEnum):
    OPTIMAL = "milp"
    NEWEST_FIRST = "newest-first"
    CHEAPEST_FIRST = "cheapest-first"
    SINGLE_TYPE = "single-type"


BASELINES: tuple[Strategy, ...] = (
    Strategy.NEWEST_FIRST,
    Strategy.CHEAPEST_FIRST,
    Strategy.SINGLE_TYPE,
)


@dataclass(frozen=True)
class PlacementPolicy:
    """How to plan. Defaults: marginal cost, plan on 85% of predicted throughput.

    A plan is reported OPTIMAL when HiGHS proves it within ``mip_rel_gap`` (the gap
    reached is in ``Plan.mip_gap``), FEASIBLE when the time limit stopped it earlier.
    """

    cost_basis: CostBasis = CostBasis.MARGINAL
    # plan on this fraction of the predicted SLO throughput, so a perf model that is
    # optimistic by up to 15% still meets demand
    slo_margin: float = 0.85
    tp_options: tuple[int, ...] = (1, 2, 4, 8)
    # yuan/hour-equivalent charged per running replica the new plan stops (churn)
    churn_penalty_yuan: float = 0.5
    mip_rel_gap: float = 1e-4
    time_limit_s: float = 30.0
    strategy: Strategy = Strategy.OPTIMAL
    hour: int | None = None  # time-of-use hour to price at; None = 24 h mean


def plan(
    fleet: Fleet,
    demands: Sequence[Demand],
    models: Mapping[str, ModelSpec],
    policy: PlacementPolicy = PlacementPolicy(),
    current: Plan | None = None,
    *,
    cache: PerfCache | None = None,
) -> Plan:
    """Place ``demands`` on ``fleet`` at least yuan/hour (see the module docstring).

    ``current``: the plan now running; replicas it has are kept where that costs less
    than ``policy.churn_penalty_yuan`` each, and the notes report what changes.
    ``cache``: share perf predictions between calls on the same fleet (benchmarks).
    """
    started = time.perf_counter()
    unknown = [d for d in demands if d.model not in models]
    cands = build_candidates(
        fleet.classes,
        demands,
        models,
        basis=policy.cost_basis,
        slo_margin=policy.slo_margin,
        tp_wanted=policy.tp_options,
        hour=policy.hour,
        cache=cache,
    )
    return solve_candidates(fleet, demands, cands, policy, current, started, unknown)


def solve_candidates(
    fleet: Fleet,
    demands: Sequence[Demand],
    cands: CandidateSet,
    policy: PlacementPolicy,
    current: Plan | None = None,
    started: float | None = None,
    unknown: Sequence[Demand] = (),
) -> Plan:
    """Solve on an already built candidate set (lets benchmarks compare strategies)."""
    started = time.perf_counter() if started is None else started
    notes = [
        f"cost basis: {policy.cost_basis}",
        f"SLO margin: planned on {policy.slo_margin:.0%} of predicted throughput",
        *(f"model {d.model!r} has no ModelSpec: not placed" for d in unknown),
    ]
    by_demand = [cands.for_demand(i) for i in range(len(demands))]
    proven, gap = False, 0.0
    chosen: list[tuple[Candidate, int]]
    if policy.strategy is Strategy.OPTIMAL:
        res = solve_milp(
            cands.candidates,
            demands,
            fleet.classes,
            current=current,
            churn_penalty_yuan=policy.churn_penalty_yuan if current else 0.0,
            mip_rel_gap=policy.mip_rel_gap,
            time_limit_s=policy.time_limit_s,
        )
        chosen, proven, gap = list(res.counts), res.proven_optimal, res.mip_gap
        notes.append(f"HiGHS: {res.message}")
        solver = "milp-highs"
    elif policy.strategy is Strategy.SINGLE_TYPE:
        chosen = baselines.single_type(by_demand, demands, fleet.classes)
        solver = f"baseline-{policy.strategy}"
    else:
        order = (
            baselines.newest_first
            if policy.strategy is Strategy.NEWEST_FIRST
            else baselines.cheapest_first
        )
        chosen = baselines.greedy(by_demand, demands, fleet.classes, order)
        solver = f"baseline-{policy.strategy}"
    return build_plan(
        chosen,
        demands,
        cands,
        fleet.classes,
        current=current,
        solver=solver,
        proven_optimal=proven,
        solve_seconds=time.perf_counter() - started,
        mip_gap=gap,
        notes=notes,
    )


@dataclass(frozen=True)
class RobustnessReport:
    """Share of demand served within SLO when real throughput falls short of the model."""

    # {uniform shortfall: served share}, e.g. {0.2: 1.0, 0.3: 0.97}
    uniform: Mapping[float, float]
    # random per-class factors in [low, high]: mean and worst served share over trials
    random_mean: float
    random_worst: float
    trials: int


def robustness(
    result: Plan,
    demands: Sequence[Demand],
    *,
    shortfalls: Sequence[float] = (0.2, 0.3),
    low: float = 0.7,
    high: float = 1.1,
    trials: int = 200,
    seed: int = 0,
) -> RobustnessReport:
    """How a plan degrades if each class's real throughput is lower than predicted."""
    class_ids = sorted({r.device_class_id for r in result.replicas})
    uniform = {
        s: served_share(result, demands, dict.fromkeys(class_ids, 1.0 - s)) for s in shortfalls
    }
    rng = random.Random(seed)
    shares = [
        served_share(result, demands, {c: rng.uniform(low, high) for c in class_ids})
        for _ in range(trials)
    ]
    return RobustnessReport(
        uniform=uniform,
        random_mean=sum(shares) / len(shares) if shares else 1.0,
        random_worst=min(shares, default=1.0),
        trials=trials,
    )
