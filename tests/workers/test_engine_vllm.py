"""Real vLLM (CPU) server and actor lifecycles on the demo model. Slow: engine-marked."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from openai import OpenAI

from scheduler.domain import Quant
from scheduler.errors import EngineError
from workers.actor import as_ray_actor
from workers.engines.base import Engine
from workers.engines.vllm_server import VllmConfig, VllmServer, http_health
from workers.proc import group_members
from workers.quantize import symmetric_activations_run, w8a8_dir
from workers.weights import check_engine_log

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
    log = (tmp_path / "engine.log").read_text()
    assert "Application startup complete" in log
    check_engine_log(log, Quant.FP32, engine="vllm")  # what start() verified
    with pytest.raises(EngineError, match="not int8-w8a8 weights: quantization=None"):
        check_engine_log(log, Quant.INT8_W8A8, engine="vllm")


def test_start_failure_raises_engine_error_with_log_tail(tmp_path: Path) -> None:
    not_a_model = tmp_path / "empty-model"
    not_a_model.mkdir()
    config = VllmConfig(model=str(not_a_model), served_model_name="x", dtype="float32")
    server = VllmServer(config, tmp_path / "bad.log", env=ENV, start_timeout_s=120)
    with pytest.raises(EngineError, match="exited while starting") as info:
        server.start()
    assert "log tail" in str(info.value) and str(tmp_path / "bad.log") in str(info.value)
    assert "command exited with status 1" in str(info.value)
    assert server.pid is not None and group_members(server.pid) == []


def test_actor_serves_the_int8_variant_it_made_and_dies_with_its_engine(
    demo_model: Path, tmp_path: Path
) -> None:
    """A replica planned as int8 W8A8 on the fp32 demo checkpoint: the actor makes the
    compressed-tensors copy, vLLM must report loading it, and ``ray.kill`` of the actor
    takes the engine down."""
    import ray

    root = str(Path(__file__).resolve().parents[2])
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": root}},
    )
    try:
        actor_class = as_ray_actor(ray, num_cpus=0)
        config = VllmConfig(
            model=str(demo_model), served_model_name="demo", dtype="float32", quant=Quant.INT8_W8A8
        )
        actor = actor_class.remote("demo-r0", config, tmp_path, env=ENV)
        base_url = ray.get(actor.start.remote(), timeout=240)
        info = ray.get(actor.info.remote())
        assert info["base_url"] == base_url and http_health(base_url)
        reply = OpenAI(base_url=f"{base_url}/v1", api_key="unused").completions.create(
            model="demo", prompt="Old servers", max_tokens=4, temperature=0
        )
        assert reply.usage is not None and 1 <= reply.usage.completion_tokens <= 4
        log = Path(info["log"]).read_text()
        # beside the checkpoint; activations as this CPU's vLLM serves them in fp32
        variant = w8a8_dir(demo_model, symmetric_activations=symmetric_activations_run("float32"))
        assert f"model='{variant}'" in log
        assert "quantization=compressed-tensors" in log
        engine_pgid = info["pid"]
        assert len(group_members(engine_pgid)) >= 2
        ray.kill(actor)  # SIGKILLs the actor's worker process: no Python cleanup runs there
        assert _wait_gone(engine_pgid, within_s=30) == []
    finally:
        ray.shutdown()
