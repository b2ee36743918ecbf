"""Money facts of a stored device -> domain ``Economics``, and its full cost per hour.

The cost formula is ``scheduler.cost`` (the placement cost model: one formula for the
whole project); this module only turns database columns (purchase price, in-service
date, depreciation period) into the residual value and remaining life that model takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from scheduler import cost
from scheduler.domain import Economics, Site

DAYS_PER_YEAR = 365.25
# used hardware with no stated price or depreciation: amortise over this (reference fleet)
DEFAULT_REMAINING_LIFE_YEARS = 3.0
# a card never runs at TDP on average while serving (reference-fleet assumption)
AVERAGE_UTILISATION = 0.8


@dataclass(frozen=True)
class StoredEconomics:
    purchase_yuan: float
    residual_yuan: float
    in_service_date: date | None
    depreciation_years: float
    ops_yuan_per_hour: float
    host_watts: float


def residual_and_life(money: StoredEconomics, today: date) -> tuple[float, float]:
    """(residual yuan, remaining life in years).

    A stated residual value wins (market value: the opportunity cost of keeping the device);
    otherwise straight-line book value of the purchase price over the depreciation period.
    Without an in-service date the depreciation period is read as the remaining life. A
    fully depreciated device keeps a floor life of one year so its capex is ~0, not NaN.
    """
    age_years = 0.0
    if money.in_service_date is not None:
        age_years = max(0.0, (today - money.in_service_date).days / DAYS_PER_YEAR)
    remaining = max(1.0, money.depreciation_years - age_years)
    if money.residual_yuan > 0:
        return money.residual_yuan, remaining
    if money.purchase_yuan > 0 and money.depreciation_years > 0:
        left = max(0.0, 1.0 - age_years / money.depreciation_years)
        return money.purchase_yuan * left, remaining
    return 0.0, DEFAULT_REMAINING_LIFE_YEARS


def to_economics(money: StoredEconomics, today: date) -> Economics:
    residual, life = residual_and_life(money, today)
    return Economics(
        residual_yuan=residual,
        remaining_life_years=life,
        ops_yuan_per_hour=money.ops_yuan_per_hour,
        host_watts=money.host_watts,
        average_utilisation=AVERAGE_UTILISATION,
        # the book value above already accounts for the purchase price: not twice
        purchase_yuan=0.0,
    )


def full_yuan_per_hour(watts: float, site: Site, economics: Economics) -> float:
    """Full cost (``scheduler.cost``): energy at PUE and the daily mean tariff + ops + capex.

    ``watts`` is the device's average draw while serving, host share included.
    """
    tariff = cost.tariff_yuan_per_kwh(site)
    power = cost.power_yuan_per_hour(watts, site.pue, tariff)
    return power + economics.ops_yuan_per_hour + cost.capex_yuan_per_hour(economics)


def estimated_watts(tdp_watts: float, host_watts: float) -> float:
    """Average draw when no profile measured it: a fraction of TDP plus the host share."""
    return tdp_watts * AVERAGE_UTILISATION + host_watts
