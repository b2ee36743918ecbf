"""Small periodic HTTP GETs (engine health, engine metrics) over one kept-alive client.

``httpx.get`` builds a new client for every call, and with it a TLS context (certifi's CA
bundle parsed), even for a plain-http URL: 20-30 ms of CPU per call on the 2-core test
machine. A replica actor checks its engine on every reconciler tick (1 s by default, 0.2 s
in tests and benchmarks), so those checks alone took 3-15% of a core beside the engine
they watch (seen as ``ray::ReplicaActor.health`` in bench/runtime.py). One client per
process, shared by the calling threads (the actor answers on several; httpx's pool is
thread-safe), reuses its connections: about 0.2 ms per check.
"""

from __future__ import annotations

import threading

import httpx

_client: httpx.Client | None = None
_lock = threading.Lock()


def client() -> httpx.Client:
    """This process's shared client (created on first use)."""
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                # idle connections dropped after 2 s, before uvicorn's 5 s keep-alive
                # timeout closes them under us (vLLM's and llama.cpp's servers are uvicorn)
                _client = httpx.Client(limits=httpx.Limits(keepalive_expiry=2.0))
    return _client


def get(url: str, timeout_s: float) -> httpx.Response:
    """GET ``url`` with the shared client (raises httpx.HTTPError as httpx.get does). A kept
    connection the server closed as it was reused fails before any answer: sent once more,
    on a fresh connection (a drain reads "nothing in flight" from a failed read)."""
    try:
        return client().get(url, timeout=timeout_s)
    except httpx.RemoteProtocolError:
        return client().get(url, timeout=timeout_s)


def answers_ok(url: str, timeout_s: float) -> bool:
    """GET ``url`` answers 200 within ``timeout_s``."""
    try:
        return get(url, timeout_s).status_code == 200
    except httpx.HTTPError:
        return False
