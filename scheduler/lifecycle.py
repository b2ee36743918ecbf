"""准入/退出: lifecycle states, legal transitions, admission and assessment policy.

Pure functions over frozen dataclasses; the inventory service reads the database,
calls these, and writes the decisions (with their reasons and figures) to the audit log.

    registered ──profile──▶ probation ──policy met──▶ admitted ──below policy──▶ draining
         │                     ▲   │                      │  ▲                      │
         │                     │   └──────────────────────┼──┘ (readmit)            ▼
         └──────────▶ quarantined ◀── repeated health failures ──────────────── retired
                                                                  (readmit → probation)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from scheduler.domain import LifecycleState
from scheduler.errors import Conflict

S = LifecycleState

# {from_state: states it may move to}
TRANSITIONS: Mapping[LifecycleState, frozenset[LifecycleState]] = {
    S.REGISTERED: frozenset({S.PROBATION, S.QUARANTINED, S.RETIRED}),
    S.PROBATION: frozenset({S.ADMITTED, S.QUARANTINED, S.RETIRED, S.DRAINING}),
    S.ADMITTED: frozenset({S.DRAINING, S.QUARANTINED, S.PROBATION}),
    # draining -> admitted cancels a drain; retire only once the replicas have moved away
    S.DRAINING: frozenset({S.RETIRED, S.ADMITTED, S.QUARANTINED}),
    # readmission starts over: reprofile on probation, then the policy decides
    S.RETIRED: frozenset({S.PROBATION}),
    S.QUARANTINED: frozenset({S.PROBATION, S.DRAINING, S.RETIRED}),
}

_HOW_TO_REACH: Mapping[LifecycleState, str] = {
    S.PROBATION: "readmit it (cunliang node readmit HOST) or post a profile",
    S.ADMITTED: "put it on probation and post a profile that meets the admission policy",
    S.DRAINING: "drain only admitted, probation or quarantined devices",
    S.RETIRED: "drain it first (cunliang node drain HOST), then retire",
    S.QUARANTINED: "quarantine applies to devices that are not retired",
    S.REGISTERED: "registered is only the initial state",
}


def check_transition(subject: str, current: LifecycleState, target: LifecycleState) -> None:
    """Raise Conflict unless ``current -> target`` is a legal lifecycle move."""
    if target in TRANSITIONS[current]:
        return
    allowed = ", ".join(sorted(TRANSITIONS[current])) or "none"
    raise Conflict(
        f"{subject} is {current}; it cannot become {target} (allowed from {current}: {allowed}).",
        fix=_HOW_TO_REACH[target] + ".",
    )


@dataclass(frozen=True)
class AdmissionPolicy:
    """Thresholds a device must meet to be admitted and to stay admitted.

    Figures are judged on the reference model (what the profiler measures everywhere) and
    on full cost (energy at PUE and tariff + ops + capex amortisation).
    """

    # The model every node agent profiles. Default: the demo model the agent generates
    # locally (workers.demo_model, no download), so any node can be profiled and devices
    # are compared on the same work. Thresholds below are in that model's tokens; an
    # operator who profiles on a real model sets both together (--policy FILE).
    reference_model: str = "cunliang-demo"
    # Defaults: API prices for small models are ~0.5-1 yuan per million tokens, so a device
    # should produce >= 200k reference tokens per yuan of full cost; 0.05 tokens/J is the
    # floor of a dual-socket AVX-512 server decoding a 0.5B model (~30 tok/s at ~500 W).
    min_tokens_per_yuan: float = 200_000.0
    min_tokens_per_joule: float = 0.05
    max_site_pue: float = 1.8
    max_profile_age: timedelta = timedelta(days=30)
    # assessment: below policy continuously for this long -> drain; drained this long -> retire
    grace_period: timedelta = timedelta(days=7)
    retire_after_draining: timedelta = timedelta(days=1)
    quarantine_after_failures: int = 3
    # usage judged over this window; fewer output tokens than this = too little evidence
    assessment_window: timedelta = timedelta(days=7)
    min_evidence_tokens: int = 10_000


@dataclass(frozen=True)
class AdmissionFigures:
    """What the admission policy looks at for one device (from its newest profile)."""

    output_tokens_per_s: float
    watts: float
    full_yuan_per_hour: float
    site_pue: float
    reference_model: str
    profile_measured_at: datetime | None
    healthy: bool

    @property
    def tokens_per_yuan(self) -> float:
        if self.full_yuan_per_hour <= 0:
            return float("inf")
        return self.output_tokens_per_s * 3600.0 / self.full_yuan_per_hour

    @property
    def tokens_per_joule(self) -> float:
        return self.output_tokens_per_s / self.watts if self.watts > 0 else 0.0


@dataclass(frozen=True)
class Decision:
    """An admission verdict with every reason that failed and the figures it used."""

    admit: bool
    reasons: tuple[str, ...]
    figures: Mapping[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        if self.admit:
            return "meets the admission policy"
        return "; ".join(self.reasons)


def admission_decision(
    policy: AdmissionPolicy, figures: AdmissionFigures, now: datetime
) -> Decision:
    """Admit only when every check passes; otherwise list each failing check."""
    reasons: list[str] = []
    if figures.profile_measured_at is None:
        reasons.append("no profile")
    else:
        age = now - figures.profile_measured_at
        if age > policy.max_profile_age:
            reasons.append(
                f"profile is {age.days} days old (max {policy.max_profile_age.days}); reprofile"
            )
    if figures.reference_model != policy.reference_model:
        reasons.append(
            f"profile measured {figures.reference_model!r}, policy needs {policy.reference_model!r}"
        )
    if not figures.healthy:
        reasons.append("node health is failing")
    if figures.site_pue > policy.max_site_pue:
        reasons.append(f"site PUE {figures.site_pue:.2f} > max {policy.max_site_pue:.2f}")
    if figures.tokens_per_yuan < policy.min_tokens_per_yuan:
        reasons.append(
            f"{figures.tokens_per_yuan:,.0f} tokens/yuan < min {policy.min_tokens_per_yuan:,.0f}"
        )
    if figures.tokens_per_joule < policy.min_tokens_per_joule:
        reasons.append(
            f"{figures.tokens_per_joule:.4f} tokens/J < min {policy.min_tokens_per_joule:.4f}"
        )
    numbers = {
        "output_tokens_per_s": figures.output_tokens_per_s,
        "watts": figures.watts,
        "full_yuan_per_hour": figures.full_yuan_per_hour,
        "tokens_per_yuan": _finite(figures.tokens_per_yuan),
        "tokens_per_joule": figures.tokens_per_joule,
        "site_pue": figures.site_pue,
    }
    return Decision(admit=not reasons, reasons=tuple(reasons), figures=numbers)


class Action(StrEnum):
    KEEP = "keep"  # meets policy (or not enough evidence to judge)
    WATCH = "watch"  # below policy, grace period running
    DRAIN = "drain"  # below policy for the whole grace period
    RETIRE = "retire"  # drained long enough and no replica left on it
    RECOVER = "recover"  # was below policy, now meets it again: clear the grace clock


@dataclass(frozen=True)
class UsageFigures:
    """One device's measured work and cost over the assessment window."""

    output_tokens: float
    joules: float
    full_yuan: float

    @property
    def tokens_per_yuan(self) -> float:
        return self.output_tokens / self.full_yuan if self.full_yuan > 0 else 0.0

    @property
    def tokens_per_joule(self) -> float:
        return self.output_tokens / self.joules if self.joules > 0 else 0.0


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str


def assess_device(
    policy: AdmissionPolicy,
    state: LifecycleState,
    usage: UsageFigures,
    below_policy_since: datetime | None,
    state_since: datetime,
    now: datetime,
) -> Verdict:
    """Periodic 准入/退出 judgement of one device on real usage.

    Admitted devices below policy get a grace period before draining; draining devices
    are retired after ``retire_after_draining`` (the caller still checks no replica runs).
    """
    if state is S.DRAINING:
        if now - state_since >= policy.retire_after_draining:
            return Verdict(Action.RETIRE, f"draining since {state_since:%Y-%m-%d %H:%M}")
        return Verdict(Action.KEEP, "draining; waiting for replicas to move")
    if state is not S.ADMITTED:
        return Verdict(Action.KEEP, f"{state}: not assessed")
    if usage.output_tokens < policy.min_evidence_tokens:
        return Verdict(Action.KEEP, f"only {usage.output_tokens:.0f} output tokens: too little")
    failing = []
    if usage.tokens_per_yuan < policy.min_tokens_per_yuan:
        failing.append(
            f"{usage.tokens_per_yuan:,.0f} tokens/yuan < min {policy.min_tokens_per_yuan:,.0f}"
        )
    if usage.tokens_per_joule < policy.min_tokens_per_joule:
        failing.append(
            f"{usage.tokens_per_joule:.4f} tokens/J < min {policy.min_tokens_per_joule:.4f}"
        )
    if not failing:
        if below_policy_since is not None:
            return Verdict(Action.RECOVER, "meets policy again")
        return Verdict(Action.KEEP, "meets policy")
    reason = "; ".join(failing)
    if below_policy_since is not None and now - below_policy_since >= policy.grace_period:
        return Verdict(Action.DRAIN, f"{reason} for {(now - below_policy_since).days} days")
    return Verdict(Action.WATCH, reason)


def _finite(value: float) -> float:
    # JSON has no infinity: a free device's tokens/yuan is reported as a large sentinel
    return value if value != float("inf") else 1e18
