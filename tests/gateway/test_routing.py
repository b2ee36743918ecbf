"""Routing, retry before the first byte, mid-stream cuts, draining, load spreading."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter

import openai
import pytest
from sqlalchemy import select

from scheduler.gateway.replicas import ReplicaEndpoint
from scheduler.store.tenancy import UsageRow
from tests.fakes.servers import free_port
from tests.gateway.conftest import MODEL, Harness, replica


def usage_rows(h: Harness) -> list[UsageRow]:
    h.http(h.tenancy.create_key("acme").secret).get("/v1/usage")  # flushes the writer
    with h.tenancy._sessions() as session:
        return list(session.scalars(select(UsageRow).order_by(UsageRow.id)))


@pytest.mark.parametrize("upstream_client", ["h1", "aiohttp", "httpx"])
def test_retry_before_first_byte_goes_to_other_replica(harness: Harness) -> None:
    client = harness.openai(harness.tenant("acme"))
    cheap = harness.upstreams[1]  # r1 is cheaper, so it is tried first
    cheap.behaviour.fail_next = 2
    reply = client.completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert reply.choices[0].text == "t0 t1 "
    stream = client.completions.create(model=MODEL, prompt="x", max_tokens=2, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == "t0 t1 "
    assert cheap.completed == 2 and harness.upstreams[0].completed == 2
    rows = usage_rows(harness)
    assert [(r.replica_id, r.status, r.completion_tokens) for r in rows] == [
        ("r0", 200, 2),
        ("r0", 200, 2),
    ]


@pytest.mark.parametrize("upstream_client", ["h1", "aiohttp", "httpx"])
def test_connect_error_fails_over_and_all_failing_is_503(harness: Harness) -> None:
    dead = replica("dead", f"http://127.0.0.1:{free_port()}", yuan_per_hour=0.1)
    harness.table.set([dead, *harness.table.replicas()])
    client = harness.openai(harness.tenant("acme"))
    assert client.completions.create(model=MODEL, prompt="x", max_tokens=1).choices
    harness.table.set([dead])
    with pytest.raises(openai.InternalServerError) as err:
        client.completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert err.value.status_code == 503
    assert err.value.response.headers["retry-after"]
    statuses = [r.status for r in usage_rows(harness)]
    assert statuses == [200, 503]


@pytest.mark.parametrize("upstream_client", ["h1", "aiohttp", "httpx"])
def test_mid_stream_cut_sends_error_event_and_bills_streamed_tokens(harness: Harness) -> None:
    for u in harness.upstreams:
        u.behaviour.cut_after_events = 3
    client = harness.openai(harness.tenant("acme"))
    received: list[str] = []
    with pytest.raises(openai.APIError) as err:
        for chunk in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=8, stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received == ["t0 ", "t1 ", "t2 "]
    assert "stream" in str(err.value.message).lower() or "engine" in str(err.value.message)
    rows = usage_rows(harness)
    assert len(rows) == 1
    assert rows[0].status == 502 and rows[0].completion_tokens == 3 and rows[0].stream
    assert sum(u.completed for u in harness.upstreams) == 1  # never retried after bytes


def test_draining_and_unhealthy_replicas_get_no_new_requests(harness: Harness) -> None:
    client = harness.openai(harness.tenant("acme"))
    harness.table.mark("r1", "draining")
    for _ in range(6):
        client.completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert harness.upstreams[1].completed == 0 and harness.upstreams[0].completed == 6
    harness.table.mark("r1", "ready")
    harness.table.mark("r0", "unhealthy")
    for _ in range(3):
        client.completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert harness.upstreams[0].completed == 6 and harness.upstreams[1].completed == 3


def test_idle_requests_go_to_the_cheaper_replica(harness: Harness) -> None:
    client = harness.openai(harness.tenant("acme"))
    for _ in range(5):
        client.completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert harness.upstreams[1].completed == 5  # r1: 1 yuan/h vs r0: 2 yuan/h


def test_least_outstanding_spreads_concurrent_load(harness: Harness) -> None:
    for u in harness.upstreams:
        u.behaviour.delay_s = 0.3
    key = harness.tenant("acme")

    async def run() -> None:
        async with harness.async_openai(key) as client:
            await asyncio.gather(
                *(
                    client.completions.create(model=MODEL, prompt="x", max_tokens=1)
                    for _ in range(12)
                )
            )

    asyncio.run(run())
    served = Counter({i: u.completed for i, u in enumerate(harness.upstreams)})
    assert served[0] == 6 and served[1] == 6


@pytest.mark.parametrize("upstream_client", ["h1", "aiohttp", "httpx"])
def test_usage_records_exact_and_unique(harness: Harness) -> None:
    client = harness.openai(harness.tenant("acme"))
    expected_completion = 0
    for n in range(1, 9):
        if n % 2:
            client.completions.create(model=MODEL, prompt="a b", max_tokens=n)
        else:
            list(client.completions.create(model=MODEL, prompt="a b", max_tokens=n, stream=True))
        expected_completion += n
    rows = usage_rows(harness)
    assert len(rows) == 8 and len({r.request_id for r in rows}) == 8
    assert sum(r.completion_tokens for r in rows) == expected_completion
    assert all(r.prompt_tokens == 2 and r.status == 200 for r in rows)
    assert all(r.cost_yuan > 0 and r.latency_ms > 0 for r in rows)
    # cost = yuan_per_hour/3600 * busy share; sequential requests own the replica fully
    for r in rows:
        yuan_per_hour = 1.0 if r.replica_id == "r1" else 2.0
        assert r.cost_yuan <= yuan_per_hour / 3600 * r.latency_ms / 1000 * 1.0001


def test_replica_table_contract() -> None:
    with pytest.raises(ValueError):
        replica("x", "http://h", state="weird")
    r = ReplicaEndpoint("a", "m", "e", "http://h", "bf16", "c", "s", 1.0, "ready")
    from scheduler.gateway.replicas import ReplicaTable

    table = ReplicaTable([r])
    table.mark("a", "draining")
    assert table.replicas()[0].state == "draining"
    with pytest.raises(KeyError):
        table.mark("missing", "ready")
    with pytest.raises(ValueError):
        table.set([r, r])


def test_client_disconnect_mid_stream_is_recorded_as_499(harness: Harness) -> None:
    for u in harness.upstreams:
        u.behaviour.token_delay_s = 0.05
    http = harness.http(harness.tenant("acme"))
    body = {"model": MODEL, "prompt": "x", "max_tokens": 40, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break  # got the first token; hang up
    deadline = time.monotonic() + 5
    rows = usage_rows(harness)
    while not rows and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = usage_rows(harness)
    assert [(r.status, r.stream) for r in rows] == [(499, True)]
    assert 1 <= rows[0].completion_tokens < 40  # billed for what was generated and sent
    metrics = harness.http().get("/metrics").text
    assert (
        'cunliang_replica_outstanding_requests{device_class="cpu-test",model="demo",replica="r1",site="local"} 0.0'
        in metrics
    )


def test_stream_whose_first_event_is_an_engine_failure_is_retried_elsewhere(
    harness: Harness,
) -> None:
    """vLLM answers 200 and then only an error event when its engine core dies under the
    request: nothing reached the client yet, so another replica serves it."""
    cheap = harness.upstreams[1]  # tried first
    cheap.behaviour.error_event_next = 1
    client = harness.openai(harness.tenant("acme"))
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "t0 t1 "
    assert cheap.behaviour.error_event_next == 0 and harness.upstreams[0].completed == 1
    assert [(r.replica_id, r.status) for r in usage_rows(harness)] == [("r0", 200)]


def test_stream_whose_first_event_is_a_request_error_is_not_retried(harness: Harness) -> None:
    for u in harness.upstreams:
        u.behaviour.error_event_next = 1
        u.behaviour.error_event_code = 400
    client = harness.openai(harness.tenant("acme"))
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2, stream=True
        ):
            pass
    assert sum(u.behaviour.error_event_next for u in harness.upstreams) == 1, "one replica tried"
    assert [r.status for r in usage_rows(harness)] == [502]


class _DyingEngine:
    """A replica whose engine dies under every request: it reads the request whole, then
    its connection ends with no response (a SIGKILLed vLLM server)."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests += 1

    def close(self) -> None:
        self._sock.close()


@pytest.mark.parametrize("upstream_client", ["h1", "aiohttp", "httpx"])
def test_engine_dying_under_the_request_is_retried_elsewhere(harness: Harness) -> None:
    dying = _DyingEngine()
    try:
        harness.table.set(
            [replica("dying", dying.url, yuan_per_hour=0.01), *harness.table.replicas()]
        )
        client = harness.openai(harness.tenant("acme")).with_options(timeout=30)
        started = time.monotonic()
        reply = client.completions.create(model=MODEL, prompt="x", max_tokens=2)
        stream = client.completions.create(model=MODEL, prompt="x", max_tokens=2, stream=True)
        assert "".join(c.choices[0].text for c in stream if c.choices) == "t0 t1 "
        assert reply.choices[0].text == "t0 t1 "
        assert time.monotonic() - started < 10, "retried at once, not after a read timeout"
        assert dying.requests == 2  # the cheapest replica was tried first, both times
        assert [(r.replica_id, r.status) for r in usage_rows(harness)] == [
            ("r1", 200),
            ("r1", 200),
        ]
    finally:
        dying.close()
