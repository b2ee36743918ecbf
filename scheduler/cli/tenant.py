"""`cunliang tenant add|list|disable|enable` and `cunliang key create|revoke|list`.

Both talk to the gateway's admin HTTP API (``--url``, default http://HOST:PORT from Settings)
with the admin token (``--admin-token`` or CUNLIANG_ADMIN_TOKEN). Errors print one line.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx

from scheduler.errors import AuthError, ConfigError, CunliangError
from scheduler.settings import Settings

_LIMIT_FLAGS = (
    ("--requests-per-s", "requests_per_s", float, "requests per second"),
    ("--max-concurrent", "max_concurrent", int, "requests in flight"),
    ("--tokens-per-min", "tokens_per_min", int, "tokens per minute"),
    ("--daily-token-budget", "daily_token_budget", int, "tokens per UTC day"),
    ("--monthly-token-budget", "monthly_token_budget", int, "tokens per UTC month"),
    ("--daily-yuan-budget", "daily_yuan_budget", float, "yuan per UTC day"),
    ("--monthly-yuan-budget", "monthly_yuan_budget", float, "yuan per UTC month"),
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="gateway URL (default http://HOST:PORT from settings)")
    parser.add_argument("--admin-token", help="admin token (default $CUNLIANG_ADMIN_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def register(subparsers: Any) -> None:
    tenant = subparsers.add_parser("tenant", help="manage tenants (admin API)")
    t_sub = tenant.add_subparsers(dest="tenant_command", metavar="ACTION", required=True)
    add = t_sub.add_parser("add", help="create a tenant")
    add.add_argument("name")
    add.add_argument(
        "--models", default="*", help="comma-separated models the tenant may use ('*' = all)"
    )
    for flag, dest, kind, what in _LIMIT_FLAGS:
        add.add_argument(flag, dest=dest, type=kind, help=f"limit: {what} (default unlimited)")
    add.set_defaults(func=_tenant_add)
    listing = t_sub.add_parser("list", help="list tenants")
    listing.set_defaults(func=_tenant_list)
    for action, disabled in (("disable", True), ("enable", False)):
        p = t_sub.add_parser(action, help=f"{action} a tenant")
        p.add_argument("name")
        p.set_defaults(func=_tenant_toggle, disabled=disabled)
    for p in (add, listing, *t_sub.choices.values()):
        if not any(a.dest == "url" for a in p._actions):
            _common(p)

    key = subparsers.add_parser("key", help="manage tenant API keys (admin API)")
    k_sub = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    create = k_sub.add_parser("create", help="create an API key (printed once)")
    create.add_argument("tenant")
    create.add_argument("--name", default="", help="a label for the key")
    create.set_defaults(func=_key_create)
    revoke = k_sub.add_parser("revoke", help="revoke an API key by id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_key_revoke)
    klist = k_sub.add_parser("list", help="list API keys")
    klist.add_argument("--tenant", help="only this tenant's keys")
    klist.set_defaults(func=_key_list)
    for p in (create, revoke, klist):
        _common(p)


class AdminClient:
    """Calls the admin API; turns every failure into a one-line CunliangError."""

    def __init__(self, url: str, token: str) -> None:
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            response = self._http.request(method, "/admin/v1" + path, **kw)
        except httpx.HTTPError as exc:
            raise ConfigError(
                f"Cannot reach the gateway at {self._http.base_url} ({type(exc).__name__}).",
                fix="start it (`cunliang up`) or pass --url.",
            ) from exc
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise CunliangError(f"HTTP {response.status_code}: {message}")
        return response.json()


def _client(args: argparse.Namespace, settings: Settings) -> AdminClient:
    token = args.admin_token or settings.admin_token
    if not token:
        raise AuthError("No admin token.", fix="pass --admin-token or set CUNLIANG_ADMIN_TOKEN.")
    return AdminClient(args.url or f"http://{settings.host}:{settings.port}", token)


def _print(args: argparse.Namespace, data: Any, rows: list[str]) -> int:
    print(json.dumps(data, indent=2) if args.json else "\n".join(rows))
    return 0


def _tenant_row(t: dict[str, Any]) -> str:
    limits = ", ".join(
        f"{dest}={t[dest]}" for _, dest, _, _ in _LIMIT_FLAGS if t.get(dest) is not None
    )
    state = "disabled" if t["disabled"] else "active"
    return f"{t['name']}\t{state}\tmodels={','.join(t['allowed_models'])}\t{limits or 'unlimited'}"


def _tenant_add(args: argparse.Namespace, settings: Settings) -> int:
    body: dict[str, Any] = {
        "name": args.name,
        "allowed_models": [m.strip() for m in args.models.split(",") if m.strip()],
    }
    body.update({dest: getattr(args, dest) for _, dest, _, _ in _LIMIT_FLAGS})
    tenant = _client(args, settings).call("POST", "/tenants", json=body)
    return _print(args, tenant, [_tenant_row(tenant)])


def _tenant_list(args: argparse.Namespace, settings: Settings) -> int:
    tenants = _client(args, settings).call("GET", "/tenants")
    return _print(args, tenants, [_tenant_row(t) for t in tenants] or ["(no tenants)"])


def _tenant_toggle(args: argparse.Namespace, settings: Settings) -> int:
    action = "disable" if args.disabled else "enable"
    tenant = _client(args, settings).call("POST", f"/tenants/{args.name}/{action}")
    return _print(args, tenant, [_tenant_row(tenant)])


def _key_row(k: dict[str, Any]) -> str:
    state = f"revoked {k['revoked_at']}" if k["revoked_at"] else "active"
    return f"{k['id']}\t{k['tenant']}\t{k['prefix']}…\t{state}\t{k['name']}"


def _key_create(args: argparse.Namespace, settings: Settings) -> int:
    key = _client(args, settings).call(
        "POST", "/keys", json={"tenant": args.tenant, "name": args.name}
    )
    rows = [key["key"], f"# key id {key['id']} for tenant {key['tenant']}; shown only once"]
    return _print(args, key, rows)


def _key_revoke(args: argparse.Namespace, settings: Settings) -> int:
    key = _client(args, settings).call("POST", f"/keys/{args.key_id}/revoke")
    return _print(args, key, [_key_row(key)])


def _key_list(args: argparse.Namespace, settings: Settings) -> int:
    params = {"tenant": args.tenant} if args.tenant else {}
    keys = _client(args, settings).call("GET", "/keys", params=params)
    return _print(args, keys, [_key_row(k) for k in keys] or ["(no keys)"])
