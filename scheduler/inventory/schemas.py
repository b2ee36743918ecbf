"""Pydantic shapes at the inventory's edges (admin API bodies, CLI input, responses).

Validation lives here once, so the REST API and the CLI reject the same bad input with
the same message; the service converts into rows and domain types.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scheduler.domain import GIB, DeviceKind, LifecycleState, Quant
from scheduler.errors import InvalidInput
from scheduler.lifecycle import AdmissionPolicy

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$"

# Sanity bounds for memory: the largest GPU today has 192 GiB (MI300X/B200 ~ 192 GB);
# a CPU socket set beyond 24 TiB does not exist in a commodity server.
MAX_GPU_MEMORY_BYTES = 512 * GIB
MAX_CPU_MEMORY_BYTES = 24 * 1024 * GIB
MIN_MEMORY_BYTES = 256 * 1024**2

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Any) -> M:
    """Validate ``data`` into ``model``; bad input becomes one clear InvalidInput."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidInput(
            f"Invalid {model.__name__.removesuffix('In').lower()}"
            f"{f' at {where!r}' if where else ''}: {first.get('msg', 'invalid value')}.",
            param=where or None,
        ) from exc


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TouBandIn(Strict):
    start_hour: int = Field(ge=0, le=23)
    end_hour: int = Field(ge=1, le=24)
    tariff_yuan_per_kwh: float = Field(ge=0)

    @model_validator(mode="after")
    def _not_empty(self) -> TouBandIn:
        if self.end_hour % 24 == self.start_hour:
            raise ValueError("a time-of-use band needs start_hour != end_hour")
        return self

    def hours(self) -> set[int]:
        """Hours of the day the band covers; 22 -> 6 wraps midnight."""
        if self.start_hour < self.end_hour:
            return set(range(self.start_hour, self.end_hour))
        return set(range(self.start_hour, 24)) | set(range(0, self.end_hour))


class SiteIn(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    region: str = Field(min_length=1, max_length=100)
    hub: str = ""
    tariff_yuan_per_kwh: float = Field(ge=0, le=20, description="flat tariff, yuan per kWh")
    pue: float = Field(ge=1.0, le=5.0, description="power usage effectiveness, >= 1")
    tou_bands: list[TouBandIn] = Field(default_factory=list)
    latency_class: str = ""
    rtt_ms: dict[str, float] = Field(default_factory=dict)

    @field_validator("tou_bands")
    @classmethod
    def _no_overlap(cls, bands: list[TouBandIn]) -> list[TouBandIn]:
        seen: set[int] = set()
        for band in bands:
            if seen & band.hours():
                raise ValueError("time-of-use bands overlap")
            seen |= band.hours()
        return sorted(bands, key=lambda b: b.start_hour)

    @field_validator("rtt_ms")
    @classmethod
    def _rtt_positive(cls, rtt: dict[str, float]) -> dict[str, float]:
        if any(v < 0 for v in rtt.values()):
            raise ValueError("round-trip times must be >= 0 ms")
        return rtt


class SiteOut(BaseModel):
    name: str
    region: str
    hub: str
    tariff_yuan_per_kwh: float
    pue: float
    tou_bands: list[TouBandIn]
    latency_class: str
    rtt_ms: dict[str, float]
    nodes: int = 0
    devices: int = 0


class DeviceIn(Strict):
    """One device (a GPU, or a CPU socket set) of a node; ``count`` identical ones at once."""

    model: str = Field(min_length=1, max_length=100, description="as in the device catalogue")
    kind: DeviceKind | None = Field(default=None, description="default: from the catalogue")
    vendor: str = ""
    count: int = Field(default=1, ge=1, le=64)
    memory_bytes: int | None = Field(default=None, description="default: catalogue value")
    compute_capability: str | None = Field(default=None, pattern=r"^\d{1,2}\.\d$")
    isa_flags: list[str] = Field(default_factory=list)
    sockets: int = Field(default=1, ge=1, le=8)
    memory_bandwidth_bytes_per_s: float | None = Field(default=None, ge=0)
    tdp_watts: float | None = Field(default=None, ge=0, le=5000)
    interconnect_group: str = Field(default="", max_length=40)
    purchase_yuan: float = Field(default=0.0, ge=0)
    residual_yuan: float = Field(default=0.0, ge=0)
    in_service_date: date | None = None
    depreciation_years: float = Field(default=3.0, gt=0, le=30)
    ops_yuan_per_hour: float = Field(default=0.05, ge=0)
    host_watts: float = Field(default=0.0, ge=0, le=5000)


class NodeIn(Strict):
    host: str = Field(pattern=HOST_PATTERN)
    site: str
    labels: dict[str, str] = Field(default_factory=dict)
    ray_node_id: str | None = None
    devices: list[DeviceIn] = Field(min_length=1)


class DeviceOut(BaseModel):
    id: int
    host: str
    site: str
    slot: int
    kind: DeviceKind
    vendor: str
    model: str
    memory_bytes: int
    compute_capability: str | None
    isa_flags: list[str]
    sockets: int
    memory_bandwidth_bytes_per_s: float
    tdp_watts: float
    interconnect_group: str
    purchase_yuan: float
    residual_yuan: float
    in_service_date: date | None
    depreciation_years: float
    ops_yuan_per_hour: float
    host_watts: float
    state: LifecycleState
    state_since: datetime


class NodeOut(BaseModel):
    host: str
    site: str
    labels: dict[str, str]
    ray_node_id: str | None
    health: str
    health_failures: int
    devices: int
    states: dict[str, int] = Field(description="device count per lifecycle state")


class ProfileDeviceIn(BaseModel):
    slot: int = Field(ge=0)
    output_tokens_per_s: float = Field(ge=0)
    watts: float | None = Field(default=None, ge=0)


class ProfileIn(BaseModel):
    """A profile posted by the node agent (``cunliang agent --post``).

    The key figures are typed; everything else the agent measured (matmul throughput,
    bandwidth, per-dtype probes, batch sweeps) is kept verbatim in ``payload`` — unknown
    top-level fields are folded into it too, so newer agents do not break older servers.
    """

    model_config = ConfigDict(extra="allow")

    reference_model: str = Field(min_length=1)
    # 0 is a valid measurement (nothing ran): stored, and the admission policy refuses it
    output_tokens_per_s: float = Field(ge=0, description="node decode tokens/s, best batch")
    watts: float | None = Field(default=None, ge=0, description="node power while decoding")
    measured_at: datetime | None = None
    # names as in scheduler.domain.Quant; names this server does not know are kept but
    # ignored by placement (a newer agent may prove formats an older server lacks)
    quants: list[str] = Field(default_factory=list, description="formats proven to run")
    devices: list[ProfileDeviceIn] = Field(default_factory=list)
    payload: dict[str, Any] = Field(default_factory=dict)

    def full_payload(self) -> dict[str, Any]:
        return {**(self.model_extra or {}), **self.payload}


class ProfileOut(BaseModel):
    host: str
    version: int
    measured_at: datetime
    reference_model: str
    output_tokens_per_s: float
    watts: float
    quants: list[str]


class AdmissionOut(BaseModel):
    device: str
    admitted: bool
    state: LifecycleState
    reasons: list[str]
    figures: dict[str, float]


class ProfileResult(BaseModel):
    profile: ProfileOut
    admission: list[AdmissionOut]


class NodeDetail(BaseModel):
    node: NodeOut
    devices: list[DeviceOut]
    latest_profile: ProfileOut | None
    audit: list[AuditOut]


class AuditOut(BaseModel):
    id: int
    at: datetime
    subject_kind: str
    subject: str
    action: str
    from_state: str | None
    to_state: str | None
    actor: str
    reason: str
    figures: dict[str, Any]


class JoinIn(Strict):
    ray_node_id: str | None = Field(
        default=None, max_length=64, description="None when the node left the cluster"
    )


class TransitionIn(Strict):
    reason: str = Field(default="", max_length=2000)
    replicas_moved: bool = Field(
        default=False, description="operator confirms no replica runs there (retire only)"
    )


class TransitionOut(BaseModel):
    subject: str
    to_state: LifecycleState
    devices_changed: int
    unchanged: int = 0


class HealthIn(Strict):
    healthy: bool
    detail: str = Field(default="", max_length=2000)


class AssessmentOut(BaseModel):
    assessed: int
    kept: int
    watching: int
    recovered: int
    drained: int
    retired: int
    retire_blocked: int = Field(description="due for retirement but replicas still run")
    window_hours: float
    usage_basis: str
    seconds: float


class SiteReportRow(BaseModel):
    site: str
    hub: str
    region: str
    pue: float
    admitted_devices: int
    devices: int
    output_tokens: float
    full_yuan: float
    joules: float
    tokens_per_yuan: float
    tokens_per_joule: float
    utilisation: float = Field(description="served tokens / profiled capacity over the window")


class SiteActionIn(TransitionIn):
    action: Literal["probation", "drain", "retire"]


class ModelIn(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    source: str = Field(min_length=1, max_length=500)
    quants: list[Quant] = Field(default_factory=lambda: [Quant.BF16, Quant.FP16], min_length=1)
    tpot_ms: float = Field(default=100.0, gt=0)
    ttft_ms: float = Field(default=2000.0, gt=0)
    regions: list[str] = Field(default_factory=list)
    arch: dict[str, float] | None = Field(
        default=None, description="architecture; default: catalogue or the source's config.json"
    )
    variant_sources: dict[Quant, str] = Field(default_factory=dict)


class ModelOut(BaseModel):
    name: str
    source: str
    quants: list[str]
    tpot_ms: float
    ttft_ms: float
    regions: list[str]
    arch: dict[str, float]
    demands: list[DemandOut] = Field(default_factory=list)


class DemandIn(Strict):
    output_tokens_per_s: float = Field(ge=0)
    klass: str = Field(default="interactive", pattern=NAME_PATTERN)
    prompt_tokens: int = Field(default=512, ge=1)
    output_tokens: int = Field(default=128, ge=1)
    tpot_ms: float | None = Field(default=None, gt=0, description="default: the model's")
    ttft_ms: float | None = Field(default=None, gt=0)
    regions: list[str] | None = None


class DemandOut(BaseModel):
    model: str
    klass: str
    output_tokens_per_s: float
    prompt_tokens: int
    output_tokens: int
    tpot_ms: float
    ttft_ms: float
    regions: list[str]
    source: str
    updated_at: datetime


class FromUsageIn(Strict):
    window_hours: float = Field(default=24.0, gt=0, le=24 * 90)
    headroom: float = Field(default=0.3, ge=0, le=10)


class ImportOut(BaseModel):
    sites: int
    nodes: int
    devices: int
    models: int
    demands: int


NodeDetail.model_rebuild()
ModelOut.model_rebuild()


class PolicyIn(Strict):
    """The admission/assessment policy as an operator writes it (YAML/JSON file or API)."""

    reference_model: str = "cunliang-demo"
    min_tokens_per_yuan: float = Field(default=200_000.0, ge=0)
    min_tokens_per_joule: float = Field(default=0.05, ge=0)
    max_site_pue: float = Field(default=1.8, ge=1.0)
    max_profile_age_days: float = Field(default=30.0, gt=0)
    grace_period_days: float = Field(default=7.0, ge=0)
    retire_after_draining_hours: float = Field(default=24.0, ge=0)
    quarantine_after_failures: int = Field(default=3, ge=1)
    assessment_window_hours: float = Field(default=168.0, gt=0)
    min_evidence_tokens: int = Field(default=10_000, ge=0)

    def to_policy(self) -> AdmissionPolicy:
        return AdmissionPolicy(
            reference_model=self.reference_model,
            min_tokens_per_yuan=self.min_tokens_per_yuan,
            min_tokens_per_joule=self.min_tokens_per_joule,
            max_site_pue=self.max_site_pue,
            max_profile_age=timedelta(days=self.max_profile_age_days),
            grace_period=timedelta(days=self.grace_period_days),
            retire_after_draining=timedelta(hours=self.retire_after_draining_hours),
            quarantine_after_failures=self.quarantine_after_failures,
            assessment_window=timedelta(hours=self.assessment_window_hours),
            min_evidence_tokens=self.min_evidence_tokens,
        )

    @classmethod
    def of(cls, policy: AdmissionPolicy) -> PolicyIn:
        return cls(
            reference_model=policy.reference_model,
            min_tokens_per_yuan=policy.min_tokens_per_yuan,
            min_tokens_per_joule=policy.min_tokens_per_joule,
            max_site_pue=policy.max_site_pue,
            max_profile_age_days=policy.max_profile_age / timedelta(days=1),
            grace_period_days=policy.grace_period / timedelta(days=1),
            retire_after_draining_hours=policy.retire_after_draining / timedelta(hours=1),
            quarantine_after_failures=policy.quarantine_after_failures,
            assessment_window_hours=policy.assessment_window / timedelta(hours=1),
            min_evidence_tokens=policy.min_evidence_tokens,
        )
