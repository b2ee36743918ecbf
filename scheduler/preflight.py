"""Checks `cunliang up` makes before it starts anything, so failures are one clear line."""

from __future__ import annotations

import errno
import os
import socket
import uuid
from pathlib import Path

from scheduler.errors import ConfigError


def check_data_dir(path: Path) -> Path:
    """Create ``path`` if needed and prove it is writable; returns the absolute path."""
    path = path.expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"data directory {path} is not writable ({reason}).",
            fix="pass --data-dir with a directory you can write to.",
        ) from exc
    return path


def check_port_free(host: str, port: int) -> None:
    """Fail early when the gateway's port is taken (instead of after a minute of loading)."""
    if not 0 < port < 65536:
        raise ConfigError(f"port {port} is out of range.", fix="pass --port 1..65535.")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if os.name != "nt":
            # allow TIME_WAIT leftovers (as uvicorn does), refuse a live listener
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is already in use.",
                    fix="stop the other server or pass --port with a free port.",
                ) from exc
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}).",
                fix="pass --host/--port that this machine can bind.",
            ) from exc


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
