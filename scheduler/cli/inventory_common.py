"""Shared plumbing of the inventory CLI commands: open the service on the configured
database (migrated to head first), name the acting operator, print tables or JSON."""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from scheduler.errors import InvalidInput
from scheduler.inventory.schemas import PolicyIn, parse
from scheduler.inventory.service import InventoryService
from scheduler.inventory.usage import SqlUsageSource
from scheduler.lifecycle import AdmissionPolicy
from scheduler.settings import Settings
from scheduler.store.db import ensure_schema, open_database


@contextmanager
def inventory(settings: Settings, policy_file: Path | None = None) -> Iterator[InventoryService]:
    """The inventory service on ``settings.resolved_database_url`` (schema upgraded first),
    with the admission policy from ``policy_file`` (YAML/JSON of PolicyIn) or the defaults.

    No runtime is attached on the CLI: retiring needs ``--replicas-moved`` from the operator.
    """
    policy = load_policy(policy_file) if policy_file else None
    url = settings.resolved_database_url
    ensure_schema(url)
    db = open_database(url)
    try:
        yield InventoryService(db, policy=policy, usage=SqlUsageSource(db))
    finally:
        db.dispose()


def load_policy(path: Path) -> AdmissionPolicy:
    try:
        data = yaml.safe_load(path.read_text("utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(f"cannot read policy file {path}: {exc}".replace("\n", " ")) from None
    return parse(PolicyIn, data).to_policy()


def add_policy_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy", type=Path, help="admission policy YAML (thresholds; default built in)"
    )


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def emit(args: argparse.Namespace, data: BaseModel | Sequence[BaseModel]) -> None:
    """JSON when --json was given, else the caller prints a table."""
    if isinstance(data, BaseModel):
        print(data.model_dump_json(indent=2))
    else:
        print(json.dumps([d.model_dump(mode="json") for d in data], indent=2, ensure_ascii=False))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """A plain aligned text table (no dependency, greppable)."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for i, row in enumerate(cells):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def pairs(
    values: Sequence[str] | None, name: str, cast: Callable[[str], Any] = str
) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: cast(v)}``; a malformed item is one clear error."""
    out: dict[str, Any] = {}
    for item in values or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--{name} expects KEY=VALUE, got {item!r}.")
        try:
            out[key] = cast(raw)
        except ValueError:
            raise InvalidInput(f"--{name} {item!r}: {raw!r} is not a valid value.") from None
    return out


def csv_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]
