"""GGUF conversion of the generated demo model, checked against transformers with llama.cpp.

The converter is ours (``workers/gguf_convert.py``), so the proof is numerical: llama.cpp
(llama-cpp-python, the ``llamacpp`` extra) reading our f32 file must tokenise the chat
prompt exactly as the Hugging Face tokenizer does and produce the same logits as
transformers' ``LlamaForCausalLM`` on the original checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scheduler.domain import Quant
from scheduler.errors import EngineError
from workers.gguf_convert import (
    FTYPE_ALL_F32,
    FTYPE_MOSTLY_Q4_K_M,
    gguf_name,
    gguf_variant_path,
    make_gguf,
    permute_rope,
    write_gguf,
)
from workers.weights import gguf_summary


def test_f32_gguf_gives_transformers_tokens_and_logits(demo_model: Path, tmp_path: Path) -> None:
    from llama_cpp import Llama
    from transformers import AutoTokenizer, LlamaForCausalLM

    f32 = write_gguf(demo_model, tmp_path / "demo.f32.gguf")
    assert gguf_summary(f32) == (FTYPE_ALL_F32, {"F32": 30})  # 4 layers x 7 + embd + output

    tok = AutoTokenizer.from_pretrained(str(demo_model))
    messages = [{"role": "user", "content": "How fast are the old servers? 42 tokens/s!"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt)["input_ids"]
    model = LlamaForCausalLM.from_pretrained(str(demo_model), dtype=torch.float32)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()

    llm = Llama(model_path=str(f32), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
    try:
        # special=True: the chat markers are CONTROL tokens, parsed as one token each
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
        assert ids[0] == tok.bos_token_id and tok.convert_tokens_to_ids("<|im_end|>") in ids
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    # same numbers up to float32 summation order (logits here are of order 1)
    assert np.abs(got - expected).max() < 2e-3
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_q4_k_m_variant_is_made_once_beside_the_checkpoint(
    demo_model: Path, demo_q4_gguf: Path
) -> None:
    assert demo_q4_gguf == gguf_variant_path(demo_model, Quant.GGUF_Q4_K_M)
    assert demo_q4_gguf.name == "cunliang-demo.Q4_K_M.gguf"
    file_type, types = gguf_summary(demo_q4_gguf)
    assert file_type == FTYPE_MOSTLY_Q4_K_M
    # rows of 256 (hidden) are K-quants; ffn_down's rows of 704 fall back to 32-blocks
    assert types["Q4_K"] > sum(types.values()) / 2
    assert types["Q5_0"] + types["Q8_0"] == 4  # one ffn_down per layer
    assert set(types) <= {"Q4_K", "Q6_K", "Q5_0", "Q8_0"}
    f32_bytes = sum(p.stat().st_size for p in demo_model.glob("*.safetensors"))
    assert demo_q4_gguf.stat().st_size < f32_bytes / 4

    mtime = demo_q4_gguf.stat().st_mtime_ns
    assert make_gguf(demo_model, Quant.GGUF_Q4_K_M) == demo_q4_gguf  # cached
    assert demo_q4_gguf.stat().st_mtime_ns == mtime
    leftovers = [p.name for p in demo_model.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # temporary files were removed or renamed into place


def test_stale_or_foreign_file_at_the_target_is_replaced(demo_model: Path, tmp_path: Path) -> None:
    target = tmp_path / "demo.Q4_K_M.gguf"
    write_gguf(demo_model, target)  # an f32 file where the q4 one should be
    assert gguf_summary(target)[0] == FTYPE_ALL_F32
    make_gguf(demo_model, Quant.GGUF_Q4_K_M, target)
    assert gguf_summary(target)[0] == FTYPE_MOSTLY_Q4_K_M


def test_tensor_names_and_rope_permutation() -> None:
    assert gguf_name("model.layers.3.mlp.down_proj.weight") == "blk.3.ffn_down.weight"
    assert gguf_name("lm_head.weight") == "output.weight"
    with pytest.raises(ValueError, match=r"no llama\.cpp name"):
        gguf_name("model.layers.0.self_attn.rotary_emb.weight")
    # one head of dim 4: HF rows (x0, x1 | y0, y1) pair x_i with y_i; GGML wants them adjacent
    rows = np.arange(4)[:, None] * np.ones((1, 2))
    assert permute_rope(rows, n_head=1)[:, 0].tolist() == [0, 2, 1, 3]


def test_non_llama_or_non_gguf_formats_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(EngineError, match="only LlamaForCausalLM"):
        write_gguf(tmp_path, tmp_path / "x.gguf")
    with pytest.raises(EngineError, match="not a GGUF format"):
        gguf_variant_path(tmp_path, Quant.INT8_W8A8)
