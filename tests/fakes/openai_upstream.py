"""A small, fast OpenAI-compatible engine stand-in (vLLM's wire format), as a raw ASGI app.

Used as the gateway's upstream in tests and as the isolation upstream of bench/gateway.py.
Behaviour switches (``UpstreamBehaviour``) make it fail before the first byte, cut a stream
mid-way, answer slowly, or reject too-long contexts like vLLM (HTTP 400). Output is
deterministic: ``max_tokens`` (default 8) tokens "t0 t1 ...", one SSE event per token.

Run standalone: ``python -m tests.fakes.openai_upstream --port 9000 --model m``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class UpstreamBehaviour:
    fail_next: int = 0  # the next N requests get HTTP 500 before any body
    cut_after_events: int | None = None  # streams break after this many content events
    # the next N streams open (200) and send only an error event, as vLLM does when its
    # engine core dies under a request; error_event_code is that event's code
    error_event_next: int = 0
    error_event_code: int = 500
    delay_s: float = 0.0  # wait before the response starts (prefill)
    token_delay_s: float = 0.0  # wait between streamed tokens (decode)
    default_tokens: int = 8
    max_context_tokens: int = 4096


@dataclass
class FakeUpstream:
    """The ASGI app plus what it saw; ``behaviour`` may be changed while it serves."""

    served_model: str = "fake-model"
    behaviour: UpstreamBehaviour = field(default_factory=UpstreamBehaviour)
    record: bool = True
    received: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def completed(self) -> int:
        return len(self.received)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if scope["method"] == "GET" and path == "/v1/models":
            await _json(send, 200, {"object": "list", "data": [{"id": self.served_model}]})
            return
        if scope["method"] == "GET" and path in ("/health", "/healthz"):
            await _json(send, 200, {})
            return
        if scope["method"] != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            await _json(send, 404, {"error": {"message": "not found", "code": 404}})
            return
        body = await _read_body(receive)
        await self._complete(path == "/v1/chat/completions", json.loads(body), send)

    async def _complete(self, chat: bool, req: dict[str, Any], send: Send) -> None:
        b = self.behaviour
        with self._lock:
            if self.record:
                self.received.append(req)
            failing = b.fail_next > 0
            if failing:
                b.fail_next -= 1
        if failing:
            await _json(send, 500, {"error": {"message": "injected failure", "code": 500}})
            return
        if req.get("model") != self.served_model:
            msg = f"The model `{req.get('model')}` does not exist."
            await _json(send, 404, _vllm_error(msg, "NotFoundError", 404))
            return
        prompt_tokens = _count_prompt_tokens(req, chat)
        n_tokens = int(req.get("max_tokens") or req.get("max_completion_tokens") or 0) or (
            b.default_tokens
        )
        if prompt_tokens + n_tokens > b.max_context_tokens:
            msg = (
                f"This model's maximum context length is {b.max_context_tokens} tokens. "
                f"However, you requested {prompt_tokens + n_tokens} tokens."
            )
            await _json(send, 400, _vllm_error(msg, "BadRequestError", 400))
            return
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        created = int(time.time())
        rid = ("chatcmpl-" if chat else "cmpl-") + format(id(req), "x")
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n_tokens,
            "total_tokens": prompt_tokens + n_tokens,
        }
        if req.get("stream"):
            await self._stream(chat, req, send, rid, created, n_tokens, usage)
            return
        text = "".join(f"t{i} " for i in range(n_tokens))
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        await _json(
            send,
            200,
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": self.served_model,
                "choices": [choice],
                "usage": usage,
            },
        )

    async def _stream(
        self,
        chat: bool,
        req: dict[str, Any],
        send: Send,
        rid: str,
        created: int,
        n_tokens: int,
        usage: dict[str, int],
    ) -> None:
        b = self.behaviour
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = {"id": rid, "object": obj, "created": created, "model": self.served_model}

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            data = json.dumps({**head, "choices": choices, **extra}, separators=(",", ":"))
            return b"data: " + data.encode() + b"\n\n"

        def delta(text: str, finish: str | None = None) -> dict[str, Any]:
            if chat:
                return {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            return {"index": 0, "text": text, "finish_reason": finish}

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        with self._lock:
            error_event = b.error_event_next > 0
            if error_event:
                b.error_event_next -= 1
        if error_event:
            message = "EngineCore encountered an issue. See stack trace (above) for the root cause."
            code = b.error_event_code
            error = _vllm_error(
                message, "InternalServerError" if code >= 500 else "BadRequestError", code
            )
            data = b"data: " + json.dumps(error).encode() + b"\n\n"
            await _body(send, data + b"data: [DONE]\n\n", more=False)
            return
        if chat:  # vLLM opens with an empty assistant-role delta
            role = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": None,
            }
            await _body(send, event([role]))
        for i in range(n_tokens):
            if b.cut_after_events is not None and i >= b.cut_after_events:
                raise ConnectionAbortedError("injected mid-stream cut")  # server drops it
            if b.token_delay_s:
                await asyncio.sleep(b.token_delay_s)
            await _body(send, event([delta(f"t{i} ")]))
        tail = event([delta("", "length")])
        options = req.get("stream_options") or {}
        if options.get("include_usage"):
            tail += event([], usage=usage)
        await _body(send, tail + b"data: [DONE]\n\n", more=False)


def _vllm_error(message: str, type_: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _count_prompt_tokens(req: dict[str, Any], chat: bool) -> int:
    if chat:
        texts = [m.get("content") or "" for m in req.get("messages", [])]
        return sum(len(t.split()) if isinstance(t, str) else 1 for t in texts) + 1
    prompt = req.get("prompt", "")
    return len(prompt.split()) if isinstance(prompt, str) else len(prompt)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _body(send: Send, data: bytes, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(data)),
            ],
        }
    )
    await _body(send, data, more=False)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--token-delay-s", type=float, default=0.0)
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    app = FakeUpstream(
        served_model=args.model,
        behaviour=UpstreamBehaviour(token_delay_s=args.token_delay_s, delay_s=args.delay_s),
        record=False,
    )
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        loop=args.loop,
        http="httptools",
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
