"""Real vLLM (CPU) server and actor lifecycles on the demo model. Slow: engine-marked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from openai import OpenAI

from scheduler.errors import EngineError
from workers.engines.base import Engine
from workers.engines.vllm_server import VllmConfig, VllmServer
from workers.proc import group_members

pytestmark = pytest.mark.engine

ENV = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}


def _wait_gone(pgid: int, within_s: float) -> list[int]:
    deadline = time.monotonic() + within_s
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_server_serves_a_chat_completion_and_stops_without_orphans(
    demo_model: Path, tmp_path: Path
) -> None:
    config = VllmConfig(model=str(demo_model), served_model_name="demo", dtype="float32")
    server = VllmServer(config, tmp_path / "engine.log", env=ENV, start_timeout_s=240)
    assert isinstance(server, Engine)
    try:
        base_url = server.start()
        assert server.ready() and server.health()["state"] == "ready"
        assert len(server.group_members()) >= 2  # api server + engine core (+ workers)
        client = OpenAI(base_url=f"{base_url}/v1", api_key="unused")
        reply = client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "Say hello to the data centre."}],
            max_tokens=12,
            temperature=0,
        )
        usage = reply.usage
        assert usage is not None
        # chat template adds bos + role markers around the 7-token message
        assert usage.prompt_tokens > 7
        assert 1 <= usage.completion_tokens <= 12
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        assert reply.choices[0].finish_reason in ("length", "stop")
    finally:
        pgid = server.pid
        server.stop()
    assert pgid is not None
    assert group_members(pgid) == []
    assert server.health()["state"] == "stopped"
    assert "Application startup complete" in (tmp_path / "engine.log").read_text()


def test_start_failure_raises_engine_error_with_log_tail(tmp_path: Path) -> None:
    not_a_model = tmp_path / "empty-model"
    not_a_model.mkdir()
    config = VllmConfig(model=str(not_a_model), served_model_name="x", dtype="float32")
    server = VllmServer(config, tmp_path / "bad.log", env=ENV, start_timeout_s=120)
    with pytest.raises(EngineError, match="exited with status") as info:
        server.start()
    assert "log tail" in str(info.value) and str(tmp_path / "bad.log") in str(info.value)
    assert server.pid is not None and group_members(server.pid) == []


ACTOR_SCRIPT = """
import json, sys, time
from pathlib import Path
from workers.actor import ReplicaActor
from workers.engines.vllm_server import VllmConfig
config = VllmConfig(model=sys.argv[1], served_model_name="demo", dtype="float32")
actor = ReplicaActor("demo-r0", config, Path(sys.argv[2]), env=json.loads(sys.argv[3]))
url = actor.start()
print(json.dumps({"url": url, "pid": actor.info()["pid"]}), flush=True)
time.sleep(600)
"""


def test_engine_dies_when_its_actor_process_is_sigkilled(demo_model: Path, tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[2])
    actor = subprocess.Popen(
        [sys.executable, "-c", ACTOR_SCRIPT, str(demo_model), str(tmp_path), json.dumps(ENV)],
        stdout=subprocess.PIPE,
        text=True,
        env={**ENV, "PYTHONPATH": root},
    )
    try:
        assert actor.stdout is not None
        started = json.loads(actor.stdout.readline())
        engine_pgid = started["pid"]
        assert len(group_members(engine_pgid)) >= 2
        actor.send_signal(signal.SIGKILL)  # no Python cleanup can run: the kernel must act
        actor.wait(timeout=10)
        assert _wait_gone(engine_pgid, within_s=30) == []
    finally:
        if actor.poll() is None:
            actor.kill()
