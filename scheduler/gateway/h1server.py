"""The gateway's HTTP/1.1 server protocol: uvicorn's httptools protocol, with each inference
response written in one piece.

uvicorn writes a response's status line and headers as soon as the app sends
``http.response.start``, and the body with each ``http.response.body``: two ``send(2)``
calls (and two TCP segments for the client to read) for every non-streaming answer, and the
head of a stream apart from its first event. For the inference POSTs, whose responses
always follow the start with body bytes at once (``Response``, ``JSONResponse`` and
``EventStreamResponse`` in ``gateway/core.py``), this protocol holds the head back and
writes it together with the first body bytes. Everything else (other paths, keep-alive,
pipelining, flow control, 100-continue, shutdown) is uvicorn's own code.

Selected by ``gateway.serve.SERVER_OPTIONS`` (``http=...``) as an import string, so uvicorn
stays an import of the serving entry points only. Built on uvicorn's ``HttpToolsProtocol``
and ``RequestResponseCycle`` internals (``on_headers_complete``, ``cycle``, ``scope``,
``send``); tests/gateway/test_h1server.py runs the gateway through it.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from scheduler.gateway.core import INFERENCE_PATHS


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
            self.response_started = True
            self.waiting_for_100_continue = False
            self.head = self._encode_head(message["status"], message.get("headers", ()))
            return
        if self.response_complete or kind != "http.response.body":
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent.")
        body: bytes = message.get("body", b"")
        more_body = message.get("more_body", False)
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

    def _encode_head(self, status: int, headers: Any) -> bytes:
        """uvicorn's head encoding (same default headers and framing). The header checks
        run on the response's own headers only, not again on uvicorn's default headers
        (date, server: its own, the same for every response)."""
        content = [STATUS_LINE[status]]
        has_connection_close = False
        for name, value in headers:
            if HEADER_RE.search(name):
                raise RuntimeError("Invalid HTTP header name.")
            if HEADER_VALUE_RE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
        for name, value in (*self.default_headers, *headers):
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


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; inference POSTs get a ``OneWriteCycle``."""

    def on_headers_complete(self) -> None:
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
