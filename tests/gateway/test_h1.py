"""The gateway's HTTP/1.1 upstream client against raw servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from scheduler.gateway.h1 import _PAUSE_BYTES, H1Upstream
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


@pytest.mark.parametrize(
    ("pieces", "complete"),
    [
        ((b"HTTP/1.1 200 OK\r\nconte", b"nt-type: text/plain\r\n\r\nall", b" of it"), True),
        ((b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n", b"\r\nhalf"), False),
        ((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nhalf\r\n",), False),
    ],
    ids=["unframed-head-in-pieces", "length-head-in-pieces", "chunked-cut"],
)
def test_the_end_of_the_connection_ends_only_an_unframed_body(
    pieces: tuple[bytes, ...], complete: bool
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)  # separate reads on the gateway's side
        writer.close()

    if complete:
        assert asyncio.run(_post_to(answer)) == (200, b"all of it")
    else:
        with pytest.raises(UpstreamError):
            asyncio.run(_post_to(answer))


def _client(read_timeout_s: float = 60.0) -> H1Upstream:
    return H1Upstream(
        UpstreamLimits(max_connections=8, connect_timeout_s=2.0, read_timeout_s=read_timeout_s)
    )


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/completions"


async def _pooled(client: H1Upstream, url: str) -> None:
    """One answered request, leaving its connection idle in the pool."""
    response = await client.post(url, b"{}")
    await response.read()
    await response.close()


async def _post_now(client: H1Upstream, url: str, body: bytes) -> Any:
    """post_now(), waiting for its listener: (the connection it got, as the listener saw
    it: status, error, stale, body)."""
    heard: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def listener(connection: Any) -> None:
        body = connection.take_body() if connection.complete else None
        heard.set_result((connection.status, connection.error, connection.stale, body))
        connection.finish()

    assert client.post_now(url, body, listener) is not None
    async with asyncio.timeout(10):
        return await heard


def test_a_silent_engine_is_cut_after_the_read_timeout() -> None:
    """An engine that takes a request and never answers: the client's one sweep cuts it
    between one and 1.25 read timeouts (+ the sweep's turn) after its last bytes, for
    post() and for post_now()'s listener alike; the connection is not reused."""

    async def answers_once_then_silent(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await _answer(reader, writer, b"{}")
        await _read_request(reader)
        await asyncio.sleep(30)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(30)

    async def run() -> tuple[float, float, Any]:
        loop = asyncio.get_running_loop()
        client = _client(read_timeout_s=0.4)
        mute, mute_url = await _serve(silent)
        once, once_url = await _serve(answers_once_then_silent)
        try:
            started = loop.time()
            with pytest.raises(UpstreamError, match="TimeoutError"):
                await client.post(mute_url, b"{}")
            waited_post = loop.time() - started
            await _pooled(client, once_url)
            started = loop.time()
            heard = await _post_now(client, once_url, b"{}")
            waited_now = loop.time() - started
            assert not client._open  # the cut connections were not kept for reuse
            return waited_post, waited_now, heard
        finally:
            await client.aclose()
            for server in (mute, once):
                server.close()

    waited_post, waited_now, (status, error, stale, body) = asyncio.run(run())
    assert 0.4 <= waited_post < 1.5 and 0.4 <= waited_now < 1.5
    assert (status, str(error), stale, body) == (0, "TimeoutError", False, None)


def test_post_now_answers_through_its_listener_and_reuses_the_connection() -> None:
    answers = [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for body in answers:
            await _answer(reader, writer, body)

    async def run() -> tuple[Any, Any, Any, int]:
        client = _client()
        server, url = await _serve(keep_alive)
        try:
            assert client.post_now("ftp://x/y", b"{}", lambda _: None) is None  # not its URL
            first = await _post_now(client, url, b'{"a": 1}')  # opens a connection
            second = await _post_now(client, url, b'{"a": 2}')  # then reuses it
            third = await _post_now(client, url, b'{"a": 3}')
            return first, second, third, len(client._open)
        finally:
            await client.aclose()
            server.close()

    first, second, third, opened = asyncio.run(run())
    assert [first, second, third] == [(200, None, False, body) for body in answers]
    assert opened == 1


async def _answer_nothing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


def test_post_now_connect_failure_reaches_the_listener() -> None:
    async def run() -> Any:
        server, url = await _serve(_answer_nothing)  # a port nothing listens on once closed
        server.close()
        await server.wait_closed()
        client = _client()
        try:
            return await _post_now(client, url, b"{}"), len(client._open)
        finally:
            await client.aclose()

    (status, error, stale, body), opened = asyncio.run(run())
    assert (status, stale, body, opened) == (0, False, None, 0)
    assert str(error).startswith("ClientConnectorError")


def test_post_now_on_a_connection_the_engine_closed_is_stale() -> None:
    """The engine closed an idle keep-alive connection just as it was reused: the listener
    hears a failure before any response byte, marked stale (the gateway then sends the
    request once more, the same replica allowed)."""

    async def closes_after_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _answer(reader, writer, b"{}")
        await _read_request(reader)
        writer.close()

    async def run() -> Any:
        client = _client()
        server, url = await _serve(closes_after_one)
        try:
            await _pooled(client, url)
            return await _post_now(client, url, b"{}")
        finally:
            await client.aclose()
            server.close()

    status, error, stale, body = asyncio.run(run())
    assert (status, stale, body) == (0, True, None) and isinstance(error, UpstreamError)


def test_a_connection_paused_for_a_slow_reader_is_pooled_reading_again() -> None:
    """An answer past the pause threshold arrives whole while nobody reads it (reading
    paused), and the reader leaves: the connection goes back to the pool and its next
    request is answered, not left paused until the read timeout."""
    big = b"x" * (_PAUSE_BYTES + 1024)  # past the threshold in the read that ends it

    async def two_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _answer(reader, writer, big)
        await _answer(reader, writer, b"{}")

    async def run() -> tuple[bool, int, bytes]:
        client = _client()
        server, url = await _serve(two_answers)
        try:
            async with asyncio.timeout(10):
                first = await client.post(url, b"{}")
                connection = first._c  # type: ignore[attr-defined]
                while not connection.complete:  # the whole answer in, unread
                    await asyncio.sleep(0.01)
                paused = connection.paused
                await first.close()  # the reader left without reading
                second = await client.post(url, b"{}")
                return paused, len(client._open), await second.read()
        finally:
            await client.aclose()
            server.close()

    paused, opened, body = asyncio.run(run())
    assert paused and opened == 1 and body == b"{}"
