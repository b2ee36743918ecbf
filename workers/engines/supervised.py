"""What every engine server shares: one supervised process group, a log, a health wait.

A concrete server (vLLM, llama.cpp) says how to build its argv and environment for a
port, how to prepare its weights and how to check, once up, that the engine loaded the
weights it was asked for; :class:`SupervisedServer` prepares, runs the server under a
detached :mod:`workers.supervise` in its own process group (so the server and its
helpers end when the owner ends, however it ends), waits until the health check answers
while watching that the group lives, verifies the start-up log written by this start,
and kills the whole group on ``stop``. It implements ``workers.engines.base.Engine``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from scheduler.errors import EngineError
from scheduler.preflight import free_port
from workers.proc import (
    group_members,
    kill_group,
    member_alive,
    supervised,
    tail,
    terminate_with_parent,
    with_workers_path,
)

HealthCheck = Callable[[str], bool]


class ServerConfig(Protocol):
    """What the shared lifecycle needs of a server's configuration."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def served_model_name(self) -> str: ...


C = TypeVar("C", bound=ServerConfig)


class SupervisedServer(Generic[C]):
    """Base of the engine servers; subclasses provide ``label``, ``_argv`` and ``_env_for``."""

    label = "engine server"
    stop_grace_s = 10.0
    default_start_timeout_s = 600.0

    @staticmethod
    def default_health_check(base_url: str) -> bool:
        raise NotImplementedError

    def __init__(
        self,
        config: C,
        log_path: Path,
        *,
        env: Mapping[str, str],
        start_timeout_s: float | None = None,
        health_check: HealthCheck | None = None,
        python: str = sys.executable,
    ) -> None:
        self.config = config
        self.log_path = Path(log_path)
        self._host = config.host
        self._port = config.port
        self._served_model_name = config.served_model_name
        self._env = dict(env)
        self._start_timeout_s = start_timeout_s or self.default_start_timeout_s
        self._health_check = health_check or type(self).default_health_check
        self._python = python
        self._pgid: int | None = None
        self._started_at: float | None = None
        self._stopped = False
        self._member_seen: int | None = None  # a pid of the group seen alive (see _alive)

    # -- what a concrete server provides ---------------------------------------------------
    def _argv(self, port: int, python: str) -> list[str]:
        raise NotImplementedError

    def _env_for(self, base: Mapping[str, str]) -> dict[str, str]:
        return dict(base)

    def _start_fix(self) -> str:
        return f"read {self.log_path}"

    def _prepare(self) -> None:
        """Before launch: make and check the weights (raise EngineError to refuse)."""

    def _verify_started(self, log_text: str) -> None:
        """Once healthy: check the engine's own start-up log (raise EngineError to refuse)."""

    # -- the shared lifecycle -----------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def pid(self) -> int | None:
        """Process group id of the engine (the supervisor's launcher pid)."""
        return self._pgid

    def command(self) -> list[str]:
        self._port = self._port or free_port(self._host)
        return self._argv(self._port, self._python)

    def start(self) -> str:
        if self._pgid is not None:
            raise EngineError("engine already started", fix="stop() it before starting again")
        self._prepare()
        argv = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            launcher = subprocess.Popen(
                supervised(argv, grace_s=self.stop_grace_s, detach=True),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=with_workers_path(self._env_for(self._env)),
                start_new_session=True,  # own group: stop() kills the server's helpers too
                preexec_fn=terminate_with_parent,
            )
        self._pgid = launcher.pid
        launcher.wait()  # exits at once, leaving the detached supervisor in its group
        self._started_at = time.monotonic()
        self._wait_healthy()
        try:
            self._verify_started(_read_from(self.log_path, log_start))
        except EngineError:
            self.stop()  # never serve weights other than the ones asked for
            raise
        return self.base_url

    def _alive(self) -> bool:
        """Any process of the engine's group lives. Checked on every health call: the member
        seen alive last time is read first (one /proc read); all of /proc only when it is
        gone (a scan reads every process's stat: ~3 ms with 150 processes)."""
        if self._pgid is None:
            return False
        if self._member_seen is not None and member_alive(self._member_seen, self._pgid):
            return True
        members = group_members(self._pgid)
        self._member_seen = members[0] if members else None
        return bool(members)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if not self._alive():
                self.stop()
                raise EngineError(
                    f"{self.label} exited while starting; log tail:\n" + tail(self.log_path, 2000),
                    fix=self._start_fix(),
                )
            if self._health_check(self.base_url):
                return
            time.sleep(0.5)
        self.stop()
        raise EngineError(
            f"{self.label} not healthy after {self._start_timeout_s:.0f} s; log tail:\n"
            + tail(self.log_path, 2000),
            fix="raise engine_start_timeout_s or " + self._start_fix(),
        )

    def ready(self) -> bool:
        return self._alive() and self._health_check(self.base_url)

    def health(self) -> dict[str, Any]:
        if self._stopped:
            state = "stopped"
        elif self._pgid is None:
            state = "not started"
        elif not self._alive():
            state = "exited"
        else:
            state = "ready" if self._health_check(self.base_url) else "unhealthy"
        return {
            "state": state,
            "pid": self.pid,
            "base_url": self.base_url,
            "model": self._served_model_name,
            "uptime_s": time.monotonic() - self._started_at if self._started_at else 0.0,
            "log": str(self.log_path),
        }

    def stop(self) -> None:
        if self._pgid is None or self._stopped:
            return
        self._stopped = True
        kill_group(self._pgid, grace_s=self.stop_grace_s)

    def group_members(self) -> list[int]:
        """Live processes of the engine's group (empty once stopped)."""
        return group_members(self._pgid) if self._pgid is not None else []


def _read_from(path: Path, offset: int) -> str:
    """The text appended to ``path`` since ``offset`` (this start's log, not earlier ones)."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", errors="replace")
