"""Probe plumbing with real child processes; the real vLLM probe is engine-marked."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from workers.hardware import detect_cpu
from workers.probe import (
    BatchThroughput,
    DtypeProbe,
    QuickProbe,
    choose_dtype,
    fingerprint,
    interpret_engine,
    interpret_matmul,
    load_cached,
    probe_matmul,
    run_child,
    save_cached,
)
from workers.probe_child import RESULT_MARKER
from workers.proc import group_members


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_child_killed_by_sigill_marks_the_dtype_unsupported() -> None:
    child = run_child(
        _py("import os, signal; print('loading kernels'); os.kill(os.getpid(), signal.SIGILL)"),
        timeout_s=30,
    )
    assert child.returncode == -4 and child.failure == "killed by SIGILL"
    probe = interpret_engine("bfloat16", child)
    assert probe == DtypeProbe("bfloat16", ok=False, error="killed by SIGILL", wall_s=child.wall_s)
    assert not interpret_matmul("bfloat16", child).ok


def test_engine_worker_sigill_reported_through_parent_exit() -> None:
    # vLLM's parent process raises when its worker dies; the log names the signal
    child = run_child(
        _py("import sys; print('Worker proc died: SIGILL (Illegal instruction)'); sys.exit(1)"),
        timeout_s=30,
    )
    assert child.failure == "an engine process was killed by SIGILL"


def test_timeout_kills_the_whole_process_group() -> None:
    code = (
        "import subprocess, sys, time;"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        "print('grandchild', p.pid, flush=True); time.sleep(600)"
    )
    start = time.monotonic()
    child = run_child(_py(code), timeout_s=2)
    assert child.timed_out and child.failure is not None and "timed out" in child.failure
    assert time.monotonic() - start < 20
    grandchild = int(child.log_tail.split("grandchild")[1].split()[0])
    assert not Path(f"/proc/{grandchild}").exists() or group_members(grandchild) == []


def test_result_line_is_parsed_among_log_noise() -> None:
    code = (
        "print('INFO vllm says hello'); "
        f'print({RESULT_MARKER!r} + \'{{"load_s": 1.5, "rows": [{{"batch": 1, '
        '"prefill_tokens_per_s": 100.0, "decode_tokens_per_s": 10.0}]}\'); '
        "print('shutdown noise')"
    )
    probe = interpret_engine("float32", run_child(_py(code), timeout_s=30))
    assert probe.ok and probe.decode_tokens_per_s == 10.0 and probe.load_s == 1.5
    assert probe.rows == (BatchThroughput(1, 100.0, 10.0),)


def test_nonzero_exit_carries_the_error_line() -> None:
    child = run_child(_py("raise RuntimeError('dtype bfloat16 not supported')"), timeout_s=30)
    probe = interpret_engine("bfloat16", child)
    assert not probe.ok and "RuntimeError: dtype bfloat16 not supported" in probe.error


def _probe(dtype: str, prefill: float, decode: float, ok: bool = True) -> DtypeProbe:
    rows = (BatchThroughput(1, prefill / 2, 500.0), BatchThroughput(8, prefill, decode))
    return DtypeProbe(dtype, ok=ok, decode_tokens_per_s=500.0, rows=rows if ok else ())


def test_choose_dtype_prefers_batched_throughput_over_batch_one() -> None:
    probes = [
        _probe("float32", 17_867, 2_783),
        _probe("bfloat16", 32_622, 2_758),
        _probe("float16", 3_023, 1_434),
    ]
    assert choose_dtype(probes) == "bfloat16"
    assert choose_dtype([probes[0], _probe("bfloat16", 0, 0, ok=False)]) == "float32"
    assert choose_dtype([_probe("bfloat16", 0, 0, ok=False)]) is None


def test_matmul_probe_runs_float32_in_a_subprocess() -> None:
    probe = probe_matmul("float32", seconds=0.2, env={"PATH": "/usr/bin:/bin"})
    assert probe.ok, probe.error
    assert probe.flops_per_s > 1e8  # any CPU since 2005 does 0.1 GFLOP/s


def test_cache_round_trip_and_fingerprint_sensitivity(tmp_path: Path, demo_model: Path) -> None:
    cpu = detect_cpu()
    key = fingerprint(cpu, demo_model)
    assert key == fingerprint(cpu, demo_model)
    assert key != fingerprint(cpu, demo_model, ("float32",))
    assert load_cached(tmp_path, key) is None
    result = QuickProbe(key, (_probe("float32", 10.0, 5.0),), (), "float32", cached=False)
    save_cached(tmp_path, result)
    hit = load_cached(tmp_path, key)
    assert hit is not None and hit.cached and hit.probes == result.probes
    (tmp_path / f"dtype-probe-{key}.json").write_text("{not json")
    assert load_cached(tmp_path, key) is None
