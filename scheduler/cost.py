"""Cost model: what one device costs per hour, in yuan. Pure functions, no I/O.

    power_yuan_per_hour  = average_watts / 1000 x PUE x tariff_yuan_per_kwh
    average_watts        = measured_watts, else board TDP x average_utilisation, + host_watts
    capex_yuan_per_hour  = (residual_yuan, else purchase_yuan) / (remaining_life_years x 8766 h)
    marginal             = power + ops          (what running it adds; idle devices are off)
    full                 = marginal + capex     (plus the opportunity cost of not selling it)

The tariff is the site's flat tariff, or, with time-of-use bands, the band price at a
given hour (or the 24-hour time-weighted mean when no hour is given: a plan runs
around the clock). Placement minimises marginal cost by default; assessment and the
fleet's tokens per yuan use full cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from scheduler.domain import DeviceClass, DeviceSpec, Economics, Site

HOURS_PER_YEAR = 365.25 * 24  # 8766 h: amortisation counts calendar time, leap years included


class CostBasis(StrEnum):
    MARGINAL = "marginal"
    FULL = "full"


@dataclass(frozen=True)
class CostBreakdown:
    """One device's hourly cost, by component (yuan/hour) and its average draw (watts)."""

    average_watts: float
    power_yuan_per_hour: float
    ops_yuan_per_hour: float
    capex_yuan_per_hour: float

    @property
    def marginal_yuan_per_hour(self) -> float:
        return self.power_yuan_per_hour + self.ops_yuan_per_hour

    @property
    def full_yuan_per_hour(self) -> float:
        return self.marginal_yuan_per_hour + self.capex_yuan_per_hour

    def yuan_per_hour(self, basis: CostBasis) -> float:
        if basis is CostBasis.FULL:
            return self.full_yuan_per_hour
        return self.marginal_yuan_per_hour


def _in_band(hour: int, start: int, end: int) -> bool:
    # a band may wrap midnight: 22 -> 6 covers 22..23 and 0..5
    return start <= hour < end if start < end else hour >= start or hour < end


def tariff_yuan_per_kwh(site: Site, hour: int | None = None) -> float:
    """Electricity price at ``hour`` (0-23), or the 24-hour time-weighted mean when None.

    Hours no band covers are billed at the site's flat tariff; the first band wins
    where bands overlap.
    """
    if not site.tou_bands:
        return site.tariff_yuan_per_kwh

    def at(h: int) -> float:
        for band in site.tou_bands:
            if _in_band(h, band.start_hour, band.end_hour):
                return band.tariff_yuan_per_kwh
        return site.tariff_yuan_per_kwh

    if hour is not None:
        return at(hour % 24)
    return sum(at(h) for h in range(24)) / 24.0


def average_watts(spec: DeviceSpec, economics: Economics) -> float:
    """Average draw while serving: measured board power, else TDP x utilisation; plus host share."""
    board_watts = (
        economics.measured_watts
        if economics.measured_watts is not None
        else spec.tdp_watts * economics.average_utilisation
    )
    return board_watts + economics.host_watts


def power_yuan_per_hour(watts: float, pue: float, tariff_yuan_per_kwh: float) -> float:
    """Facility energy cost of an IT load of ``watts``: kW x PUE x yuan/kWh."""
    return watts / 1000.0 * pue * tariff_yuan_per_kwh


def capex_yuan_per_hour(economics: Economics) -> float:
    """Residual value (else purchase price) spread over the remaining life."""
    value_yuan = economics.residual_yuan or economics.purchase_yuan
    if economics.remaining_life_years <= 0:
        return 0.0
    return value_yuan / (economics.remaining_life_years * HOURS_PER_YEAR)


def breakdown(device: DeviceClass, hour: int | None = None) -> CostBreakdown:
    """Hourly cost of one device of ``device`` (a GPU, or a whole CPU server)."""
    watts = average_watts(device.spec, device.economics)
    tariff = tariff_yuan_per_kwh(device.site, hour)
    return CostBreakdown(
        average_watts=watts,
        power_yuan_per_hour=power_yuan_per_hour(watts, device.site.pue, tariff),
        ops_yuan_per_hour=device.economics.ops_yuan_per_hour,
        capex_yuan_per_hour=capex_yuan_per_hour(device.economics),
    )


def marginal_yuan_per_hour(device: DeviceClass, hour: int | None = None) -> float:
    return breakdown(device, hour).marginal_yuan_per_hour


def full_yuan_per_hour(device: DeviceClass, hour: int | None = None) -> float:
    return breakdown(device, hour).full_yuan_per_hour


def device_yuan_per_hour(
    device: DeviceClass, basis: CostBasis = CostBasis.MARGINAL, hour: int | None = None
) -> float:
    """Hourly cost of one device on the chosen basis."""
    return breakdown(device, hour).yuan_per_hour(basis)
