"""Which weights a replica serves: made for its quantisation, and checked to be that one.

The planner asks for a model variant (``Quant``); a worker must not serve something
else under that name (e.g. fp32 weights where int8 was planned: the perf model, the
cost and the memory budget would all be wrong). Two checks, both before any request:

* the files, before the engine starts: a GGUF's ``general.file_type`` and its tensor
  types (:func:`check_gguf`); a Hugging Face directory's ``quantization_config``
  (:func:`check_checkpoint`: compressed-tensors int8 weights and activations for
  W8A8, none for the float formats);
* the engine's own report once it is up: vLLM logs its engine config
  (``quantization=compressed-tensors``), llama.cpp its loader summary
  (``file type = Q4_K - Medium``) (:func:`check_engine_log`).

:func:`prepare_weights` also makes a variant the operator did not ship, from a local
checkpoint: the int8 W8A8 copy (:mod:`workers.quantize`) or the GGUF
(:mod:`workers.gguf_convert`), each cached beside the source.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from scheduler.domain import Quant
from scheduler.errors import EngineError

FLOAT_QUANTS = frozenset({Quant.FP32, Quant.BF16, Quant.FP16})
# what llama.cpp's loader prints for each GGUF file type (llama_model_ftype_name)
_LLAMACPP_FTYPE_NAME: dict[Quant, str] = {Quant.GGUF_Q4_K_M: "Q4_K - Medium"}
# tensor types a file of this format is mostly made of (K-quant mixes: Q4_K plus Q6_K
# for some tensors, and 32-block fallbacks where rows are not multiples of 256)
_GGUF_MAIN_TYPE: dict[Quant, str] = {Quant.GGUF_Q4_K_M: "Q4_K"}
# vLLM's ``quantization=`` for each format (None: unquantised); Marlin variants on GPUs
_VLLM_QUANTIZATION: dict[Quant, frozenset[str | None]] = {
    Quant.FP32: frozenset({None}),
    Quant.BF16: frozenset({None}),
    Quant.FP16: frozenset({None}),
    Quant.INT8_W8A8: frozenset({"compressed-tensors"}),
    Quant.INT4_AWQ: frozenset({"awq", "awq_marlin"}),
    Quant.INT4_GPTQ: frozenset({"gptq", "gptq_marlin"}),
}


def _mismatch(what: str, quant: Quant, found: str) -> EngineError:
    return EngineError(
        f"{what} is not {quant} weights: {found}",
        fix=f"register weights in {quant} as the model's variant source, or plan another quant",
    )


def gguf_summary(path: Path) -> tuple[int | None, Counter[str]]:
    """(general.file_type, count of each type among the 2-D weight tensors) of a GGUF."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as err:
        raise EngineError(f"{path} is not a readable GGUF file: {err}") from err
    field = reader.get_field("general.file_type")
    file_type = int(field.contents()) if field is not None else None
    types = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) == 2)
    return file_type, types


def check_gguf(path: Path, quant: Quant) -> None:
    """Raise EngineError unless the GGUF at ``path`` is a ``quant`` file."""
    from workers.gguf_convert import GGUF_FILE_TYPES

    if quant not in GGUF_FILE_TYPES:
        raise _mismatch(str(path), quant, "a GGUF file; llama.cpp serves only GGUF formats")
    file_type, types = gguf_summary(path)
    listed = ", ".join(f"{n} {name}" for name, n in types.most_common()) or "no 2-D tensors"
    if file_type != GGUF_FILE_TYPES[quant]:
        raise _mismatch(str(path), quant, f"general.file_type is {file_type} ({listed})")
    main = _GGUF_MAIN_TYPE[quant]
    if types[main] * 2 < sum(types.values()):
        raise _mismatch(str(path), quant, f"too few {main} tensors ({listed})")


def check_checkpoint(model_dir: Path, quant: Quant) -> None:
    """Raise EngineError unless the Hugging Face directory holds ``quant`` weights.

    W8A8 needs compressed-tensors with 8-bit int weights and input activations; the
    float formats need no ``quantization_config`` (vLLM casts between float dtypes).
    """
    try:
        config = json.loads((model_dir / "config.json").read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise EngineError(f"{model_dir}: no readable config.json ({err})") from err
    qc = config.get("quantization_config")
    if quant in FLOAT_QUANTS:
        if qc is not None:
            raise _mismatch(str(model_dir), quant, f"quantised ({_describe(qc)})")
        return
    if qc is None:
        raise _mismatch(str(model_dir), quant, "no quantization_config (float weights)")
    if quant is Quant.INT8_W8A8:
        if not _is_w8a8(qc):
            raise _mismatch(str(model_dir), quant, _describe(qc))
        return
    method = {Quant.INT4_AWQ: "awq", Quant.INT4_GPTQ: "gptq"}.get(quant)
    if qc.get("quant_method") != method or int(qc.get("bits", 0)) != 4:
        raise _mismatch(str(model_dir), quant, _describe(qc))


def _is_w8a8(qc: dict[str, Any]) -> bool:
    if qc.get("quant_method") != "compressed-tensors":
        return False
    groups = list((qc.get("config_groups") or {}).values())
    return bool(groups) and all(
        _int_bits(g.get("weights")) == 8 and _int_bits(g.get("input_activations")) == 8
        for g in groups
    )


def _int_bits(args: Any) -> int | None:
    if not isinstance(args, dict) or args.get("type") != "int":
        return None
    return int(args.get("num_bits", 0))


def _describe(qc: Any) -> str:
    if not isinstance(qc, dict):
        return f"quantization_config {qc!r}"
    parts = [str(qc.get("quant_method", "?"))]
    for group in (qc.get("config_groups") or {}).values():
        w, a = group.get("weights") or {}, group.get("input_activations") or {}
        parts.append(
            f"weights {w.get('type', '?')}{w.get('num_bits', '?')}, "
            f"activations {a.get('type', '-')}{a.get('num_bits', '')}"
        )
    if "bits" in qc:
        parts.append(f"{qc['bits']} bits")
    return "quantization_config " + "; ".join(parts)


_VLLM_CONFIG = re.compile(r"Initializing a V1 LLM engine .* with config: .*?quantization=([^,]+),")
_LLAMACPP_FTYPE = re.compile(r"file type\s*=\s*(.+?)\s*$", re.MULTILINE)


def check_engine_log(log_text: str, quant: Quant, *, engine: str) -> None:
    """Raise EngineError unless the engine's start-up log reports ``quant`` weights.

    ``engine`` is ``"vllm"`` (its engine config line) or ``"llama.cpp"`` (the loader's
    file-type line). A log without the line is an error too: the engine did not say.
    """
    if engine == "vllm":
        found = _VLLM_CONFIG.findall(log_text)
        if not found:
            raise EngineError(
                "vLLM's log has no engine config line: cannot tell which weights it loaded",
                fix="check the vLLM version's log format (workers/weights.py)",
            )
        value: str | None = None if found[-1] == "None" else found[-1]
        if value not in _VLLM_QUANTIZATION.get(quant, frozenset()):
            raise _mismatch("the weights vLLM loaded", quant, f"quantization={value}")
        return
    if engine == "llama.cpp":
        names = _LLAMACPP_FTYPE.findall(log_text)
        if not names:
            raise EngineError(
                "llama.cpp's log has no 'file type' line: cannot tell which weights it loaded",
                fix="start llama-cpp-python's server with verbose logging (its default)",
            )
        if names[-1] != _LLAMACPP_FTYPE_NAME.get(quant):
            raise _mismatch("the weights llama.cpp loaded", quant, f"file type {names[-1]}")
        return
    raise ValueError(f"unknown engine {engine!r}")


def _local_checkpoint(model: str) -> Path | None:
    path = Path(model)
    return path if (path / "config.json").is_file() else None


def prepare_weights(model: str, quant: Quant, dtype: str = "auto", *, on_cpu: bool = True) -> str:
    """The weights to serve ``quant`` from ``model``, made if needed, checked; or EngineError.

    ``model`` is a GGUF file, a local Hugging Face directory, or a hub id (served as
    named; only its engine log can be checked). A local float checkpoint asked for as
    W8A8 or GGUF is converted once, beside it (W8A8: with activations this CPU's vLLM
    serves in ``dtype``, the dtype the engine computes in; symmetric on GPUs).
    """
    from workers.gguf_convert import GGUF_FILE_TYPES, make_gguf
    from workers.quantize import make_w8a8_beside

    checkpoint = _local_checkpoint(model)
    if quant in GGUF_FILE_TYPES:
        if model.endswith(".gguf"):
            path = Path(model)
        elif checkpoint is not None:
            path = make_gguf(checkpoint, quant)
        else:
            raise EngineError(
                f"{model!r} is neither a GGUF file nor a local checkpoint to convert",
                fix="register the .gguf file as the variant source of that quantisation",
            )
        check_gguf(path, quant)
        return str(path)
    if model.endswith(".gguf"):
        raise _mismatch(model, quant, "a GGUF file (served by llama.cpp, not vLLM)")
    if checkpoint is None:
        return model  # a hub id: vLLM downloads it; the engine log check still applies
    if quant is Quant.INT8_W8A8 and _unquantised(checkpoint):
        checkpoint = make_w8a8_beside(checkpoint, dtype, on_cpu=on_cpu)
    check_checkpoint(checkpoint, quant)
    return str(checkpoint)


def _unquantised(model_dir: Path) -> bool:
    config = json.loads((model_dir / "config.json").read_text("utf-8"))
    return "quantization_config" not in config
