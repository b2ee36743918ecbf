"""Placement benchmark: optimiser vs baselines, exactness, robustness, scaling, Mélange peer.

    PYTHONPATH=$PWD python bench/placement.py [--quick] [--melange-python /tmp/aibrix-venv/bin/python]

Writes bench/results/placement.json and prints markdown rows (bench/ROWS-placement.md).
Sections:
1. reference fleet (bench/data/reference-fleet.yaml, as given): tokens/yuan of the MILP
   and of each baseline on the same candidates, ratio, solve time; marginal and full cost;
2. exactness: MILP vs exhaustive search on tiny fleets, and the class-aggregated MILP
   vs the un-aggregated one (one class per node) on the reference fleet: gap 0 expected;
3. robustness: per-class real throughput drawn from -30%..+10% of predicted, share of
   demand served within SLO, same draws for every strategy;
4. scaling: synthetic fleets of 100 / 1,000 / 10,000 devices, 12 models: plan time and
   gap against a long reference solve;
5. peer: AIBrix's Mélange solver on the same per-demand inputs (uncapacitated, as
   Mélange has no availability constraint), cost and solve time side by side.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from placement_synth import synthetic, tiny

from bench.common import machine
from scheduler.cost import CostBasis
from scheduler.domain import DeviceClass, Fleet, Plan
from scheduler.fleetfile import FleetFile, load_fleet_file
from scheduler.placement import (
    BASELINES,
    PlacementPolicy,
    plan,
    robustness,
    served_share,
    solve_candidates,
)
from scheduler.placement.assemble import NodePool
from scheduler.placement.candidates import build_candidates

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "data" / "reference-fleet.yaml"


# ---- 1. reference fleet -----------------------------------------------------------------


def reference(ff: FleetFile, metrics: dict[str, float], rows: list[str]) -> dict[str, Plan]:
    plans: dict[str, Plan] = {}
    for basis in CostBasis:
        cache: dict[tuple[object, ...], Any] = {}
        started = time.perf_counter()
        best = plan(ff.fleet, ff.demands, ff.models, PlacementPolicy(cost_basis=basis), cache=cache)
        wall = time.perf_counter() - started
        p = f"reference_{basis}"
        metrics[f"{p}_optimiser_yuan_per_hour"] = best.yuan_per_hour
        metrics[f"{p}_optimiser_tokens_per_yuan"] = best.tokens_per_yuan
        metrics[f"{p}_optimiser_plan_seconds"] = wall
        metrics[f"{p}_optimiser_devices"] = sum(r.tp for r in best.replicas)
        plans[f"{basis}/milp"] = best
        for s in BASELINES:
            other = plan(
                ff.fleet,
                ff.demands,
                ff.models,
                PlacementPolicy(cost_basis=basis, strategy=s),
                cache=cache,
            )
            plans[f"{basis}/{s}"] = other
            name = str(s).replace("-", "_")
            metrics[f"{p}_{name}_yuan_per_hour"] = other.yuan_per_hour
            metrics[f"{p}_{name}_tokens_per_yuan"] = other.tokens_per_yuan
            metrics[f"{p}_{name}_served_share"] = (
                other.output_tokens_per_s / best.output_tokens_per_s
            )
            ratio = best.tokens_per_yuan / other.tokens_per_yuan if other.tokens_per_yuan else 0
            metrics[f"{p}_optimiser_over_{name}_tokens_per_yuan_ratio"] = ratio
            rows.append(
                f"| placement: reference fleet, {basis} cost, optimiser vs {s} | tokens/yuan "
                f"{best.tokens_per_yuan:,.0f} vs {other.tokens_per_yuan:,.0f} | "
                f"{ratio:.2f}x | plan {wall:.2f} s (2 cores) |"
            )
    return plans


# ---- 2. exactness -------------------------------------------------------------------------


def exhaustive_gap(seeds: int) -> tuple[float, int]:
    """Max relative cost gap MILP vs exhaustive search over tiny fleets; instances checked."""
    worst, checked = 0.0, 0
    for seed in range(seeds):
        ff = tiny(seed)
        cands = build_candidates(
            ff.fleet.classes,
            ff.demands,
            ff.models,
            basis=CostBasis.MARGINAL,
            slo_margin=0.85,
            tp_wanted=(1, 2, 4),
        )
        ks = cands.candidates
        if not ks or len(ks) > 8:
            continue
        total = sum(d.output_tokens_per_s for d in ff.demands)
        best = None
        for counts in itertools.product(*[range(c.device_class.count // c.tp + 1) for c in ks]):
            pools = {dc.id: NodePool(dc) for dc in ff.fleet.classes}
            ok = all(
                pools[c.device_class.id].take(c.tp) is not None
                for c, n in sorted(zip(ks, counts, strict=True), key=lambda cn: -cn[0].tp)
                for _ in range(n)
            )
            cap = [0.0] * len(ff.demands)
            for c, n in zip(ks, counts, strict=True):
                cap[c.demand_index] += n * c.capacity_tokens_per_s
            full = all(cap[i] >= d.output_tokens_per_s for i, d in enumerate(ff.demands))
            if ok and full:
                cost = sum(c.yuan_per_hour * n for c, n in zip(ks, counts, strict=True))
                best = cost if best is None else min(best, cost)
        if best is None:
            continue  # not fully servable: the exactness claim is about complete plans
        got = solve_candidates(ff.fleet, ff.demands, cands, PlacementPolicy(mip_rel_gap=0.0))
        assert abs(got.output_tokens_per_s - total) < 1e-6 * total
        worst = max(worst, (got.yuan_per_hour - best) / best)
        checked += 1
    return worst, checked


def unaggregated(ff: FleetFile) -> Fleet:
    """The same fleet with one class per node (what aggregation saves the solver)."""
    classes: list[DeviceClass] = []
    for dc in ff.fleet.classes:
        full, rest = divmod(dc.count, dc.per_node)
        sizes = [dc.per_node] * full + ([rest] if rest else [])
        classes += [replace(dc, id=f"{dc.id}#{i}", count=n) for i, n in enumerate(sizes)]
    return replace(ff.fleet, classes=tuple(classes))


def exactness(ff: FleetFile, metrics: dict[str, float], rows: list[str], seeds: int) -> None:
    gap, checked = exhaustive_gap(seeds)
    metrics["exactness_exhaustive_instances"] = checked
    metrics["exactness_exhaustive_max_gap_ratio"] = gap
    agg = plan(ff.fleet, ff.demands, ff.models, PlacementPolicy(mip_rel_gap=0.0))
    flat_fleet = unaggregated(ff)
    flat = plan(
        flat_fleet, ff.demands, ff.models, PlacementPolicy(mip_rel_gap=0.0, time_limit_s=120)
    )
    metrics["exactness_unaggregated_classes"] = len(flat_fleet.classes)
    metrics["exactness_unaggregated_proven_optimal"] = float(flat.status == "optimal")
    metrics["exactness_aggregated_seconds"] = agg.solve_seconds
    metrics["exactness_unaggregated_seconds"] = flat.solve_seconds
    metrics["exactness_aggregated_vs_unaggregated_gap_ratio"] = (
        agg.yuan_per_hour - flat.yuan_per_hour
    ) / flat.yuan_per_hour
    rows.append(
        f"| placement: exactness | gap vs exhaustive search {gap:.1e} over {checked} tiny fleets; "
        f"aggregated vs per-node MILP ({len(flat_fleet.classes)} classes) gap "
        f"{metrics['exactness_aggregated_vs_unaggregated_gap_ratio']:.1e} | "
        f"{flat.solve_seconds / max(agg.solve_seconds, 1e-9):.0f}x faster aggregated | "
        f"{agg.solve_seconds:.2f} s vs {flat.solve_seconds:.2f} s"
        f"{'' if flat.status == 'optimal' else ' (per-node MILP stopped at its time limit)'} |"
    )


# ---- 3. robustness ------------------------------------------------------------------------


def robust(
    ff: FleetFile, plans: dict[str, Plan], metrics: dict[str, float], rows: list[str]
) -> None:
    rng = random.Random(7)
    ids = [c.id for c in ff.fleet.classes]
    draws = [{c: rng.uniform(0.7, 1.1) for c in ids} for _ in range(500)]
    for name in ["marginal/milp", *(f"marginal/{s}" for s in BASELINES)]:
        p = plans[name]
        shares = sorted(served_share(p, ff.demands, f) for f in draws)
        key = name.split("/")[1].replace("-", "_")
        metrics[f"robustness_{key}_served_share_mean"] = statistics.fmean(shares)
        metrics[f"robustness_{key}_served_share_p5"] = shares[len(shares) // 20]
        rep = robustness(p, ff.demands, shortfalls=(0.2, 0.3))
        metrics[f"robustness_{key}_served_share_at_minus20pct"] = rep.uniform[0.2]
        metrics[f"robustness_{key}_served_share_at_minus30pct"] = rep.uniform[0.3]
    # the price of robustness: plan on 70% of predictions instead of 85%
    wide = plan(ff.fleet, ff.demands, ff.models, PlacementPolicy(slo_margin=0.70))
    shares = sorted(served_share(wide, ff.demands, f) for f in draws)
    metrics["robustness_milp_margin70_yuan_per_hour"] = wide.yuan_per_hour
    metrics["robustness_milp_margin70_served_share_mean"] = statistics.fmean(shares)
    metrics["robustness_milp_margin70_served_share_p5"] = shares[len(shares) // 20]
    metrics["robustness_milp_margin70_served_share_at_minus30pct"] = robustness(
        wide, ff.demands, shortfalls=(0.3,)
    ).uniform[0.3]
    m = metrics
    rows.append(
        "| placement: robustness, optimiser planning on 70% of predictions | "
        f"served {m['robustness_milp_margin70_served_share_mean']:.1%} mean, "
        f"{m['robustness_milp_margin70_served_share_p5']:.1%} p5, "
        f"{m['robustness_milp_margin70_served_share_at_minus30pct']:.1%} at -30% | "
        f"{wide.yuan_per_hour:.2f} yuan/h vs {plans['marginal/milp'].yuan_per_hour:.2f} at 85% "
        f"and {plans['marginal/newest-first'].yuan_per_hour:.2f} newest-first | |"
    )
    rows.append(
        "| placement: robustness (real throughput -30%..+10% per class, 500 draws) | "
        f"optimiser served {m['robustness_milp_served_share_mean']:.1%} mean, "
        f"{m['robustness_milp_served_share_p5']:.1%} p5 | newest-first "
        f"{m['robustness_newest_first_served_share_mean']:.1%}, cheapest-first "
        f"{m['robustness_cheapest_first_served_share_mean']:.1%}, single-type "
        f"{m['robustness_single_type_served_share_mean']:.1%} | optimiser at -20%: "
        f"{m['robustness_milp_served_share_at_minus20pct']:.1%}, at -30%: "
        f"{m['robustness_milp_served_share_at_minus30pct']:.1%} |"
    )


# ---- 4. scaling ---------------------------------------------------------------------------

SCALES = ((100, 0.01, 2.0), (1000, 0.01, 2.0), (10000, 0.03, 10.0))


def scaling(metrics: dict[str, float], rows: list[str], seeds: int, load: float) -> None:
    for n, gap, limit in SCALES:
        times, gaps, proven = [], [], []
        for seed in range(seeds):
            ff = synthetic(n, seed=seed, load_tokens_per_device=load)
            cache: dict[tuple[object, ...], Any] = {}
            started = time.perf_counter()
            fast = plan(
                ff.fleet,
                ff.demands,
                ff.models,
                PlacementPolicy(mip_rel_gap=gap, time_limit_s=limit),
                cache=cache,
            )
            times.append(time.perf_counter() - started)
            ref = plan(
                ff.fleet,
                ff.demands,
                ff.models,
                PlacementPolicy(mip_rel_gap=1e-4, time_limit_s=120),
                cache=cache,
            )
            # gap to the best of a long solve (same service level) and HiGHS's proven bound
            gaps.append(max(fast.yuan_per_hour - ref.yuan_per_hour, 0.0) / ref.yuan_per_hour)
            proven.append(fast.mip_gap)
            if seed == 0:
                metrics[f"scaling_{n}_classes"] = len(ff.fleet.classes)
                metrics[f"scaling_{n}_candidates_reference_served_share"] = (
                    fast.output_tokens_per_s / sum(d.output_tokens_per_s for d in ff.demands)
                )
        metrics[f"scaling_{n}_devices_plan_seconds_max"] = max(times)
        metrics[f"scaling_{n}_devices_plan_seconds_median"] = statistics.median(times)
        metrics[f"scaling_{n}_devices_gap_vs_long_solve_max_ratio"] = max(gaps)
        metrics[f"scaling_{n}_devices_highs_proven_gap_max_ratio"] = max(proven)
        rows.append(
            f"| placement: scaling, {n:,} devices ({metrics[f'scaling_{n}_classes']:.0f} classes, "
            f"12 models), {seeds} fleets | plan {statistics.median(times):.2f} s median, "
            f"{max(times):.2f} s max | gap vs long solve {max(gaps):.2%} max "
            f"(target {gap:.0%}) | proven gap {max(proven):.2%} |"
        )


# ---- 5. Mélange peer ----------------------------------------------------------------------


def melange(ff: FleetFile, python: str, metrics: dict[str, float], rows: list[str]) -> None:
    """Per demand, uncapacitated: the same shapes (class, tp) with the same costs/tputs."""
    big = replace(
        ff.fleet, classes=tuple(replace(c, count=c.count * 1000) for c in ff.fleet.classes)
    )
    cands = build_candidates(
        big.classes,
        ff.demands,
        ff.models,
        basis=CostBasis.MARGINAL,
        slo_margin=0.85,
        tp_wanted=(1, 2, 4, 8),
    )
    problems = []
    for i, d in enumerate(ff.demands):
        types = {
            f"{c.device_class.id}/tp{c.tp}": {
                "cost": c.yuan_per_hour,
                "tput": c.capacity_tokens_per_s,
            }
            for c in cands.for_demand(i)
        }
        problems.append({"rate": d.output_tokens_per_s, "types": types})
    started = time.perf_counter()
    done = subprocess.run(
        [python, str(HERE / "placement_melange_peer.py")],
        input=json.dumps(problems),
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    peer_wall = time.perf_counter() - started
    peer = json.loads(done.stdout)
    started = time.perf_counter()
    ours = solve_candidates(big, ff.demands, cands, PlacementPolicy(mip_rel_gap=0.0))
    our_wall = time.perf_counter() - started
    peer_cost = sum(p["cost"] for p in peer if p["cost"] is not None)
    peer_solve = sum(p["seconds"] for p in peer)
    # Mélange ignores availability: how many devices beyond what each class has
    over = 0
    for p in peer:
        for name, n in (p["counts"] or {}).items():
            cid, tp = name.rsplit("/tp", 1)
            dc = next(c for c in ff.fleet.classes if c.id == cid)
            over += max(n * int(tp) - dc.count, 0)
    metrics["melange_peer_yuan_per_hour"] = peer_cost
    metrics["melange_ours_uncapacitated_yuan_per_hour"] = ours.yuan_per_hour
    metrics["melange_peer_over_ours_cost_ratio"] = peer_cost / ours.yuan_per_hour
    metrics["melange_peer_solve_seconds"] = peer_solve
    metrics["melange_peer_wall_seconds"] = peer_wall
    metrics["melange_ours_solve_seconds"] = our_wall
    metrics["melange_peer_devices_beyond_availability"] = over
    rows.append(
        f"| placement: peer AIBrix Mélange (CBC, slice factor 8), reference demand, "
        f"uncapacitated | Mélange {peer_cost:.2f} yuan/h vs ours {ours.yuan_per_hour:.2f} "
        f"| {peer_cost / ours.yuan_per_hour:.3f}x cost | solve {peer_solve:.2f} s vs "
        f"{our_wall:.2f} s; Mélange plan needs {over} devices beyond the real fleet |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer seeds (smoke run)")
    ap.add_argument("--melange-python", default="/tmp/aibrix-venv/bin/python")
    ap.add_argument("--load", type=float, default=150.0, help="synthetic demand per device")
    args = ap.parse_args()
    ff = load_fleet_file(REFERENCE)
    metrics: dict[str, float] = {}
    rows: list[str] = []
    plans = reference(ff, metrics, rows)
    exactness(ff, metrics, rows, seeds=10 if args.quick else 40)
    robust(ff, plans, metrics, rows)
    scaling(metrics, rows, seeds=1 if args.quick else 3, load=args.load)
    notes = []
    if Path(args.melange_python).exists():
        melange(ff, args.melange_python, metrics, rows)
    else:
        notes.append(f"Mélange peer skipped: {args.melange_python} not found")
    body = {
        "benchmark": "placement",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "notes": notes,
    }
    out = HERE / "results" / "placement.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(body, indent=2) + "\n")
    print("\n".join(rows))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
