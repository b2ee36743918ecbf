"""From chosen replica counts to a Plan: node assignment, explanations, churn report.

Every strategy (the MILP and the baselines) ends here, so plans are comparable.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scheduler.domain import (
    Demand,
    DeviceClass,
    Plan,
    PlanStatus,
    Replica,
    Unplaced,
)
from scheduler.placement.candidates import Candidate, CandidateSet


class NodePool:
    """Free devices per node of one class: full nodes of ``per_node``, then a partial one.

    Tensor-parallel groups never span nodes. Best fit (the fullest node that still
    has room) keeps whole nodes free for large groups.
    """

    def __init__(self, dc: DeviceClass) -> None:
        full, rest = divmod(dc.count, dc.per_node)
        self.free: list[int] = [dc.per_node] * full + ([rest] if rest else [])
        self.node_ids: tuple[str, ...] = dc.node_ids

    def groups_available(self, tp: int) -> int:
        return sum(f // tp for f in self.free)

    def take(self, tp: int, prefer: str | None = None) -> int | None:
        """Reserve ``tp`` devices on one node; its index, or None when no node has room."""
        if prefer is not None and prefer in self.node_ids:
            i = self.node_ids.index(prefer)
            if i < len(self.free) and self.free[i] >= tp:
                self.free[i] -= tp
                return i
            return None
        fits = [(f, i) for i, f in enumerate(self.free) if f >= tp]
        if not fits:
            return None
        _, i = min(fits)
        self.free[i] -= tp
        return i

    def node_id(self, index: int) -> str | None:
        return self.node_ids[index] if index < len(self.node_ids) else None


def replica_of(cand: Candidate, demand: Demand, node_id: str | None) -> Replica:
    assert cand.perf.engine is not None
    return Replica(
        model=demand.model,
        quant=cand.quant,
        device_class_id=cand.device_class.id,
        engine=cand.perf.engine,
        tp=cand.tp,
        node_id=node_id,
        dtype=cand.perf.dtype,
        predicted_output_tokens_per_s=cand.perf.decode_tokens_per_s,
        yuan_per_hour=cand.yuan_per_hour,
        batch=cand.perf.batch,
        demand_klass=demand.klass,
    )


def assign_nodes(
    chosen: Sequence[tuple[Candidate, int]],
    demands: Sequence[Demand],
    current: Plan | None,
) -> tuple[list[tuple[Candidate, Replica]], list[str]]:
    """Place chosen replicas on nodes; running replicas keep their node where possible.

    Returns (candidate, replica) pairs and notes about replicas that could not be packed.
    """
    pools: dict[str, NodePool] = {}
    # {replica key: [node ids of running replicas]} from the current plan
    running: dict[str, list[str | None]] = {}
    for r in current.replicas if current else ():
        running.setdefault(_rkey(r.model, r.demand_klass, r.key), []).append(r.node_id)
    placed: list[tuple[Candidate, Replica]] = []
    notes: list[str] = []
    # largest groups first: with tp sizes dividing per_node, this never fragments
    order = sorted(chosen, key=lambda cn: -cn[0].tp)
    pending: list[tuple[Candidate, Demand]] = []
    for cand, n in order:
        dc = cand.device_class
        pool = pools.setdefault(dc.id, NodePool(dc))
        demand = demands[cand.demand_index]
        probe = replica_of(cand, demand, None)
        keep = running.get(_rkey(demand.model, demand.klass, probe.key), [])
        for _ in range(n):
            prefer = keep.pop(0) if keep else None
            idx = pool.take(cand.tp, prefer) if prefer is not None else None
            if idx is None:
                pending.append((cand, demand))
            else:
                placed.append((cand, replica_of(cand, demand, pool.node_id(idx))))
    for cand, demand in sorted(pending, key=lambda cd: -cd[0].tp):
        idx = pools[cand.device_class.id].take(cand.tp)
        if idx is None:
            notes.append(f"could not pack a tp={cand.tp} replica on {cand.device_class.id}")
            continue
        placed.append((cand, replica_of(cand, demand, pools[cand.device_class.id].node_id(idx))))
    return placed, notes


def _rkey(model: str, klass: str, key: str) -> str:
    return f"{klass}|{key}"


@dataclass(frozen=True)
class PlanDiff:
    """What applying ``new`` after ``old`` does to running replicas."""

    kept: int
    started: tuple[str, ...] = field(default_factory=tuple)  # "key@node"
    stopped: tuple[str, ...] = field(default_factory=tuple)

    @property
    def moved(self) -> int:
        return min(len(self.started), len(self.stopped))


def diff_plans(old: Plan | None, new: Plan) -> PlanDiff:
    """Replicas kept, started and stopped going from ``old`` to ``new`` (by key and node)."""

    def tags(plan: Plan | None) -> Counter[str]:
        return Counter(
            f"{r.demand_klass}|{r.key}@{r.node_id or '-'}" for r in (plan.replicas if plan else ())
        )

    before, after = tags(old), tags(new)
    kept = sum((before & after).values())
    return PlanDiff(
        kept=kept,
        started=tuple(sorted((after - before).elements())),
        stopped=tuple(sorted((before - after).elements())),
    )


def explain_unplaced(
    index: int,
    demand: Demand,
    missing_tokens_per_s: float,
    cands: CandidateSet,
    classes: Sequence[DeviceClass],
) -> Unplaced:
    """Say which constraint binds for an under-served demand and how much is missing."""
    mine = cands.for_demand(index)
    if mine:
        best = max(mine, key=lambda c: c.tokens_per_device)
        devices = math.ceil(missing_tokens_per_s / best.tokens_per_device)
        used = sorted({c.device_class.id for c in mine})
        return Unplaced(
            model=demand.model,
            klass=demand.klass,
            missing_output_tokens_per_s=missing_tokens_per_s,
            binding="availability",
            reason=(
                f"C2 availability binds: every class that can serve it ({', '.join(used[:6])}"
                f"{', ...' if len(used) > 6 else ''}) is fully used; missing "
                f"{missing_tokens_per_s:,.0f} tokens/s ~ {devices} more "
                f"{best.device_class.spec.model} devices ({best.quant}, tp={best.tp}, "
                f"{best.tokens_per_device:,.0f} tokens/s each at the SLO)"
            ),
        )
    return _explain_no_candidate(index, demand, missing_tokens_per_s, cands, classes)


def _explain_no_candidate(
    index: int,
    demand: Demand,
    missing_tokens_per_s: float,
    cands: CandidateSet,
    classes: Sequence[DeviceClass],
) -> Unplaced:
    rej = [r for r in cands.rejections if r.demand_index == index]
    if not rej:
        return Unplaced(
            demand.model,
            missing_tokens_per_s,
            "no device class in the fleet",
            demand.klass,
            "region",
        )
    # the most telling constraint: slo > memory > support > region (how far a shape got)
    rank = {"slo": 0, "memory": 1, "support": 2, "region": 3}
    binding = min((r.binding for r in rej), key=rank.__getitem__)
    examples: dict[str, str] = {}
    for r in rej:
        if r.binding == binding and r.class_id not in examples:
            examples[r.class_id] = f"{r.class_id} {r.quant} tp={r.tp}: {r.reason}"
    regions = ", ".join(demand.regions) or "any region"
    text = "; ".join(list(examples.values())[:3])
    return Unplaced(
        model=demand.model,
        klass=demand.klass,
        missing_output_tokens_per_s=missing_tokens_per_s,
        binding=binding,
        reason=f"no device in {regions} can serve it within its SLO ({binding} binds): {text}",
    )


def build_plan(
    chosen: Sequence[tuple[Candidate, int]],
    demands: Sequence[Demand],
    cands: CandidateSet,
    classes: Sequence[DeviceClass],
    *,
    current: Plan | None,
    solver: str,
    proven_optimal: bool,
    solve_seconds: float,
    mip_gap: float,
    notes: Sequence[str] = (),
) -> Plan:
    """Assign nodes, measure what is served, explain the rest; one Plan for any strategy."""
    pairs, pack_notes = assign_nodes([(c, n) for c, n in chosen if n > 0], demands, current)
    capacity: dict[int, float] = {}
    for cand, _ in pairs:
        i = cand.demand_index
        capacity[i] = capacity.get(i, 0.0) + cand.capacity_tokens_per_s
    served = 0.0
    unplaced: list[Unplaced] = []
    for i, d in enumerate(demands):
        got = min(capacity.get(i, 0.0), d.output_tokens_per_s)
        served += got
        missing = d.output_tokens_per_s - got
        if missing > 1e-6 * max(d.output_tokens_per_s, 1.0):
            unplaced.append(explain_unplaced(i, d, missing, cands, classes))
    replicas = tuple(r for _, r in pairs)
    if unplaced:
        status = PlanStatus.PARTIAL if replicas else PlanStatus.INFEASIBLE
    else:
        status = PlanStatus.OPTIMAL if proven_optimal else PlanStatus.FEASIBLE
    plan = Plan(
        status=status,
        replicas=replicas,
        unplaced=tuple(unplaced),
        yuan_per_hour=sum(r.yuan_per_hour for r in replicas),
        output_tokens_per_s=served,
        solver=solver,
        solve_seconds=solve_seconds,
        mip_gap=mip_gap,
        notes=tuple(notes) + tuple(pack_notes),
    )
    if current is not None:
        delta = diff_plans(current, plan)
        change = (
            f"churn: kept {delta.kept}, started {len(delta.started)}, stopped {len(delta.stopped)}"
        )
        plan = Plan(**{**plan.__dict__, "notes": (*plan.notes, change)})
    return plan


def served_share(plan: Plan, demands: Sequence[Demand], factors: Mapping[str, float]) -> float:
    """Share of demand served within SLO if each class's real throughput is factor x predicted.

    A replica's SLO throughput is its predicted throughput at the SLO batch (no margin);
    it scales with the factor. Capacity pools per (model, demand class).
    """
    cap: dict[tuple[str, str], float] = {}
    for r in plan.replicas:
        k = (r.model, r.demand_klass)
        factor = factors.get(r.device_class_id, 1.0)
        cap[k] = cap.get(k, 0.0) + r.predicted_output_tokens_per_s * factor
    want: dict[tuple[str, str], float] = {}
    for d in demands:
        want[(d.model, d.klass)] = want.get((d.model, d.klass), 0.0) + d.output_tokens_per_s
    total = sum(want.values())
    if total <= 0:
        return 1.0
    return sum(min(cap.get(k, 0.0), w) for k, w in want.items()) / total
