"""Baselines the optimiser must beat, on the same candidates (same filters, same scores).

* newest-first: fill each demand from the newest devices down (what an operator who
  trusts newer hardware does);
* cheapest-first: fill from the devices with the lowest yuan/hour per device;
* single-type: per demand, the one device model (across sites) that serves it at the
  lowest cost, Mélange's homogeneous baseline.

Demands are served in the order given; each uses what earlier ones left.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from scheduler.domain import Demand, DeviceClass
from scheduler.placement.assemble import NodePool
from scheduler.placement.candidates import Candidate

Chosen = list[tuple[Candidate, int]]


def _fill(
    demand: Demand, ordered: Sequence[Candidate], pools: dict[str, NodePool]
) -> tuple[Chosen, float]:
    """Take replicas from ``ordered`` candidates until the demand is met; (chosen, served)."""
    need = demand.output_tokens_per_s
    chosen: Chosen = []
    served = 0.0
    for cand in ordered:
        if served >= need:
            break
        pool = pools[cand.device_class.id]
        want = math.ceil((need - served) / cand.capacity_tokens_per_s)
        got = 0
        while got < want and pool.take(cand.tp) is not None:
            got += 1
        if got:
            chosen.append((cand, got))
            served += got * cand.capacity_tokens_per_s
    return chosen, served


def _best_shape_first(cands: Sequence[Candidate]) -> list[Candidate]:
    # within a class, the shape with most tokens/s per device first
    return sorted(cands, key=lambda c: -c.tokens_per_device)


def greedy(
    cands_by_demand: Sequence[Sequence[Candidate]],
    demands: Sequence[Demand],
    classes: Sequence[DeviceClass],
    order: Callable[[Candidate], tuple[float, ...]],
) -> Chosen:
    """Fill each demand in turn from candidates sorted by ``order``."""
    pools = {dc.id: NodePool(dc) for dc in classes}
    chosen: Chosen = []
    for demand, cands in zip(demands, cands_by_demand, strict=True):
        ordered = sorted(_best_shape_first(cands), key=order)
        got, _ = _fill(demand, ordered, pools)
        chosen.extend(got)
    return chosen


def newest_first(c: Candidate) -> tuple[float, ...]:
    """Newest release year first; GPUs before CPUs; then tokens per device."""
    spec = c.device_class.spec
    return (-(spec.release_year or 0), float(spec.kind == "cpu"), -c.tokens_per_device)


def cheapest_first(c: Candidate) -> tuple[float, ...]:
    """Lowest yuan/hour per device first; then tokens per device."""
    return (c.yuan_per_hour / c.tp, -c.tokens_per_device)


def single_type(
    cands_by_demand: Sequence[Sequence[Candidate]],
    demands: Sequence[Demand],
    classes: Sequence[DeviceClass],
) -> Chosen:
    """Per demand, the single device model that serves it cheapest (else serves most)."""
    pools = {dc.id: NodePool(dc) for dc in classes}
    chosen: Chosen = []
    for demand, cands in zip(demands, cands_by_demand, strict=True):
        by_type: dict[str, list[Candidate]] = {}
        for c in cands:
            by_type.setdefault(c.device_class.spec.model, []).append(c)
        best: tuple[tuple[float, float], Chosen, str] | None = None
        for model, group in by_type.items():
            trial = {cid: _copy(p) for cid, p in pools.items()}
            got, served = _fill(demand, sorted(group, key=lambda c: c.yuan_per_token_s), trial)
            cost = sum(c.yuan_per_hour * n for c, n in got)
            short = max(demand.output_tokens_per_s - served, 0.0)
            score = (short, cost)  # serve it all first, then cheapest
            if best is None or score < best[0]:
                best = (score, got, model)
        if best is None:
            continue
        for cand, n in best[1]:
            for _ in range(n):
                pools[cand.device_class.id].take(cand.tp)
        chosen.extend(best[1])
    return chosen


def _copy(pool: NodePool) -> NodePool:
    clone = NodePool.__new__(NodePool)
    clone.free = list(pool.free)
    clone.node_ids = pool.node_ids
    return clone
