"""The supervisor ends its group when its owner dies, even by SIGKILL (no vLLM needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from scheduler import httpprobe
from workers.engines.supervised import SupervisedServer
from workers.proc import group_members, member_alive

# an "actor" that launches a detached supervised command with a grandchild, then idles
OWNER = """
import os, subprocess, sys, time
from workers.proc import supervised, terminate_with_parent, with_workers_path
command = [sys.executable, "-c",
    "import subprocess, sys, time;"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
    "time.sleep(600)"]
launcher = subprocess.Popen(supervised(command, grace_s=2, detach=True),
    start_new_session=True, preexec_fn=terminate_with_parent, env=with_workers_path(os.environ))
launcher.wait()
print(launcher.pid, flush=True)
time.sleep(600)
"""


def _wait(predicate: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_sigkilled_owner_takes_the_detached_group_down() -> None:
    root = str(Path(__file__).resolve().parents[2])
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    try:
        assert owner.stdout is not None
        pgid = int(owner.stdout.readline())
        # supervisor + command + grandchild; the launcher itself has exited
        assert _wait(lambda: len(group_members(pgid)) == 3, within_s=20)
        assert pgid not in group_members(pgid)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        assert _wait(lambda: group_members(pgid) == [], within_s=10)
    finally:
        if owner.poll() is None:
            owner.kill()


def test_a_sigkilled_command_ends_the_supervisor_by_sigkill_too() -> None:
    """A server SIGKILLed (the fault tests do it to vLLM) is reported as such: the
    supervisor dies by the same signal, not with a traceback."""
    root = str(Path(__file__).resolve().parents[2])
    command = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    done = subprocess.run(
        [sys.executable, "-m", "workers.supervise", "--grace", "1", "--", *command],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": root},
        cwd=root,
        start_new_session=True,  # the supervisor ends its whole group: not ours
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert "Traceback" not in done.stderr
    assert "command exited with status -9" in done.stderr


@dataclass(frozen=True)
class _Config:
    host: str = "127.0.0.1"
    port: int = 0
    served_model_name: str = "tiny"


class _TinyServer(SupervisedServer[_Config]):
    """A real HTTP server (python -m http.server) with a sleeping helper in its group."""

    label = "tiny server"
    stop_grace_s = 2.0

    def _argv(self, port: int, python: str) -> list[str]:
        code = (
            "import subprocess, sys;"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
            f"import runpy; sys.argv = ['http.server', '--bind', '127.0.0.1', '{port}'];"
            "runpy.run_module('http.server', run_name='__main__')"
        )
        return [python, "-c", code]


def test_health_checks_read_one_known_member_and_still_see_the_group_die(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Periodic health calls (over the shared HTTP client) scan /proc once, then read the
    one entry of the member seen alive; the group's exit is still seen."""
    import workers.engines.supervised as supervised_module

    scans: list[int] = []

    def counting_members(pgid: int) -> list[int]:
        scans.append(pgid)
        return group_members(pgid)

    monkeypatch.setattr(supervised_module, "group_members", counting_members)
    server = _TinyServer(
        _Config(),
        tmp_path / "tiny.log",
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        start_timeout_s=60,
        health_check=lambda url: httpprobe.answers_ok(url + "/", 5.0),
    )
    server.start()
    try:
        scans.clear()
        for _ in range(5):
            assert server.health()["state"] == "ready"
        assert len(scans) <= 1  # found a live member once, then read only that one
        members = group_members(server.pid or 0)
        assert members and all(member_alive(p, server.pid or 0) for p in members)
        assert not member_alive(members[0], (server.pid or 0) + 1)  # another group
        for pid in members:  # the whole group gone (as after a node's OOM killer)
            os.kill(pid, signal.SIGKILL)
        assert _wait(lambda: server.health()["state"] == "exited", within_s=10)
        assert not any(member_alive(p, server.pid or 0) for p in members)
    finally:
        server.stop()


def test_shared_probe_client_reports_refusals_as_not_ok() -> None:
    from scheduler.preflight import free_port

    assert httpprobe.client() is httpprobe.client()
    assert httpprobe.answers_ok(f"http://127.0.0.1:{free_port()}/health", 1.0) is False
