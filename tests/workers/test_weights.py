"""The worker serves only the weights it was asked for: files checked before start,
variants made from a local checkpoint, refusals before any engine process exists."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from scheduler.domain import Quant
from scheduler.errors import EngineError
from workers.engines.llamacpp import LlamaCppConfig, LlamaCppServer
from workers.engines.vllm_server import VllmConfig, VllmServer
from workers.gguf_convert import write_gguf
from workers.proc import group_members
from workers.quantize import make_w8a8, symmetric_activations_run
from workers.weights import check_checkpoint, check_engine_log, check_gguf, prepare_weights


@pytest.fixture(scope="module")
def w8a8_model(demo_model: Path) -> Path:
    return make_w8a8(demo_model, demo_model.parent / f"{demo_model.name}-w8a8")


@pytest.fixture(scope="module")
def f32_gguf(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(demo_model, tmp_path_factory.mktemp("gguf") / "demo.f32.gguf")


def test_gguf_file_type_must_be_the_requested_one(demo_q4_gguf: Path, f32_gguf: Path) -> None:
    check_gguf(demo_q4_gguf, Quant.GGUF_Q4_K_M)
    with pytest.raises(EngineError, match=r"not gguf-q4_k_m weights: general.file_type is 0"):
        check_gguf(f32_gguf, Quant.GGUF_Q4_K_M)
    with pytest.raises(EngineError, match="not int8-w8a8 weights"):
        check_gguf(demo_q4_gguf, Quant.INT8_W8A8)


def test_unreadable_gguf_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    with pytest.raises(EngineError, match="not a readable GGUF file"):
        check_gguf(bogus, Quant.GGUF_Q4_K_M)


def test_checkpoint_quantisation_must_be_the_requested_one(
    demo_model: Path, w8a8_model: Path, tmp_path: Path
) -> None:
    check_checkpoint(demo_model, Quant.FP32)
    check_checkpoint(demo_model, Quant.BF16)  # a float dtype is the engine's choice
    check_checkpoint(w8a8_model, Quant.INT8_W8A8)
    with pytest.raises(EngineError, match="no quantization_config"):
        check_checkpoint(demo_model, Quant.INT8_W8A8)
    with pytest.raises(
        EngineError,
        match=r"not fp32 weights: quantised \(quantization_config compressed-tensors; weights int8",
    ):
        check_checkpoint(w8a8_model, Quant.FP32)
    with pytest.raises(EngineError, match="not int4-awq weights"):
        check_checkpoint(w8a8_model, Quant.INT4_AWQ)
    # compressed-tensors, but 4-bit weights (W4A16): not what W8A8 means
    w4 = tmp_path / "w4a16"
    w4.mkdir()
    config = json.loads((w8a8_model / "config.json").read_text())
    group = config["quantization_config"]["config_groups"]["group_0"]
    group["weights"]["num_bits"] = 4
    group["input_activations"] = None
    (w4 / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineError, match="weights int4, activations -"):
        check_checkpoint(w4, Quant.INT8_W8A8)


def test_prepare_makes_the_missing_variant_from_a_local_checkpoint(
    demo_model: Path, tmp_path: Path
) -> None:
    local = tmp_path / "demo"
    shutil.copytree(demo_model, local)
    made = Path(prepare_weights(str(local), Quant.INT8_W8A8, "bfloat16"))
    assert made == tmp_path / "demo-w8a8"
    assert json.loads((made / "config.json").read_text())["quantization_config"]
    # fp32 activations: symmetric ones only where vLLM's CPU kernel takes them (no AMX)
    fp32 = Path(prepare_weights(str(local), Quant.INT8_W8A8, "float32"))
    symmetric = symmetric_activations_run("float32")
    assert fp32 == (made if symmetric else tmp_path / "demo-w8a8-asym")
    groups = json.loads((fp32 / "config.json").read_text())["quantization_config"]
    assert groups["config_groups"]["group_0"]["input_activations"]["symmetric"] is symmetric
    gguf = Path(prepare_weights(str(local), Quant.GGUF_Q4_K_M))
    assert gguf == tmp_path / "demo.Q4_K_M.gguf" and gguf.is_file()
    assert prepare_weights(str(local), Quant.FP32) == str(local)
    assert prepare_weights(str(made), Quant.INT8_W8A8) == str(made)  # already the variant


def test_prepare_refuses_what_it_cannot_make_or_serve(demo_q4_gguf: Path) -> None:
    assert prepare_weights("Qwen/Qwen2.5-0.5B", Quant.FP16) == "Qwen/Qwen2.5-0.5B"  # hub id
    with pytest.raises(EngineError, match="neither a GGUF file nor a local checkpoint"):
        prepare_weights("Qwen/Qwen2.5-0.5B", Quant.GGUF_Q4_K_M)
    with pytest.raises(EngineError, match=r"a GGUF file \(served by llama\.cpp, not vLLM\)"):
        prepare_weights(str(demo_q4_gguf), Quant.FP32)


def test_engines_refuse_mismatched_weights_before_starting_a_process(
    w8a8_model: Path, f32_gguf: Path, tmp_path: Path
) -> None:
    env = dict(os.environ)
    vllm = VllmServer(
        VllmConfig(model=str(w8a8_model), served_model_name="demo", quant=Quant.FP32),
        tmp_path / "vllm.log",
        env=env,
    )
    with pytest.raises(EngineError, match="not fp32 weights"):
        vllm.start()
    llama = LlamaCppServer(
        LlamaCppConfig(model=str(f32_gguf), served_model_name="demo"), tmp_path / "l.log", env=env
    )
    with pytest.raises(EngineError, match="not gguf-q4_k_m weights"):
        llama.start()
    for server in (vllm, llama):
        assert server.pid is None and server.health()["state"] == "not started"


def test_engine_log_without_the_report_is_not_trusted() -> None:
    with pytest.raises(EngineError, match="no engine config line"):
        check_engine_log("INFO Application startup complete.", Quant.FP32, engine="vllm")
    with pytest.raises(EngineError, match="no 'file type' line"):
        check_engine_log("INFO Uvicorn running", Quant.GGUF_Q4_K_M, engine="llama.cpp")
    with pytest.raises(ValueError, match="unknown engine"):
        check_engine_log("", Quant.FP32, engine="tgi")


def test_engine_reporting_other_weights_is_stopped_before_serving(
    f32_gguf: Path, tmp_path: Path
) -> None:
    """Should a file slip past the pre-start check, llama.cpp's own report still stops it."""

    class SkipsFileCheck(LlamaCppServer):
        def _prepare(self) -> None:
            self._weights = self.config.model  # serve the f32 file as if it were q4

    server = SkipsFileCheck(
        LlamaCppConfig(model=str(f32_gguf), served_model_name="demo"),
        tmp_path / "engine.log",
        env=dict(os.environ),
    )
    with pytest.raises(EngineError, match=r"the weights llama\.cpp loaded is not gguf-q4_k_m"):
        server.start()
    assert server.health()["state"] == "stopped"
    assert server.pid is not None and group_members(server.pid) == []
