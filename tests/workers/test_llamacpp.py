"""llama.cpp engine: the server command and environment, and the real server.

llama-cpp-python is the optional extra ``llamacpp`` that ``make test`` installs (a cached
wheel, scripts/llamacpp-wheel.sh). The real tests serve the demo model's GGUF Q4_K_M
(made by workers/gguf_convert.py) and call it with the openai client: chat, streaming,
and a replica planned on a pre-Volta GPU (faked at the NVML boundary) that the runtime's
actor arguments turn into a llama.cpp worker. Where the package is missing, starting the
server must fail fast with the log tail and the install hint."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from scheduler.domain import DeviceKind, Engine, Quant, Replica
from scheduler.errors import EngineError, NotFound
from scheduler.runtime.load import in_flight_from_metrics
from tests.workers.test_llamacpp_serve import page_samples
from workers.engines.base import Engine as EngineProtocol
from workers.engines.llamacpp import (
    LlamaCppConfig,
    LlamaCppServer,
    available,
    gpu_layers,
    llamacpp_command,
    llamacpp_env,
)
from workers.proc import group_members
from workers.weights import check_engine_log


def _cfg(**kw: object) -> LlamaCppConfig:
    return LlamaCppConfig(model="/m/demo.Q4_K_M.gguf", served_model_name="demo", **kw)  # type: ignore[arg-type]


def test_command_for_a_cpu_server() -> None:
    argv = llamacpp_command(_cfg(port=8123, threads=2, max_model_len=256), python="py")
    assert argv[:3] == ["py", "-m", "workers.llamacpp_serve"]
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert flags == {
        "--model": "/m/demo.Q4_K_M.gguf",
        "--model_alias": "demo",
        "--host": "127.0.0.1",
        "--port": "8123",
        "--n_ctx": "256",
        "--n_batch": "512",
        "--n_gpu_layers": "0",
        "--n_threads": "2",
    }


def test_gpu_offloads_every_layer_unless_told() -> None:
    assert gpu_layers(_cfg(device=DeviceKind.GPU)) == -1
    assert gpu_layers(_cfg(device=DeviceKind.GPU, gpu_layers=20)) == 20
    assert gpu_layers(_cfg(device=DeviceKind.CPU, gpu_layers=20)) == 0


def test_cpu_server_sees_no_gpu() -> None:
    assert llamacpp_env(_cfg(), {"A": "1"}) == {"A": "1", "CUDA_VISIBLE_DEVICES": ""}
    assert "CUDA_VISIBLE_DEVICES" not in llamacpp_env(_cfg(device=DeviceKind.GPU), {})


def test_refuses_weights_that_are_not_gguf() -> None:
    with pytest.raises(EngineError, match="GGUF"):
        llamacpp_command(LlamaCppConfig(model="/m/hf-dir", served_model_name="demo"))


def test_missing_package_fails_fast_with_the_log_and_the_hint(
    demo_q4_gguf: Path, tmp_path: Path
) -> None:
    # an interpreter without site-packages stands for a machine without the extra
    bare_python = tmp_path / "python-without-site-packages"
    bare_python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    bare_python.chmod(0o755)
    config = LlamaCppConfig(model=str(demo_q4_gguf), served_model_name="demo")
    server = LlamaCppServer(
        config, tmp_path / "engine.log", env=os.environ, start_timeout_s=60, python=str(bare_python)
    )
    started = time.monotonic()
    with pytest.raises(EngineError) as err:
        server.start()
    assert time.monotonic() - started < 30
    assert "No module named 'llama_cpp'" in str(err.value)
    assert "llamacpp" in (err.value.fix or "")
    assert server.health()["state"] == "stopped" and not server.ready()


def test_serves_the_q4_gguf_chat_and_stream_and_stops_without_orphans(
    demo_q4_gguf: Path, exact_length_bias: dict[str, int], tmp_path: Path
) -> None:
    assert available()
    config = LlamaCppConfig(
        model=str(demo_q4_gguf), served_model_name="demo", max_model_len=256, threads=2
    )
    server = LlamaCppServer(config, tmp_path / "engine.log", env=os.environ, start_timeout_s=120)
    assert isinstance(server, EngineProtocol)
    try:
        base_url = server.start()
        assert server.health()["state"] == "ready"
        client = OpenAI(base_url=f"{base_url}/v1", api_key="unused")
        assert [m.id for m in client.models.list().data] == ["demo"]
        messages: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": "Say hello to the data centre."}
        ]
        reply = client.chat.completions.create(
            model="demo",
            messages=messages,
            max_tokens=8,
            temperature=0,
            logit_bias=exact_length_bias,
        )
        usage = reply.usage
        assert usage is not None and usage.completion_tokens == 8
        # the GGUF's chat template: bos + <|im_start|>user ... <|im_start|>assistant
        assert usage.prompt_tokens > 7
        assert reply.choices[0].finish_reason == "length"
        stream = client.chat.completions.create(
            model="demo",
            messages=messages,
            max_tokens=8,
            temperature=0,
            logit_bias=exact_length_bias,
            stream=True,
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        # greedy decoding: the stream says what the non-streamed reply said
        assert text == reply.choices[0].message.content
        assert chunks[-1].choices[0].finish_reason == "length"
        # the server's own /metrics: both answers counted, nothing in flight now
        page = httpx.get(f"{base_url}/metrics", timeout=10).text
        samples = page_samples(page.encode())
        assert samples['llamacpp:num_requests_running{model_name="demo"}'] == 0
        ok = 'llamacpp:requests_total{model_name="demo",path="/v1/chat/completions",status="200"}'
        assert samples[ok] == 2
        assert samples['llamacpp:prompt_tokens_total{model_name="demo"}'] == usage.prompt_tokens
        # 8 from the answer's usage, one per content event of the stream
        streamed = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
        assert samples['llamacpp:generation_tokens_total{model_name="demo"}'] == 8 + streamed
        assert in_flight_from_metrics(page) == 0
    finally:
        pgid = server.pid
        server.stop()
    assert pgid is not None and group_members(pgid) == []
    log = (tmp_path / "engine.log").read_text()
    check_engine_log(log, Quant.GGUF_Q4_K_M, engine="llama.cpp")  # what start() verified
    with pytest.raises(EngineError, match="not int8-w8a8 weights: file type Q4_K - Medium"):
        check_engine_log(log, Quant.INT8_W8A8, engine="llama.cpp")


def test_a_pre_volta_gpu_replica_is_planned_on_llama_cpp_and_serves(
    demo_model: Path, demo_q4_gguf: Path, exact_length_bias: dict[str, int], tmp_path: Path
) -> None:
    """NVML (faked) reports a Tesla P40 (sm61): the plan's q4 replica gets llama.cpp, and
    the runtime's actor arguments serve it from the demo checkpoint's converted GGUF."""
    from scheduler.catalog import arch_from_hf_config
    from scheduler.domain import Demand, DeviceClass, Fleet, ModelSpec, Site
    from scheduler.placement import plan
    from scheduler.runtime.actors import vllm_actor_args
    from scheduler.settings import Settings
    from tests.fakes.nvml import two_t4_and_a_p40
    from workers.actor import ReplicaActor
    from workers.hardware import detect_gpus, gpu_device_spec

    gpus, _status = detect_gpus(two_t4_and_a_p40())
    p40 = next(gpu_device_spec(g) for g in gpus if g.name == "Tesla P40")
    site = Site("old", "local")
    fleet = Fleet((site,), (DeviceClass("old/tesla-p40", site, p40, count=1),))
    arch = arch_from_hf_config(json.loads((demo_model / "config.json").read_text()), "demo")
    quants = (Quant.FP16, Quant.GGUF_Q4_K_M)  # fp16 needs vLLM, which needs sm70+
    spec = ModelSpec("demo", str(demo_model), arch, allowed_quants=quants)
    result = plan(fleet, [Demand("demo", 1.0, 64, 16)], {"demo": spec})
    (replica,) = result.replicas
    assert (replica.quant, replica.engine) == (Quant.GGUF_Q4_K_M, Engine.LLAMA_CPP)

    build = vllm_actor_args(Settings(data_dir=tmp_path, max_model_len=256), lambda: {"demo": spec})
    args, kwargs = build("demo-r0", replica)
    actor = ReplicaActor(*args, **kwargs)
    try:
        base_url = actor.start()
        assert actor.health()["healthy"]
        reply = OpenAI(base_url=f"{base_url}/v1", api_key="unused").chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            logit_bias=exact_length_bias,
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 4
        info = actor.info()
        assert info["config"]["quant"] == "gguf-q4_k_m" and info["replica"]["engine"] == "llama.cpp"
    finally:
        actor.stop()
    # the worker served the cached variant made beside the checkpoint, and said so
    assert f"--model {demo_q4_gguf}" in " ".join(actor._engine.command())  # type: ignore[attr-defined]
    assert "file type   = Q4_K - Medium" in actor.log_path.read_text()


def _demo_arch() -> Any:
    from scheduler.catalog import arch_from_hf_config

    return arch_from_hf_config(
        {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 512,
         "vocab_size": 1000, "max_position_embeddings": 512},
        "demo",
    )  # fmt: skip


def test_actor_args_pick_the_gguf_variant(tmp_path: Path) -> None:
    from scheduler.domain import ModelSpec
    from scheduler.runtime.actors import vllm_actor_args
    from scheduler.settings import Settings

    arch = _demo_arch()
    gguf = str(tmp_path / "demo.Q4_K_M.gguf")
    spec = ModelSpec("demo", "/m/hf", arch, variant_sources={Quant.GGUF_Q4_K_M: gguf})
    build = vllm_actor_args(Settings(data_dir=tmp_path), lambda: {"demo": spec})
    replica = Replica("demo", Quant.GGUF_Q4_K_M, "old/tesla-p40", Engine.LLAMA_CPP)
    (_rid, config, _logs), kwargs = build("r0", replica)
    assert isinstance(config, LlamaCppConfig) and config.model == gguf
    assert config.quant is Quant.GGUF_Q4_K_M
    engine = kwargs["engine_factory"](config, tmp_path / "log", {})
    assert isinstance(engine, LlamaCppServer) and engine.command()[1:3] == [
        "-m",
        "workers.llamacpp_serve",
    ]
    # no registered GGUF: the worker converts the model's own checkpoint on start
    bare = ModelSpec("demo", "/m/hf", arch)
    (_rid, config, _logs), _ = vllm_actor_args(Settings(data_dir=tmp_path), lambda: {"demo": bare})(
        "r1", replica
    )
    assert config.model == "/m/hf" and config.quant is Quant.GGUF_Q4_K_M
    with pytest.raises(NotFound, match="not registered"):
        vllm_actor_args(Settings(data_dir=tmp_path), lambda: {})("r2", replica)


def test_engines_on_other_machines_get_engine_settings_not_the_heads_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The actor arguments carry VLLM_/HF_/OMP_... settings only; the engine's environment
    is the node's own (PATH, HOME, secrets stay local) with those on top."""
    from scheduler.domain import ModelSpec
    from scheduler.runtime.actors import vllm_actor_args
    from scheduler.settings import Settings
    from workers.actor import node_env

    monkeypatch.setenv("CUNLIANG_ADMIN_TOKEN", "head-secret")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    arch = _demo_arch()
    spec = ModelSpec("demo", "/m/hf", arch)
    build = vllm_actor_args(Settings(data_dir=tmp_path), lambda: {"demo": spec})
    for replica in (
        Replica("demo", Quant.FP32, "cpu/epyc", Engine.VLLM_CPU),
        Replica("demo", Quant.GGUF_Q4_K_M, "old/tesla-p40", Engine.LLAMA_CPP),
    ):
        _args, kwargs = build("r0", replica)
        shipped = kwargs["env"]
        assert shipped["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
        assert shipped["HF_HUB_OFFLINE"] == "1" and shipped["OMP_NUM_THREADS"] == "1"
        assert not {"CUNLIANG_ADMIN_TOKEN", "PATH", "HOME"} & set(shipped), replica.engine
    # on the worker's machine (here: a different PATH), the node's variables win except
    # for the shipped overrides
    monkeypatch.setenv("PATH", "/node/bin:/usr/bin")
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    env = node_env({"OMP_NUM_THREADS": "1"})
    assert env["PATH"] == "/node/bin:/usr/bin" and env["OMP_NUM_THREADS"] == "1"
