"""The gateway's server protocol (gateway/h1server.py): one write per inference response,
uvicorn's framing and keep-alive rules otherwise."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl

from scheduler.gateway.h1server import OneWriteCycle
from tests.gateway.conftest import MODEL, Harness


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _cycle(transport: _Transport, *, keep_alive: bool = True) -> tuple[OneWriteCycle, list[int]]:
    completed: list[int] = []
    cycle = OneWriteCycle(
        scope={"type": "http", "method": "POST", "path": "/v1/completions"},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test"),
        access_log=False,
        default_headers=[(b"server", b"uvicorn")],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: completed.append(1),
    )
    return cycle, completed


def test_plain_response_leaves_in_one_write() -> None:
    async def run() -> None:
        transport = _Transport()
        cycle, completed = _cycle(transport)
        body = b'{"ok":true}'
        await cycle.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
            }
        )
        assert transport.writes == []  # the head waits for the body
        await cycle.send({"type": "http.response.body", "body": body})
        assert transport.writes == [
            b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\ncontent-type: application/json\r\n"
            b"content-length: 11\r\n\r\n" + body
        ]
        assert cycle.response_complete and completed == [1] and not transport.closed

    asyncio.run(run())


def test_stream_head_leaves_with_the_first_chunk_then_chunked() -> None:
    async def run() -> None:
        transport = _Transport()
        cycle, completed = _cycle(transport, keep_alive=False)
        await cycle.send({"type": "http.response.start", "status": 200, "headers": []})
        await cycle.send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await cycle.send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
        await cycle.send({"type": "http.response.body", "body": b"", "more_body": False})
        assert transport.writes == [
            b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\nconnection: close\r\n"
            b"transfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n",
            b"9\r\ndata: 2\n\n\r\n",
            b"0\r\n\r\n",
        ]
        assert completed == [1] and transport.closed  # not keep-alive: closed when done

    asyncio.run(run())


def test_framing_errors_and_bad_headers_are_refused() -> None:
    async def run() -> None:
        cycle, _ = _cycle(_Transport())
        start = {"type": "http.response.start", "status": 200}
        await cycle.send({**start, "headers": [(b"content-length", b"2")]})
        with pytest.raises(RuntimeError, match="longer"):
            await cycle.send({"type": "http.response.body", "body": b"abc"})
        cycle, _ = _cycle(_Transport())
        await cycle.send({**start, "headers": [(b"content-length", b"2")]})
        with pytest.raises(RuntimeError, match="shorter"):
            await cycle.send({"type": "http.response.body", "body": b"a"})
        cycle, _ = _cycle(_Transport())
        with pytest.raises(RuntimeError, match="header value"):
            await cycle.send({**start, "headers": [(b"x-a", b"1\r\nset-cookie: x")]})
        cycle, _ = _cycle(_Transport())
        with pytest.raises(RuntimeError, match=r"http\.response\.start"):
            await cycle.send({"type": "http.response.body", "body": b""})

    asyncio.run(run())


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, dict[str, str], bytes]:
    """One Content-Length framed HTTP/1.1 response off ``sock`` (``buffer`` keeps the rest)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.decode().lower(): v.decode() for k, v in (ln.split(b": ", 1) for ln in lines)}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        rest += chunk
    buffer[:] = rest[length:]
    return status, headers, rest[:length]


def test_pipelined_inference_requests_on_one_connection(harness: Harness) -> None:
    """Two POSTs sent back to back on one keep-alive connection: both answered in order,
    the second one closing the connection as it asked."""
    key = harness.tenant("pipe")
    host, port = harness.url.removeprefix("http://").split(":")

    def request(prompt: str, extra: str = "") -> bytes:
        body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 2}).encode()
        return (
            f"POST /v1/completions HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
        ).encode() + body

    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request("one") + request("two", "connection: close\r\n"))
        buffer = bytearray()
        answers: list[Any] = []
        for _ in range(2):
            status, headers, body = _read_response(sock, buffer)
            assert status == b"HTTP/1.1 200 OK", body
            answers.append((headers, json.loads(body)))
        assert sock.recv(1) == b""  # closed after the second, as asked
    assert [a[1]["model"] for a in answers] == [MODEL, MODEL]
    assert answers[0][0].get("connection") is None
    assert answers[1][0]["connection"] == "close"
    assert all(a[0]["x-request-id"].startswith("req-") for a in answers)
    received = harness.upstreams[0].received + harness.upstreams[1].received
    assert sorted(r["prompt"] for r in received) == ["one", "two"]
