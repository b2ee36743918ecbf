"""Engine support rules (scheduler.support): which engine serves a format on a device."""

from __future__ import annotations

import pytest

from scheduler.catalog import lookup_device, lookup_model
from scheduler.domain import DeviceKind, DeviceSpec, Engine, Quant
from scheduler.perf import Workload, predict
from scheduler.support import DTYPE_QUANT, select_engine


def device(name: str) -> DeviceSpec:
    spec = lookup_device(name)
    assert spec is not None
    return spec


EPYC = DeviceSpec("AMD EPYC", DeviceKind.CPU, isa_flags=frozenset({"avx2", "avx512f"}))


@pytest.mark.parametrize(
    ("name", "quant", "engine"),
    [
        ("Tesla P40", Quant.FP16, None),  # pre-Volta: no vLLM
        ("Tesla P40", Quant.GGUF_Q4_K_M, Engine.LLAMA_CPP),
        ("Tesla V100 PCIe 16GB", Quant.BF16, None),
        ("Tesla V100 PCIe 16GB", Quant.INT4_AWQ, None),  # AWQ needs Turing
        ("Tesla V100 PCIe 16GB", Quant.INT4_GPTQ, Engine.VLLM),
        ("Tesla V100 PCIe 32GB", Quant.FP16, Engine.VLLM),
        ("Tesla T4", Quant.INT4_AWQ, Engine.VLLM),
        ("Tesla T4", Quant.INT8_W8A8, Engine.VLLM),
        ("Tesla T4", Quant.BF16, None),  # bf16 needs sm80
        ("A10", Quant.BF16, Engine.VLLM),
        ("A100 PCIe 40GB", Quant.BF16, Engine.VLLM),
        ("Xeon Gold 6248", Quant.BF16, None),
        ("Xeon Gold 6248", Quant.INT8_W8A8, None),
        ("Xeon Platinum 8480+", Quant.BF16, None),  # flags are not proof
        ("Xeon Platinum 8480+", Quant.GGUF_Q4_K_M, Engine.LLAMA_CPP),
        ("Xeon Gold 6248", Quant.FP32, Engine.VLLM_CPU),
    ],
)
def test_support_rules(name: str, quant: Quant, engine: Engine | None) -> None:
    choice = select_engine(device(name), quant)
    assert choice.engine is engine
    assert choice.ok is (engine is not None)
    assert choice.reason  # which rule decided, either way


def test_pre_volta_reason_points_to_gguf() -> None:
    choice = select_engine(device("Tesla P40"), Quant.FP16)
    assert not choice.ok and "pre-Volta" in choice.reason and "GGUF" in choice.reason


def test_dtype_the_engine_is_started_with() -> None:
    assert select_engine(device("Tesla T4"), Quant.FP32).dtype == "float32"
    assert select_engine(device("Tesla T4"), Quant.FP16).dtype == "auto"
    assert select_engine(EPYC, Quant.FP32).dtype == "float32"
    assert select_engine(EPYC, Quant.FP16, frozenset({Quant.FP16})).dtype == "float16"


def test_profile_overrides_rules_both_ways() -> None:
    # a CPU format runs only where a profile proved it; a GPU profile can also forbid
    gold = device("Xeon Gold 6248")
    proved = select_engine(gold, Quant.BF16, frozenset({Quant.BF16}))
    assert proved.engine is Engine.VLLM_CPU and proved.dtype == "bfloat16"
    # a profile that saw bf16 crash (SIGILL) rules it out even with amx_bf16 advertised
    spr = device("Xeon Platinum 8480+")
    refused = select_engine(spr, Quant.BF16, frozenset({Quant.FP32}))
    assert refused.engine is None and "proved" in refused.reason
    t4 = select_engine(device("Tesla T4"), Quant.INT4_AWQ, frozenset({Quant.FP16}))
    assert t4.engine is None and "proved" in t4.reason


def test_cpu_fp32_always_bf16_only_when_proven() -> None:
    assert select_engine(EPYC, Quant.FP32).engine is Engine.VLLM_CPU
    unproven = select_engine(EPYC, Quant.BF16)
    assert not unproven.ok and "profiler" in unproven.reason
    proven = frozenset({DTYPE_QUANT["float32"], DTYPE_QUANT["bfloat16"]})
    assert select_engine(EPYC, Quant.BF16, proven).engine is Engine.VLLM_CPU


def test_gguf_goes_to_llama_cpp_and_unknown_gpu_capability_is_refused() -> None:
    assert select_engine(EPYC, Quant.GGUF_Q4_K_M).engine is Engine.LLAMA_CPP
    mystery = DeviceSpec("Mystery GPU", DeviceKind.GPU)
    refused = select_engine(mystery, Quant.FP16)
    assert not refused.ok and "compute capability unknown" in refused.reason


def test_cpu_without_avx2_is_refused() -> None:
    old = DeviceSpec("Xeon E5-2670", DeviceKind.CPU, isa_flags=frozenset({"avx", "sse4_2"}))
    assert not select_engine(old, Quant.FP32).ok


def test_a_profile_proved_int8_runs_on_vllm_cpu() -> None:
    proven = frozenset({Quant.FP32, Quant.BF16, Quant.INT8_W8A8})
    assert select_engine(EPYC, Quant.INT8_W8A8, proven).engine is Engine.VLLM_CPU


def test_the_perf_model_refuses_what_the_rules_refuse() -> None:
    arch = lookup_model("qwen2.5-7b-instruct")
    assert arch is not None
    r = predict(arch, Quant.FP16, device("Tesla P40"), Workload(1, 512, 128))
    assert not r.ok and r.reason == select_engine(device("Tesla P40"), Quant.FP16).reason
