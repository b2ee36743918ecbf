"""The gateway's request path in pieces, in-process, without sockets: CPU per request of
each piece, for this checkout and optionally another side by side (interleaved rounds).

Whole-system runs (bench/gateway.py) on this 2-core machine move by 10-20% between rounds;
these pieces run on one thread with nothing to wait for, so their differences of a
microsecond show. Pieces (each a fresh subprocess on the checkout's code, thread CPU time,
the median of 5 repetitions of 20,000 requests after a warm-up):

- ``client``: the server protocol (``gateway/h1server.py``) parsing one inference POST of
  8 headers, handing it to a gateway whose ``serve_now`` answers at once with a fixed JSON
  answer, and writing that answer to a transport that drops it;
- ``engine``: the upstream client (``gateway/h1.py``): ``post_now`` on a pooled connection,
  the engine's answer (4 headers, a completion body) fed to it, the body taken and the
  connection back in the pool;
- ``logic``: ``Gateway.serve_now`` and the answer's completion with the upstream and the
  client stubbed: auth from the cache, parse, admission, routing, metering (the usage WAL
  record included), metrics;
- ``usage``: a usage record made and ``UsageWriter.submit``-ted (a part of ``logic``).

    PYTHONPATH=$PWD .venv/bin/python bench/gateway_micro.py [--rounds 3]
        [--compare-repo <checkout>]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PIECES = ("client", "engine", "logic", "usage")
MODEL = "bench-model"
_N = 20_000
_ANSWER = json.dumps(
    {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "length", "logprobs": None, "text": "a b c d "}],
        "usage": {"prompt_tokens": 5, "total_tokens": 9, "completion_tokens": 4},
    }
).encode()
_BODY = json.dumps({"model": MODEL, "prompt": "hello there", "max_tokens": 4}).encode()


def _timed(one: Any) -> float:
    """Median thread CPU microseconds per call of ``one`` over 5 repetitions."""
    for _ in range(2000):
        one()
    per_call = []
    for _ in range(5):
        started = time.thread_time()
        for _ in range(_N):
            one()
        per_call.append((time.thread_time() - started) / _N * 1e6)
    return statistics.median(per_call)


class _Transport:
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def write(self, data: bytes) -> None:
        pass

    def writelines(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _client() -> float:
    import uvicorn
    from uvicorn.server import ServerState

    from scheduler.gateway.asgi import GatewayApp
    from scheduler.gateway.core import Gateway, JsonAnswer
    from scheduler.gateway.h1server import GatewayHttpProtocol

    class Answering(Gateway):
        fast_path_on = True  # type: ignore[assignment]

        def __init__(self) -> None:
            pass

        def serve_now(self, path: str, authorization: str | None, raw: bytes, reply: Any) -> bool:
            reply.respond(JsonAnswer(_ANSWER, "req-1"))
            return True

    class App(GatewayApp):
        def __init__(self) -> None:
            self.gateway = Answering()  # type: ignore[assignment]

    config = uvicorn.Config(App(), access_log=False, lifespan="off")
    config.load()
    protocol = GatewayHttpProtocol(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(_Transport())  # type: ignore[arg-type]
    request = (
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAccept-Encoding: gzip\r\n"
        b"Accept: */*\r\nConnection: keep-alive\r\nUser-Agent: bench\r\n"
        b"Authorization: Bearer sk-cl-0123456789abcdef0123456789abcdef\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
    )
    return _timed(lambda: protocol.data_received(request))


async def _engine() -> float:
    from scheduler.gateway.h1 import H1Upstream, _Connection
    from scheduler.gateway.upstream import UpstreamLimits

    upstream = H1Upstream(UpstreamLimits(connect_timeout_s=5, read_timeout_s=30, max_connections=8))
    origin = ("http", "127.0.0.1", 9)
    connection = _Connection(upstream, origin)
    connection.connection_made(_Transport())  # type: ignore[arg-type]
    upstream._open.add(connection)
    upstream._idle[origin] = [connection]
    response = (
        b"HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 14:00:00 GMT\r\nserver: uvicorn\r\n"
        b"content-length: %d\r\ncontent-type: application/json\r\n\r\n%s" % (len(_ANSWER), _ANSWER)
    )

    def listener(answered: Any) -> None:
        answered.take_body()
        answered.finish()

    def one() -> None:
        sent = upstream.post_now("http://127.0.0.1:9/v1/completions", _BODY, listener)
        sent.data_received(response)

    return _timed(one)


async def _logic(tmp: Path) -> float:
    from bench.common import gateway_fixture
    from scheduler.gateway.app import create_app
    from scheduler.gateway.replicas import ReplicaTable
    from scheduler.gateway.serve import load_replicas
    from scheduler.settings import Settings
    from scheduler.store.tenancy import session_factory
    from scheduler.tenancy import TenancyService

    key, replicas = gateway_fixture(tmp, "http://127.0.0.1:9", MODEL)
    os.environ.update(
        CUNLIANG_DATA_DIR=str(tmp / "data"),
        CUNLIANG_DATABASE_URL=f"sqlite:///{tmp / 'gw.db'}",
        CUNLIANG_ADMIN_TOKEN="bench-admin",
    )
    settings = Settings()
    tenancy = TenancyService(session_factory(settings.resolved_database_url))
    app = create_app(
        settings, tenancy, ReplicaTable(load_replicas(replicas)), admin_token="bench-admin"
    )
    gateway = app.gateway

    class Answered:
        status, error, complete, stale = 200, None, True, False

        def take_body(self) -> bytes:
            return _ANSWER

        def finish(self) -> None:
            pass

    def post_now(url: str, payload: bytes, listener: Any, each: bool = False) -> Any:
        listener(Answered())
        return True

    class Reply:
        def respond(self, response: Any) -> None:
            pass

        def resume(self, serve: Any) -> None:
            raise RuntimeError("the bench request left the fast path")

    await gateway.startup()
    try:
        gateway._post_now = post_now
        tenancy.authenticate(key)  # in the auth cache, as for a client's second request
        authorization, reply = f"Bearer {key}", Reply()
        return _timed(lambda: gateway.serve_now("/v1/completions", authorization, _BODY, reply))
    finally:
        await gateway.shutdown()


async def _usage(tmp: Path) -> float:
    from datetime import UTC, datetime

    from scheduler.gateway.metering import UsageWriter
    from scheduler.tenancy import UsageRecord

    class Sink:
        def record_usage(self, records: Any) -> int:
            return len(records)

    writer = UsageWriter(Sink(), tmp / "wal", batch_max=10**9)
    writer.open()
    now = datetime.now(UTC)
    ids = iter(range(10**9))

    def one() -> None:
        writer.submit(
            UsageRecord(
                request_id=f"req-0123456789abcdef-{next(ids):x}",
                tenant_id=1,
                key_id="k1",
                model=MODEL,
                status=200,
                created_at=now,
                quant="bf16",
                replica_id="r0",
                device_class="cpu",
                site="local",
                prompt_tokens=5,
                completion_tokens=4,
                latency_ms=1.5,
                cost_yuan=0.0001,
            )
        )
        if len(writer._pending) > 100_000:
            writer._pending.clear()

    return _timed(one)


def _piece(name: str) -> float:
    """Run one piece in this process (the checkout is first on sys.path)."""
    import asyncio

    with tempfile.TemporaryDirectory(prefix="cl-micro-") as tmp:
        runs = {
            "client": _client,
            "engine": _engine,
            "logic": lambda: _logic(Path(tmp)),
            "usage": lambda: _usage(Path(tmp)),
        }
        return asyncio.run(runs[name]())  # type: ignore[no-untyped-call]


def _measure(checkout: Path, piece: str) -> float:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--piece", piece],
        cwd=checkout,
        env={**os.environ, "PYTHONPATH": f"{checkout}:{REPO}"},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--compare-repo", help="also measure this checkout (e.g. the last one)")
    parser.add_argument("--piece", choices=PIECES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.piece:  # a subprocess of the run below
        sys.path.insert(0, os.getcwd())
        print(_piece(args.piece))
        return 0
    checkouts = {"gateway": REPO}
    if args.compare_repo:
        checkouts["gateway_base"] = Path(args.compare_repo).resolve()
    samples: dict[tuple[str, str], list[float]] = {}
    for round_no in range(args.rounds):
        for piece in PIECES:
            for name, checkout in checkouts.items():
                value = _measure(checkout, piece)
                samples.setdefault((name, piece), []).append(value)
                print(f"round {round_no} {piece} {name}: {value:.2f} us", file=sys.stderr)
    metrics: dict[str, float] = {}
    for (name, piece), values in samples.items():
        metrics[f"{name}_{piece}_us_per_request"] = round(statistics.median(values), 2)
    if args.compare_repo:
        for piece in PIECES:
            new, old = (
                metrics[f"gateway_{piece}_us_per_request"],
                metrics[f"gateway_base_{piece}_us_per_request"],
            )
            metrics[f"{piece}_new_over_base_ratio"] = round(new / old, 3)
        path = ("client", "engine", "logic")  # a request's whole path ("usage" is in "logic")
        total = sum(metrics[f"gateway_{p}_us_per_request"] for p in path)
        base = sum(metrics[f"gateway_base_{p}_us_per_request"] for p in path)
        metrics["request_path_new_over_base_ratio"] = round(total / base, 3)
    sys.path.insert(0, str(REPO))
    from bench.common import print_result, write_result

    path = write_result(
        "gateway_micro",
        metrics,
        config={
            "requests_per_repetition": _N,
            "rounds": args.rounds,
            "checkouts": {k: str(v) for k, v in checkouts.items()},
        },
    )
    print_result(path, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
