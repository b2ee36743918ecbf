"""Filter and score: the replica shapes each demand could use, with their price and throughput.

A candidate is (demand, model variant = quant, device class, tp). Filters drop what
cannot serve the demand (region, engine support, memory, SLO); the scorer is the
performance model at the largest batch meeting the SLO, derated by the policy's SLO
margin, and the cost model's yuan/hour for ``tp`` devices.

Dominance pruning keeps the candidate set small without losing optimality:
* same (demand, class, tp): the same devices at the same price, so only the variant
  with the highest throughput can be worth using;
* tp = t is dominated by tp = s (s divides t) when t/s replicas of tp = s give at least
  the throughput of one tp = t: same devices, same price, and they fit wherever it fits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scheduler.cost import CostBasis, device_yuan_per_hour
from scheduler.domain import Demand, DeviceClass, DeviceKind, ModelArch, ModelSpec, Quant
from scheduler.perf import PerfResult, max_batch_at_slo


@dataclass(frozen=True)
class Candidate:
    """One replica shape for one demand, scored."""

    demand_index: int
    quant: Quant
    device_class: DeviceClass
    tp: int
    perf: PerfResult  # at the largest batch meeting the demand's SLO
    yuan_per_hour: float  # tp devices on the policy's cost basis
    capacity_tokens_per_s: float  # perf.decode_tokens_per_s x SLO margin: what we plan on

    @property
    def tokens_per_device(self) -> float:
        return self.capacity_tokens_per_s / self.tp

    @property
    def yuan_per_token_s(self) -> float:
        return self.yuan_per_hour / self.capacity_tokens_per_s


@dataclass(frozen=True)
class Rejection:
    """Why a (demand, class, quant, tp) was dropped, and which constraint it was."""

    demand_index: int
    class_id: str
    quant: Quant
    tp: int
    binding: str  # "region", "support", "memory", "slo"
    reason: str


@dataclass
class CandidateSet:
    candidates: list[Candidate] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    def for_demand(self, index: int) -> list[Candidate]:
        return [c for c in self.candidates if c.demand_index == index]


def tp_options(dc: DeviceClass, wanted: Sequence[int]) -> list[int]:
    """TP degrees a class allows: GPUs only, whole-node groups (tp divides per_node)."""
    if dc.spec.kind is DeviceKind.CPU:
        return [1]
    return [t for t in wanted if t <= dc.count and dc.per_node % t == 0]


def _binding(reason: str) -> str:
    if reason.startswith("SLO"):
        return "slo"
    if "memory" in reason or "KV cache" in reason or "max_model_len" in reason:
        return "memory"
    return "support"


# (spec, efficiency, measured quants, arch, quant, tp, prompt, output, tpot, ttft) -> result
PerfCache = dict[tuple[object, ...], PerfResult]


def _scored(
    dc: DeviceClass, arch: ModelArch, quant: Quant, tp: int, demand: Demand, cache: PerfCache
) -> PerfResult:
    eff = tuple(sorted(dc.efficiency.items()))
    key = (
        dc.spec,
        eff,
        dc.measured_quants,
        arch,
        quant,
        tp,
        demand.prompt_tokens,
        demand.output_tokens,
        demand.tpot_ms,
        demand.ttft_ms,
    )
    got = cache.get(key)
    if got is None:
        got = max_batch_at_slo(
            arch,
            quant,
            dc.spec,
            demand.prompt_tokens,
            demand.output_tokens,
            demand.tpot_ms,
            demand.ttft_ms,
            tp=tp,
            efficiency=dc.efficiency,
            measured_quants=dc.measured_quants,
        )
        cache[key] = got
    return got


def build_candidates(
    classes: Sequence[DeviceClass],
    demands: Sequence[Demand],
    models: Mapping[str, ModelSpec],
    *,
    basis: CostBasis,
    slo_margin: float,
    tp_wanted: Sequence[int],
    hour: int | None = None,
    cache: PerfCache | None = None,
) -> CandidateSet:
    """Every feasible (demand, quant, class, tp), scored; dominated ones pruned."""
    cache = {} if cache is None else cache
    out = CandidateSet()
    device_cost = {dc.id: device_yuan_per_hour(dc, basis, hour) for dc in classes}
    for i, demand in enumerate(demands):
        spec = models.get(demand.model)
        if spec is None or demand.output_tokens_per_s <= 0:
            continue
        for dc in classes:
            if dc.count <= 0:
                continue
            if demand.regions and dc.site.region not in demand.regions:
                out.rejections.append(
                    Rejection(
                        i,
                        dc.id,
                        spec.allowed_quants[0],
                        1,
                        "region",
                        f"site {dc.site.name} is in region {dc.site.region}",
                    )
                )
                continue
            best: dict[int, Candidate] = {}
            for quant in spec.allowed_quants:
                for tp in tp_options(dc, tp_wanted):
                    perf = _scored(dc, spec.arch, quant, tp, demand, cache)
                    if not perf.ok:
                        out.rejections.append(
                            Rejection(i, dc.id, quant, tp, _binding(perf.reason), perf.reason)
                        )
                        continue
                    cand = Candidate(
                        demand_index=i,
                        quant=quant,
                        device_class=dc,
                        tp=tp,
                        perf=perf,
                        yuan_per_hour=tp * device_cost[dc.id],
                        capacity_tokens_per_s=perf.decode_tokens_per_s * slo_margin,
                    )
                    if (
                        tp not in best
                        or cand.capacity_tokens_per_s > best[tp].capacity_tokens_per_s
                    ):
                        best[tp] = cand
            out.candidates.extend(_undominated(best))
    return out


def _undominated(best_by_tp: Mapping[int, Candidate]) -> list[Candidate]:
    kept: list[Candidate] = []
    for tp in sorted(best_by_tp):
        cand = best_by_tp[tp]
        dominated = any(
            tp % k.tp == 0 and (tp // k.tp) * k.capacity_tokens_per_s >= cand.capacity_tokens_per_s
            for k in kept
        )
        if not dominated:
            kept.append(cand)
    return kept
