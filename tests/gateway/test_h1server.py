"""The gateway's server protocol (gateway/h1server.py): the fast path for inference requests,
one write per inference response, uvicorn's framing and keep-alive rules otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from uvicorn.protocols.http.flow_control import FlowControl

from scheduler.gateway.app import create_app
from scheduler.gateway.asgi import RESUME, GatewayApp
from scheduler.gateway.core import Gateway, JsonAnswer
from scheduler.gateway.h1server import GatewayHttpProtocol, OneWriteCycle
from scheduler.gateway.replicas import ReplicaTable
from scheduler.gateway.serve import SERVER_OPTIONS
from scheduler.settings import Settings
from scheduler.store.tenancy import UsageRow, session_factory
from scheduler.tenancy import TenancyService
from tests.fakes.openai_upstream import FakeUpstream
from tests.fakes.servers import serve_in_thread
from tests.gateway.conftest import ADMIN_TOKEN, ENGINE_MODEL, MODEL, Harness, replica
from tests.gateway.test_routing import usage_rows


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _cycle(transport: _Transport, *, keep_alive: bool = True) -> tuple[OneWriteCycle, list[int]]:
    completed: list[int] = []
    cycle = OneWriteCycle(
        scope={"type": "http", "method": "POST", "path": "/v1/completions"},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test"),
        access_log=False,
        default_headers=[(b"server", b"uvicorn")],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: completed.append(1),
    )
    return cycle, completed


def test_plain_response_leaves_in_one_write() -> None:
    async def run() -> None:
        transport = _Transport()
        cycle, completed = _cycle(transport)
        body = b'{"ok":true}'
        await cycle.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
            }
        )
        assert transport.writes == []  # the head waits for the body
        await cycle.send({"type": "http.response.body", "body": body})
        assert transport.writes == [
            b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\ncontent-type: application/json\r\n"
            b"content-length: 11\r\n\r\n" + body
        ]
        assert cycle.response_complete and completed == [1] and not transport.closed

    asyncio.run(run())


@pytest.mark.parametrize("keep_alive", [True, False])
def test_the_gateways_answers_head_is_what_the_general_encoding_writes(keep_alive: bool) -> None:
    body = b'{"id":"cmpl-1"}'
    writes = {}
    for way in ("answer", "general"):
        transport = _Transport()
        cycle, completed = _cycle(transport, keep_alive=keep_alive)
        answer = JsonAnswer(body, "req-7")
        if way == "answer":
            cycle.write_answer(answer)
        else:
            cycle.write_whole(200, answer.raw_headers, body)
        assert completed == [1] and cycle.response_complete and transport.closed != keep_alive
        writes[way] = transport.writes
    assert writes["answer"] == writes["general"]
    assert writes["answer"] == [
        b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\ncontent-length: 15\r\n"
        b"content-type: application/json\r\nx-request-id: req-7\r\n"
        + (b"" if keep_alive else b"connection: close\r\n")
        + b"\r\n"
        + body
    ]
    # headers asked for (and perhaps changed) since: the answer is encoded from them
    transport = _Transport()
    cycle, _ = _cycle(transport)
    answer = JsonAnswer(body, "req-8")
    answer.headers["x-extra"] = "1"
    cycle.write_answer(answer)
    assert b"x-request-id: req-8\r\nx-extra: 1\r\n\r\n" in transport.writes[0]


def test_stream_head_leaves_with_the_first_chunk_then_chunked() -> None:
    async def run() -> None:
        transport = _Transport()
        cycle, completed = _cycle(transport, keep_alive=False)
        await cycle.send({"type": "http.response.start", "status": 200, "headers": []})
        await cycle.send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await cycle.send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
        await cycle.send({"type": "http.response.body", "body": b"", "more_body": False})
        assert transport.writes == [
            b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\nconnection: close\r\n"
            b"transfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n",
            b"9\r\ndata: 2\n\n\r\n",
            b"0\r\n\r\n",
        ]
        assert completed == [1] and transport.closed  # not keep-alive: closed when done

    asyncio.run(run())


def test_framing_errors_and_bad_headers_are_refused() -> None:
    async def run() -> None:
        cycle, _ = _cycle(_Transport())
        start = {"type": "http.response.start", "status": 200}
        await cycle.send({**start, "headers": [(b"content-length", b"2")]})
        with pytest.raises(RuntimeError, match="longer"):
            await cycle.send({"type": "http.response.body", "body": b"abc"})
        cycle, _ = _cycle(_Transport())
        await cycle.send({**start, "headers": [(b"content-length", b"2")]})
        with pytest.raises(RuntimeError, match="shorter"):
            await cycle.send({"type": "http.response.body", "body": b"a"})
        cycle, _ = _cycle(_Transport())
        with pytest.raises(RuntimeError, match="header value"):
            await cycle.send({**start, "headers": [(b"x-a", b"1\r\nset-cookie: x")]})
        cycle, _ = _cycle(_Transport())
        with pytest.raises(RuntimeError, match=r"http\.response\.start"):
            await cycle.send({"type": "http.response.body", "body": b""})

    asyncio.run(run())


class _DecliningGateway(Gateway):
    """A gateway whose fast path takes nothing: every lean request goes to a task."""

    fast_path_on = True  # type: ignore[assignment]

    def __init__(self) -> None:  # no state: serve_now only
        pass

    def serve_now(self, path: str, authorization: str | None, raw: bytes, reply: Any) -> bool:
        return False


class _ScopeApp(GatewayApp):
    def __init__(self, gateway: Gateway | None) -> None:  # only what the protocol looks at
        self.gateway = gateway  # type: ignore[assignment]
        self.seen: list[tuple[dict[str, Any], bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen.append((dict(scope), body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/completions HTTP/1.1\r\nhost: h\r\nauthorization: Bearer k\r\n"
        b"content-length: 4\r\n\r\n{}{}",
        b"POST /v1/chat/completions HTTP/1.0\r\nHost: h\r\nX-Trail: v \r\n"
        b"transfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"POST /v1/completions?a=%20b HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
        b"GET /v1/models HTTP/1.1\r\nhost: h\r\n\r\n",
    ],
    ids=["lean", "lean-1.0-chunked", "query", "get"],
)
def test_requests_reach_the_app_with_the_scope_and_body_uvicorn_gives(
    request_bytes: bytes,
) -> None:
    """Whether a request went the lean way first (and was handed to a task) or not, the app
    sees what uvicorn's own protocol gives it."""
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    async def run(protocol_class: type[HttpToolsProtocol]) -> tuple[Any, set[str]]:
        app = _ScopeApp(_DecliningGateway())
        config = uvicorn.Config(app, access_log=False, lifespan="off")
        config.load()
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={"k": 1})
        transport = _Transport()
        transport.get_extra_info = lambda name, default=None: {  # type: ignore[attr-defined]
            "sockname": ("127.0.0.1", 8000),
            "peername": ("127.0.0.1", 5555),
        }.get(name, default)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(request_bytes)
        for _ in range(20):
            await asyncio.sleep(0)
        assert transport.writes and transport.writes[0].startswith(b"HTTP/1.1 204")
        return app.seen, set(vars(protocol.cycle))

    (ours, our_cycle), (theirs, their_cycle) = (
        asyncio.run(run(GatewayHttpProtocol)),
        asyncio.run(run(HttpToolsProtocol)),
    )
    assert len(ours) == 1 and ours == theirs
    assert their_cycle <= our_cycle  # a lean cycle has every attribute uvicorn's code uses


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, dict[str, str], bytes]:
    """One Content-Length framed HTTP/1.1 response off ``sock`` (``buffer`` keeps the rest)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.decode().lower(): v.decode() for k, v in (ln.split(b": ", 1) for ln in lines)}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        rest += chunk
    buffer[:] = rest[length:]
    return status, headers, rest[:length]


def test_pipelined_inference_requests_on_one_connection(harness: Harness) -> None:
    """Two POSTs sent back to back on one keep-alive connection: both answered in order,
    the second one closing the connection as it asked."""
    key = harness.tenant("pipe")
    host, port = harness.url.removeprefix("http://").split(":")

    def request(prompt: str, extra: str = "") -> bytes:
        body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 2}).encode()
        return (
            f"POST /v1/completions HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
        ).encode() + body

    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request("one") + request("two", "connection: close\r\n"))
        buffer = bytearray()
        answers: list[Any] = []
        for _ in range(2):
            status, headers, body = _read_response(sock, buffer)
            assert status == b"HTTP/1.1 200 OK", body
            answers.append((headers, json.loads(body)))
        assert sock.recv(1) == b""  # closed after the second, as asked
    assert [a[1]["model"] for a in answers] == [MODEL, MODEL]
    assert answers[0][0].get("connection") is None
    assert answers[1][0]["connection"] == "close"
    assert all(a[0]["x-request-id"].startswith("req-") for a in answers)
    received = harness.upstreams[0].received + harness.upstreams[1].received
    assert sorted(r["prompt"] for r in received) == ["one", "two"]


def test_inference_requests_the_fast_path_does_not_take_are_served_as_tasks(
    harness: Harness,
) -> None:
    """HTTP/1.0, a query string, 100-continue, two keys, a body past the buffer limit and a
    client gone mid-body: answered (or recorded) as uvicorn's task path does, with the fast
    path on or off alike."""
    key = harness.tenant("acme")
    host, port = harness.url.removeprefix("http://").split(":")
    body = json.dumps({"model": MODEL, "prompt": "p", "max_tokens": 2}).encode()

    def head(target: str, length: int, version: str = "1.1", extra: str = "") -> bytes:
        return (
            f"POST {target} HTTP/{version}\r\nhost: {host}\r\nauthorization: Bearer {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {length}\r\n{extra}\r\n"
        ).encode()

    def exchange(data: bytes) -> tuple[bytes, dict[str, str], bytes, bool]:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(data)
            status, headers, answer = _read_response(sock, bytearray())
            sock.settimeout(0.5)
            try:
                closed = sock.recv(1) == b""
            except TimeoutError:
                closed = False
        return status, headers, answer, closed

    status, headers, answer, closed = exchange(head("/v1/completions", len(body), "1.0") + body)
    assert status == b"HTTP/1.1 200 OK" and json.loads(answer)["model"] == MODEL
    assert closed and headers["connection"] == "close"  # HTTP/1.0: no keep-alive
    status, _, answer, closed = exchange(head("/v1/completions?trace=1", len(body)) + body)
    assert status == b"HTTP/1.1 200 OK" and json.loads(answer)["usage"]["completion_tokens"] == 2
    assert not closed
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head("/v1/completions", len(body), extra="expect: 100-continue\r\n"))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, _, answer = _read_response(sock, bytearray())
        assert status == b"HTTP/1.1 200 OK", answer
    # two keys: the last one counts, on the fast path as on the task path
    second = b"authorization: Bearer sk-cl-not-a-key\r\n"
    status, _, answer, _ = exchange(
        head("/v1/completions", len(body))[:-2] + second + b"\r\n" + body
    )
    assert status == b"HTTP/1.1 401 Unauthorized", answer
    big = json.dumps({"model": MODEL, "prompt": "x" * 100_000}).encode()  # over 64 KiB
    status, _, answer, _ = exchange(head("/v1/chat/completions", len(big)) + big)
    assert status.startswith(b"HTTP/1.1 413") and json.loads(answer)["error"]["code"]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head("/v1/chat/completions", len(big)))  # refused before its body
        status, _, answer = _read_response(sock, bytearray())
        assert status.startswith(b"HTTP/1.1 413") and json.loads(answer)["error"]["code"]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head("/v1/completions", len(body)) + body[:5])  # and hangs up
    for _ in range(100):
        rows = usage_rows(harness)
        if len(rows) == 4:
            break
        time.sleep(0.05)
    # metered: the three answers and the request cut short (a 401 and the 413s are refused
    # before anything is served)
    assert [(r.status, r.completion_tokens) for r in rows] == [
        (200, 2), (200, 2), (200, 2), (499, 0),
    ]  # fmt: skip


@pytest.mark.parametrize("serving", ["fast"])
def test_known_keys_are_served_without_a_task(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests whose key the auth cache holds are answered from the protocol callbacks
    (no ASGI task), streams included; a key not cached yet runs as a task; each request is
    metered once either way."""
    tasks: list[str] = []
    to_task = GatewayHttpProtocol._to_task

    def counted(self: GatewayHttpProtocol, cycle: Any, serve: Any = None) -> None:
        to_task(self, cycle, serve)
        tasks.append("resumed" if RESUME in cycle.scope else "from the start")

    monkeypatch.setattr(GatewayHttpProtocol, "_to_task", counted)
    http = harness.http(harness.tenant("acme"))  # a key the cache holds
    body = {"model": MODEL, "prompt": "a b", "max_tokens": 3}
    for _ in range(3):
        answer = http.post("/v1/completions", json=body)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3
    assert tasks == []
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as streamed:
        assert streamed.status_code == 200 and "data: [DONE]" in streamed.read().decode()
    assert tasks == []
    cold = harness.http(harness.tenancy.create_key("acme").secret)  # not cached yet
    assert cold.post("/v1/completions", json=body).status_code == 200
    assert cold.post("/v1/completions", json=body).status_code == 200  # cached now
    assert tasks == ["from the start"]
    # refused on the fast path, in OpenAI format, with no task
    wrong = http.post("/v1/completions", json={**body, "model": "nope"})
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"
    assert len(tasks) == 1
    rows = usage_rows(harness)
    assert [(r.status, r.stream, r.completion_tokens) for r in rows] == [
        (200, False, 3), (200, False, 3), (200, False, 3), (200, True, 3),
        (200, False, 3), (200, False, 3), (404, False, 0),
    ]  # fmt: skip
    assert len({r.request_id for r in rows}) == 7


def test_client_gone_before_the_answer_is_still_metered_and_the_gateway_serves_on(
    harness: Harness,
) -> None:
    """A client that hangs up while the engine works: the answer is dropped, its usage
    recorded (the engine did the work), and the engine connection goes back to the pool."""
    key = harness.tenant("acme")
    host, port = harness.url.removeprefix("http://").split(":")
    body = json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 2}).encode()
    # an engine connection left open, so the next request can take the fast path
    assert harness.http(key).post("/v1/completions", json=json.loads(body)).status_code == 200
    for upstream in harness.upstreams:
        upstream.behaviour.delay_s = 0.3
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /v1/completions HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        deadline = time.monotonic() + 5  # hang up once the engine has the request
        while sum(u.completed for u in harness.upstreams) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sum(u.completed for u in harness.upstreams) == 2
    for upstream in harness.upstreams:
        upstream.behaviour.delay_s = 0.0
    answer = harness.http(key).post("/v1/completions", json=json.loads(body))
    assert answer.status_code == 200
    rows = usage_rows(harness)
    while len(rows) < 3 and time.monotonic() < deadline:  # the cut one may still be answering
        time.sleep(0.05)
        rows = usage_rows(harness)
    assert [(r.status, r.completion_tokens) for r in rows] == [(200, 2)] * 3


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def test_keep_alive_closes_idle_connections_not_busy_ones() -> None:
    """One keep-alive timer per idle spell: a connection in use every 0.3 s stays open past
    the 1 s keep-alive timeout; left idle, it is closed 1 to 2 s later."""
    with serve_in_thread(
        _ok, lifespan="off", http=SERVER_OPTIONS["http"], timeout_keep_alive=1
    ) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            buffer = bytearray()
            for _ in range(8):  # 2.4 s of use
                sock.sendall(f"GET / HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
                status, _, body = _read_response(sock, buffer)
                assert (status, body) == (b"HTTP/1.1 200 OK", b"ok")
                time.sleep(0.3)
            idle_from = time.monotonic()
            assert sock.recv(1) == b""  # closed by the server
            assert 0.6 <= time.monotonic() - idle_from < 2.5


def test_a_client_that_does_not_read_its_answers_is_not_read_from_either(
    harness: Harness,
) -> None:
    """Back-pressure: once a client's unread answers fill the buffers, the gateway stops
    taking its requests (as uvicorn does for pipelined requests) instead of answering on
    into an ever larger write buffer: the number answered stops growing."""
    key = harness.tenant("acme")
    host, port = harness.url.removeprefix("http://").split(":")
    body = json.dumps({"model": "nope", "prompt": "x"}).encode()  # a 404: no engine work
    request = (
        f"POST /v1/completions HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # answers back up soon
    sock.connect((host, int(port)))

    def flood() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(request * 60_000)  # 12 MB; blocks once nothing is read

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    try:
        answered = [0]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            len(answered) > 3 and answered[-1] == answered[-2] == answered[-3]
        ):
            time.sleep(1.0)
            answered.append(len(usage_rows(harness)))
        assert answered[-1] == answered[-2] == answered[-3], answered  # it stopped
        assert 0 < answered[-1] < 30_000, answered  # ~10,000 here; without: all 60,000
    finally:
        sock.shutdown(socket.SHUT_RDWR)  # ends the blocked sendall
        sock.close()
        sender.join(timeout=10)


def test_shutdown_waits_for_requests_whose_clients_left(tmp_path: Path) -> None:
    """A fast-path request whose client hung up is neither a task nor an open connection,
    which is all uvicorn waits for when it stops: the gateway's shutdown waits for it, so
    its usage is still recorded when the engine answers."""
    sessions = session_factory(f"sqlite:///{tmp_path / 'gw.db'}", create_tables=True)
    tenancy = TenancyService(sessions)
    tenancy.create_tenant("acme")
    key = tenancy.create_key("acme").secret
    tenancy.authenticate(key)  # in the auth cache: the fast path
    engine = FakeUpstream(served_model=ENGINE_MODEL)
    body = json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 2}).encode()
    with serve_in_thread(engine, lifespan="off") as engine_url:
        app = create_app(
            Settings(data_dir=tmp_path),
            tenancy,
            ReplicaTable([replica("r0", engine_url)]),
            admin_token=ADMIN_TOKEN,
        )
        with serve_in_thread(app, http=SERVER_OPTIONS["http"]) as url:
            warm = httpx.post(  # leaves an engine connection to reuse
                f"{url}/v1/completions", content=body, headers={"Authorization": f"Bearer {key}"}
            )
            assert warm.status_code == 200
            engine.behaviour.delay_s = 1.0
            host, port = url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(
                    (
                        f"POST /v1/completions HTTP/1.1\r\nhost: {host}\r\n"
                        f"authorization: Bearer {key}\r\ncontent-type: application/json\r\n"
                        f"content-length: {len(body)}\r\n\r\n"
                    ).encode()
                    + body
                )
                deadline = time.monotonic() + 5
                while engine.completed < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert engine.completed == 2  # the engine has it; the client hangs up
        # the gateway has stopped, before the engine answered
    with sessions() as session:
        rows = list(session.scalars(select(UsageRow).order_by(UsageRow.id)))
    assert [(r.status, r.completion_tokens) for r in rows] == [(200, 2), (200, 2)]
