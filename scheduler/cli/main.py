"""Entry point of the `cunliang` console script.

Each command group lives in its own module exposing ``register(subparsers)``; a
registered command sets ``func(args, settings) -> int``. Domain errors print as one
line on stderr and exit 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from scheduler.errors import CunliangError
from scheduler.settings import Settings

# command-group modules, in help order; each has register(subparsers)
COMMAND_MODULES: tuple[str, ...] = (
    "scheduler.cli.up",
    "scheduler.cli.site",
    "scheduler.cli.node",
    "scheduler.cli.device",
    "scheduler.cli.fleet",
    "scheduler.cli.model",
    "scheduler.cli.plan",
    "scheduler.cli.tenant",
    "scheduler.cli.agent",
    "scheduler.cli.serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cunliang",
        description="存量 cunliang — LLM inference on the hardware you already own.",
    )
    parser.add_argument("--data-dir", help="data directory (default .data or $CUNLIANG_DATA_DIR)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default SQLite in the data dir)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key, value in vars(args).items()
        if key in Settings.model_fields and value is not None
    }
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = settings_from_args(args)
        code: int = args.func(args, settings)
        return code
    except CunliangError as exc:
        print(f"cunliang: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
