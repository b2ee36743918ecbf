"""llama.cpp's OpenAI-compatible server (llama-cpp-python) as a managed subprocess.

For GPUs vLLM cannot serve (pre-Volta: Pascal and older, see ``scheduler.support``) and as the
CPU fallback, with GGUF weights (``Quant.GGUF_Q4_K_M``). ``llamacpp_command`` is pure
(tested without the package); :class:`LlamaCppServer` implements ``Engine`` the same way
``VllmServer`` does: its own process group under :mod:`workers.supervise`, a log file,
a health wait that watches the process, the whole group killed on ``stop``.

Weights: ``model`` is a GGUF file or a local Hugging Face checkpoint, which is converted
and quantised once on start (:func:`workers.weights.prepare_weights`). The file's type
is checked before launch and the loader's ``file type`` log line after it: a server
that loaded anything but the planned format is stopped with an ``EngineError``.

The package is the optional extra ``llamacpp`` (``pip install 'cunliang[llamacpp]'``;
``scripts/install.sh`` builds a portable wheel once and caches it): it ships as source
only and compiles llama.cpp (minutes; for CUDA builds set ``CMAKE_ARGS="-DGGML_CUDA=on"``).
llama-cpp-python's server has no ``/health`` route, so readiness is ``GET /v1/models``
answering 200; nor metrics: :mod:`workers.llamacpp_serve` runs its app with a ``/metrics``
page of its own (requests in flight, tokens, latency).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from scheduler import httpprobe
from scheduler.domain import DeviceKind, Quant
from scheduler.errors import EngineError
from workers.engines.supervised import SupervisedServer
from workers.weights import check_engine_log, prepare_weights

INSTALL_HINT = "pip install 'cunliang[llamacpp]' (compiles llama.cpp; a few minutes)"


@dataclass(frozen=True)
class LlamaCppConfig:
    model: str  # a .gguf file, or a local checkpoint converted to ``quant`` on start
    served_model_name: str
    device: DeviceKind = DeviceKind.CPU
    quant: Quant = Quant.GGUF_Q4_K_M
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port is picked at start
    max_model_len: int = 2048  # llama.cpp's n_ctx
    threads: int | None = None  # None: llama.cpp's default (physical cores)
    gpu_layers: int | None = None  # None: all layers on a GPU, none on a CPU
    batch_size: int = 512  # n_batch: prompt tokens per forward pass
    parallel_slots: int = 1  # llama-cpp-python serves one request at a time per model


def gpu_layers(config: LlamaCppConfig) -> int:
    """Layers offloaded to the GPU: -1 (all) on a GPU unless set, 0 on a CPU."""
    if config.device is DeviceKind.CPU:
        return 0
    return -1 if config.gpu_layers is None else config.gpu_layers


def llamacpp_command(config: LlamaCppConfig, python: str = sys.executable) -> list[str]:
    """argv of the llama.cpp server for ``config``: ``llama_cpp.server``'s app and flags, behind
    ``workers.llamacpp_serve``'s ``/metrics`` page."""
    if not config.model.endswith(".gguf"):
        raise EngineError(
            f"llama.cpp serves GGUF files; {config.model!r} is not one",
            fix="convert the weights to GGUF (llama.cpp's convert_hf_to_gguf.py) first",
        )
    argv = [python, "-m", "workers.llamacpp_serve"]
    argv += ["--model", config.model, "--model_alias", config.served_model_name]
    argv += ["--host", config.host, "--port", str(config.port)]
    argv += ["--n_ctx", str(config.max_model_len), "--n_batch", str(config.batch_size)]
    argv += ["--n_gpu_layers", str(gpu_layers(config))]
    if config.threads is not None:
        argv += ["--n_threads", str(config.threads)]
    return argv


def llamacpp_env(config: LlamaCppConfig, base: Mapping[str, str]) -> dict[str, str]:
    """Environment of the server: a CPU server sees no GPU (no accidental offload)."""
    env = dict(base)
    if config.device is DeviceKind.CPU:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def available(python_has: Callable[[str], Any] = importlib.util.find_spec) -> bool:
    """Whether ``llama_cpp.server`` can be imported here (the optional extra installed)."""
    try:
        return python_has("llama_cpp") is not None
    except (ImportError, ValueError):
        return False


def models_health(base_url: str) -> bool:
    return httpprobe.answers_ok(f"{base_url}/v1/models", 2.0)


class LlamaCppServer(SupervisedServer[LlamaCppConfig]):
    """A llama.cpp server process group owned by this object (implements ``Engine``)."""

    label = "llama.cpp server"
    stop_grace_s = 5.0

    default_start_timeout_s = 300.0
    default_health_check = staticmethod(models_health)

    _weights: str | None = None  # the checked GGUF file, once prepared

    def _argv(self, port: int, python: str) -> list[str]:
        model = self._weights or self.config.model
        return llamacpp_command(replace(self.config, model=model, port=port), python)

    def _env_for(self, base: Mapping[str, str]) -> dict[str, str]:
        return llamacpp_env(self.config, base)

    def _prepare(self) -> None:
        self._weights = prepare_weights(self.config.model, self.config.quant)

    def _verify_started(self, log_text: str) -> None:
        check_engine_log(log_text, self.config.quant, engine="llama.cpp")

    def _start_fix(self) -> str:
        return f"read {self.log_path}; is the extra installed? {INSTALL_HINT}"
