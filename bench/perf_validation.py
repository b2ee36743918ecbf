"""Performance-model validation against real vLLM CPU runs on generated Llama models.

    PYTHONPATH=$PWD python bench/perf_validation.py [--out-dir .data/perf-validation]

For 5 generated model sizes x batch 1/4/16, vLLM offline (float32, enforce_eager,
VLLM_CPU_KVCACHE_SPACE=1, through workers.probe.probe_engine in a subprocess) measures
decode tokens/s. The roofline predicts the same points from this machine's measured
memory bandwidth and fp32 matmul rate:

* baseline: default efficiency factors (what an unprofiled device gets);
* fitted, leave-one-model-out: efficiency fitted (``fit_efficiency``) on the other two
  models, predicting the held-out one: the honest accuracy of a profile-fitted model;
* fitted on all points (in-sample), for reference.

Writes bench/results/perf_validation.json; prints markdown rows. Goal: decode MAPE <= 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import machine
from scheduler.catalog import arch_from_hf_config
from scheduler.domain import GIB, DeviceKind, DeviceSpec, ModelArch, Quant
from scheduler.perf import MeasuredPoint, Workload, fit_efficiency, mape, predict

HERE = Path(__file__).resolve().parent
BATCHES = (1, 4, 16)
DECODE_TOKENS = 64
# (hidden, layers, heads, intermediate): heads keep head_dim = 64 (vLLM CPU attention)
SIZES = (
    (256, 4, 4, 688),
    (512, 8, 8, 1376),
    (768, 8, 12, 2064),
    (1024, 8, 16, 2752),
    (1536, 12, 24, 4128),
)


def local_cpu(bandwidth: float, fp32_flops: float) -> DeviceSpec:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return DeviceSpec(
        model="local CPU",
        kind=DeviceKind.CPU,
        memory_bytes=min(pages, 8 * GIB),
        memory_bandwidth_bytes_per_s=bandwidth,
        fp32_flops=fp32_flops,
        cores=os.cpu_count() or 1,
    )


def measure(out_dir: Path) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Machine rates and vLLM decode/prefill rows per model (real runs)."""
    from workers.demo_model import generate_llama
    from workers.probe import probe_engine, probe_matmul
    from workers.profiler import memory_bandwidth_bytes_per_s

    env = dict(os.environ)
    rates = {
        # STREAM copy counts read + write; a decode step only reads weights and KV
        "memory_bandwidth_bytes_per_s": memory_bandwidth_bytes_per_s(seconds=2.0),
        "fp32_flops": probe_matmul("float32", seconds=1.0, env=env).flops_per_s,
    }
    runs = []
    for hidden, layers, heads, inter in SIZES:
        model_dir = generate_llama(
            out_dir / f"llama-h{hidden}-l{layers}",
            hidden=hidden,
            layers=layers,
            heads=heads,
            intermediate=inter,
        )
        probe = probe_engine(
            model_dir,
            "float32",
            batches=BATCHES,
            decode_tokens=DECODE_TOKENS,
            timeout_s=600,
            env=env,
        )
        if not probe.ok:
            raise SystemExit(f"vLLM failed on {model_dir}: {probe.error}")
        config = json.loads((model_dir / "config.json").read_text())
        runs.append(
            {
                "model": model_dir.name,
                "config": config,
                "rows": [r.__dict__ for r in probe.rows],
                "load_s": probe.load_s,
            }
        )
        print(f"measured {model_dir.name}: {runs[-1]['rows']}", file=sys.stderr)
    return rates, runs


def points(runs: list[dict[str, Any]]) -> list[tuple[str, MeasuredPoint]]:
    from workers.probe_child import PROMPT_TOKENS

    out = []
    for run in runs:
        arch: ModelArch = arch_from_hf_config(run["config"], run["model"])
        for row in run["rows"]:
            wl = Workload(row["batch"], PROMPT_TOKENS, DECODE_TOKENS)
            out.append(
                (
                    run["model"],
                    MeasuredPoint(
                        arch,
                        Quant.FP32,
                        wl,
                        row["decode_tokens_per_s"],
                        row["prefill_tokens_per_s"],
                    ),
                )
            )
    return out


def predicted_decode(spec: DeviceSpec, p: MeasuredPoint, eff: dict[str, float] | None) -> float:
    r = predict(p.arch, p.quant, spec, p.workload, efficiency=eff)
    return p.workload.batch / (r.step_ms / 1000.0) if r.ok else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=".data/perf-validation")
    ap.add_argument("--reuse", type=Path, help="re-analyse the measurements of a results file")
    args = ap.parse_args()
    if args.reuse:
        old = json.loads(args.reuse.read_text())
        rates = {
            k: old["metrics"][f"measured_{k}"]
            for k in ("memory_bandwidth_bytes_per_s", "fp32_flops")
        }
        runs = old["runs"]
        when = old["when"]
    else:
        rates, runs = measure(Path(args.out_dir))
        when = datetime.now(UTC).isoformat(timespec="seconds")
    spec = local_cpu(rates["memory_bandwidth_bytes_per_s"], rates["fp32_flops"])
    pts = points(runs)
    measured = [p.decode_tokens_per_s for _, p in pts]
    baseline = [predicted_decode(spec, p, None) for _, p in pts]
    in_sample_eff = fit_efficiency(spec, [p for _, p in pts])
    in_sample = [predicted_decode(spec, p, in_sample_eff) for _, p in pts]
    held_out = []
    for model, p in pts:
        eff = fit_efficiency(spec, [q for m, q in pts if m != model])
        held_out.append(predicted_decode(spec, p, eff))
    # extrapolation in batch: fit on batch 1 and 4 of every model, predict batch 16
    low = fit_efficiency(spec, [p for _, p in pts if p.workload.batch < 16])
    batch16 = [p for _, p in pts if p.workload.batch == 16]
    batch16_pred = [predicted_decode(spec, p, low) for p in batch16]
    batch16_meas = [p.decode_tokens_per_s for p in batch16]
    metrics = {
        "measured_memory_bandwidth_bytes_per_s": rates["memory_bandwidth_bytes_per_s"],
        "measured_fp32_flops": rates["fp32_flops"],
        "decode_mape_default_efficiency_pct": mape(baseline, measured),
        "decode_mape_fitted_held_out_batch16_pct": mape(batch16_pred, batch16_meas),
        "decode_mape_fitted_leave_one_model_out_pct": mape(held_out, measured),
        "decode_mape_fitted_in_sample_pct": mape(in_sample, measured),
        "fitted_decode_efficiency": in_sample_eff.get("decode", 0.0),
        "fitted_step_overhead_s": in_sample_eff.get("step_overhead_s", 0.0),
        "points": len(pts),
    }
    table = [
        {
            "model": m,
            "batch": p.workload.batch,
            "measured_decode_tokens_per_s": p.decode_tokens_per_s,
            "default": b,
            "held_out_fit": h,
            "in_sample_fit": i,
        }
        for (m, p), b, h, i in zip(pts, baseline, held_out, in_sample, strict=True)
    ]
    body = {
        "benchmark": "perf_validation",
        "when": when,  # of the measurements
        "machine": machine(),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "fitted_efficiency": in_sample_eff,
        "points": table,
        "runs": runs,
    }
    out = HERE / "results" / "perf_validation.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(body, indent=2) + "\n")
    print(
        f"| perf model vs real vLLM CPU decode (5 generated Llamas x batch 1/4/16, fp32) | "
        f"MAPE {metrics['decode_mape_fitted_leave_one_model_out_pct']:.1f}% fitted "
        f"(leave-one-model-out), {metrics['decode_mape_fitted_in_sample_pct']:.1f}% in-sample | "
        f"default factors {metrics['decode_mape_default_efficiency_pct']:.1f}% | goal <= 10% |"
    )


if __name__ == "__main__":
    main()
