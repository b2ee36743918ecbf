"""llama.cpp's OpenAI-compatible server (llama-cpp-python) as a managed subprocess.

For GPUs vLLM cannot serve (pre-Volta: Pascal and older, see ``choice.py``) and as the
CPU fallback, with GGUF weights (``Quant.GGUF_Q4_K_M``). ``llamacpp_command`` is pure
(tested without the package); :class:`LlamaCppServer` implements ``Engine`` the same way
``VllmServer`` does: its own process group under :mod:`workers.supervise`, a log file,
a health wait that watches the process, the whole group killed on ``stop``.

The package is the optional extra ``llamacpp`` (``pip install 'cunliang[llamacpp]'``):
it ships as source only and compiles llama.cpp at install time (minutes; for CUDA
builds set ``CMAKE_ARGS="-DGGML_CUDA=on"``). llama-cpp-python's server has no
``/health`` route, so readiness is ``GET /v1/models`` answering 200.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from scheduler.domain import DeviceKind
from scheduler.errors import EngineError
from workers.engines.vllm_server import free_port
from workers.proc import (
    group_members,
    kill_group,
    supervised,
    tail,
    terminate_with_parent,
    with_workers_path,
)

INSTALL_HINT = "pip install 'cunliang[llamacpp]' (compiles llama.cpp; a few minutes)"


@dataclass(frozen=True)
class LlamaCppConfig:
    model: str  # path of a .gguf file
    served_model_name: str
    device: DeviceKind = DeviceKind.CPU
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
    """argv of ``python -m llama_cpp.server`` for ``config`` (flags as its settings name them)."""
    if not config.model.endswith(".gguf"):
        raise EngineError(
            f"llama.cpp serves GGUF files; {config.model!r} is not one",
            fix="convert the weights to GGUF (llama.cpp's convert_hf_to_gguf.py) first",
        )
    argv = [python, "-m", "llama_cpp.server"]
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
    try:
        return httpx.get(f"{base_url}/v1/models", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


class LlamaCppServer:
    """A llama.cpp server process group owned by this object (implements ``Engine``)."""

    def __init__(
        self,
        config: LlamaCppConfig,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 300.0,
        health_check: Callable[[str], bool] = models_health,
        python: str = sys.executable,
    ) -> None:
        self.config = config
        self.log_path = Path(log_path)
        self._env = dict(env if env is not None else os.environ)
        self._start_timeout_s = start_timeout_s
        self._health_check = health_check
        self._python = python
        self._port = config.port
        self._pgid: int | None = None
        self._started_at: float | None = None
        self._stopped = False

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self._port}"

    @property
    def pid(self) -> int | None:
        return self._pgid

    def command(self) -> list[str]:
        self._port = self._port or free_port(self.config.host)
        return llamacpp_command(replace(self.config, port=self._port), self._python)

    def start(self) -> str:
        if self._pgid is not None:
            raise EngineError("engine already started", fix="stop() it before starting again")
        argv = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            launcher = subprocess.Popen(
                supervised(argv, grace_s=5.0, detach=True),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=with_workers_path(llamacpp_env(self.config, self._env)),
                start_new_session=True,
                preexec_fn=terminate_with_parent,
            )
        self._pgid = launcher.pid
        launcher.wait()  # exits at once, leaving the detached supervisor in its group
        self._started_at = time.monotonic()
        self._wait_healthy()
        return self.base_url

    def _alive(self) -> bool:
        return self._pgid is not None and bool(group_members(self._pgid))

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if not self._alive():
                self.stop()
                raise EngineError(
                    "llama.cpp server exited while starting; log tail:\n"
                    + tail(self.log_path, 2000),
                    fix=f"read {self.log_path}; is the extra installed? {INSTALL_HINT}",
                )
            if self._health_check(self.base_url):
                return
            time.sleep(0.5)
        self.stop()
        raise EngineError(
            f"llama.cpp server not healthy after {self._start_timeout_s:.0f} s",
            fix=f"read {self.log_path}",
        )

    def ready(self) -> bool:
        return self._alive() and self._health_check(self.base_url)

    def health(self) -> dict[str, Any]:
        if self._stopped:
            state = "stopped"
        elif self._pgid is None:
            state = "not started"
        elif not self._alive():
            state = "exited"
        else:
            state = "ready" if self._health_check(self.base_url) else "unhealthy"
        return {
            "state": state,
            "pid": self.pid,
            "base_url": self.base_url,
            "model": self.config.served_model_name,
            "uptime_s": time.monotonic() - self._started_at if self._started_at else 0.0,
            "log": str(self.log_path),
        }

    def stop(self, grace_s: float = 5.0) -> None:
        if self._pgid is None or self._stopped:
            return
        self._stopped = True
        kill_group(self._pgid, grace_s=grace_s)
