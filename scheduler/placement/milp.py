"""The placement MILP, solved by HiGHS (scipy.optimize.milp).

Adapted from Mélange (Griggs et al., "Mélange: Cost Efficient Large Language Model
Serving by Exploiting GPU Heterogeneity", 2024, arXiv:2404.14527): Mélange picks a
mix of GPU types minimising $/h such that every (request size, SLO) bucket is served,
with throughput per GPU type measured at the SLO. Here the buckets are demands (model,
lengths, SLO, regions), the "GPU types" are device classes at sites with their own
tariff/PUE, each with several replica shapes (quantisation, tensor parallel degree),
availability is finite and per node, and unmet demand is a priced slack so an
over-subscribed fleet still yields the best partial plan.

Variables
    x[k] >= 0 integer   replicas of candidate k (demand d(k), class c(k), quant, tp(k))
    u[d] >= 0           output tokens/s of demand d left unserved (slack)
    y[g] >= 0           running replicas of shape g (current plan) that the new plan stops

Objective (yuan/hour)
    min  sum_k cost[k] x[k]                   # device cost, marginal or full basis
       + M  sum_d u[d]                        # unserved demand, M >> any yuan per token/s
       + λ  sum_g y[g]                        # churn: each stopped running replica
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from scheduler.domain import Demand, DeviceClass, Plan
from scheduler.placement.candidates import Candidate


@dataclass(frozen=True)
class MilpResult:
    counts: tuple[tuple[Candidate, int], ...]
    proven_optimal: bool
    mip_gap: float
    solve_seconds: float
    message: str


def shape_key(cand: Candidate, demand: Demand) -> str:
    """The key a running replica of this candidate has (Replica.key plus its demand class)."""
    return f"{demand.klass}|{demand.model}/{cand.quant}/{cand.device_class.id}/tp{cand.tp}"


def solve_milp(
    cands: Sequence[Candidate],
    demands: Sequence[Demand],
    classes: Sequence[DeviceClass],
    *,
    current: Plan | None = None,
    churn_penalty_yuan: float = 0.0,
    mip_rel_gap: float = 1e-4,
    time_limit_s: float = 30.0,
) -> MilpResult:
    """Minimise yuan/hour over candidate replica counts (see the module docstring)."""
    started = time.perf_counter()
    n_x, n_u = len(cands), len(demands)
    running = _running_counts(current)
    shapes = sorted({shape_key(c, demands[c.demand_index]) for c in cands} & set(running))
    n_y = len(shapes)
    n = n_x + n_u + n_y
    if n == 0:  # no demand and nothing to place (an empty inventory): nothing to solve
        return MilpResult((), True, 0.0, time.perf_counter() - started, "nothing to place")
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lo: list[float] = []
    hi: list[float] = []

    def add_row(entries: Sequence[tuple[int, float]], lower: float, upper: float) -> None:
        r = len(lo)
        for col, val in entries:
            rows.append(r)
            cols.append(col)
            vals.append(val)
        lo.append(lower)
        hi.append(upper)

    # C1 demand: capacity of its replicas (at the SLO, after margin) + unserved >= demand
    for d, demand in enumerate(demands):
        entries = [(k, c.capacity_tokens_per_s) for k, c in enumerate(cands) if c.demand_index == d]
        add_row([*entries, (n_x + d, 1.0)], demand.output_tokens_per_s, math.inf)

    # C2 availability per class, whole-node TP groups: for each group size t used on the
    # class, the devices in groups of size >= t fit in what nodes offer in t-sized pieces
    # (exact for sizes dividing per_node, as powers of two do).
    by_class: dict[str, list[int]] = {}
    for k, c in enumerate(cands):
        by_class.setdefault(c.device_class.id, []).append(k)
    class_of = {dc.id: dc for dc in classes}
    for cid, ks in by_class.items():
        dc = class_of[cid]
        full, rest = divmod(dc.count, dc.per_node)
        for t in sorted({cands[k].tp for k in ks}):
            room = full * (dc.per_node // t) * t + (rest // t) * t
            add_row([(k, float(cands[k].tp)) for k in ks if cands[k].tp >= t], -math.inf, room)

    # C3 churn: stopped replicas of each running shape >= running - kept
    for j, shape in enumerate(shapes):
        ks = [k for k, c in enumerate(cands) if shape_key(c, demands[c.demand_index]) == shape]
        add_row([*((k, 1.0) for k in ks), (n_x + n_u + j, 1.0)], running[shape], math.inf)

    # (C4 regions, memory, engine support and the SLO are enforced by the candidate filters.)
    cost = np.array([c.yuan_per_hour for c in cands], dtype=float)
    upper = np.array([c.device_class.count // c.tp for c in cands] + [math.inf] * (n_u + n_y))
    matrix = coo_matrix((vals, (rows, cols)), shape=(len(lo), n)).tocsr()
    problem = _Problem(matrix, np.array(lo), np.array(hi), upper, n_x, n_u, n_y)
    total = sum(d.output_tokens_per_s for d in demands)
    unserved_obj = np.concatenate([np.zeros(n_x), np.ones(n_u), np.zeros(n_y)])
    cost_obj = np.concatenate([cost, np.zeros(n_u), np.full(n_y, churn_penalty_yuan)])
    # Is the fleet over-subscribed? The LP relaxation of "serve as much as possible" says.
    relaxed = problem.solve(unserved_obj, integral=False, gap=0.0, time_limit_s=time_limit_s)
    if relaxed.x is None or relaxed.fun <= 1e-6 * max(total, 1.0):
        # one phase: cost + M x unserved (M large enough that serving always wins)
        big_m = unserved_penalty(cands)
        res = problem.solve(
            cost_obj + big_m * unserved_obj, gap=mip_rel_gap, time_limit_s=time_limit_s
        )
    else:
        # over-subscribed: lexicographic. Phase 1 serves as much as possible; phase 2 finds
        # the cheapest plan serving that much. (One weighted objective mixes yuan with
        # tokens/s over many orders of magnitude and stalls HiGHS on such instances.)
        first = problem.solve(unserved_obj, gap=mip_rel_gap, time_limit_s=time_limit_s / 4)
        if first.x is None:
            return MilpResult((), False, math.inf, time.perf_counter() - started, first.message)
        # phase 2 may give up 0.1% of demand of phase 1's service to find a much cheaper plan
        cap = float(first.fun) + 1e-3 * total
        res = problem.solve(
            cost_obj, gap=mip_rel_gap, time_limit_s=time_limit_s * 3 / 4, unserved_at_most=cap
        )
        if res.x is None:
            res = first
    elapsed = time.perf_counter() - started
    if res.x is None:
        return MilpResult((), False, math.inf, elapsed, str(res.message))
    counts = tuple((c, round(res.x[k])) for k, c in enumerate(cands) if round(res.x[k]) > 0)
    gap = float(getattr(res, "mip_gap", 0.0) or 0.0)
    return MilpResult(
        counts, res.status == 0 and gap <= mip_rel_gap, gap, elapsed, str(res.message)
    )


@dataclass(frozen=True)
class _Problem:
    """The constraint system shared by the solve phases."""

    matrix: Any
    lo: np.ndarray[Any, Any]
    hi: np.ndarray[Any, Any]
    upper: np.ndarray[Any, Any]
    n_x: int
    n_u: int
    n_y: int

    def solve(
        self,
        objective: np.ndarray[Any, Any],
        *,
        gap: float,
        time_limit_s: float,
        integral: bool = True,
        unserved_at_most: float | None = None,
    ) -> Any:
        n = self.n_x + self.n_u + self.n_y
        constraints = [LinearConstraint(self.matrix, self.lo, self.hi)]
        if unserved_at_most is not None:
            # phase 2 keeps phase 1's service: sum of unserved <= what phase 1 left
            row = np.concatenate([np.zeros(self.n_x), np.ones(self.n_u), np.zeros(self.n_y)])
            constraints.append(LinearConstraint(row.reshape(1, -1), -np.inf, unserved_at_most))
        integrality = np.concatenate(
            [np.full(self.n_x, 1 if integral else 0), np.zeros(n - self.n_x)]
        )
        return milp(
            objective,
            integrality=integrality,
            bounds=Bounds(np.zeros(n), self.upper),
            constraints=constraints,
            options={"mip_rel_gap": gap, "time_limit": max(time_limit_s, 0.1), "disp": False},
        )


def unserved_penalty(cands: Sequence[Candidate]) -> float:
    """M, in yuan/hour per unserved token/s: 1000x the dearest way to serve one token/s.

    Serving always wins unless the last few tokens/s would need a whole replica of
    which they use less than 0.1%.
    """
    worst = max((c.yuan_per_token_s for c in cands), default=1.0)
    return 1000.0 * worst + 1.0


def _running_counts(current: Plan | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in current.replicas if current else ():
        key = f"{r.demand_klass}|{r.key}"
        out[key] = out.get(key, 0) + 1
    return out
