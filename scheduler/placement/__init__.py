"""Placement: which model variants run on which devices, at least yuan/hour.

Public interface::

    plan(fleet, demands, models, policy=PlacementPolicy(), current=None) -> Plan
    robustness(plan, demands) -> RobustnessReport
    diff_plans(old, new) -> PlanDiff
"""

from scheduler.placement.assemble import PlanDiff, diff_plans, served_share
from scheduler.placement.planner import (
    BASELINES,
    PlacementPolicy,
    RobustnessReport,
    Strategy,
    plan,
    robustness,
    solve_candidates,
)

__all__ = [
    "BASELINES",
    "PlacementPolicy",
    "PlanDiff",
    "RobustnessReport",
    "Strategy",
    "diff_plans",
    "plan",
    "robustness",
    "served_share",
    "solve_candidates",
]
