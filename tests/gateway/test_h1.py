"""The gateway's HTTP/1.1 upstream client against raw servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from scheduler.gateway.h1 import H1Upstream
from scheduler.gateway.upstream import UpstreamError, UpstreamLimits

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


async def _post_to(handler: Handler, body: bytes = b"{}") -> tuple[int, bytes]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = H1Upstream(
        UpstreamLimits(max_connections=8, connect_timeout_s=2.0, read_timeout_s=60.0)
    )
    try:
        # well under the read timeout: a hang would mean waiting for it
        async with asyncio.timeout(10):
            response = await client.post(f"http://127.0.0.1:{port}/v1/completions", body)
            content = await response.read()
            await response.close()
            return response.status_code, content
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


def test_engine_closing_before_answering_fails_the_request_at_once() -> None:
    """An engine killed while it works on a request: its connection ends with no response.
    That must fail fast (so the gateway retries elsewhere), not pass as an empty response
    or wait for the read timeout."""
    received: list[bytes] = []

    async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await _read_request(reader))
        writer.close()  # no status line, no headers: the process died

    with pytest.raises(UpstreamError):
        asyncio.run(_post_to(dies, b'{"prompt": "x"}'))
    assert received == [b'{"prompt": "x"}']


def test_body_delimited_by_the_connection_end_is_complete() -> None:
    async def http10(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"ok": true}')
        await writer.drain()
        writer.close()

    assert asyncio.run(_post_to(http10)) == (200, b'{"ok": true}')


def test_connection_ending_inside_a_framed_body_is_an_error() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"ok"')
        await writer.drain()
        writer.close()

    with pytest.raises(UpstreamError):
        asyncio.run(_post_to(cut))
