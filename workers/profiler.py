"""The node profiler: hardware facts plus measured bandwidth, matmul and inference rates.

``full_profile`` is what ``cunliang agent`` runs: host detection, memory bandwidth
(numpy copy), torch matmul FLOP/s per dtype (each in a subprocess, so SIGILL costs one
probe), and a real vLLM benchmark on the reference (demo) model at batch 1, 8 and 32 for
every dtype torch could run, then for its int8 W8A8 variant (compressed-tensors, made
by :mod:`workers.quantize`) with activations in the fastest dtype. ``quick_profile`` is what ``cunliang up`` needs: host + the
cached dtype probe. Both return a :class:`MachineProfile` whose ``to_json()`` is what
the inventory stores as a profile. A profile carries the reference model's ``config.json``
and the prompt/decode lengths of its engine rows, so the scheduler can fit its performance
model to them (``scheduler.inventory.efficiency``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scheduler.support import DTYPE_QUANT
from workers.demo_model import ensure_demo_model, read_manifest
from workers.hardware import HostInfo, NvmlLike, detect_host
from workers.probe import (
    DTYPES,
    QUICK_DECODE_TOKENS,
    DtypeProbe,
    MatmulProbe,
    choose_dtype,
    fingerprint,
    package_version,
    probe_engine,
    probe_matmul,
    quick_probe,
)
from workers.probe_child import PROMPT_TOKENS
from workers.quantize import make_w8a8_beside

Progress = Callable[[str, float], None]

PROFILE_SCHEMA = 1
FULL_BATCHES: tuple[int, ...] = (1, 8, 32)


@dataclass(frozen=True)
class MachineProfile:
    """One versioned measurement of a node (JSON-serialisable via ``to_json``)."""

    kind: str  # "full" or "quick"
    host: HostInfo
    measured_at: str  # ISO 8601 UTC
    duration_s: float
    fingerprint: str
    reference_model: str
    reference_model_params: Mapping[str, Any]
    versions: Mapping[str, str]
    memory_bandwidth_bytes_per_s: float | None
    matmul: tuple[MatmulProbe, ...]
    engine: tuple[DtypeProbe, ...]
    chosen_dtype: str | None
    # the reference model as compressed-tensors int8 W8A8, activations in chosen_dtype
    int8_w8a8: DtypeProbe | None = None
    notes: tuple[str, ...] = ()
    schema: int = PROFILE_SCHEMA
    # what the scheduler needs to fit its performance model to the rows above: the
    # reference model's config.json and the lengths every engine row was measured at
    reference_model_config: Mapping[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0
    decode_tokens: int = 0

    @property
    def working_dtypes(self) -> tuple[str, ...]:
        return tuple(p.dtype for p in self.engine if p.ok)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only (frozensets become sorted lists, tuples lists)."""
        document: dict[str, Any] = _jsonable(asdict(self))
        return document


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def memory_bandwidth_bytes_per_s(size_bytes: int = 256 * 2**20, seconds: float = 1.0) -> float:
    """Copy bandwidth (read + write bytes per second) of a buffer far larger than caches.

    Counts 2 x size per copy, as STREAM's ``copy`` does, and keeps the best copy (as
    STREAM reports best times): on a shared machine the average measures the neighbours.
    """
    import numpy as np

    src = np.ones(size_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # warm-up: fault the pages in
    best_s = float("inf")
    copies = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or copies < 3:
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best_s = min(best_s, time.perf_counter() - t0)
        copies += 1
    return 2.0 * size_bytes / best_s


def _versions() -> dict[str, str]:
    return {name: package_version(name) for name in ("vllm", "torch", "transformers")}


def _model_config(model_dir: Path) -> dict[str, Any]:
    """The model's Hugging Face ``config.json`` ({} when absent or unreadable)."""
    try:
        config = json.loads((model_dir / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _model_params(model_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(model_dir) or {}
    params = manifest.get("params", {})
    return dict(params) if isinstance(params, dict) else {}


def full_profile(
    data_dir: Path,
    *,
    model_dir: Path | None = None,
    dtypes: Sequence[str] = DTYPES,
    batches: Sequence[int] = FULL_BATCHES,
    decode_tokens: int = 64,
    timeout_s: float = 300.0,
    nvml: NvmlLike | None = None,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> MachineProfile:
    """Measure everything (a few minutes on a CPU node). ``model_dir`` defaults to the demo."""
    report = progress or (lambda _s, _f: None)
    start = time.monotonic()
    base_env = dict(env if env is not None else os.environ)
    report("hardware", 0.0)
    host = detect_host(nvml=nvml)
    model = model_dir or ensure_demo_model(data_dir)
    report("memory bandwidth", 0.02)
    bandwidth = memory_bandwidth_bytes_per_s()
    matmuls: list[MatmulProbe] = []
    for i, dtype in enumerate(dtypes):
        report(f"matmul {dtype}", 0.05 + 0.05 * i / len(dtypes))
        matmuls.append(probe_matmul(dtype, env=base_env))
    probes: list[DtypeProbe] = []
    for i, (dtype, mm) in enumerate(zip(dtypes, matmuls, strict=True)):
        report(f"vllm {dtype} batch {','.join(map(str, batches))}", 0.1 + 0.8 * i / len(dtypes))
        if not mm.ok:
            probes.append(DtypeProbe(dtype, ok=False, error=f"torch matmul failed: {mm.error}"))
            continue
        probes.append(
            probe_engine(
                model,
                dtype,
                batches=batches,
                decode_tokens=decode_tokens,
                timeout_s=timeout_s,
                env=base_env,
            )
        )
    chosen = choose_dtype(probes)
    int8: DtypeProbe | None = None
    notes: tuple[str, ...] = ("int8 W8A8 not measured: no dtype works",)
    if chosen is not None:
        report(f"vllm int8-w8a8 ({chosen} activations)", 0.9)
        variant = make_w8a8_beside(model, chosen)
        int8 = probe_engine(
            variant,
            chosen,
            batches=batches,
            decode_tokens=decode_tokens,
            timeout_s=timeout_s,
            env=base_env,
        )
        notes = ()
    report("done", 1.0)
    return MachineProfile(
        kind="full",
        host=host,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        duration_s=time.monotonic() - start,
        fingerprint=fingerprint(host.cpu, model, dtypes),
        reference_model=model.name,
        reference_model_params=_model_params(model),
        versions=_versions(),
        memory_bandwidth_bytes_per_s=bandwidth,
        matmul=tuple(matmuls),
        engine=tuple(probes),
        chosen_dtype=chosen,
        int8_w8a8=int8,
        notes=notes,
        reference_model_config=_model_config(model),
        prompt_tokens=PROMPT_TOKENS,
        decode_tokens=decode_tokens,
    )


def quick_profile(
    data_dir: Path,
    *,
    model_dir: Path | None = None,
    dtypes: Sequence[str] = DTYPES,
    timeout_s: float = 300.0,
    nvml: NvmlLike | None = None,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> MachineProfile:
    """Hardware + the dtype probe, cached under ``data_dir/probes`` (seconds when cached)."""
    start = time.monotonic()
    host = detect_host(nvml=nvml)
    model = model_dir or ensure_demo_model(data_dir)
    probe = quick_probe(
        model,
        Path(data_dir) / "probes",
        host.cpu,
        dtypes=dtypes,
        timeout_s=timeout_s,
        env=env,
        progress=progress,
    )
    notes = ("dtype probe from cache",) if probe.cached else ()
    return MachineProfile(
        kind="quick",
        host=host,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        duration_s=time.monotonic() - start,
        fingerprint=probe.fingerprint,
        reference_model=model.name,
        reference_model_params=_model_params(model),
        versions=_versions(),
        memory_bandwidth_bytes_per_s=None,
        matmul=probe.matmul,
        engine=probe.probes,
        chosen_dtype=probe.chosen_dtype,
        notes=notes,
        reference_model_config=_model_config(model),
        prompt_tokens=PROMPT_TOKENS,
        decode_tokens=QUICK_DECODE_TOKENS,
    )


def proven_quant_names(profile: MachineProfile) -> list[str]:
    """``scheduler.domain.Quant`` values this profile proved to run (fp32, bf16, int8-w8a8...)."""
    names = [str(DTYPE_QUANT[d]) for d in profile.working_dtypes if d in DTYPE_QUANT]
    if profile.int8_w8a8 is not None and profile.int8_w8a8.ok:
        names.append("int8-w8a8")
    return names


def profile_post_body(profile: MachineProfile) -> dict[str, Any]:
    """The inventory's ``ProfileIn`` body: key figures typed, the whole profile as payload.

    ``output_tokens_per_s`` is the best decode rate over dtypes and batch sizes; the CPU
    is device slot ``len(gpus)`` (GPUs first, as ``hardware.device_specs`` orders them).
    """
    measured = [*profile.engine, *([profile.int8_w8a8] if profile.int8_w8a8 else [])]
    best = max(
        (row.decode_tokens_per_s for p in measured if p.ok for row in p.rows),
        default=0.0,
    )
    watts = profile.host.cpu_power.watts
    cpu_slot = len(profile.host.gpus)
    return {
        "reference_model": profile.reference_model,
        "output_tokens_per_s": best,
        "watts": watts,
        "measured_at": profile.measured_at,
        "quants": proven_quant_names(profile),
        "devices": [{"slot": cpu_slot, "output_tokens_per_s": best, "watts": watts}]
        if best > 0
        else [],
        "payload": profile.to_json(),
    }
