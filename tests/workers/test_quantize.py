from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from workers.demo_model import generate_llama
from workers.quantize import make_w8a8, symmetric_activations_run


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


def test_asymmetric_activations_variant_for_kernels_that_need_it(tmp_path: Path) -> None:
    """Where vLLM's kernel for symmetric int8 activations cannot take the activations'
    dtype (AMX CPUs, fp32), the variant quantises activations with a zero point per token:
    the same int8 weights, its own cache key."""
    src = generate_llama(tmp_path / "fp32", hidden=64, layers=1, heads=1, vocab_size=1024)
    sym = make_w8a8(src, tmp_path / "w8a8")
    asym = make_w8a8(src, tmp_path / "w8a8", symmetric_activations=False)  # not the cache
    group = json.loads((asym / "config.json").read_text())["quantization_config"]
    group = group["config_groups"]["group_0"]
    assert group["input_activations"]["symmetric"] is False
    assert group["input_activations"]["dynamic"] is True
    assert group["weights"]["symmetric"] is True
    assert asym == sym  # rewritten in place: the manifest's key told them apart
    for dtype in ("bfloat16", "float16"):  # every CPU kernel takes half activations
        assert symmetric_activations_run(dtype)
