"""Run an ASGI app under a real uvicorn server on 127.0.0.1 in a background thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from scheduler.preflight import free_port


@contextlib.contextmanager
def serve_in_thread(
    app: Any, *, lifespan: str = "on", http: Any = "auto", **options: Any
) -> Iterator[str]:
    """Yield the base URL (http://127.0.0.1:PORT) while ``app`` is served; stop after.
    ``http``: uvicorn's HTTP protocol (a name, an import string or a class); ``options``:
    more uvicorn.Config options."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan=lifespan,
        access_log=False,
        loop="asyncio",
        http=http,
        **options,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
