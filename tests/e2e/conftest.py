"""One embedded stack (`cunliang up` as a subprocess) shared by the end-to-end tests.

Starting it generates the demo model, probes dtypes, loads a real vLLM CPU engine in a
Ray actor and opens the gateway: about a minute, so it is done once per session.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from scheduler.preflight import free_port

START_TIMEOUT_S = 900.0


@dataclass
class Stack:
    proc: subprocess.Popen[str]
    base_url: str
    api_key: str
    admin_token: str
    data_dir: Path
    ray_dir: Path
    lines: list[str] = field(default_factory=list)

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"


def _pump(proc: subprocess.Popen[str], lines: list[str], log: Path) -> None:
    assert proc.stdout is not None
    with log.open("w") as fh:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            fh.write(line)
            fh.flush()


def up_command(data_dir: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scheduler.cli.main",
        "--data-dir",
        str(data_dir),
        "up",
        "--port",
        str(port),
        *extra,
    ]


def start_stack(data_dir: Path, ray_dir: Path, log: Path, api_key: str | None = None) -> Stack:
    """Start `cunliang up`; a restart on a used data dir prints no key, so pass it."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUNLIANG_RAY_TEMP_DIR": str(ray_dir)}
    proc = subprocess.Popen(
        up_command(data_dir, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    lines: list[str] = []
    threading.Thread(target=_pump, args=(proc, lines, log), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    key, token = api_key, None
    while time.monotonic() < deadline:
        text = "\n".join(lines)
        key = key or _find(r"API key:\s+(sk-cl-\S+)", text)
        token = token or _find(r"Admin token:\s+(\S+)", text)
        if "cunliang is ready" in text and key and token:
            return Stack(proc, f"http://127.0.0.1:{port}", key, token, data_dir, ray_dir, lines)
        if proc.poll() is not None:
            raise AssertionError(f"cunliang up exited with {proc.returncode}:\n{text[-4000:]}")
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("cunliang up did not become ready:\n" + "\n".join(lines[-60:]))


def _find(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text)
    return m.group(1) if m else None


def stop_stack(stack: Stack, timeout_s: float = 120.0) -> int:
    if stack.proc.poll() is None:
        stack.proc.send_signal(signal.SIGINT)
    try:
        return stack.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(stack.proc.pid, signal.SIGKILL)
        raise


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("up")
    ray_dir = Path(f"/tmp/cl-ray-{os.getpid()}")
    s = start_stack(root / "data", ray_dir, root / "up.log")
    yield s
    if s.proc.poll() is None:
        stop_stack(s)


@pytest.fixture(scope="session")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=120) as client:
        yield client
