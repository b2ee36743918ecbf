"""The worker actor: owns one serving engine process for one replica.

``ReplicaActor`` is a plain class so it is tested without Ray; the runtime makes it an
actor with ``as_ray_actor(ray)`` (``ray.remote`` applied by the caller). The engine
never outlives the actor:

* ``stop()`` kills the engine's process group (SIGTERM, then SIGKILL);
* an ``atexit`` hook, ``__del__`` and a SIGTERM handler do the same when the actor
  exits normally or is told to terminate;
* when the actor process is SIGKILLed (``ray.kill``, the OOM killer), where no Python
  code runs, the engine's supervisor (:mod:`workers.supervise`, detached so the
  raylet's SIGKILL of a dead worker's children misses it) sees its owner's pid end
  within half a second and ends the whole group: API server, engine core, workers.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from workers.engines.base import Engine
from workers.engines.vllm_server import VllmConfig, VllmServer

# (config, log path, the engine's environment) -> engine
EngineFactory = Callable[[VllmConfig, Path, Mapping[str, str]], Engine]


def node_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """This machine's environment with ``overrides`` on top (evaluated where it runs)."""
    return {**os.environ, **overrides}


class ReplicaActor:
    """One replica's engine: ``start() -> base_url``, ``health()``, ``info()``, ``stop()``."""

    def __init__(
        self,
        replica_id: str,
        config: VllmConfig,
        log_dir: Path,
        *,
        env: Mapping[str, str],
        start_timeout_s: float = 600.0,
        engine_factory: EngineFactory | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.replica_id = replica_id
        # what the scheduler planned (model, quant, device class ...): lets a restarted
        # scheduler adopt this replica instead of starting a duplicate
        self.metadata = dict(metadata or {})
        self.config = config
        self.log_path = Path(log_dir) / f"engine-{_safe(replica_id)}.log"
        # the scheduler sends engine settings only (Settings.engine_env_overrides): the
        # engine runs with this machine's environment plus them
        factory = engine_factory or (
            lambda cfg, log, engine_env: VllmServer(
                cfg, log, env=engine_env, start_timeout_s=start_timeout_s
            )
        )
        self._engine: Engine = factory(config, self.log_path, node_env(env))
        self._base_url: str | None = None
        atexit.register(self._stop_quietly)
        _install_sigterm(self._stop_quietly)

    def start(self) -> str:
        """Start the engine and wait for it to be healthy; return its base URL.

        Idempotent: a second call returns the running engine's URL.
        """
        if self._base_url is None:
            self._base_url = self._engine.start()
        return self._base_url

    def health(self) -> dict[str, Any]:
        """Engine state; ``healthy`` is True only while it answers its health check."""
        state = self._engine.health()
        healthy = state.get("state") == "ready"
        error = None if healthy else f"engine {state.get('state')}; log: {self.log_path}"
        return {"replica_id": self.replica_id, "healthy": healthy, "error": error, **state}

    def info(self) -> dict[str, Any]:
        config = {k: _plain(v) for k, v in asdict(self.config).items()}
        return {
            "replica_id": self.replica_id,
            "node": socket.gethostname(),
            "base_url": self._base_url,
            "pid": self._engine.pid,
            "log": str(self.log_path),
            "config": config,
            "replica": self.metadata,
        }

    def stop(self) -> None:
        """Kill the engine (idempotent). The actor itself is ended by its owner."""
        self._engine.stop()

    def _stop_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self._engine.stop()

    def __del__(self) -> None:
        self._stop_quietly()


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _install_sigterm(cleanup: Callable[[], None]) -> None:
    """On SIGTERM: clean up, then let the previous handler (or the default) act."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: FrameType | None) -> None:
        cleanup()
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)


def as_ray_actor(ray: Any, **options: Any) -> Any:
    """``ray.remote(**options)(ReplicaActor)``: the Ray actor class (Ray is the caller's)."""
    return ray.remote(**options)(ReplicaActor) if options else ray.remote(ReplicaActor)
