"""Pure lifecycle policy: transitions, admission decisions, periodic verdicts."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.domain import LifecycleState
from scheduler.errors import Conflict
from scheduler.lifecycle import (
    TRANSITIONS,
    Action,
    AdmissionFigures,
    AdmissionPolicy,
    UsageFigures,
    admission_decision,
    assess_device,
    check_transition,
)

S = LifecycleState
NOW = datetime(2026, 3, 1, tzinfo=UTC)
POLICY = AdmissionPolicy()


def figures(**overrides: object) -> AdmissionFigures:
    base: dict[str, object] = {
        "output_tokens_per_s": 200.0,
        "watts": 75.0,
        "full_yuan_per_hour": 0.2,
        "site_pue": 1.25,
        "reference_model": POLICY.reference_model,
        "profile_measured_at": NOW - timedelta(days=1),
        "healthy": True,
    }
    base.update(overrides)
    return AdmissionFigures(**base)  # type: ignore[arg-type]


def test_the_documented_path_is_legal() -> None:
    path = [S.REGISTERED, S.PROBATION, S.ADMITTED, S.DRAINING, S.RETIRED, S.PROBATION]
    for current, target in itertools.pairwise(path):
        check_transition("d", current, target)


@pytest.mark.parametrize(
    ("current", "target", "fix"),
    [
        (S.ADMITTED, S.RETIRED, "drain it first"),
        (S.RETIRED, S.ADMITTED, "probation"),
        (S.REGISTERED, S.ADMITTED, "probation"),
        (S.RETIRED, S.DRAINING, "drain only"),
    ],
)
def test_illegal_transitions_say_how_to_fix(
    current: LifecycleState, target: LifecycleState, fix: str
) -> None:
    with pytest.raises(Conflict) as err:
        check_transition("node g1 device g1/0", current, target)
    assert f"is {current}; it cannot become {target}" in err.value.message
    assert err.value.fix is not None and fix in err.value.fix


def test_no_state_is_a_dead_end() -> None:
    # no dead ends: from every state some path leads back to admitted
    for start in S:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert S.ADMITTED in seen or start is S.ADMITTED


def test_admission_lists_every_failing_check() -> None:
    decision = admission_decision(
        POLICY,
        figures(
            output_tokens_per_s=1.0,
            watts=400.0,
            site_pue=2.0,
            healthy=False,
            profile_measured_at=NOW - timedelta(days=90),
        ),
        NOW,
    )
    assert not decision.admit
    text = decision.summary
    for part in ("90 days old", "health", "PUE 2.00", "tokens/yuan", "tokens/J"):
        assert part in text
    assert decision.figures["tokens_per_joule"] == pytest.approx(1.0 / 400.0)


def test_no_profile_is_refused() -> None:
    decision = admission_decision(POLICY, figures(profile_measured_at=None), NOW)
    assert not decision.admit and "no profile" in decision.reasons


@given(
    tokens=st.floats(0.1, 10_000),
    watts=st.floats(1, 2000),
    yuan=st.floats(0.001, 50),
    more=st.floats(1.0, 10.0),
)
def test_admission_is_monotone_in_throughput(
    tokens: float, watts: float, yuan: float, more: float
) -> None:
    """A faster device with the same cost and power is never refused where a slower one is admitted."""
    slow = admission_decision(
        POLICY, figures(output_tokens_per_s=tokens, watts=watts, full_yuan_per_hour=yuan), NOW
    )
    fast = admission_decision(
        POLICY,
        figures(output_tokens_per_s=tokens * more, watts=watts, full_yuan_per_hour=yuan),
        NOW,
    )
    assert fast.admit or not slow.admit
    assert len(fast.reasons) <= len(slow.reasons)


def usage(tokens: float) -> UsageFigures:
    return UsageFigures(output_tokens=tokens, joules=75.0 * 3600 * 24 * 7, full_yuan=36.0)


def test_grace_period_then_drain_then_retire() -> None:
    since = NOW - timedelta(days=30)
    weak = usage(1_000_000)
    assert assess_device(POLICY, S.ADMITTED, weak, None, since, NOW).action is Action.WATCH
    almost = NOW - POLICY.grace_period + timedelta(hours=1)
    assert assess_device(POLICY, S.ADMITTED, weak, almost, since, NOW).action is Action.WATCH
    past = NOW - POLICY.grace_period
    verdict = assess_device(POLICY, S.ADMITTED, weak, past, since, NOW)
    assert verdict.action is Action.DRAIN and "for 7 days" in verdict.reason
    just_drained = NOW - timedelta(hours=1)
    assert assess_device(POLICY, S.DRAINING, weak, None, just_drained, NOW).action is Action.KEEP
    assert assess_device(POLICY, S.DRAINING, weak, None, since, NOW).action is Action.RETIRE


def test_good_usage_recovers_and_thin_evidence_is_not_judged() -> None:
    since = NOW - timedelta(days=30)
    strong = usage(50_000_000)
    assert assess_device(POLICY, S.ADMITTED, strong, since, since, NOW).action is Action.RECOVER
    assert assess_device(POLICY, S.ADMITTED, strong, None, since, NOW).action is Action.KEEP
    thin = usage(POLICY.min_evidence_tokens - 1)
    assert assess_device(POLICY, S.ADMITTED, thin, since, since, NOW).action is Action.KEEP
    for state in (S.REGISTERED, S.PROBATION, S.RETIRED, S.QUARANTINED):
        assert assess_device(POLICY, state, thin, None, since, NOW).action is Action.KEEP
