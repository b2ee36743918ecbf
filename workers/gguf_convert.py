"""GGUF weights for llama.cpp, made from a local Llama checkpoint (the generated demo model).

No GGUF file can be downloaded here, so cunliang writes its own:

1. :func:`write_gguf` turns a Hugging Face ``LlamaForCausalLM`` directory (safetensors,
   ``config.json``, a byte-level BPE ``tokenizer.json`` with a chat template) into a
   full-precision GGUF with the ``gguf`` package: llama hyper-parameters, the whole
   vocabulary (special tokens typed CONTROL so llama.cpp parses them in chat prompts),
   merges, bos/eos/eot ids and the chat template; tensors renamed to llama.cpp's names,
   with q/k rows permuted from Hugging Face's rotate-half RoPE layout to GGML's
   interleaved one (what llama.cpp's ``convert_hf_to_gguf.py`` does for Llama).
2. :func:`quantize_gguf` runs llama.cpp's own quantiser (``llama_model_quantize`` through
   llama-cpp-python, the optional extra ``llamacpp``) on that file.

Q4_K_M on the demo model: K-quants pack rows in super-blocks of 256 weights, so every
tensor whose row length (GGML's ``ne[0]``, the input dimension) is a multiple of 256 gets
Q4_K/Q6_K: embeddings, attention, gate/up (hidden 256). ``ffn_down``'s rows are the
intermediate size, 704, which is not: llama.cpp falls back for those to the 32-block
formats (Q5_0 for Q4_K, Q8_0 for Q6_K). The file type stays ``MOSTLY_Q4_K_M``, which is
what :mod:`workers.weights` checks. Q4_0 (32-blocks everywhere) would avoid the fallback,
but cunliang's catalogue and perf model speak of q4_k_m, the format operators ship.

:func:`make_gguf` is the cached entry point: the source digest and the converter version
are stored as ``cunliang.*`` keys in the GGUF itself (llama.cpp's quantiser copies them
into its output), so a matching file is returned at once; files are written beside the
target and renamed into place, never left half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scheduler.domain import Quant
from scheduler.errors import EngineError
from workers.demo_model import manifest_digest

CONVERTER_VERSION = 1
KEY_SOURCE = "cunliang.source_digest"
KEY_CONVERTER = "cunliang.converter_version"

# llama.cpp's file types (enum llama_ftype; gguf.LlamaFileType has the same numbers)
FTYPE_ALL_F32 = 0
FTYPE_MOSTLY_F16 = 1
FTYPE_MOSTLY_Q4_K_M = 15
# the GGUF file type each cunliang weight format is, and its file-name suffix
GGUF_FILE_TYPES: dict[Quant, int] = {Quant.GGUF_Q4_K_M: FTYPE_MOSTLY_Q4_K_M}
_SUFFIX: dict[Quant, str] = {Quant.GGUF_Q4_K_M: "Q4_K_M"}

# Hugging Face Llama tensor names -> llama.cpp's (per layer: "{}" is the block index)
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name of a Hugging Face Llama tensor; ValueError for unknown tensors."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    parts = hf_name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER_NAMES:
        return f"blk.{int(parts[2])}.{_LAYER_NAMES[parts[3]]}"
    raise ValueError(f"no llama.cpp name for tensor {hf_name!r}")


def permute_rope(weight: Any, n_head: int) -> Any:
    """q/k rows from Hugging Face's rotate-half layout to GGML's interleaved pairs.

    Per head, HF keeps the two halves of each rotated pair ``head_dim / 2`` rows apart;
    llama.cpp's ``rope`` (normal mode) expects them adjacent.
    """
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def gguf_variant_path(src_dir: Path, quant: Quant) -> Path:
    """Where the ``quant`` GGUF of the checkpoint in ``src_dir`` lives: beside it."""
    if quant not in _SUFFIX:
        raise EngineError(f"{quant} is not a GGUF format", fix="ask for gguf-q4_k_m")
    return src_dir.parent / f"{src_dir.name}.{_SUFFIX[quant]}.gguf"


def _config(src_dir: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((src_dir / "config.json").read_text("utf-8"))
    if "LlamaForCausalLM" not in config.get("architectures", []):
        raise EngineError(
            f"{src_dir}: only LlamaForCausalLM checkpoints are converted to GGUF here "
            f"(architectures: {config.get('architectures')})",
            fix="convert other architectures with llama.cpp's convert_hf_to_gguf.py",
        )
    return config


def _rope_theta(config: dict[str, Any]) -> float:
    # transformers >= 5 nests it under rope_parameters; older configs have it top-level
    nested = config.get("rope_parameters") or {}
    return float(nested.get("rope_theta", config.get("rope_theta", 10000.0)))


def _vocab(src_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings by id and their GGUF token types (1 normal, 3 control, 5 unused)."""
    tok = json.loads((src_dir / "tokenizer.json").read_text("utf-8"))
    model = tok.get("model", {})
    if model.get("type") != "BPE" or (tok.get("decoder") or {}).get("type") != "ByteLevel":
        raise EngineError(
            f"{src_dir}: the tokenizer is not a byte-level BPE (GPT-2 style)",
            fix="convert this model with llama.cpp's convert_hf_to_gguf.py",
        )
    tokens: list[str | None] = [None] * vocab_size
    types = [1] * vocab_size
    for text, index in model["vocab"].items():
        if index < vocab_size:
            tokens[index] = text
    for added in tok.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = 3 if added.get("special") else 4
    for index, text in enumerate(tokens):
        if text is None:  # ids the tokenizer never emits: placeholders, as llama.cpp does
            tokens[index] = f"[PAD{index}]"
            types[index] = 5
    return [t for t in tokens if t is not None], types


def _tensors(src_dir: Path) -> Iterator[tuple[str, Any]]:
    """(name, float32 numpy array) for every tensor of the checkpoint's safetensors."""
    import torch
    from safetensors import safe_open

    shards = sorted(src_dir.glob("*.safetensors"))
    if not shards:
        raise EngineError(f"{src_dir}: no safetensors weights", fix="save the model as safetensors")
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, f.get_tensor(name).to(torch.float32).numpy()


def write_gguf(src_dir: Path, out_path: Path, *, outtype: str = "f32") -> Path:
    """Write the checkpoint in ``src_dir`` as a GGUF (``f32`` or ``f16``) at ``out_path``."""
    import gguf
    import numpy as np

    if outtype not in ("f32", "f16"):
        raise ValueError(f"outtype must be f32 or f16, not {outtype!r}")
    config = _config(src_dir)
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    vocab_size = int(config["vocab_size"])

    writer = gguf.GGUFWriter(str(out_path), arch="llama")
    writer.add_name(src_dir.name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(vocab_size)
    writer.add_file_type(FTYPE_ALL_F32 if outtype == "f32" else FTYPE_MOSTLY_F16)
    writer.add_string(KEY_SOURCE, manifest_digest(src_dir))
    writer.add_uint32(KEY_CONVERTER, CONVERTER_VERSION)

    tokens, types = _vocab(src_dir, vocab_size)
    writer.add_tokenizer_model("gpt2")
    # the demo tokenizer's ByteLevel pre-tokenizer splits with GPT-2's regex
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(src_dir, load_merges=True, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)
    # the chat template writes the bos token itself; the tokenizer adds nothing (as in HF)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    eos = special.special_token_ids.get("eos")
    stop_ids = _generation_eos(src_dir)
    others = [i for i in stop_ids if i != eos]
    if others:  # e.g. <|im_end|>: ends a chat turn
        writer.add_eot_token_id(others[0])

    for name, array in _tensors(src_dir):
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name.endswith("q_proj.weight"):
            array = permute_rope(array, n_head)
        elif name.endswith("k_proj.weight"):
            array = permute_rope(array, n_kv)
        if outtype == "f16" and array.ndim == 2:
            array = array.astype(np.float16)
        writer.add_tensor(gguf_name(name), np.ascontiguousarray(array))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _generation_eos(src_dir: Path) -> list[int]:
    try:
        gen = json.loads((src_dir / "generation_config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return []
    eos = gen.get("eos_token_id")
    return [int(i) for i in (eos if isinstance(eos, list) else [eos] if eos is not None else [])]


def quantize_gguf(src: Path, out: Path, quant: Quant, threads: int | None = None) -> Path:
    """llama.cpp's quantiser: ``src`` (f32/f16 GGUF) -> ``out`` in ``quant``'s file type."""
    if quant not in GGUF_FILE_TYPES:
        raise EngineError(f"{quant} is not a GGUF format", fix="ask for gguf-q4_k_m")
    try:
        import llama_cpp
    except ImportError as err:
        raise EngineError(
            f"quantising to {quant} needs llama-cpp-python: {err}",
            fix="pip install 'cunliang[llamacpp]' (make test installs it)",
        ) from err
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = GGUF_FILE_TYPES[quant]
    params.nthread = threads or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params)
    if rc != 0:
        raise EngineError(f"llama.cpp could not quantise {src} to {quant} (code {rc})")
    return out


def read_cache_keys(path: Path) -> dict[str, Any]:
    """general.file_type and the cunliang.* keys of a GGUF ({} when unreadable)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for key in ("general.file_type", KEY_SOURCE, KEY_CONVERTER):
        field = reader.get_field(key)
        if field is not None:
            out[key] = field.contents()
    return out


def make_gguf(src_dir: Path, quant: Quant, out_path: Path | None = None) -> Path:
    """The ``quant`` GGUF of the checkpoint in ``src_dir`` (made once, then cached).

    Returns at once when ``out_path`` (default :func:`gguf_variant_path`) was made by this
    converter version from these exact files.
    """
    src_dir = Path(src_dir)
    out = Path(out_path) if out_path is not None else gguf_variant_path(src_dir, quant)
    want = {
        "general.file_type": GGUF_FILE_TYPES.get(quant),
        KEY_SOURCE: manifest_digest(src_dir),
        KEY_CONVERTER: CONVERTER_VERSION,
    }
    if out.is_file() and read_cache_keys(out) == want:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, full = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".f32", dir=out.parent)
    os.close(fd)
    quantised = Path(full).with_suffix(".part")
    try:
        write_gguf(src_dir, Path(full))
        quantize_gguf(Path(full), quantised, quant)
        quantised.chmod(0o644)
        quantised.rename(out)
    finally:
        for leftover in (Path(full), quantised):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return out
