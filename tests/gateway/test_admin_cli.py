"""Admin API (token-guarded) and the `cunliang tenant` / `cunliang key` CLI against it."""

from __future__ import annotations

import argparse
import json
import sys

import openai
import pytest

from scheduler.cli import main as cli_main
from scheduler.cli import tenant as tenant_cli
from scheduler.errors import CunliangError
from tests.gateway.conftest import ADMIN_TOKEN, MODEL, Harness


def cli(argv: list[str]) -> int:
    """`cunliang ARGV` with only this command module registered (main's other modules live
    on other branches): same parser shape, settings and one-line error handling as main()."""
    parser = argparse.ArgumentParser(prog="cunliang")
    tenant_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args, cli_main.settings_from_args(args))
        return code
    except CunliangError as exc:
        print(f"cunliang: error: {exc}", file=sys.stderr)
        return 2


def test_admin_rejects_tenant_keys_and_bad_tokens(harness: Harness) -> None:
    key = harness.tenant("acme")
    assert harness.http(key).get("/admin/v1/tenants").status_code == 403
    assert harness.http("adm-cl-wrong").get("/admin/v1/tenants").status_code == 401
    missing = harness.http().post("/admin/v1/tenants", json={"name": "x"})
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"


def test_admin_api_lifecycle(harness: Harness) -> None:
    admin = harness.admin
    created = admin.post(
        "/admin/v1/tenants",
        json={"name": "acme", "allowed_models": [MODEL], "requests_per_s": 5, "max_concurrent": 2},
    )
    assert created.status_code == 201 and created.json()["requests_per_s"] == 5
    assert admin.post("/admin/v1/tenants", json={"name": "acme"}).status_code == 409
    bad = admin.post("/admin/v1/tenants", json={"name": "Bad Name!"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
    assert (
        admin.post("/admin/v1/tenants", json={"name": "x", "max_concurrent": 0}).status_code == 422
    )
    key = admin.post("/admin/v1/keys", json={"tenant": "acme", "name": "ci"}).json()
    assert key["key"].startswith("sk-cl-") and key["prefix"] == key["key"][: len(key["prefix"])]
    listed = admin.get("/admin/v1/keys", params={"tenant": "acme"}).json()
    assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]
    reply = harness.openai(key["key"]).completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert reply.usage is not None
    usage = admin.get("/admin/v1/tenants/acme/usage", params={"period": "day"}).json()
    assert usage["total_tokens"] == reply.usage.total_tokens
    assert admin.get("/admin/v1/tenants/ghost").status_code == 404
    assert admin.post("/admin/v1/keys/key_nope/revoke").status_code == 404


def test_cli_tenant_and_key_commands(harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--url", harness.url, "--admin-token", ADMIN_TOKEN]

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli([*argv[:2], *base, *argv[2:]])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, _ = run("tenant", "add", "acme", "--models", MODEL, "--requests-per-s", "3")
    assert code == 0 and out.startswith("acme\tactive") and "requests_per_s=3.0" in out
    code, out, _ = run("key", "create", "acme", "--name", "laptop")
    secret = out.splitlines()[0]
    assert code == 0 and secret.startswith("sk-cl-")
    assert harness.openai(secret).models.list().data[0].id == MODEL
    code, out, _ = run("key", "list", "--json")
    key_id = json.loads(out)[0]["id"]
    assert run("key", "revoke", key_id)[0] == 0
    with pytest.raises(openai.AuthenticationError):
        harness.openai(secret).models.list()
    code, out, _ = run("tenant", "disable", "acme")
    assert "disabled" in out
    code, out, _ = run("tenant", "list")
    assert out.count("\n") == 1

    code, _, err = run("tenant", "add", "acme")
    assert code == 2 and err.count("\n") == 1 and "409" in err and "already exists" in err
    bad = cli(["tenant", "list", "--url", harness.url, "--admin-token", "adm-cl-no"])
    assert bad == 2 and "401" in capsys.readouterr().err
    down = cli(["key", "list", "--url", "http://127.0.0.1:9", "--admin-token", "x"])
    err = capsys.readouterr().err
    assert down == 2 and err.startswith("cunliang: error: Cannot reach the gateway")
