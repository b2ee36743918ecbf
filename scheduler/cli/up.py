"""`cunliang up`: start the embedded stack on this machine."""

from __future__ import annotations

import argparse
from typing import Any

from scheduler.settings import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "up",
        help="start the embedded stack (inventory, profile, demo model, Ray, vLLM, gateway)",
        description="Start everything on this machine and serve a model on the gateway.",
    )
    p.add_argument("--host", help="gateway address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gateway port (default 8000)")
    p.add_argument("--model", help="Hugging Face id or local path (default: the demo model)")
    p.add_argument("--served-model-name", help="model name tenants use (default cunliang-demo)")
    p.add_argument(
        "--dtype", help="engine dtype; 'auto' probes which runs fastest here (default auto)"
    )
    p.add_argument("--max-model-len", type=int, help="engine context length (default 256)")
    p.add_argument("--admin-token", help="admin token (default: generated, kept in the data dir)")
    p.set_defaults(func=_run)


def _run(_args: argparse.Namespace, settings: Settings) -> int:
    from scheduler.up import run_up

    return run_up(settings)
