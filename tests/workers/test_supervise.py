"""The supervisor ends its group when its owner dies, even by SIGKILL (no vLLM needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from workers.proc import group_members

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
