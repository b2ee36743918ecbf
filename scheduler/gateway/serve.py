"""Run the gateway on its own: ``python -m scheduler.gateway.serve --replicas replicas.json``.

For development, tests and benchmarks; ``cunliang up`` builds the same app with the Ray
runtime's ReplicaTable instead of a file. The replicas file is a JSON list of
ReplicaEndpoint fields. Settings come from the environment (CUNLIANG_*), built here.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import gc
import json
import os
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scheduler.errors import ConfigError
from scheduler.gateway.app import create_app
from scheduler.gateway.config import GatewayConfig
from scheduler.gateway.replicas import ReplicaEndpoint, ReplicaTable
from scheduler.settings import Settings, parse_cpu_list
from scheduler.store.tenancy import session_factory
from scheduler.tenancy import TenancyService

SWITCH_INTERVAL_S = 0.001  # the GIL switch interval of serving processes (prepare_process)

# uvicorn options every gateway entry point uses: uvloop's event loop and httptools' parser,
# through uvicorn's httptools protocol with one write per inference response (gateway/h1server;
# what bench/gateway.py measures); no access log (Prometheus counts the requests)
SERVER_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "scheduler.gateway.h1server:GatewayHttpProtocol",
    "access_log": False,
}


def pin_threads(pid: int | str, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of process ``pid`` ("self": this one); threads
    started later inherit it. Also what the benchmarks pin their processes with."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, PermissionError):  # a thread ended
            os.sched_setaffinity(int(task.name), cpus)


def pin_process(cpus: set[int]) -> None:
    """Run every thread of this process (and those it starts later) on ``cpus`` only."""
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise ConfigError(
            f"gateway_cpus {sorted(cpus)} are not all among this process's CPUs {sorted(allowed)}."
        )
    pin_threads("self", cpus)


def prepare_process(cpus: str | None = None) -> int:
    """Ready this process to serve, right before the server starts: raise the open files
    limit (raise_open_files_limit, returned) and move every object allocated so far (the
    imported modules, FastAPI's routes and pydantic's schemas: ~100k objects) out of the
    garbage collector's sight with ``gc.freeze()``. A full collection walks every tracked
    object; with them it takes ~70 ms (a pause every second or two under load, as each
    request leaves a few objects behind until its usage record is flushed), without them
    well under a millisecond.

    Also shortens the interval after which a thread that wants the GIL makes its holder
    drop it from 5 ms to 1 ms: the gateway's background threads (the usage flush into the
    database, the directory and heartbeat refreshes) hold it for tens of milliseconds at a
    time, and every request that became ready meanwhile waited up to 5 ms per slice.

    ``cpus`` (``Settings.gateway_cpus``, a cpu-list its validator checked): pin the process
    to those CPUs."""
    if cpus:
        pin_process(parse_cpu_list(cpus))
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.collect()
    gc.freeze()
    # at exit, hand them back: extension modules (nanobind's, imported with vLLM by `cunliang
    # up`) report every object still alive at their teardown as a leak
    atexit.register(gc.unfreeze)
    return raise_open_files_limit()


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit: a proxy holds two sockets per request
    in flight (client and engine), and the usual soft limit of 1,024 would cap it at ~500
    concurrent streams. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def load_replicas(path: Path) -> list[ReplicaEndpoint]:
    try:
        items = json.loads(path.read_text())
        return [ReplicaEndpoint(**item) for item in items]
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"Cannot read replicas from {path}: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scheduler.gateway.serve")
    parser.add_argument("--replicas", type=Path, required=True, help="JSON list of replicas")
    parser.add_argument("--create-tables", action="store_true", help="create tables (dev)")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--usage-flush-interval-s",
        type=float,
        default=GatewayConfig.usage_flush_interval_s,
        help="WAL to database batching",
    )
    parser.add_argument("--upstream-client", default="h1", choices=("h1", "aiohttp", "httpx"))
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"serve: error: {first['loc'][0]}: {first['msg']}", file=sys.stderr)
        return 2
    if not settings.admin_token:
        print("serve: error: set CUNLIANG_ADMIN_TOKEN", file=sys.stderr)
        return 2
    import uvicorn  # the server is an edge dependency of this entry point only

    sessions = session_factory(settings.resolved_database_url, create_tables=args.create_tables)
    config = dataclasses.replace(
        GatewayConfig.from_settings(settings),
        usage_flush_interval_s=args.usage_flush_interval_s,
        upstream_client=args.upstream_client,
    )
    app = create_app(
        settings,
        TenancyService(sessions),
        ReplicaTable(load_replicas(args.replicas)),
        admin_token=settings.admin_token,
        config=config,
    )
    try:
        prepare_process(settings.gateway_cpus)
    except ConfigError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        proxy_headers=False,  # the gateway is the edge; X-Forwarded-* is not trusted here
        **SERVER_OPTIONS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
