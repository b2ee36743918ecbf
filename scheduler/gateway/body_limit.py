"""ASGI middleware: reject request bodies over a size limit with an OpenAI-format 413."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scheduler.api.errors import error_response
from scheduler.errors import PayloadTooLarge


class BodySizeLimit:
    """413 when Content-Length exceeds ``max_bytes`` (before reading anything), or when a
    chunked body grows past it (``receive`` raises PayloadTooLarge, which the app's error
    handler turns into the 413)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                if int(value) > self.max_bytes:
                    response = error_response(
                        413, f"Request body larger than {self.max_bytes} bytes."
                    )
                    response.headers["connection"] = "close"  # the unread body is abandoned
                    await response(scope, receive, send)
                    return
                # the server never delivers more than Content-Length: no need to count
                await self.app(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(f"Request body larger than {self.max_bytes} bytes.")
            return message

        await self.app(scope, limited_receive, send)
