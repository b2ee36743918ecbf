"""The llama.cpp server's metrics front (workers/llamacpp_serve.py) over a stub ASGI app:
in-flight gauge while a request runs, tokens from complete answers and from streams,
/metrics answered, other routes passed through untouched (no llama.cpp needed)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from scheduler.runtime.load import in_flight_from_metrics
from workers.llamacpp_serve import EngineMetrics, MetricsFront

ANSWER = {
    "choices": [{"message": {"content": "hi"}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 4},
}
EVENTS = [
    {"choices": [{"delta": {"role": "assistant"}}]},
    {"choices": [{"delta": {"content": "he"}}]},
    {"choices": [{"delta": {"content": "llo"}}]},
    {"choices": [{"delta": {}, "finish_reason": "length"}]},
]


async def _stub(scope: Scope, receive: Receive, send: Send) -> None:
    """What llama-cpp-python answers: JSON, or SSE split at awkward places."""
    body = json.loads((await receive())["body"])
    if scope["path"] == "/v1/models":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        return
    if body.get("stream"):
        raw = b"".join(b"data: %s\r\n\r\n" % json.dumps(e).encode() for e in EVENTS)
        raw += b"data: [DONE]\r\n\r\n"
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(0, len(raw), 7):  # pieces cut mid-line
            await send({"type": "http.response.body", "body": raw[i : i + 7], "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if body.get("bad"):
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b'{"error": "bad"}'})
        return
    await asyncio.sleep(float(body.get("sleep", 0)))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(ANSWER).encode()})


async def _call(
    app: MetricsFront, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, bytes]:
    sent: list[Message] = []
    payload = json.dumps(body or {}).encode()

    async def receive() -> Message:
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def page_samples(page: bytes) -> dict[str, float]:
    """{series (name and labels, as written): value} of a Prometheus text page."""
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in page.decode().splitlines()
        if line and not line.startswith("#")
    }


def test_counts_requests_tokens_and_in_flight() -> None:
    async def scenario() -> dict[str, float]:
        app = MetricsFront(_stub, EngineMetrics("demo"))
        slow = asyncio.create_task(_call(app, "POST", "/v1/chat/completions", {"sleep": 0.2}))
        await asyncio.sleep(0.05)
        status, page = await _call(app, "GET", "/metrics")
        assert status == 200
        assert in_flight_from_metrics(page.decode()) == 1  # what a drain waits on
        assert (await slow)[0] == 200
        assert (await _call(app, "POST", "/v1/chat/completions", {"stream": True}))[0] == 200
        assert (await _call(app, "POST", "/v1/completions", {"bad": True}))[0] == 400
        assert (await _call(app, "POST", "/v1/models", {}))[0] == 200  # not counted
        status, page = await _call(app, "GET", "/metrics")
        assert in_flight_from_metrics(page.decode()) == 0
        return page_samples(page)

    samples = asyncio.run(scenario())
    chat = 'llamacpp:requests_total{model_name="demo",path="/v1/chat/completions",status="200"}'
    bad = 'llamacpp:requests_total{model_name="demo",path="/v1/completions",status="400"}'
    assert samples[chat] == 2 and samples[bad] == 1
    assert not any("/v1/models" in name for name in samples)
    assert samples['llamacpp:prompt_tokens_total{model_name="demo"}'] == 9
    # 4 from the answer's usage + 2 content events of the stream (role and finish: none)
    assert samples['llamacpp:generation_tokens_total{model_name="demo"}'] == 6
    assert samples['llamacpp:e2e_request_latency_seconds_count{model_name="demo"}'] == 3


def test_counting_never_fails_a_request_and_labels_stay_few() -> None:
    """Odd answers are sent unchanged and left uncounted; a failure after the answer
    started counts as 500; paths other than the model's routes are passed, not counted."""

    async def odd(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["path"]
        if kind == "/v1/completions":  # SSE with a data line that is no object
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        elif kind == "/v1/embeddings":  # JSON whose usage is no object, then too big a body
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b'{"usage": 3}'})
        elif kind == "/v1/chat/completions":  # fails after it started answering
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise RuntimeError("engine died mid-answer")
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

    async def scenario() -> dict[str, float]:
        app = MetricsFront(odd, EngineMetrics("demo"))
        assert await _call(app, "POST", "/v1/completions") == (200, b"data: 1\n\ndata: [DONE]\n\n")
        assert await _call(app, "POST", "/v1/embeddings") == (200, b'{"usage": 3}')
        with pytest.raises(RuntimeError, match="mid-answer"):
            await _call(app, "POST", "/v1/chat/completions")
        assert (await _call(app, "POST", "/v1/completions/anything"))[0] == 404
        return page_samples((await _call(app, "GET", "/metrics"))[1])

    samples = asyncio.run(scenario())
    total = 'llamacpp:requests_total{model_name="demo",path="%s",status="%s"}'
    assert samples[total % ("/v1/completions", 200)] == 1
    assert samples[total % ("/v1/embeddings", 200)] == 1
    assert samples[total % ("/v1/chat/completions", 500)] == 1
    assert not any("anything" in name for name in samples)
    assert samples['llamacpp:num_requests_running{model_name="demo"}'] == 0
    assert samples['llamacpp:generation_tokens_total{model_name="demo"}'] == 0
    assert samples['llamacpp:prompt_tokens_total{model_name="demo"}'] == 0


def test_an_answer_past_the_parse_limit_is_not_read_in_pieces() -> None:
    from workers.llamacpp_serve import _MAX_PARSED_BYTES, _Tally

    tally = _Tally()
    tally.start({"type": "http.response.start", "status": 200, "headers": []})
    tally.body_part(b'{"usage": {"prompt_tokens": 1, "completion_tokens": 1}, "x": "')
    tally.body_part(b"y" * _MAX_PARSED_BYTES)  # past the limit: nothing more is kept
    tally.body_part(b'"}')
    assert tally.tokens() == (0, 0)
