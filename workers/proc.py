"""Child-process plumbing shared by probes and engines: own process group, die with parent.

Every engine or probe runs in its own session (process group) so one ``killpg`` ends it
and all its helpers (vLLM spawns an engine core and workers). ``PR_SET_PDEATHSIG`` makes
the kernel signal the direct child when the process that started it dies, even by
SIGKILL, where no Python handler can run; that child is :mod:`workers.supervise`, which
then ends the whole group (vLLM's helpers do not follow their parent on their own).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _libc_prctl() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] | None = getattr(libc, "prctl", None)
    return prctl


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """``preexec_fn``: ask the kernel to send ``sig`` to this process when its parent dies.

    Linux only; a no-op elsewhere. Runs in the child between fork and exec, so it must
    not allocate locks or start threads (ctypes call only). The setting survives exec.
    """
    prctl = _libc_prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def terminate_with_parent() -> None:
    """``preexec_fn`` for :mod:`workers.supervise`: SIGTERM it when the launcher dies."""
    die_with_parent(signal.SIGTERM)


def supervised(argv: Sequence[str], *, grace_s: float = 10.0, detach: bool = False) -> list[str]:
    """``argv`` run under :mod:`workers.supervise`, which ends its whole group with it.

    Launch the result with ``start_new_session=True``, ``preexec_fn=terminate_with_parent``
    and an environment from :func:`with_workers_path`. The group id is the launched pid.
    ``detach`` survives Ray's SIGKILL of a dead actor's direct children (see supervise).
    """
    head = [sys.executable, "-m", "workers.supervise", "--grace", str(grace_s)]
    head += ["--watch", str(os.getpid())]
    if detach:
        head.append("--detach")
    return [*head, "--", *argv]


def with_workers_path(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with this checkout on PYTHONPATH, so children import ``workers`` from here."""
    out = dict(env)
    root = str(Path(__file__).resolve().parent.parent)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (root, out.get("PYTHONPATH", "")) if p)
    return out


def group_alive(pgid: int) -> bool:
    """True while any process of the group ``pgid`` exists (zombies included)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def member_alive(pid: int, pgid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process of the group ``pgid``: one /proc read,
    where ``group_members`` reads every process's."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        # fields after "(comm)": state, ppid, pgrp, ...
        return int(fields[2]) == pgid and fields[0] != "Z"
    except (OSError, IndexError, ValueError):
        return False


def group_members(pgid: int) -> list[int]:
    """PIDs whose process group is ``pgid``, read from /proc (zombies excluded)."""
    return [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit() and member_alive(int(entry), pgid)
    ]


def kill_group(pgid: int, *, grace_s: float = 10.0) -> None:
    """SIGTERM the group, wait up to ``grace_s`` for it to leave, then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_members(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def signal_name(returncode: int | None) -> str | None:
    """``SIGILL`` for a return code of -4 (killed by signal), else None."""
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def tail(path: str | os.PathLike[str], max_bytes: int = 4000) -> str:
    """The last ``max_bytes`` of a log file as text ('' when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
