"""Device and model catalogues: public spec facts for planning unprofiled hardware.

Devices come from ``data/device_specs.csv`` (vendor spec sheets, each row sourced),
with the gaps that sheet leaves filled from ``_SUPPLEMENT`` below (each figure's
assumption written next to it). Measured profiles always win over these numbers.
Models are the published architectures of common open models.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from functools import cache
from importlib import resources

from scheduler.domain import DeviceKind, DeviceSpec, ModelArch

GB = 10**9
TERA = 10**12

# Figures the CSV leaves empty, from vendor datasheets (dense, no sparsity).
# {device: {field: value}} with fp16/int8 in TFLOPS/TOPS, tdp in watts.
_SUPPLEMENT: dict[str, dict[str, float]] = {
    # A10 datasheet: 125 TF16 tensor dense, 250 INT8 dense, 150 W
    "A10": {"fp16_tflops": 125.0, "int8_tops": 250.0, "tdp_w": 150.0},
    # A30 datasheet: 165 TF16 tensor dense, 330 INT8 dense
    "A30": {"fp16_tflops": 165.0, "int8_tops": 330.0},
    # GeForce tensor FP16 with FP32 accumulate (what vLLM kernels use) is half the fp16-acc rate
    "GeForce RTX 3090": {"fp16_tflops": 71.0, "int8_tops": 284.0},
    "GeForce RTX 2080 Ti": {"fp16_tflops": 53.8, "int8_tops": 215.2},
    "GeForce RTX 3060 12GB": {"fp16_tflops": 25.6, "int8_tops": 102.0},
    "GeForce RTX 4090": {"fp16_tflops": 165.2, "int8_tops": 660.6},
    # Pascal GP102/GP104 have no INT8 tensor cores but dp4a; GP100 has neither
    "GeForce GTX 1080 Ti": {"fp16_tflops": 0.177, "int8_tops": 45.2},
    # A40 compute capability is 8.6 (GA102)
    "A40": {"compute_capability": 8.6},
}

# CPUs the CSV does not list: dual-socket servers are two of these.
# fp32 = cores x base GHz x 2 FMA units x SIMD lanes x 2 (assumes all-core AVX clocks ~ base).
_EXTRA_ROWS: tuple[DeviceSpec, ...] = (
    DeviceSpec(
        model="AMD EPYC 7763",
        kind=DeviceKind.CPU,
        vendor="AMD",
        memory_bytes=512 * 2**30,
        memory_bandwidth_bytes_per_s=204.8 * GB,  # 8 ch DDR4-3200
        fp32_flops=64 * 2.45e9 * 2 * 8 * 2,  # AVX2: 8 fp32 lanes
        fp16_flops=64 * 2.45e9 * 2 * 8 * 2,
        tdp_watts=280,
        isa_flags=frozenset({"avx2", "fma"}),
        cores=64,
        release_year=2021,
        llc_bytes=256 * 2**20,  # 8 CCDs x 32 MB L3 (AMD EPYC 7763 product page)
    ),
    DeviceSpec(
        model="AMD EPYC 9654",
        kind=DeviceKind.CPU,
        vendor="AMD",
        memory_bytes=768 * 2**30,
        memory_bandwidth_bytes_per_s=460.8 * GB,  # 12 ch DDR5-4800
        fp32_flops=96 * 2.4e9 * 2 * 16 * 2 / 2,  # AVX-512 double-pumped on Zen 4
        fp16_flops=96 * 2.4e9 * 2 * 32 * 2 / 2,  # avx512_bf16
        tdp_watts=360,
        isa_flags=frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"}),
        cores=96,
        release_year=2022,
        llc_bytes=384 * 2**20,  # 12 CCDs x 32 MB L3 (AMD EPYC 9654 product page)
    ),
)

_CPU_FLAGS: dict[str, frozenset[str]] = {
    "Xeon Platinum 8480+": frozenset(
        {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"}
    ),
    "Xeon Gold 6248": frozenset({"avx2", "fma", "avx512f", "avx512_vnni"}),
}


def _num(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    return float(value)


def _cc(value: float | None) -> tuple[int, int] | None:
    if value is None:
        return None
    major = int(value)
    return (major, round((value - major) * 10))


def _row_to_spec(row: dict[str, str]) -> DeviceSpec:
    name = row["device"].strip()
    extra = _SUPPLEMENT.get(name, {})

    def pick(field: str) -> float | None:
        got = _num(row.get(field))
        return got if got is not None else extra.get(field)

    cores = _num(row.get("cpu_cores"))
    kind = DeviceKind.CPU if cores else DeviceKind.GPU
    fp32_tflops = pick("fp32_tflops")
    if kind is DeviceKind.CPU and fp32_tflops is None and cores:
        # AVX-512 with 2 FMA units at ~2.0 GHz all-core (assumption for Xeon SP)
        fp32_tflops = cores * 2.0e9 * 2 * 16 * 2 / TERA
    memory_gb = pick("memory_gb")
    return DeviceSpec(
        model=name,
        kind=kind,
        vendor=row.get("vendor", "").strip(),
        # CPU rows leave memory empty: it depends on the server, set at registration
        memory_bytes=int((memory_gb or 0) * 2**30),
        memory_bandwidth_bytes_per_s=(pick("memory_bandwidth_gbs") or 0.0) * GB,
        fp16_flops=(pick("fp16_tflops") or 0.0) * TERA,
        fp32_flops=(fp32_tflops or 0.0) * TERA,
        int8_ops=(pick("int8_tops") or 0.0) * TERA,
        tdp_watts=pick("tdp_w") or 0.0,
        compute_capability=_cc(pick("compute_capability")),
        isa_flags=_CPU_FLAGS.get(name, frozenset()),
        cores=int(cores or 0),
        release_year=int(y) if (y := _num(row.get("release_year"))) else None,
        llc_bytes=int((pick("llc_mib") or 0.0) * 2**20),  # CPU rows: L3 per socket
    )


@cache
def devices() -> dict[str, DeviceSpec]:
    """All catalogue devices by model name."""
    text = resources.files("scheduler").joinpath("data/device_specs.csv").read_text("utf-8")
    specs = {s.model: s for s in (_row_to_spec(r) for r in csv.DictReader(text.splitlines()))}
    for extra in _EXTRA_ROWS:
        specs.setdefault(extra.model, extra)
    return specs


def lookup_device(name: str) -> DeviceSpec | None:
    """Catalogue entry by exact or case-insensitive model name; None when unknown."""
    table = devices()
    if name in table:
        return table[name]
    folded = name.casefold().strip()
    for key, spec in table.items():
        if key.casefold() == folded:
            return spec
    return None


def with_memory(spec: DeviceSpec, memory_bytes: int) -> DeviceSpec:
    """The same device with a known memory size (CPU servers, partial GPU SKUs)."""
    return replace(spec, memory_bytes=memory_bytes)


# Published architectures (config.json of each model).
MODELS: dict[str, ModelArch] = {
    m.name: m
    for m in (
        ModelArch("qwen2.5-0.5b-instruct", 0.49, 24, 896, 14, 2, 64, 151936, 4864, 32768),
        ModelArch("qwen2.5-1.5b-instruct", 1.54, 28, 1536, 12, 2, 128, 151936, 8960, 32768),
        ModelArch("qwen2.5-3b-instruct", 3.09, 36, 2048, 16, 2, 128, 151936, 11008, 32768),
        ModelArch("qwen2.5-7b-instruct", 7.62, 28, 3584, 28, 4, 128, 152064, 18944, 32768),
        ModelArch("qwen2.5-14b-instruct", 14.7, 48, 5120, 40, 8, 128, 152064, 13824, 32768),
        ModelArch("qwen2.5-32b-instruct", 32.8, 64, 5120, 40, 8, 128, 152064, 27648, 32768),
        ModelArch("qwen2.5-72b-instruct", 72.7, 80, 8192, 64, 8, 128, 152064, 29568, 32768),
        ModelArch("llama-3.1-8b-instruct", 8.03, 32, 4096, 32, 8, 128, 128256, 14336, 131072),
        ModelArch("llama-3.1-70b-instruct", 70.6, 80, 8192, 64, 8, 128, 128256, 28672, 131072),
        ModelArch("llama-3.2-1b-instruct", 1.24, 16, 2048, 32, 8, 64, 128256, 8192, 131072),
        ModelArch("llama-3.2-3b-instruct", 3.21, 28, 3072, 24, 8, 128, 128256, 8192, 131072),
        ModelArch("mistral-7b-instruct-v0.3", 7.25, 32, 4096, 32, 8, 128, 32768, 14336, 32768),
    )
}


def lookup_model(name: str) -> ModelArch | None:
    return MODELS.get(name) or MODELS.get(name.casefold())


def arch_from_hf_config(config: dict[str, object], name: str) -> ModelArch:
    """A ModelArch from a Hugging Face ``config.json`` (Llama/Qwen/Mistral-style decoders).

    Parameters are counted from the shapes: embeddings, per layer q/k/v/o projections
    and a gated MLP (gate, up, down), plus an untied lm_head.
    Raises KeyError/TypeError/ValueError on a config missing the usual fields.
    """

    def num(key: str, default: int | None = None) -> int:
        value = config.get(key, default)
        if not isinstance(value, int | float | str):
            raise KeyError(key)
        return int(value)

    hidden = num("hidden_size")
    layers = num("num_hidden_layers")
    heads = num("num_attention_heads")
    kv_heads = num("num_key_value_heads", heads)
    head_dim = num("head_dim", hidden // heads)
    vocab = num("vocab_size")
    inter = num("intermediate_size", 4 * hidden)
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * inter
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    params = embeddings + layers * (attention + mlp + 2 * hidden)
    return ModelArch(
        name=name,
        params_b=params / 1e9,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=vocab,
        intermediate=inter,
        max_model_len=num("max_position_embeddings", 4096),
    )
