from __future__ import annotations

import pytest

from scheduler.catalog import lookup_device
from scheduler.domain import DeviceKind, DeviceSpec, Engine, Quant
from workers.engines.choice import choose_engine, proven_quants


def _gpu(name: str) -> DeviceSpec:
    spec = lookup_device(name)
    assert spec is not None
    return spec


EPYC = DeviceSpec("AMD EPYC", DeviceKind.CPU, isa_flags=frozenset({"avx2", "avx512f"}))


@pytest.mark.parametrize(
    ("device", "quant", "engine"),
    [
        ("Tesla P40", Quant.GGUF_Q4_K_M, Engine.LLAMA_CPP),
        ("Tesla P40", Quant.FP16, None),  # pre-Volta: no vLLM
        ("Tesla V100 PCIe 32GB", Quant.FP16, Engine.VLLM),
        ("Tesla V100 PCIe 32GB", Quant.INT4_GPTQ, Engine.VLLM),
        ("Tesla V100 PCIe 32GB", Quant.INT4_AWQ, None),  # AWQ needs Turing
        ("Tesla V100 PCIe 32GB", Quant.BF16, None),
        ("Tesla T4", Quant.INT4_AWQ, Engine.VLLM),
        ("Tesla T4", Quant.INT8_W8A8, Engine.VLLM),
        ("Tesla T4", Quant.BF16, None),  # bf16 needs sm80
        ("A100 PCIe 40GB", Quant.BF16, Engine.VLLM),
    ],
)
def test_gpu_rules(device: str, quant: Quant, engine: Engine | None) -> None:
    choice = choose_engine(_gpu(device), quant)
    assert choice.engine is engine, choice.reason
    assert choice.reason


def test_pre_volta_reason_points_to_gguf() -> None:
    choice = choose_engine(_gpu("Tesla P40"), Quant.FP16)
    assert not choice.ok and "pre-Volta" in choice.reason and "GGUF" in choice.reason


def test_cpu_fp32_always_bf16_only_when_proven() -> None:
    assert choose_engine(EPYC, Quant.FP32).engine is Engine.VLLM_CPU
    unproven = choose_engine(EPYC, Quant.BF16)
    assert not unproven.ok and "profiler" in unproven.reason
    proven = proven_quants(("float32", "bfloat16"))
    assert choose_engine(EPYC, Quant.BF16, proven=proven).engine is Engine.VLLM_CPU
    # a profile that saw bf16 crash (SIGILL) rules it out even with avx512_bf16 advertised
    spr = DeviceSpec("Xeon 8480+", DeviceKind.CPU, isa_flags=frozenset({"avx512f", "amx_bf16"}))
    failed = choose_engine(spr, Quant.BF16, proven=proven_quants(("float32",)))
    assert not failed.ok and "does not run" in failed.reason


def test_cpu_gguf_goes_to_llama_cpp_and_unknown_gpu_capability_is_refused() -> None:
    assert choose_engine(EPYC, Quant.GGUF_Q4_K_M).engine is Engine.LLAMA_CPP
    mystery = DeviceSpec("Mystery GPU", DeviceKind.GPU)
    assert not choose_engine(mystery, Quant.FP16).ok


def test_cpu_without_avx2_is_refused() -> None:
    old = DeviceSpec("Xeon E5-2670", DeviceKind.CPU, isa_flags=frozenset({"avx", "sse4_2"}))
    assert not choose_engine(old, Quant.FP32).ok
