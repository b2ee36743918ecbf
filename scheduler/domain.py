"""Domain types shared by every stage: frozen dataclasses, units in names.

Nothing here does I/O. Pydantic lives at the edges (HTTP, settings, files) and
converts into these types once. Imports flow one way:
domain <- models (cost, perf) <- placement <- runtime / gateway <- CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

GIB = 1024**3


class Quant(StrEnum):
    """A weight format a model variant is served in."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8_W8A8 = "int8-w8a8"
    INT4_AWQ = "int4-awq"
    INT4_GPTQ = "int4-gptq"
    GGUF_Q4_K_M = "gguf-q4_k_m"

    @property
    def weight_bytes_per_param(self) -> float:
        """Bytes per weight, including group scales for the 4-bit formats."""
        return _WEIGHT_BYTES[self]


_WEIGHT_BYTES: dict[Quant, float] = {
    Quant.FP32: 4.0,
    Quant.BF16: 2.0,
    Quant.FP16: 2.0,
    Quant.INT8_W8A8: 1.0,
    # 4 bits + one fp16 scale (and zero) per group of 128 weights
    Quant.INT4_AWQ: 0.5 + 4 / 128,
    Quant.INT4_GPTQ: 0.5 + 4 / 128,
    # q4_k_m averages ~4.85 bits per weight on Llama-family models (llama.cpp's table)
    Quant.GGUF_Q4_K_M: 4.85 / 8,
}


class DeviceKind(StrEnum):
    GPU = "gpu"
    CPU = "cpu"


class Engine(StrEnum):
    """The serving engine a replica runs; chosen from variant and device, never by hand."""

    VLLM = "vllm"  # NVIDIA GPUs, compute capability >= 7.0
    VLLM_CPU = "vllm-cpu"  # CPU servers
    LLAMA_CPP = "llama.cpp"  # GGUF: pre-Volta GPUs and CPU fallback


class LifecycleState(StrEnum):
    """准入/退出: registered -> probation -> admitted -> draining -> retired (+ quarantined)."""

    REGISTERED = "registered"
    PROBATION = "probation"
    ADMITTED = "admitted"
    DRAINING = "draining"
    RETIRED = "retired"
    QUARANTINED = "quarantined"


class PlanStatus(StrEnum):
    OPTIMAL = "optimal"
    FEASIBLE = "feasible"  # all demand placed, optimality not proven (gap or heuristic)
    PARTIAL = "partial"  # some demand could not be placed; see Plan.unplaced
    INFEASIBLE = "infeasible"  # nothing could be placed


@dataclass(frozen=True)
class TouBand:
    """A time-of-use electricity band: [start_hour, end_hour) local time at a price."""

    start_hour: int
    end_hour: int
    tariff_yuan_per_kwh: float


@dataclass(frozen=True)
class Site:
    name: str
    region: str
    hub: str = ""
    tariff_yuan_per_kwh: float = 0.6
    pue: float = 1.5
    tou_bands: tuple[TouBand, ...] = ()
    # round-trip time from this site to each demand region, e.g. {"east": 38.0}
    rtt_ms: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceSpec:
    """What a device is (catalogue or measured), independent of where it sits."""

    model: str
    kind: DeviceKind
    vendor: str = ""
    memory_bytes: int = 0
    memory_bandwidth_bytes_per_s: float = 0.0
    fp16_flops: float = 0.0
    fp32_flops: float = 0.0
    int8_ops: float = 0.0
    tdp_watts: float = 0.0
    compute_capability: tuple[int, int] | None = None  # GPUs only
    isa_flags: frozenset[str] = frozenset()  # CPUs: avx2, avx512f, amx_bf16, ...
    cores: int = 0  # CPUs: physical cores per device (a socket set)
    release_year: int | None = None
    nvlink: bool = False
    # CPUs: last-level cache of the whole device (all sockets); 0 = unknown, no cache tier
    llc_bytes: int = 0


@dataclass(frozen=True)
class Economics:
    """Money facts of one device. Residual value is the opportunity cost of keeping it."""

    residual_yuan: float = 0.0
    remaining_life_years: float = 3.0
    ops_yuan_per_hour: float = 0.05
    host_watts: float = 0.0  # share of the server (CPU, fans, NIC) added to board power
    average_utilisation: float = 0.8  # fraction of TDP drawn on average while serving
    # purchase price, amortised when no residual value is known (leased / new hardware)
    purchase_yuan: float = 0.0
    # measured average board power while serving (profile / NVML / RAPL); None = TDP x utilisation
    measured_watts: float | None = None


@dataclass(frozen=True)
class DeviceClass:
    """Identical devices at one site: the unit the optimiser reasons about."""

    id: str
    site: Site
    spec: DeviceSpec
    count: int
    per_node: int = 1  # devices per server; tensor parallel stays inside a node
    economics: Economics = field(default_factory=Economics)
    # quantisations a profile proved to work here; empty = use the support rules
    measured_quants: frozenset[Quant] = frozenset()
    # measured / predicted efficiency factors fitted from profiles, e.g. {"decode": 0.62}
    efficiency: Mapping[str, float] = field(default_factory=dict)
    node_ids: tuple[str, ...] = ()  # concrete nodes holding these devices, when known


@dataclass(frozen=True)
class ModelArch:
    """The published architecture of a decoder-only transformer."""

    name: str
    params_b: float
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int = 32000
    intermediate: int = 0
    max_model_len: int = 4096


@dataclass(frozen=True)
class ModelSpec:
    """A model the operator serves: where its weights come from, which quants are allowed."""

    name: str
    source: str  # Hugging Face id or local path
    arch: ModelArch
    allowed_quants: tuple[Quant, ...] = (Quant.BF16, Quant.FP16)
    # variant -> weights location when the operator ships pre-quantised weights
    variant_sources: Mapping[Quant, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Demand:
    """Peak demand for one model: output tokens/s at a latency SLO, in allowed regions."""

    model: str
    output_tokens_per_s: float
    prompt_tokens: int = 512
    output_tokens: int = 128
    tpot_ms: float = 100.0
    ttft_ms: float = 2000.0
    regions: tuple[str, ...] = ()  # empty = anywhere
    klass: str = "interactive"


@dataclass(frozen=True)
class Fleet:
    sites: tuple[Site, ...]
    classes: tuple[DeviceClass, ...]


@dataclass(frozen=True)
class Replica:
    """One serving engine for one model variant on one or more devices of a class."""

    model: str
    quant: Quant
    device_class_id: str
    engine: Engine
    tp: int = 1
    node_id: str | None = None  # set by concrete assignment
    dtype: str = "auto"  # engine dtype (e.g. float32 on a CPU where bf16 fails)
    predicted_output_tokens_per_s: float = 0.0
    yuan_per_hour: float = 0.0
    batch: int = 1
    demand_klass: str = "interactive"  # which demand of the model it serves (Demand.klass)

    @property
    def key(self) -> str:
        return f"{self.model}/{self.quant}/{self.device_class_id}/tp{self.tp}"


@dataclass(frozen=True)
class Unplaced:
    """Demand that could not be met, and why (which constraint binds, what is missing)."""

    model: str
    missing_output_tokens_per_s: float
    reason: str
    klass: str = "interactive"
    binding: str = (
        ""  # the constraint that binds: "support", "memory", "slo", "region", "availability"
    )


@dataclass(frozen=True)
class Plan:
    status: PlanStatus
    replicas: tuple[Replica, ...]
    unplaced: tuple[Unplaced, ...] = ()
    yuan_per_hour: float = 0.0
    output_tokens_per_s: float = 0.0
    solver: str = ""
    solve_seconds: float = 0.0
    mip_gap: float = 0.0
    notes: tuple[str, ...] = ()

    @property
    def tokens_per_yuan(self) -> float:
        if self.yuan_per_hour <= 0:
            return 0.0
        return self.output_tokens_per_s * 3600.0 / self.yuan_per_hour
