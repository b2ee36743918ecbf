from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from workers.demo_model import (
    BOS,
    IM_END,
    IM_START,
    MANIFEST,
    ensure_demo_model,
    generate_llama,
    manifest_digest,
)

TINY = {"hidden": 64, "layers": 1, "heads": 1, "vocab_size": 1024, "max_position": 128}


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_same_parameters_give_identical_files(tmp_path: Path) -> None:
    first = generate_llama(tmp_path / "a", **TINY)  # type: ignore[arg-type]
    second = generate_llama(tmp_path / "b", **TINY)  # type: ignore[arg-type]
    assert _files(first) == _files(second)
    assert {"model.safetensors", "config.json", "tokenizer.json", MANIFEST} <= set(_files(first))
    other_seed = generate_llama(tmp_path / "c", **{**TINY, "seed": 1})  # type: ignore[arg-type]
    assert (first / "model.safetensors").read_bytes() != (
        other_seed / "model.safetensors"
    ).read_bytes()


def test_cache_hit_returns_without_rewriting_and_new_params_regenerate(tmp_path: Path) -> None:
    out = tmp_path / "m"
    stages: list[str] = []
    generate_llama(out, **TINY)  # type: ignore[arg-type]
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    generate_llama(out, progress=lambda stage, _f: stages.append(stage), **TINY)  # type: ignore[arg-type]
    assert time.perf_counter() - start < 0.5
    assert stages == ["cached"]
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime

    generate_llama(out, **{**TINY, "layers": 2})  # type: ignore[arg-type]
    assert AutoConfig.from_pretrained(str(out)).num_hidden_layers == 2
    assert json.loads((out / MANIFEST).read_text())["params"]["layers"] == 2


def test_truncated_weights_are_not_a_cache_hit(tmp_path: Path) -> None:
    out = generate_llama(tmp_path / "m", **TINY)  # type: ignore[arg-type]
    digest = manifest_digest(out)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    generate_llama(out, **TINY)  # type: ignore[arg-type]
    assert weights.stat().st_size > 100
    assert manifest_digest(out) == digest
    assert not list(tmp_path.glob(".m.*")), "temporary build directory left behind"


def test_invalid_shapes_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of heads"):
        generate_llama(tmp_path / "x", hidden=100, heads=3)
    with pytest.raises(ValueError, match="kv_heads"):
        generate_llama(tmp_path / "x", hidden=256, heads=4, kv_heads=3)
    assert not (tmp_path / "x").exists()


def test_demo_tokenizer_has_chat_template_and_round_trips(demo_data_dir: Path) -> None:
    model = ensure_demo_model(demo_data_dir)
    tok = AutoTokenizer.from_pretrained(str(model))
    config = AutoConfig.from_pretrained(str(model))
    assert len(tok) == config.vocab_size == 4096
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (256, 4, 4)
    text = "The quick brown fox serves 42 tokens to the tenant, naïvely: 存量!"
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    # trained on English: common words are single tokens, not bytes
    assert tok.tokenize(" the server") == ["Ġthe", "Ġserver"]
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == f"{BOS}{IM_START}user\nHello{IM_END}\n{IM_START}assistant\n"
    assert tok.bos_token == BOS and tok.eos_token is not None
    assert "chat_template" in json.loads((model / "tokenizer_config.json").read_text())
