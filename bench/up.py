"""`cunliang up` time to first token: a cold start (fresh data dir) against a warm one.

Cold: the demo model is generated and every dtype is probed with the real engine. Warm
(the baseline, same run, same data dir): both come from the cache, so what is left is
the inventory, Ray, the engine load and the gateway. Each start is timed until the first
streamed token of a chat completion arrives through the real openai client.

    PYTHONPATH=$PWD .venv/bin/python bench/up.py
Writes bench/results/up.json.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai

from bench.common import write_result
from scheduler.preflight import free_port

START_TIMEOUT_S = 900.0
CLI = (sys.executable, "-m", "scheduler.cli.main")


def _run(data_dir: Path, key: str | None) -> tuple[float, float, str]:
    """Start `cunliang up`, stream one token, stop it: (ready s, first token s, API key)."""
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [*CLI, "--data-dir", str(data_dir), "up", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    out = proc.stdout
    assert out is not None
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(out), daemon=True).start()
    try:
        while not any("cunliang is ready" in line for line in lines):
            if proc.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
                raise RuntimeError("cunliang up failed:\n" + "".join(lines[-30:]))
            time.sleep(0.05)
        ready_s = time.monotonic() - started
        found = re.search(r"API key:\s+(sk-cl-\S+)", "".join(lines))
        key = found.group(1) if found else key
        if key is None:
            raise RuntimeError("no API key: the cold start prints the first tenant's key")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
        stream = client.chat.completions.create(
            model="cunliang-demo",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=8,
            stream=True,
        )
        first_token_s = 0.0
        for chunk in stream:
            if not first_token_s and chunk.choices and chunk.choices[0].delta.content is not None:
                first_token_s = time.monotonic() - started
        return ready_s, first_token_s, key
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cl-bench-up-") as tmp:
        data_dir = Path(tmp) / "data"
        cold_ready, cold_ttft, key = _run(data_dir, None)
        warm_ready, warm_ttft, _ = _run(data_dir, key)
    metrics = {
        "cold_ready_s": cold_ready,
        "cold_first_token_s": cold_ttft,
        "warm_ready_s": warm_ready,
        "warm_first_token_s": warm_ttft,
        "cold_over_warm_first_token_ratio": cold_ttft / warm_ttft,
    }
    write_result("up", metrics, baseline="warm start, same run (model and dtype probes cached)")
    for name, value in metrics.items():
        print(f"{name}: {value:.2f}")


if __name__ == "__main__":
    main()
