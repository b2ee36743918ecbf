"""HTTP clients for talking to engines, behind one small Protocol.

One shared pooled client per app (created in the lifespan), chosen by name in
``gateway.clients``: the gateway's own HTTP/1.1 client (``gateway.h1``, the default), or the
adapters here over ``httpx`` (httpx.AsyncClient) and ``aiohttp`` (aiohttp.ClientSession).
All give the proxy the same thing: a status code, the whole body, or the raw (de-chunked,
not decoded) body chunks as they arrive. Transport failures surface as ``UpstreamError`` so
the proxy can tell "retry elsewhere" from everything else. bench/gateway_clients.py
measures the three side by side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import httpx

_JSON = {"content-type": "application/json"}


class UpstreamError(Exception):
    """The engine could not be reached or the connection broke."""


class UpstreamResponse(Protocol):
    status_code: int

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class UpstreamClient(Protocol):
    async def post(self, url: str, body: bytes) -> UpstreamResponse:
        """Send a JSON POST; returns once the status line and headers arrived."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class UpstreamLimits:
    connect_timeout_s: float
    read_timeout_s: float
    max_connections: int


# ---- httpx ----------------------------------------------------------------------------


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._r = response
        self.status_code = response.status_code

    async def read(self) -> bytes:
        try:
            return await self._r.aread()
        except httpx.HTTPError as exc:
            raise UpstreamError(type(exc).__name__) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._r.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamError(type(exc).__name__) from exc

    async def close(self) -> None:
        await self._r.aclose()


class HttpxUpstream:
    def __init__(self, limits: UpstreamLimits) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=limits.connect_timeout_s,
                read=limits.read_timeout_s,
                write=limits.read_timeout_s,
                pool=limits.connect_timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_connections,
            ),
        )

    async def post(self, url: str, body: bytes) -> UpstreamResponse:
        request = self._client.build_request("POST", url, content=body, headers=_JSON)
        try:
            return _HttpxResponse(await self._client.send(request, stream=True))
        except httpx.HTTPError as exc:
            raise UpstreamError(type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self._client.aclose()


# ---- aiohttp --------------------------------------------------------------------------


class _AiohttpResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._r = response
        self.status_code = response.status

    async def read(self) -> bytes:
        try:
            return await self._r.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(type(exc).__name__) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._r.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(type(exc).__name__) from exc

    async def close(self) -> None:
        # a fully read body returns the connection to the pool; a cut one closes it, which
        # also tells the engine to stop generating for a client that went away
        if self._r.content.at_eof():
            self._r.release()
        else:
            self._r.close()


class AiohttpUpstream:
    def __init__(self, limits: UpstreamLimits) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=limits.max_connections, limit_per_host=0, enable_cleanup_closed=True
            ),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=limits.connect_timeout_s,
                sock_read=limits.read_timeout_s,
            ),
            auto_decompress=False,  # forward bytes as the engine sent them
            skip_auto_headers=("User-Agent",),
        )

    async def post(self, url: str, body: bytes) -> UpstreamResponse:
        try:
            response = await self._session.post(url, data=body, headers=_JSON)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(type(exc).__name__) from exc
        return _AiohttpResponse(response)

    async def aclose(self) -> None:
        await self._session.close()
