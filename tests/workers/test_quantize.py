from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from workers.demo_model import generate_llama
from workers.quantize import make_w8a8


def test_w8a8_variant_is_int8_per_channel_and_close_to_the_original(tmp_path: Path) -> None:
    src = generate_llama(tmp_path / "fp32", hidden=64, layers=1, heads=1, vocab_size=1024)
    out = make_w8a8(src, tmp_path / "w8a8")
    original = load_file(str(src / "model.safetensors"))
    quant = load_file(str(out / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert quant[name].dtype is torch.int8 and quant[name].shape == original[name].shape
    scale = quant[name.replace("weight", "weight_scale")]
    assert scale.shape == (64, 1) and scale.dtype is torch.float32
    restored = quant[name].to(torch.float32) * scale
    # rounding error is at most half a step per weight
    assert torch.all((restored - original[name]).abs() <= scale / 2 + 1e-7)
    assert quant[name].abs().max() == 127  # the largest weight of each row maps to +-127
    # embeddings, norms and lm_head stay float
    assert quant["lm_head.weight"].dtype is torch.float32
    assert torch.equal(quant["model.norm.weight"], original["model.norm.weight"])
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()

    mtime = (out / "model.safetensors").stat().st_mtime_ns
    make_w8a8(src, tmp_path / "w8a8")  # cached
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
