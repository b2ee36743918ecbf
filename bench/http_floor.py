"""The HTTP server's share of the gateway's CPU per request: uvicorn's request cycle vs a
bare protocol, both answering the same POST with the same fixed JSON (no gateway logic).

* baseline: an ``asyncio.Protocol`` with httptools' request parser on uvloop, answering
  each complete request with one ``write`` (the least a Python HTTP/1.1 server can do);
* uvicorn (httptools + uvloop, as ``cunliang gateway`` runs it) with a minimal ASGI app
  that reads the body and sends the answer (start + body messages);
* the same with the gateway's own protocol (``gateway/h1server.py``: head and body in one
  write for the inference paths).

Each server runs alone on the last core; ``wrk`` (Debian package ``wrk``) drives it from
the other cores, keep-alive, 32 connections, for ``--seconds``; rounds interleave the three
servers; the server's CPU (user + system, /proc) over the requests wrk completed gives
microseconds per request. The difference between uvicorn and the baseline is what a
purpose-built server for the inference paths could save at most, per request.

    PYTHONPATH=$PWD .venv/bin/python bench/http_floor.py [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_result
from bench.gateway import cpu_s, pin, wait_healthy
from scheduler.preflight import free_port

BODY = (
    b'{"id":"cmpl-1","object":"chat.completion","model":"demo","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}'
)
REQUEST = '{"model":"demo","messages":[{"role":"user","content":"hello"}],"max_tokens":8}'
PATH = "/v1/chat/completions"

_RAW = """
import asyncio, sys, httptools, uvloop
BODY = @BODY@
ANSWER = b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: %d\\r\\n\\r\\n%s" % (len(BODY), BODY)

class Server(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.headers, self.body = [], []

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_header(self, name, value):
        self.headers.append((name.lower(), value))

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        request = (self.headers, b"".join(self.body))
        self.headers, self.body = [], []
        asyncio.get_running_loop().create_task(self.answer(request))

    async def answer(self, request):
        self.transport.write(ANSWER)

async def main():
    server = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()

uvloop.run(main())
""".replace("@BODY@", repr(BODY))

_ASGI = """
import sys, uvicorn
BODY = @BODY@
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http=sys.argv[2], loop="uvloop",
            log_level="warning", access_log=False, lifespan="off")
""".replace("@BODY@", repr(BODY))

SERVERS = {  # name: (program, extra argv)
    "raw_protocol": (_RAW, ()),
    "uvicorn": (_ASGI, ("httptools",)),
    "uvicorn_gateway_protocol": (_ASGI, ("scheduler.gateway.h1server:GatewayHttpProtocol",)),
}


def _wrk(port: int, seconds: float, script: Path, cpus: set[int]) -> int:
    done = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds:g}s", "-s", str(script),
         f"http://127.0.0.1:{port}{PATH}"],
        capture_output=True, text=True, check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )  # fmt: skip
    if "Non-2xx" in done.stdout or "Socket errors" in done.stdout:
        raise RuntimeError(f"wrk saw failures:\n{done.stdout}")
    match = re.search(r"(\d+) requests in", done.stdout)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{done.stdout}")
    return int(match.group(1))


def measure(name: str, seconds: float, script: Path) -> float:
    """One run of server ``name``: its CPU microseconds per request."""
    program, extra = SERVERS[name]
    cores = sorted(os.sched_getaffinity(0))
    server_cpus, load_cpus = {cores[-1]}, set(cores[:-1]) or {cores[-1]}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", program, str(port), *extra])
    try:
        pin(server.pid, server_cpus)
        wait_healthy(f"http://127.0.0.1:{port}", PATH)  # both answer any request
        _wrk(port, 1, script, load_cpus)  # warm-up
        before = cpu_s(server.pid)
        requests = _wrk(port, seconds, script, load_cpus)
        return (cpu_s(server.pid) - before) * 1e6 / requests
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench/http_floor.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = '{REQUEST}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            'wrk.headers["Authorization"] = "Bearer sk-cl-bench"\n'
        )
        runs: dict[str, list[float]] = {name: [] for name in SERVERS}
        for i in range(args.rounds):
            for name in SERVERS:
                runs[name].append(measure(name, args.seconds, script))
            print(
                f"round {i + 1}: "
                + ", ".join(f"{n} {v[-1]:.1f} us/request" for n, v in runs.items()),
                flush=True,
            )
    metrics: dict[str, float] = {}
    for name, values in runs.items():
        metrics[f"{name}_cpu_us_per_request"] = round(statistics.median(values), 2)
    base = metrics["raw_protocol_cpu_us_per_request"]
    for name in SERVERS:
        if name != "raw_protocol":
            metrics[f"{name}_vs_raw_protocol_ratio"] = round(
                metrics[f"{name}_cpu_us_per_request"] / base, 2
            )
            metrics[f"{name}_extra_cpu_us_per_request"] = round(
                metrics[f"{name}_cpu_us_per_request"] - base, 2
            )
    load = os.getloadavg()[0]
    out = write_result(
        "http_floor",
        metrics,
        notes=f"{args.rounds} rounds of {args.seconds:g} s, wrk c=32; load average at the end "
        f"{load:.1f}",
    )
    for k, v in metrics.items():
        print(f"{k:50s} {v:8.2f}")
    print(f"wrote {out}")
    print(
        f"| http floor: server CPU per request, fixed JSON answer (wrk c=32, server on its own "
        f"core, {args.rounds} rounds) | uvicorn + ASGI {metrics['uvicorn_cpu_us_per_request']:.1f} "
        f"µs, with the gateway's protocol "
        f"{metrics['uvicorn_gateway_protocol_cpu_us_per_request']:.1f} µs | bare httptools "
        f"protocol {base:.1f} µs (uvicorn {metrics['uvicorn_vs_raw_protocol_ratio']:.2f}x, "
        f"+{metrics['uvicorn_extra_cpu_us_per_request']:.1f} µs) | `python bench/http_floor.py` |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
