"""A lean HTTP/1.1 client for the gateway's one kind of upstream call (the default).

The gateway sends one thing upstream: a JSON POST to an engine's OpenAI server, then reads
the whole answer or relays its body pieces as they arrive. aiohttp and httpx do that with
general machinery (cookie jars, redirects, tracing, auth, proxies, per-request objects) that
costs more CPU than the rest of the gateway's request path together (bench/gateway.py and
bench/gateway_clients.py measure the three). This client is an ``asyncio.Protocol`` per
connection with httptools' response parser (what uvicorn uses for requests): one
``writelines`` per request, body pieces de-chunked by the parser, keep-alive connections
pooled per host (LIFO, at most ``max_connections`` open in all).

Timeouts: ``connect_timeout_s`` for the TCP (and TLS) connect and for waiting on a free pool
slot; ``read_timeout_s`` between two arrivals of response bytes, checked for every busy
connection by one sweep per client (every ``read_timeout_s / 4``, at most 1 s: a stall is
cut between 1 and 1.25 read timeouts after its last bytes, or 1 s past it), not a timer per
request. A reused keep-alive connection that the engine closed
meanwhile (its keep-alive timeout) fails before any response byte; that request is sent
once more on a fresh connection. A response body larger than ``_PAUSE_BYTES`` not yet
consumed pauses reading from the engine (back-pressure for slow streaming clients).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import re
import ssl
from collections.abc import AsyncIterator, Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

from scheduler.gateway.upstream import UpstreamError, UpstreamLimits, UpstreamResponse

_FRAMING = re.compile(rb"\r\n(?:content-length|transfer-encoding)[ \t]*:", re.IGNORECASE)
_PAUSE_BYTES = 256 * 1024  # unread response bytes above which reading from the engine pauses
_JOIN_BYTES = 64 * 1024  # request bodies up to this are copied behind the head and sent whole
Origin = tuple[str, str, int]  # (scheme, host, port)


class _Disconnected(UpstreamError):
    """The engine closed the connection (or it broke) before the response ended."""


@functools.lru_cache(maxsize=1024)
def _split(url: str) -> tuple[Origin, bytes, bytes]:
    """((scheme, host, port), request target, Host header) of an http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamError(f"unsupported upstream URL {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (parts.scheme, parts.hostname, port), target.encode(), parts.netloc.encode()


def _connect_failure(exc: TimeoutError | OSError) -> UpstreamError:
    """The UpstreamError of a connect that timed out (TimeoutError is an OSError too) or
    failed."""
    if isinstance(exc, TimeoutError):
        return UpstreamError("ConnectTimeoutError")
    return UpstreamError(f"ClientConnectorError: {exc.strerror or exc}")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: H1Upstream, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.sent = False  # a request is out and its exchange not finished
        self.head: asyncio.Future[None] | None = None  # post(): resolved by the response head
        # post_now(): called with this connection when the whole answer arrived or the
        # exchange failed (``error``), instead of ``head`` and ``next_piece``; ``each``:
        # also whenever body bytes arrived (a stream), until ``finish()``
        self.listener: Callable[[_Connection], None] | None = None
        self.each = False
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.head_bytes = b""  # what arrived before the response head was complete
        self.error: UpstreamError | None = None
        self.wakeup: asyncio.Future[None] | None = None
        self.paused = False
        self.last_data_s = 0.0

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if not self.sent:  # bytes while idle: not a response to anything we sent
            self._close()
            return
        self.last_data_s = self.loop.time()
        if not self.status:  # the head is still arriving: kept for eof_received (no copy
            self.head_bytes += data  # when it comes in one piece)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed response: {exc}"))
            self._close()
        if self.listener is not None and (self.complete or (self.each and self.body)):
            self._answer()  # after the parser returned

    def eof_received(self) -> bool | None:
        # a body with neither length nor chunking ends with the connection; an end before
        # the response head is a failure (connection_lost reports it), e.g. an engine
        # killed while it worked on the request: never a complete, empty response
        if self.sent and self.status and not self.complete and not self._framed():
            self.on_message_complete()
            if self.listener is not None:
                self._answer()
        self.closed = True
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(_Disconnected("ServerDisconnectedError"))
        self.pool._forget(self)

    def pause_writing(self) -> None:  # request bodies are bounded: the transport buffers
        pass

    def resume_writing(self) -> None:
        pass

    def _framed(self) -> bool:
        """Whether the response head had Content-Length or chunking (its end is known
        without EOF). Looked up in the head's bytes when the connection ends, rather than
        in a parser callback for every header of every response."""
        return _FRAMING.search(self.head_bytes.partition(b"\r\n\r\n")[0]) is not None

    # ---- httptools callbacks ------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if (
            self.buffered > _PAUSE_BYTES
            and not self.paused
            and self.listener is None  # post_now() waits for the whole answer: never pause
            and self.transport is not None
        ):
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.keep_alive and self.parser.should_keep_alive()
        self._unwatch()
        self._wake()

    # ---- request side -------------------------------------------------------------------

    def send(
        self,
        target: bytes,
        host: bytes,
        body: bytes,
        listener: Callable[[_Connection], None] | None = None,
        each: bool = False,
    ) -> None:
        assert self.transport is not None
        self.sent = True
        self.pool._watch(self)
        if listener is None:
            self.head = self.loop.create_future()
        else:
            self.listener = listener
            self.each = each
        self.last_data_s = self.loop.time()
        head = (
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % (target, host, len(body))
        )
        if len(body) <= _JOIN_BYTES:  # one buffer, one send(2)
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))

    def _timed_out(self) -> None:
        self._fail(UpstreamError("TimeoutError"))
        self._close()

    def _unwatch(self) -> None:
        self.pool._busy.discard(self)

    def _wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: a cut after the caller gave up is no warning
        self._unwatch()
        self._wake()
        if self.listener is not None:
            self._answer()

    def _answer(self) -> None:
        listener = self.listener
        if listener is not None:
            if not self.each:
                self.listener = None
            listener(self)

    def pause(self) -> None:
        """Stop reading the answer (post_now streams: the client is slower than the engine;
        the read timeout waits meanwhile)."""
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    @property
    def stale(self) -> bool:
        """The engine had closed this reused keep-alive connection before the request went
        out (cut before any response byte): the same request may go once more, fresh."""
        return self.reused and not self.status and isinstance(self.error, _Disconnected)

    def take_body(self) -> bytes:
        """post_now(): the body bytes that arrived and were not taken yet (after
        ``complete``, the whole body or what ``each`` calls left of it)."""
        body = self.body
        if not body:
            return b""
        piece = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self.buffered = 0
        return piece

    def _close(self) -> None:
        self.closed = True
        self.listener, self.each = None, False  # a closed connection calls nobody back
        if self.transport is not None:
            self.transport.close()

    async def next_piece(self) -> bytes | None:
        """Every body byte that arrived and was not read yet (waits for at least one), or
        None at the end of the body. Pieces that queued up while the reader was busy come
        back as one: under load, one event read and one send downstream carry several."""
        while not self.body:
            if self.error is not None:
                raise self.error
            if self.complete:
                return None
            self.wakeup = self.loop.create_future()
            await self.wakeup
            self.wakeup = None
        piece = self.take_body()
        self.resume()
        return piece

    def finish(self) -> None:
        """Back to the pool if the exchange ended cleanly; closed otherwise."""
        self._unwatch()
        if self.complete and self.keep_alive and not self.closed and self.error is None:
            self.resume()  # paused for a slow reader as the answer ended: read again
            self._reset()
            self.reused = True
            self.pool._release(self)
        else:
            self._close()
            self.pool._forget(self)


class _H1Response:
    def __init__(self, connection: _Connection) -> None:
        self._c = connection
        self.status_code = connection.status
        self._done = False

    async def read(self) -> bytes:
        pieces = []
        while (piece := await self._c.next_piece()) is not None:
            pieces.append(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def chunks(self) -> AsyncIterator[bytes]:
        while (piece := await self._c.next_piece()) is not None:
            yield piece

    async def close(self) -> None:
        if not self._done:
            self._done = True
            self._c.finish()


class H1Upstream:
    """The pooled client (``UpstreamClient``); one per gateway, used from its event loop."""

    def __init__(self, limits: UpstreamLimits) -> None:
        self.limits = limits
        self._idle: dict[Origin, list[_Connection]] = {}  # {origin: idle connections, LIFO}
        self._open: set[_Connection] = set()
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ssl: ssl.SSLContext | None = None
        self._closing = False
        self._busy: set[_Connection] = set()  # waiting on a response: the sweep watches them
        self._connecting: set[asyncio.Task[None]] = set()  # post_now()'s connects
        self._sweeper: asyncio.TimerHandle | None = None

    def _watch(self, connection: _Connection) -> None:
        self._busy.add(connection)
        if self._sweeper is None:
            self._sweeper = connection.loop.call_later(self._sweep_period_s(), self._sweep)

    def _sweep_period_s(self) -> float:
        return min(1.0, self.limits.read_timeout_s / 4)

    def _sweep(self) -> None:
        """Cut the busy connections that received nothing for ``read_timeout_s``."""
        self._sweeper = None
        if not self._busy:
            return
        loop = asyncio.get_running_loop()
        now_s = loop.time()
        timeout_s = self.limits.read_timeout_s
        for connection in list(self._busy):
            if connection.paused:  # the client is the slow side: wait on it, not the engine
                connection.last_data_s = now_s
            elif now_s - connection.last_data_s >= timeout_s:
                connection._timed_out()  # and unwatched
        if self._busy:
            self._sweeper = loop.call_later(self._sweep_period_s(), self._sweep)

    def post_now(
        self,
        url: str,
        body: bytes,
        listener: Callable[[_Connection], None],
        *,
        each: bool = False,
    ) -> _Connection | None:
        """Send without a task: ``listener(connection)`` is called from the connection's
        callbacks when the whole answer arrived (``complete``, ``status``, ``take_body()``)
        or the exchange failed (``error``; ``stale`` when the engine had closed the reused
        connection), once; with ``each`` also whenever body bytes arrived (``pause()`` and
        ``resume()`` hold the engine back for a slow client). The listener ends the
        exchange with ``finish()``. Sent at once on an idle pooled connection; with none
        idle, a new one is opened first (a task only for the connect; a failed connect
        reaches the listener as ``error``). None, with nothing sent, when no connection
        slot is free or the URL is not one this client can use: ``post`` then."""
        try:
            origin, target, host = _split(url)
        except UpstreamError:
            return None
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                connection.send(target, host, body, listener, each)
                return connection
        if self._closing or (
            len(self._open) >= self.limits.max_connections and not self._evict_idle()
        ):
            return None  # no slot free: post() waits for one
        connection = _Connection(self, origin)
        self._open.add(connection)
        connection.listener, connection.each = listener, each  # a failed connect tells it
        task = asyncio.get_running_loop().create_task(
            self._connect_and_send(connection, target, host, body)
        )
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return connection

    async def _connect_and_send(
        self, connection: _Connection, target: bytes, host: bytes, body: bytes
    ) -> None:
        """post_now() with no idle connection: open one (as ``_connect`` does), then send."""
        try:
            async with asyncio.timeout(self.limits.connect_timeout_s):
                await self._open_transport(connection)
        except (TimeoutError, OSError) as exc:
            self._forget(connection)
            connection._fail(_connect_failure(exc))
            return
        except BaseException:  # cancelled (the client closing): the listener still hears
            self._forget(connection)
            connection._fail(UpstreamError("client closed"))
            raise
        if connection.closed:  # cut at once: connection_lost told the listener
            return
        connection.send(target, host, body, connection.listener, connection.each)

    async def post(self, url: str, body: bytes) -> UpstreamResponse:
        origin, target, host = _split(url)
        connection = await self._acquire(origin)
        try:
            return await self._exchange(connection, target, host, body)
        except _Disconnected:
            if not connection.reused or connection.status:
                raise
        # the engine closed an idle keep-alive connection as we reused it: once more, fresh
        return await self._exchange(await self._connect(origin), target, host, body)

    async def _exchange(
        self, connection: _Connection, target: bytes, host: bytes, body: bytes
    ) -> UpstreamResponse:
        if connection.closed:
            raise _Disconnected("ServerDisconnectedError")
        connection.send(target, host, body)
        assert connection.head is not None
        try:
            await connection.head
        except BaseException:
            connection.finish()
            raise
        return _H1Response(connection)

    async def _acquire(self, origin: Origin) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return await self._connect(origin)

    async def _connect(self, origin: Origin) -> _Connection:
        if self._closing:
            raise UpstreamError("client closed")
        timeout_s = self.limits.connect_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                while len(self._open) >= self.limits.max_connections:
                    if not self._evict_idle():
                        waiter = asyncio.get_running_loop().create_future()
                        self._slot_waiters.append(waiter)
                        await waiter
                connection = _Connection(self, origin)
                self._open.add(connection)
                try:
                    await self._open_transport(connection)
                except BaseException:
                    self._forget(connection)
                    raise
        except (TimeoutError, OSError) as exc:
            raise _connect_failure(exc) from exc
        return connection

    async def _open_transport(self, connection: _Connection) -> None:
        scheme, host, port = connection.origin
        await connection.loop.create_connection(
            lambda: connection, host, port, ssl=self._ssl_context() if scheme == "https" else None
        )

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _evict_idle(self) -> bool:
        """Close one idle connection (any host) to free a slot; False if none is idle."""
        for idle in self._idle.values():
            if idle:
                connection = idle.pop(0)
                connection._close()
                self._forget(connection)
                return True
        return False

    def _release(self, connection: _Connection) -> None:
        if self._closing:
            connection._close()
            return
        self._idle.setdefault(connection.origin, []).append(connection)
        self._wake_slot_waiter()

    def _forget(self, connection: _Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            idle = self._idle.get(connection.origin)
            if idle and connection in idle:
                idle.remove(connection)
            self._wake_slot_waiter()

    def _wake_slot_waiter(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in list(self._connecting):
            task.cancel()
        for connection in list(self._open):
            connection._close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run connection_lost
