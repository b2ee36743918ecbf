from __future__ import annotations

import pytest

from scheduler.domain import DeviceKind, Quant
from workers.engines.vllm_server import VllmConfig, quantization_arg, vllm_command, vllm_env


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_cpu_command_is_the_module_entrypoint_with_probed_dtype() -> None:
    config = VllmConfig(model="/m", served_model_name="demo", dtype="bfloat16", port=8123)
    argv = vllm_command(config, python="/py")
    assert argv[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(argv, "--model") == "/m" and _flag(argv, "--served-model-name") == "demo"
    assert _flag(argv, "--dtype") == "bfloat16" and _flag(argv, "--max-model-len") == "256"
    assert _flag(argv, "--host") == "127.0.0.1" and _flag(argv, "--port") == "8123"
    assert "--enforce-eager" in argv
    assert "--tensor-parallel-size" not in argv and "--quantization" not in argv
    env = vllm_env(config, {"PATH": "/bin"})
    assert env["VLLM_TARGET_DEVICE"] == "cpu" and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["PATH"] == "/bin" and "CUDA_VISIBLE_DEVICES" not in env


def test_gpu_tensor_parallel_awq_on_turing_uses_plain_awq_kernels() -> None:
    config = VllmConfig(
        model="Qwen/Qwen2.5-7B-Instruct-AWQ",
        served_model_name="qwen7b",
        device=DeviceKind.GPU,
        quant=Quant.INT4_AWQ,
        tensor_parallel_size=2,
        compute_capability=(7, 5),
        gpu_indices=(2, 3),
        max_model_len=8192,
        enforce_eager=False,
        port=9000,
    )
    argv = vllm_command(config, python="py")
    assert _flag(argv, "--tensor-parallel-size") == "2"
    assert _flag(argv, "--quantization") == "awq"
    assert _flag(argv, "--dtype") == "float16"  # no bf16 on sm75
    assert _flag(argv, "--max-model-len") == "8192" and "--enforce-eager" not in argv
    env = vllm_env(config, {})
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and "VLLM_TARGET_DEVICE" not in env


@pytest.mark.parametrize(
    ("quant", "cc", "expected"),
    [
        (Quant.INT4_AWQ, (8, 0), "awq_marlin"),
        (Quant.INT4_GPTQ, (7, 0), "gptq"),
        (Quant.INT4_GPTQ, (8, 6), "gptq_marlin"),
        (Quant.INT8_W8A8, (7, 5), "compressed-tensors"),
        (Quant.BF16, (8, 0), None),
        (Quant.FP16, (7, 0), None),
    ],
)
def test_quantization_argument(quant: Quant, cc: tuple[int, int], expected: str | None) -> None:
    assert quantization_arg(quant, cc) == expected


def test_gpu_bf16_and_w8a8_commands() -> None:
    bf16 = VllmConfig("m", "m", device=DeviceKind.GPU, quant=Quant.BF16, port=1)
    assert _flag(vllm_command(bf16), "--dtype") == "bfloat16"
    assert "--quantization" not in vllm_command(bf16)
    w8a8 = VllmConfig(
        "m", "m", device=DeviceKind.GPU, quant=Quant.INT8_W8A8, compute_capability=(8, 6), port=1
    )
    assert _flag(vllm_command(w8a8), "--quantization") == "compressed-tensors"
    fixed = VllmConfig(
        "m", "m", device=DeviceKind.GPU, quant=Quant.INT8_W8A8, dtype="bfloat16", port=1
    )
    assert _flag(vllm_command(fixed), "--dtype") == "bfloat16"


def test_invalid_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match=r"llama\.cpp"):
        vllm_command(VllmConfig("m", "m", device=DeviceKind.GPU, quant=Quant.GGUF_Q4_K_M, port=1))
    with pytest.raises(ValueError, match="tensor_parallel_size=1"):
        vllm_command(VllmConfig("m", "m", tensor_parallel_size=2, port=1))
    with pytest.raises(ValueError, match="port"):
        vllm_command(VllmConfig("m", "m"))
