"""A real gateway (uvicorn, real HTTP) over real SQLite and two fake engines."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry

from scheduler.gateway.app import create_app
from scheduler.gateway.config import GatewayConfig
from scheduler.gateway.replicas import ReplicaEndpoint, ReplicaTable
from scheduler.gateway.serve import SERVER_OPTIONS
from scheduler.settings import Settings
from scheduler.store.tenancy import session_factory
from scheduler.tenancy import TenancyService, TenantLimits
from tests.fakes.openai_upstream import FakeUpstream
from tests.fakes.servers import serve_in_thread

ADMIN_TOKEN = "adm-cl-test-admin-token"
MODEL = "demo"
ENGINE_MODEL = "engine-demo"


def replica(
    rid: str, base_url: str, *, state: str = "ready", yuan_per_hour: float = 1.0, **kw: Any
) -> ReplicaEndpoint:
    fields: dict[str, Any] = {
        "model": MODEL,
        "engine_model": ENGINE_MODEL,
        "quant": "bf16",
        "device_class": "cpu-test",
        "site": "local",
    }
    fields.update(kw)
    return ReplicaEndpoint(
        id=rid, base_url=base_url, yuan_per_hour=yuan_per_hour, state=state, **fields
    )


@dataclass
class Harness:
    url: str
    table: ReplicaTable
    tenancy: TenancyService
    upstreams: list[FakeUpstream]
    upstream_urls: list[str]
    registry: CollectorRegistry
    data_dir: Path
    admin: httpx.Client
    clients: list[Any] = field(default_factory=list)
    fast_path: bool = True

    def tenant(self, name: str, models: tuple[str, ...] = ("*",), **limits: Any) -> str:
        """Create a tenant and return a fresh API key for it (already in the gateway's auth
        cache when the fast path is on, so that its first request takes it too)."""
        self.tenancy.create_tenant(name, models, TenantLimits(**limits))
        secret = self.tenancy.create_key(name).secret
        if self.fast_path:
            self.tenancy.authenticate(secret)
        return secret

    def openai(self, key: str, **kw: Any) -> openai.OpenAI:
        client = openai.OpenAI(api_key=key, base_url=self.url + "/v1", max_retries=0, **kw)
        self.clients.append(client)
        return client

    def async_openai(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key=key, base_url=self.url + "/v1", max_retries=0)

    def http(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(client)
        return client


@pytest.fixture
def upstream_client() -> str:
    """Which gateway.upstream client the app uses; tests parametrize it to cover both."""
    return "h1"


@pytest.fixture(params=["fast", "tasks"])
def serving(request: pytest.FixtureRequest) -> str:
    """How the gateway serves inference requests: from the server protocol's callbacks
    where it can (Gateway.serve_now, the default), or each as an ASGI task (fast_path off)."""
    return str(request.param)


@pytest.fixture
def harness(tmp_path: Path, upstream_client: str, serving: str) -> Iterator[Harness]:
    sessions = session_factory(f"sqlite:///{tmp_path / 'gw.db'}", create_tables=True)
    tenancy = TenancyService(sessions)
    ups = [FakeUpstream(served_model=ENGINE_MODEL), FakeUpstream(served_model=ENGINE_MODEL)]
    with (
        serve_in_thread(ups[0], lifespan="off") as u0,
        serve_in_thread(ups[1], lifespan="off") as u1,
    ):
        table = ReplicaTable([replica("r0", u0, yuan_per_hour=2.0), replica("r1", u1)])
        registry = CollectorRegistry()
        settings = Settings(data_dir=tmp_path, max_request_body_bytes=64 * 1024)
        config = dataclasses.replace(
            GatewayConfig.from_settings(settings),
            upstream_client=upstream_client,
            fast_path=serving == "fast",
        )
        app = create_app(settings, tenancy, table, registry, admin_token=ADMIN_TOKEN, config=config)
        # the gateway's own server protocol, as its entry points run it (gateway/h1server)
        with serve_in_thread(app, http=SERVER_OPTIONS["http"]) as url:
            admin = httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
            )
            h = Harness(url, table, tenancy, ups, [u0, u1], registry, tmp_path, admin)
            h.fast_path = serving == "fast"
            try:
                yield h
            finally:
                for c in h.clients:
                    c.close()
                admin.close()
