"""llama-cpp-python's OpenAI server with a Prometheus ``/metrics`` page of its own.

    python -m workers.llamacpp_serve --model m.gguf --model_alias demo --port 8000 ...

The same arguments and app as ``python -m llama_cpp.server`` (its settings parser and
``create_app``), served by uvicorn the same way, behind one ASGI layer that answers
``GET /metrics`` and counts the inference requests it passes through. llama-cpp-python
exports no metrics (vLLM's server does, under ``vllm:``); these carry the ``llamacpp:``
prefix:

* ``llamacpp:num_requests_running`` — inference requests in the server now (what a drain
  waits on: ``scheduler/runtime/load.py`` reads it like vLLM's running/waiting gauges);
* ``llamacpp:requests_total{path,status}`` (status 500: the app failed, also after it
  started answering) and ``llamacpp:e2e_request_latency_seconds``;
* ``llamacpp:prompt_tokens_total`` and ``llamacpp:generation_tokens_total`` — from the
  ``usage`` of complete answers; a stream carries no usage in llama-cpp-python 0.3, so its
  generated tokens are its content events (about one token each: llama.cpp holds back text
  at stop-sequence prefixes and split UTF-8 characters), its prompt uncounted.

Counting never fails a request: what cannot be read is not counted (and logged once).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

# third-party modules are imported where used: ``llama_cpp`` is the first a launch imports,
# so a machine without the extra says "No module named 'llama_cpp'" (not another module)

log = logging.getLogger(__name__)

# llama-cpp-python's routes that run the model (exact paths: the label's values stay few)
INFERENCE_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/engines/copilot-codex/completions",
    }
)
_MAX_PARSED_BYTES = 1 << 20  # complete answers larger than this are not parsed for usage


class EngineMetrics:
    """The server's metrics, in their own registry."""

    def __init__(self, model: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = ("model_name",)
        self.running = Gauge(
            "llamacpp:num_requests_running",
            "Inference requests in the server now.",
            labels,
            registry=self.registry,
        ).labels(model)
        self._requests = Counter(
            "llamacpp:requests",
            "Inference requests answered, by path and HTTP status.",
            (*labels, "path", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "llamacpp:e2e_request_latency_seconds",
            "Inference request latency, first request byte to last answer byte.",
            labels,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        ).labels(model)
        self.prompt_tokens = Counter(
            "llamacpp:prompt_tokens",
            "Prompt tokens of complete (non-streamed) answers.",
            labels,
            registry=self.registry,
        ).labels(model)
        self.generation_tokens = Counter(
            "llamacpp:generation_tokens",
            "Generated tokens (complete answers' usage; streams' content events).",
            labels,
            registry=self.registry,
        ).labels(model)
        self._model = model

    def answered(self, path: str, status: int) -> None:
        self._requests.labels(self._model, path, str(status)).inc()

    def page(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Tally:
    """What one answer's body says about tokens."""

    def __init__(self) -> None:
        self.status = 0
        self.stream = False
        self.body = bytearray()
        self.events = 0
        self.overflow = False  # the body passed _MAX_PARSED_BYTES: its usage is not read
        self._tail = b""

    def start(self, message: Message) -> None:
        self.status = int(message["status"])
        for name, value in message.get("headers", ()):
            if name.lower() == b"content-type" and value.startswith(b"text/event-stream"):
                self.stream = True

    def body_part(self, data: bytes) -> None:
        if self.stream:
            text = self._tail + data
            lines = text.split(b"\n")
            self._tail = lines.pop()
            self.events += sum(1 for line in lines if _content_event(line))
        elif not self.overflow:
            if len(self.body) + len(data) > _MAX_PARSED_BYTES:
                self.overflow = True
                self.body.clear()
            else:
                self.body += data

    def tokens(self) -> tuple[int, int]:
        """(prompt, generated) tokens of the answer."""
        if self.stream:
            return 0, self.events
        if self.overflow:
            return 0, 0
        try:
            answer = json.loads(bytes(self.body))
        except ValueError:
            return 0, 0
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if not isinstance(usage, dict):
            return 0, 0
        prompt, generated = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return (
            prompt if isinstance(prompt, int) else 0,
            generated if isinstance(generated, int) else 0,
        )


def _content_event(line: bytes) -> bool:
    """An SSE data line of a chunk with generated text."""
    if not line.startswith(b"data:"):
        return False
    try:
        chunk = json.loads(line[5:])
    except ValueError:
        return False
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if isinstance(choice, dict):
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if text:
                return True
    return False


class MetricsFront:
    """ASGI: ``GET /metrics`` answered here; inference requests counted; the rest passed."""

    def __init__(self, app: ASGIApp, metrics: EngineMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/metrics" and scope["method"] == "GET":
            from prometheus_client.exposition import CONTENT_TYPE_LATEST

            body = self.metrics.page()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", CONTENT_TYPE_LATEST.encode()),
                        (b"content-length", b"%d" % len(body)),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["method"] != "POST" or path not in INFERENCE_PATHS:
            await self.app(scope, receive, send)
            return
        tally = _Tally()

        async def counting_send(message: Message) -> None:
            try:
                if message["type"] == "http.response.start":
                    tally.start(message)
                elif message["type"] == "http.response.body":
                    tally.body_part(message.get("body", b""))
            except Exception:  # an answer it cannot read is not counted, still sent
                _log_uncounted()
            await send(message)

        metrics = self.metrics
        metrics.running.inc()
        started = time.perf_counter()
        failed = True
        try:
            await self.app(scope, receive, counting_send)
            failed = False
        finally:
            metrics.running.dec()
            metrics.latency.observe(time.perf_counter() - started)
            metrics.answered(path, 500 if failed or not tally.status else tally.status)
            if tally.status == 200:
                try:
                    prompt, generated = tally.tokens()
                except Exception:
                    _log_uncounted()
                    prompt = generated = 0
                metrics.prompt_tokens.inc(prompt)
                metrics.generation_tokens.inc(generated)


_logged: list[bool] = []


def _log_uncounted() -> None:
    if not _logged:
        _logged.append(True)
        log.exception("an answer the metrics could not read (not counted; logged once)")


def main(argv: list[str] | None = None) -> None:
    from llama_cpp.server.app import create_app
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    parser = argparse.ArgumentParser(prog="workers.llamacpp_serve")
    add_args_from_model(parser, Settings)
    args = parser.parse_args(argv)
    # (its annotations say it returns the class; it returns an instance)
    server_settings = cast(ServerSettings, parse_model_from_args(ServerSettings, args))
    model_settings = cast(ModelSettings, parse_model_from_args(ModelSettings, args))
    app = create_app(server_settings=server_settings, model_settings=[model_settings])
    model = model_settings.model_alias or model_settings.model
    import uvicorn

    uvicorn.run(
        MetricsFront(app, EngineMetrics(model)),
        host=os.getenv("HOST", server_settings.host),
        port=int(os.getenv("PORT", server_settings.port)),
        ssl_keyfile=server_settings.ssl_keyfile,
        ssl_certfile=server_settings.ssl_certfile,
    )


if __name__ == "__main__":
    main()
