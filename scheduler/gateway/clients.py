"""The upstream HTTP clients by name (``GatewayConfig.upstream_client``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from scheduler.gateway.h1 import H1Upstream
from scheduler.gateway.upstream import (
    AiohttpUpstream,
    HttpxUpstream,
    UpstreamClient,
    UpstreamLimits,
)

UPSTREAM_CLIENTS: Mapping[str, Callable[[UpstreamLimits], UpstreamClient]] = {
    "h1": H1Upstream,
    "aiohttp": AiohttpUpstream,
    "httpx": HttpxUpstream,
}
