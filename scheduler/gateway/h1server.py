"""The gateway's HTTP/1.1 server protocol: uvicorn's httptools protocol, with a fast path for
the inference POSTs and each inference response written in one piece.

uvicorn writes a response's status line and headers as soon as the app sends
``http.response.start``, and the body with each ``http.response.body``: two ``send(2)``
calls (and two TCP segments for the client to read) for every non-streaming answer, and the
head of a stream apart from its first event. For the inference POSTs, whose responses
always follow the start with body bytes at once (``Response``, ``JSONResponse`` and
``EventStreamResponse`` in ``gateway/core.py``), this protocol holds the head back and
writes it together with the first body bytes. Everything else (other paths, keep-alive,
pipelining, flow control, 100-continue, shutdown) is uvicorn's own code.

The fast path: uvicorn starts an ASGI task for each request as soon as its headers arrived,
and the app's coroutines then wait on the body, on the engine (futures woken by the engine
connection's callbacks) and on the sends: a task, a dozen coroutine frames, futures and
ASGI message dicts per request, most of the gateway's CPU after its own logic. Its parsing
callbacks also build each request's ASGI scope and a cycle with an event for that task.
An inference POST that arrives plainly (``POST /v1/completions`` or
``/v1/chat/completions`` exactly, no 100-continue, not queued behind another request on
the connection) skips all of that: it gets a ``_LeanCycle`` (no scope, no event, no task),
and once its whole body arrived ``Gateway.serve_now`` serves it from callbacks (the
engine's answer arrives in its connection's ``data_received`` and is written to the client
from there), streams included. Anything that must wait (a key not in the auth cache, a
budget ledger to load, no engine connection slot free, a retry) gets uvicorn's task after
all, with the scope uvicorn would have made: at once when ``serve_now`` declines, or from
where it stopped (``asgi.RESUME``). A body past uvicorn's buffer limit, a client gone
before its body ended or not reading its answers, pipelined requests, query strings and
100-continue take the usual path.

Selected by ``gateway.serve.SERVER_OPTIONS`` (``http=...``) as an import string, so uvicorn
stays an import of the serving entry points only. Built on uvicorn's ``HttpToolsProtocol``
and ``RequestResponseCycle`` internals (``on_message_begin``, ``on_headers_complete``,
``_start_asgi_task``, ``on_body``, ``on_message_complete``, ``cycle``, ``scope``, ``send``
and the cycle's attributes); tests/gateway/test_h1server.py runs the gateway through it
and checks the app gets the scope uvicorn's own protocol gives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from scheduler.gateway.asgi import RESUME, GatewayApp, authorization_and_length
from scheduler.gateway.core import INFERENCE_PATHS, Gateway, JsonAnswer

log = logging.getLogger(__name__)


class OneWriteCycle(RequestResponseCycle):
    """A request/response cycle whose response head leaves with its first body bytes."""

    head: bytes | None = None  # the encoded status line and headers, until the first body

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{kind}'."
                )
            self._start(message["status"], message.get("headers", ()))
            return
        if self.response_complete or kind != "http.response.body":
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent.")
        self._write(message.get("body", b""), message.get("more_body", False))

    def write_whole(self, status: int, headers: Any, body: bytes, trusted: bool = False) -> None:
        """Send a complete response now, from a callback (the fast path): what ``send``
        does with its start and one body message, without waiting for a full write buffer
        to drain (the transport buffers it; the answers are bounded)."""
        if self.disconnected or self.response_started:
            return
        self._start(status, headers, trusted)
        self._write(body, False)

    def write_answer(self, answer: JsonAnswer) -> None:
        """``write_whole`` for the gateway's own 200 JSON answer: its head (the default
        headers' cached block and the answer's three) put together directly."""
        body = bytes(answer.body)  # bytes already: returned as it is
        block = self._defaults_block()
        lines = answer.head_lines
        if block is None or lines is None or self.chunked_encoding is not None:
            self.write_whole(200, answer.raw_headers, body, trusted=True)
            return
        if self.disconnected or self.response_started:
            return
        self.response_started = True
        self.waiting_for_100_continue = False
        self.chunked_encoding = False
        self.expected_content_length = len(body)
        self.head = b"%b%b%b%b\r\n" % (
            _STATUS_200,
            block,
            lines,
            b"" if self.keep_alive else b"connection: close\r\n",
        )
        self._write(body, False)

    def _defaults_block(self) -> bytes | None:
        """uvicorn's default headers (date, server) encoded, from a cache renewed when
        uvicorn renews their list (each date tick); None if one frames or closes."""
        defaults = self.default_headers
        encoded = _DEFAULTS.get(id(defaults))
        if encoded is not None and encoded[0] is defaults:
            return encoded[1]
        block = _plain_defaults(defaults)
        if block is not None:
            _DEFAULTS.clear()  # the last list only
            _DEFAULTS[id(defaults)] = (defaults, block)
        return block

    def _start(self, status: int, headers: Any, trusted: bool = False) -> None:
        self.response_started = True
        self.waiting_for_100_continue = False
        self.head = self._encode_head(status, headers, trusted)

    def _write(self, body: bytes, more_body: bool) -> None:
        if self.chunked_encoding:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more_body:
                data += b"0\r\n\r\n"
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            data = body
        if self.head is not None:
            data = self.head + data
            self.head = None
        if data:
            self.transport.write(data)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    def _encode_head(self, status: int, headers: Any, trusted: bool = False) -> bytes:
        """uvicorn's head encoding (same default headers and framing). The header checks
        run on the response's own headers only (none for ``trusted`` ones, built by the
        gateway itself), not again on uvicorn's default headers (date, server: its own,
        the same for every response), which are encoded once per change (uvicorn renews
        the list when the date ticks)."""
        if not trusted:
            for name, value in headers:
                if HEADER_RE.search(name):
                    raise RuntimeError("Invalid HTTP header name.")
                if HEADER_VALUE_RE.search(value):
                    raise RuntimeError("Invalid HTTP header value.")
        content = [STATUS_LINE[status]]
        block = self._defaults_block()
        if block is not None:
            content.append(block)
            all_headers = headers
        else:  # a default header that frames or closes: the whole loop, as uvicorn
            all_headers = (*self.default_headers, *headers)
        has_connection_close = False
        for name, value in all_headers:
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection" and b"close" in [
                token.lower().strip() for token in value.split(b",")
            ]:
                self.keep_alive = False
                has_connection_close = True
            content.append(b"%s: %s\r\n" % (name, value))
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and status not in (204, 304):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return b"".join(content)


# {id(uvicorn's default header list): (that list, its encoded lines)}: the current one only
_DEFAULTS: dict[int, tuple[list[tuple[bytes, bytes]], bytes]] = {}
_FRAMING = (b"content-length", b"transfer-encoding", b"connection")
_STATUS_200 = STATUS_LINE[200]


def _plain_defaults(defaults: list[tuple[bytes, bytes]]) -> bytes | None:
    """The default headers' lines, or None if one of them frames or closes (never in
    uvicorn's own: date, server)."""
    if any(name.lower() in _FRAMING for name, _ in defaults):
        return None
    return b"".join(b"%s: %s\r\n" % (name.lower(), value) for name, value in defaults)


def _nothing() -> None:
    pass


class _NoWaiter:
    """A lean cycle's ``message_event`` until a task waits on it: nobody to wake."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_WAITER = _NoWaiter()
# the request targets of the inference POSTs, as they arrive: an exact match has no query
# string and no %-escapes, so its path is these bytes decoded
_LEAN_TARGETS = {path.encode("ascii"): path for path in INFERENCE_PATHS}


class _LeanCycle(OneWriteCycle):
    """An inference POST on the fast path: a request/response cycle without the ASGI scope,
    the event and the task that only uvicorn's task path uses, until the request needs them
    (``GatewayHttpProtocol._to_task``). Its response is written as a ``OneWriteCycle``'s."""

    def __init__(
        self,
        protocol: GatewayHttpProtocol,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        http_version: str,
        keep_alive: bool,
        authorization: str | None,
    ) -> None:
        # RequestResponseCycle.__init__'s attributes, scope and event aside
        self.scope = None  # type: ignore[assignment]
        self.transport = protocol.transport
        self.flow = protocol.flow
        self.logger = protocol.logger
        self.access_logger = protocol.access_logger
        self.access_log = protocol.access_log
        self.default_headers = protocol.server_state.default_headers
        self.message_event = _NO_WAITER  # type: ignore[assignment]
        self.on_response = protocol.on_response_complete
        self.disconnected = False
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = False
        self.body = b""  # type: ignore[assignment]  # bytes: a body in one piece is not copied
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.chunked_encoding = None
        self.expected_content_length = 0
        # the request, for the scope if it goes to a task
        self.lean = True
        self.target = target
        self.headers = headers
        self.http_version = http_version
        self.authorization = authorization  # found with the body's length


class _Reply:
    """``core.Reply`` for one lean request: writes its response on its cycle, or starts the
    cycle's ASGI task with the rest of the request (``asgi.RESUME``)."""

    __slots__ = ("cycle", "protocol")

    def __init__(self, protocol: GatewayHttpProtocol, cycle: _LeanCycle) -> None:
        self.protocol = protocol
        self.cycle = cycle

    def respond(self, response: Response) -> None:
        try:
            if type(response) is JsonAnswer:
                self.cycle.write_answer(response)
            else:
                self.cycle.write_whole(
                    response.status_code, response.raw_headers, bytes(response.body)
                )
        except Exception:  # e.g. a header uvicorn refuses: what run_asgi does with it
            log.exception("writing a response failed")
            self.cycle.transport.close()
        self._done()

    def _done(self) -> None:
        """The request is over: drop the cycle's hold on the protocol, as run_asgi does when
        its task ends (else each cycle and its request stay in a reference cycle until the
        garbage collector's next full pass)."""
        self.cycle.on_response = _nothing

    def resume(self, serve: Callable[[], Awaitable[Response]]) -> None:
        self.protocol._to_task(self.cycle, serve)

    # a stream relayed from callbacks (core._StreamRelay): uvicorn's chunked framing

    def start_stream(self, headers: list[tuple[bytes, bytes]], first: bytes) -> None:
        cycle = self.cycle
        if cycle.disconnected or cycle.response_started:
            return
        cycle._start(200, headers, trusted=True)  # event_stream_headers
        cycle._write(first, True)

    def send(self, data: bytes) -> None:
        cycle = self.cycle
        if data and cycle.response_started and not cycle.disconnected:
            cycle._write(data, True)

    def end(self) -> None:
        cycle = self.cycle
        if cycle.response_started and not cycle.response_complete and not cycle.disconnected:
            cycle._write(b"", False)
        self._done()

    def abort(self) -> None:
        self.cycle.transport.close()
        self._done()

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        self.protocol.drained = callback

    @property
    def write_paused(self) -> bool:
        return bool(self.cycle.flow.write_paused)

    @property
    def client_gone(self) -> bool:
        return bool(self.cycle.disconnected)


def _gateway_of(app: Any) -> Gateway | None:
    """The Gateway behind uvicorn's app (inside its middleware wrappers), if any."""
    for _ in range(8):
        if isinstance(app, GatewayApp):
            return getattr(app, "gateway", None)
        app = getattr(app, "app", None)
    return None


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; inference POSTs get a ``OneWriteCycle`` and, when the
    app is the gateway, the fast path (a ``_LeanCycle``)."""

    _gateway: Gateway | bool | None = False  # False: not looked up yet
    # a fast-path stream's hook: its client can take more bytes, or went away
    drained: Callable[[], None] | None = None

    def on_message_begin(self) -> None:
        # uvicorn's, less the ASGI scope: made once the request is known to need one
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = None  # type: ignore[assignment]

    def _new_scope(self, headers: list[tuple[bytes, bytes]]) -> Any:
        """The scope uvicorn's ``on_message_begin`` makes (its ``on_headers_complete``
        fills in the rest)."""
        return {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
            "headers": headers,
            "state": self.app_state.copy(),
        }

    def on_headers_complete(self) -> None:
        # a pipelined request parsed from the same bytes as the end of the previous one,
        # answered from this parser's callbacks, finds the connection marked idle
        self._unset_keepalive_if_required()
        parser = self.parser
        cycle = self.cycle
        limit = self.limit_concurrency
        if (
            self.url in _LEAN_TARGETS
            and parser.get_method() == b"POST"
            and not self.expect_100_continue
            and (cycle is None or cycle.response_complete)  # not queued behind one in flight
            and not self.flow.write_paused  # a client not reading: a task waits on it
            and not self.transport.is_closing()  # e.g. shut down after the one before
            and not self.root_path
            and not parser.should_upgrade()
            and (limit is None or (len(self.connections) < limit and len(self.tasks) < limit))
            and self._fast_gateway() is not None
        ):
            authorization, length = authorization_and_length(self.headers)
            # a big body: uvicorn's task refuses it unread, or reads it
            if length <= HIGH_WATER_LIMIT:
                version = parser.get_http_version()
                self.cycle = _LeanCycle(
                    self,
                    self.url,
                    self.headers,
                    version,
                    keep_alive=version != "1.0" and parser.should_keep_alive(),
                    authorization=authorization,
                )
                return
        self.scope = self._new_scope(self.headers)
        super().on_headers_complete()
        cycle = self.cycle
        scope = self.scope
        if (
            type(cycle) is RequestResponseCycle
            and cycle.scope is scope  # this request's cycle (not one kept by an upgrade)
            and scope["method"] == "POST"
            and scope["path"] in INFERENCE_PATHS
        ):
            cycle.__class__ = OneWriteCycle  # before its task first runs: same object, new send

    def _fast_gateway(self) -> Gateway | None:
        """The app's Gateway, if it serves inference requests from callbacks now."""
        if self._gateway is False:
            self._gateway = _gateway_of(self.app)
        gateway = self._gateway
        return gateway if isinstance(gateway, Gateway) and gateway.fast_path_on else None

    def _to_task(
        self, cycle: _LeanCycle, serve: Callable[[], Awaitable[Response]] | None = None
    ) -> None:
        """Give a lean request uvicorn's usual path from where it is: its scope (as uvicorn
        would have made it), an event for its task's ``receive()`` and the task; with
        ``serve``, the task goes on from there (``asgi.RESUME``)."""
        cycle.lean = False
        scope = self._new_scope(cycle.headers)
        scope["method"] = "POST"
        if cycle.http_version != "1.1":
            scope["http_version"] = cycle.http_version
        scope["path"] = _LEAN_TARGETS[cycle.target]
        scope["raw_path"] = cycle.target
        scope["query_string"] = b""
        if serve is not None:
            scope[RESUME] = serve
        cycle.scope = scope
        cycle.message_event = asyncio.Event()
        cycle.message_event.set()  # what arrived so far is there to receive
        super()._start_asgi_task(cycle, self.app)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if not isinstance(cycle, _LeanCycle) or not cycle.lean:
            super().on_body(body)
            return
        cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:  # a big body: uvicorn's task reads the rest
            self.flow.pause_reading()  # as uvicorn does here (its task's receive resumes)
            self._to_task(cycle)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if not isinstance(cycle, _LeanCycle) or not cycle.lean:
            super().on_message_complete()
            return
        cycle.more_body = False
        # the client stopped reading (its task waits on it), or the connection is closing
        # (its task sees the client gone and records it, asking no engine)
        if self.flow.write_paused or self.transport.is_closing():
            self._to_task(cycle)
            return
        gateway = self._gateway
        assert isinstance(gateway, Gateway)
        try:
            taken = gateway.serve_now(
                _LEAN_TARGETS[cycle.target],
                cycle.authorization,
                bytes(cycle.body),
                _Reply(self, cycle),
            )
        except Exception:  # before it took the request: nothing was done
            log.exception("the inference fast path failed; serving the request as usual")
            taken = False
        if not taken:
            self._to_task(cycle)

    # keep-alive: uvicorn arms a timer when a response completes and cancels it when bytes
    # arrive, two timer operations per request; here one timer per idle spell is armed and,
    # when due, re-armed for the rest of the spell if the connection was busy meanwhile

    _idle_since_s: float | None = None  # the last response completed, nothing in since

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since_s = None  # busy: a timer that comes due finds it so

    def on_response_complete(self) -> None:
        """uvicorn's, with the keep-alive timer above."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since_s = None
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since_s = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._keep_alive_due
            )

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        idle_since_s = self._idle_since_s
        if idle_since_s is None:
            return  # busy: its next response arms the timer again
        left_s = idle_since_s + self.timeout_keep_alive - self.loop.time()
        if left_s > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left_s, self._keep_alive_due)
        else:
            self.timeout_keep_alive_handler()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        cycle = self.cycle
        # a lean request whose body had not all arrived: its task sees the client gone, as
        # uvicorn's would have (and records it)
        unserved = (
            cycle if isinstance(cycle, _LeanCycle) and cycle.lean and cycle.more_body else None
        )
        super().connection_lost(exc)
        if unserved is not None:
            self._to_task(unserved)
        if self.drained is not None:
            self.drained()  # a paused stream reads on, to notice the client gone

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.drained is not None:
            self.drained()
