"""In-flight requests of an engine, read from the engine itself.

The scheduler runs apart from the gateways (cluster deployment), so it cannot see their
outstanding counters; every vLLM OpenAI server exports its own queue on ``/metrics``
(``vllm:num_requests_running`` + ``vllm:num_requests_waiting``), which is exactly the
work a drained replica must finish before it is stopped (llama.cpp servers export
``llamacpp:num_requests_running`` through ``workers/llamacpp_serve.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from scheduler import httpprobe

# vLLM's gauges, and workers/llamacpp_serve.py's for llama.cpp servers
IN_FLIGHT_METRICS = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "llamacpp:num_requests_running",
)


def in_flight_from_metrics(text: str) -> int:
    """Sum of the running and waiting request gauges in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in IN_FLIGHT_METRICS:
            total += float(line.rsplit(" ", 1)[1])
    return round(total)


class EngineLoad:
    """``outstanding(replica_id) -> int`` for the reconciler, asking the engine.

    ``url_of`` maps a replica to its engine base URL (``Reconciler.base_url_of``). An
    engine that does not answer has nothing in flight that could still finish: 0.
    """

    def __init__(self, url_of: Callable[[str], str | None], *, timeout_s: float = 2.0) -> None:
        self._url_of = url_of
        self._timeout_s = timeout_s

    def __call__(self, replica_id: str) -> int:
        url = self._url_of(replica_id)
        if not url:
            return 0
        try:
            response = httpprobe.get(f"{url.rstrip('/')}/metrics", self._timeout_s)
        except httpx.HTTPError:
            return 0
        if response.status_code != 200:
            return 0
        return in_flight_from_metrics(response.text)
