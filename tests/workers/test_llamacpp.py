"""llama.cpp engine: the server command and environment, and the real start path.

llama-cpp-python is an optional extra that compiles llama.cpp at install; where it is
not installed (CI here), starting the server must fail fast with the log tail and the
install hint, not hang until the start timeout."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from scheduler.domain import DeviceKind, Engine, Quant, Replica
from scheduler.errors import EngineError, NotFound
from workers.engines.llamacpp import (
    LlamaCppConfig,
    LlamaCppServer,
    available,
    gpu_layers,
    llamacpp_command,
    llamacpp_env,
)


def _cfg(**kw: object) -> LlamaCppConfig:
    return LlamaCppConfig(model="/m/demo.Q4_K_M.gguf", served_model_name="demo", **kw)  # type: ignore[arg-type]


def test_command_for_a_cpu_server() -> None:
    argv = llamacpp_command(_cfg(port=8123, threads=2, max_model_len=256), python="py")
    assert argv[:3] == ["py", "-m", "llama_cpp.server"]
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


@pytest.mark.skipif(available(), reason="llama-cpp-python is installed here")
def test_missing_package_fails_fast_with_the_log_and_the_hint(tmp_path: Path) -> None:
    server = LlamaCppServer(_cfg(), tmp_path / "engine.log", env=os.environ, start_timeout_s=60)
    started = time.monotonic()
    with pytest.raises(EngineError) as err:
        server.start()
    assert time.monotonic() - started < 30
    assert "No module named 'llama_cpp'" in str(err.value)
    assert "llamacpp" in (err.value.fix or "")
    assert server.health()["state"] == "stopped" and not server.ready()


def test_actor_args_pick_the_gguf_variant(tmp_path: Path) -> None:
    from scheduler.catalog import arch_from_hf_config
    from scheduler.domain import ModelSpec
    from scheduler.runtime.actors import vllm_actor_args
    from scheduler.settings import Settings

    arch = arch_from_hf_config(
        {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 512,
         "vocab_size": 1000, "max_position_embeddings": 512},
        "demo",
    )  # fmt: skip
    gguf = str(tmp_path / "demo.Q4_K_M.gguf")
    spec = ModelSpec("demo", "/m/hf", arch, variant_sources={Quant.GGUF_Q4_K_M: gguf})
    build = vllm_actor_args(Settings(data_dir=tmp_path), lambda: {"demo": spec})
    replica = Replica("demo", Quant.GGUF_Q4_K_M, "old/tesla-p40", Engine.LLAMA_CPP)
    (_rid, config, _logs), kwargs = build("r0", replica)
    assert isinstance(config, LlamaCppConfig) and config.model == gguf
    engine = kwargs["engine_factory"](config, tmp_path / "log")
    assert isinstance(engine, LlamaCppServer) and engine.command()[1:3] == [
        "-m",
        "llama_cpp.server",
    ]
    bare = ModelSpec("demo", "/m/hf", arch)
    with pytest.raises(NotFound, match="GGUF"):
        vllm_actor_args(Settings(data_dir=tmp_path), lambda: {"demo": bare})("r1", replica)
