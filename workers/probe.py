"""Dtype probes: which dtypes really run on this CPU with vLLM, and how fast.

Each probe runs ``workers.probe_child`` in a subprocess in its own process group. A
probe that dies by a signal (SIGILL on a CPU without the instructions a kernel needs),
exits non-zero or outlives its timeout marks the dtype unsupported, with the reason;
the caller survives. Results are cached as JSON under the data dir, keyed by a
fingerprint of what decides them (CPU model and flags, vLLM and torch versions, model
files), so the second ``cunliang up`` does not probe again.

    probes = quick_probe(model_dir, cache_dir, cpu)      # cached after the first call
    dtype = choose_dtype(probes.probes)                   # fastest that works
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from workers.demo_model import manifest_digest
from workers.hardware import CpuInfo
from workers.probe_child import RESULT_MARKER
from workers.proc import (
    kill_group,
    signal_name,
    supervised,
    terminate_with_parent,
    with_workers_path,
)

Progress = Callable[[str, float], None]

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
PROBE_VERSION = 1  # bump when what a probe measures changes
# batch 8 as well as 1: the dtype choice compares batched rates (see dtype_score)
QUICK_BATCHES: tuple[int, ...] = (1, 8)
# tokens generated per sequence in the quick probe (each engine row's decode length)
QUICK_DECODE_TOKENS = 32


@dataclass(frozen=True)
class ChildResult:
    """How a probe subprocess ended. ``result`` is its JSON line, None when it gave none."""

    returncode: int | None
    timed_out: bool
    result: Mapping[str, Any] | None
    log_tail: str
    wall_s: float

    @property
    def failure(self) -> str | None:
        """Why the child failed, or None when it exited 0 with a result."""
        if self.timed_out:
            return f"timed out after {self.wall_s:.0f} s"
        if (sig := signal_name(self.returncode)) is not None:
            return f"killed by {sig}"
        if self.returncode != 0:
            # vLLM reports a worker's death by signal as an exception in the parent: name it
            if "SIGILL" in self.log_tail or "Illegal instruction" in self.log_tail:
                return "an engine process was killed by SIGILL"
            return f"exited with status {self.returncode}: {_last_error_line(self.log_tail)}"
        if self.result is None:
            return "exited without a result"
        return None


def _last_error_line(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line or "SIG" in line:
            return line[-300:]
    return lines[-1][-300:] if lines else "no output"


def run_child(
    argv: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
) -> ChildResult:
    """Run ``argv`` supervised in a new process group; kill the group when done or timed out.

    Output (stdout + stderr) goes to ``log_path`` (a temp file when None); the last line
    starting with ``RESULT_MARKER`` is parsed as the result.
    """
    own_log = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="cunliang-probe-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    start = time.monotonic()
    timed_out = False
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            supervised(argv, grace_s=5.0),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=with_workers_path(env if env is not None else os.environ),
            start_new_session=True,
            preexec_fn=terminate_with_parent,
        )
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # helpers (vLLM's engine core) may outlive the child: end the whole group
            kill_group(proc.pid, grace_s=5.0)
            proc.wait()
    wall_s = time.monotonic() - start
    text = log_path.read_text("utf-8", "replace")
    if own_log:
        log_path.unlink(missing_ok=True)
    result = None
    for line in reversed(text.splitlines()):
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER) :])
            break
    return ChildResult(
        returncode=None if timed_out else proc.returncode,
        timed_out=timed_out,
        result=result,
        log_tail=text[-4000:],
        wall_s=wall_s,
    )


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BatchThroughput:
    batch: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float


@dataclass(frozen=True)
class DtypeProbe:
    """Whether vLLM runs the reference model in ``dtype`` here; batch-1 rates when it does."""

    dtype: str
    ok: bool
    decode_tokens_per_s: float = 0.0
    prefill_tokens_per_s: float = 0.0
    error: str = ""
    rows: tuple[BatchThroughput, ...] = ()  # one per batch size measured
    load_s: float = 0.0
    wall_s: float = 0.0

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> DtypeProbe:
        rows = tuple(BatchThroughput(**r) for r in data.get("rows", ()))
        return DtypeProbe(**{**data, "rows": rows})


@dataclass(frozen=True)
class MatmulProbe:
    dtype: str
    ok: bool
    flops_per_s: float = 0.0
    error: str = ""


def interpret_engine(dtype: str, child: ChildResult) -> DtypeProbe:
    """Turn an engine child's ending into a DtypeProbe (pure)."""
    failure = child.failure
    if failure is not None or child.result is None:
        return DtypeProbe(dtype, ok=False, error=failure or "no result", wall_s=child.wall_s)
    rows = tuple(
        BatchThroughput(
            batch=int(r["batch"]),
            prefill_tokens_per_s=float(r["prefill_tokens_per_s"]),
            decode_tokens_per_s=float(r["decode_tokens_per_s"]),
        )
        for r in child.result["rows"]
    )
    first = min(rows, key=lambda r: r.batch)
    return DtypeProbe(
        dtype,
        ok=True,
        decode_tokens_per_s=first.decode_tokens_per_s,
        prefill_tokens_per_s=first.prefill_tokens_per_s,
        rows=rows,
        load_s=float(child.result.get("load_s", 0.0)),
        wall_s=child.wall_s,
    )


def interpret_matmul(dtype: str, child: ChildResult) -> MatmulProbe:
    failure = child.failure
    if failure is not None or child.result is None:
        return MatmulProbe(dtype, ok=False, error=failure or "no result")
    return MatmulProbe(dtype, ok=True, flops_per_s=float(child.result["flops_per_s"]))


def dtype_score(probe: DtypeProbe) -> float:
    """Geometric mean of prefill and decode tokens/s at the largest batch measured.

    The largest batch, because serving runs batched and batch-1 decode of a small model
    measures framework overhead rather than the dtype (on this project's dev machine all
    three dtypes decode ~490 tok/s at batch 1, while fp16 is 3x slower at batch 32).
    Both phases count: prefill is compute bound, decode memory bound.
    """
    if not probe.ok or not probe.rows:
        return 0.0
    top = max(probe.rows, key=lambda r: r.batch)
    return float((top.prefill_tokens_per_s * top.decode_tokens_per_s) ** 0.5)


def choose_dtype(probes: Sequence[DtypeProbe]) -> str | None:
    """The working dtype with the best :func:`dtype_score`; None when none works.

    Ties keep the earlier dtype in ``probes`` (DTYPES order puts the most precise first).
    """
    working = [p for p in probes if p.ok]
    if not working:
        return None
    best = working[0]
    for probe in working[1:]:
        if dtype_score(probe) > dtype_score(best):
            best = probe
    return best.dtype


# ---------------------------------------------------------------------------- running


def engine_env(base: Mapping[str, str], kv_cache_gib: int = 1) -> dict[str, str]:
    """Environment of a CPU vLLM child: KV cache size and the CPU platform."""
    env = dict(base)
    env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    env["VLLM_TARGET_DEVICE"] = "cpu"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def probe_matmul(
    dtype: str, *, timeout_s: float = 60.0, seconds: float = 0.5, env: Mapping[str, str]
) -> MatmulProbe:
    argv = [sys.executable, "-m", "workers.probe_child", "matmul", "--dtype", dtype]
    argv += ["--seconds", str(seconds)]
    return interpret_matmul(dtype, run_child(argv, timeout_s=timeout_s, env=env))


def probe_engine(
    model_dir: Path,
    dtype: str,
    *,
    batches: Sequence[int] = (1,),
    decode_tokens: int = QUICK_DECODE_TOKENS,
    timeout_s: float = 300.0,
    env: Mapping[str, str],
    log_path: Path | None = None,
    kv_cache_gib: int = 1,
) -> DtypeProbe:
    """Run a real vLLM engine on ``model_dir`` in ``dtype`` in a subprocess and time it.

    ``kv_cache_gib`` must hold the largest batch (else vLLM preempts and recomputes
    sequences, and the decode rate measures that)."""
    argv = [sys.executable, "-m", "workers.probe_child", "engine", "--model", str(model_dir)]
    argv += ["--dtype", dtype, "--batches", ",".join(map(str, batches))]
    argv += ["--decode-tokens", str(decode_tokens)]
    child_env = engine_env(env, kv_cache_gib)
    child = run_child(argv, timeout_s=timeout_s, env=child_env, log_path=log_path)
    return interpret_engine(dtype, child)


def package_version(dist: str) -> str:
    for name in (dist, f"{dist}-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "absent"


def fingerprint(cpu: CpuInfo, model_dir: Path, dtypes: Sequence[str] = DTYPES) -> str:
    """What decides a probe's outcome, hashed: CPU, engine and torch versions, model files."""
    parts = [
        ",".join(dtypes),
        f"probe-v{PROBE_VERSION}",
        cpu.model_name,
        ",".join(sorted(cpu.isa_flags)),
        str(cpu.physical_cores),
        f"vllm-{package_version('vllm')}",
        f"torch-{package_version('torch')}",
        manifest_digest(model_dir),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class QuickProbe:
    fingerprint: str
    probes: tuple[DtypeProbe, ...]
    matmul: tuple[MatmulProbe, ...]
    chosen_dtype: str | None
    cached: bool
    wall_s: float = 0.0


def _cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"dtype-probe-{key}.json"


def load_cached(cache_dir: Path, key: str) -> QuickProbe | None:
    try:
        data = json.loads(_cache_path(cache_dir, key).read_text("utf-8"))
        return QuickProbe(
            fingerprint=key,
            probes=tuple(DtypeProbe.from_json(p) for p in data["probes"]),
            matmul=tuple(MatmulProbe(**m) for m in data["matmul"]),
            chosen_dtype=data["chosen_dtype"],
            cached=True,
            wall_s=0.0,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_cached(cache_dir: Path, result: QuickProbe) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = _cache_path(cache_dir, result.fingerprint)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result), indent=2), "utf-8")
    tmp.replace(path)  # atomic: a half-written cache would be read as a miss anyway


def quick_probe(
    model_dir: Path,
    cache_dir: Path,
    cpu: CpuInfo,
    *,
    dtypes: Sequence[str] = DTYPES,
    timeout_s: float = 300.0,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    use_cache: bool = True,
) -> QuickProbe:
    """Probe each dtype (torch matmul first, then vLLM if torch runs it); cached by fingerprint.

    Unsupported dtypes come back ``ok=False`` with the reason; nothing here raises for
    a crashing dtype.
    """
    report = progress or (lambda _s, _f: None)
    key = fingerprint(cpu, model_dir, dtypes)
    if use_cache and (hit := load_cached(cache_dir, key)) is not None:
        report("cached", 1.0)
        return hit
    base_env = dict(env if env is not None else os.environ)
    cache_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    matmuls: list[MatmulProbe] = []
    probes: list[DtypeProbe] = []
    steps = 2 * len(dtypes)
    for i, dtype in enumerate(dtypes):
        report(f"matmul {dtype}", i / steps)
        matmuls.append(probe_matmul(dtype, env=base_env))
    for i, (dtype, mm) in enumerate(zip(dtypes, matmuls, strict=True)):
        report(f"vllm {dtype}", (len(dtypes) + i) / steps)
        if not mm.ok:  # torch cannot even multiply in it: vLLM will not do better
            probes.append(DtypeProbe(dtype, ok=False, error=f"torch matmul failed: {mm.error}"))
            continue
        probes.append(
            probe_engine(
                model_dir,
                dtype,
                batches=QUICK_BATCHES,
                timeout_s=timeout_s,
                env=base_env,
                # kept for the operator: why a dtype failed is in its engine log
                log_path=cache_dir / f"dtype-probe-{key}-{dtype}.log",
            )
        )
    result = QuickProbe(
        fingerprint=key,
        probes=tuple(probes),
        matmul=tuple(matmuls),
        chosen_dtype=choose_dtype(probes),
        cached=False,
        wall_s=time.monotonic() - start,
    )
    save_cached(cache_dir, result)
    report("done", 1.0)
    return result
