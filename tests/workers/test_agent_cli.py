from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from scheduler.cli import agent
from scheduler.cli.main import build_parser, main
from scheduler.errors import CunliangError


@dataclass
class _Response:
    status_code: int
    text: str


@dataclass
class RecordingPoster:
    """An HttpPoster that records calls and answers with a canned response."""

    response: _Response
    calls: list[dict[str, Any]] = field(default_factory=list)

    def post(self, url: str, *, json: Any, headers: Mapping[str, str], timeout: float) -> _Response:
        self.calls.append({"url": url, "json": json, "headers": dict(headers)})
        return self.response


def test_post_profile_builds_the_admin_endpoint_and_sends_the_token() -> None:
    poster = RecordingPoster(_Response(201, json.dumps({"profile": {"version": 1}})))
    answer = agent.post_profile(poster, "http://inv:8000/", "node-7", {"a": 1}, "adm-cl-x")
    assert answer == {"profile": {"version": 1}}
    (call,) = poster.calls
    assert call["url"] == "http://inv:8000/admin/v1/nodes/node-7/profiles"
    assert call["headers"] == {"Authorization": "Bearer adm-cl-x"}
    assert call["json"] == {"a": 1}


def test_post_failure_is_one_clear_error() -> None:
    poster = RecordingPoster(_Response(404, '{"error": {"message": "unknown node"}}'))
    with pytest.raises(CunliangError, match=r"HTTP 404.*unknown node"):
        agent.post_profile(poster, "http://inv", "n", {}, "t")


def test_parser_knows_the_agent_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUNLIANG_ADMIN_TOKEN", raising=False)
    import scheduler.cli.main as cli_main

    modules = cli_main.COMMAND_MODULES
    cli_main.COMMAND_MODULES = ("scheduler.cli.agent",)
    try:
        args = build_parser().parse_args(["agent", "--profile", "quick", "--json"])
        assert args.profile == "quick" and args.json and args.func is agent.run_agent
        code = main(["agent", "--dtypes", "float64"])
        assert code == 2
        assert "--dtypes must list" in capsys.readouterr().err
        code = main(["agent", "--post", "http://inv"])
        assert code == 2
    finally:
        cli_main.COMMAND_MODULES = modules
