"""Cost model: hand-computed figures and invariants (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.cost import (
    HOURS_PER_YEAR,
    CostBasis,
    breakdown,
    device_yuan_per_hour,
    full_yuan_per_hour,
    marginal_yuan_per_hour,
    tariff_yuan_per_kwh,
)
from scheduler.domain import DeviceClass, DeviceKind, DeviceSpec, Economics, Site, TouBand

HOHHOT = Site(name="hohhot", region="west", tariff_yuan_per_kwh=0.38, pue=1.20)
P40 = DeviceSpec(model="Tesla P40", kind=DeviceKind.GPU, tdp_watts=250)


def p40_class(**econ: float) -> DeviceClass:
    economics = Economics(
        residual_yuan=800,
        remaining_life_years=3,
        ops_yuan_per_hour=0.05,
        host_watts=60,
        average_utilisation=0.8,
    )
    return DeviceClass("hohhot/tesla-p40", HOHHOT, P40, 64, 8, replace(economics, **econ))


def test_reference_p40_by_hand() -> None:
    # 250 W x 0.8 + 60 W host = 260 W; 0.26 kW x 1.2 PUE x 0.38 yuan/kWh = 0.11856 yuan/h
    dc = p40_class()
    b = breakdown(dc)
    assert b.average_watts == pytest.approx(260.0)
    assert b.power_yuan_per_hour == pytest.approx(0.11856)
    assert marginal_yuan_per_hour(dc) == pytest.approx(0.11856 + 0.05)
    # 800 yuan over 3 years of 8766 h = 0.0304206 yuan/h
    assert b.capex_yuan_per_hour == pytest.approx(800 / (3 * 8766))
    assert full_yuan_per_hour(dc) == pytest.approx(0.16856 + 0.0304206, rel=1e-5)
    assert device_yuan_per_hour(dc, CostBasis.FULL) == full_yuan_per_hour(dc)
    assert HOURS_PER_YEAR == 8766


def test_measured_power_replaces_tdp_and_purchase_price_is_the_fallback() -> None:
    dc = p40_class(measured_watts=140.0, residual_yuan=0.0, purchase_yuan=8766.0)
    b = breakdown(dc)
    assert b.average_watts == pytest.approx(200.0)  # 140 measured + 60 host
    assert b.capex_yuan_per_hour == pytest.approx(8766.0 / (3 * 8766))


def test_time_of_use_bands() -> None:
    site = replace(
        HOHHOT,
        tou_bands=(TouBand(8, 22, 0.60), TouBand(22, 6, 0.20)),  # day peak, night valley (wraps)
    )
    assert tariff_yuan_per_kwh(site, 12) == 0.60
    assert tariff_yuan_per_kwh(site, 23) == 0.20
    assert tariff_yuan_per_kwh(site, 3) == 0.20
    assert tariff_yuan_per_kwh(site, 7) == 0.38  # no band: flat tariff
    # 14 h x 0.60 + 8 h x 0.20 + 2 h x 0.38 over 24 h
    assert tariff_yuan_per_kwh(site) == pytest.approx((14 * 0.6 + 8 * 0.2 + 2 * 0.38) / 24)
    dc = replace(p40_class(), site=site)
    assert marginal_yuan_per_hour(dc, hour=23) < marginal_yuan_per_hour(dc, hour=12)


positive = st.floats(min_value=0.01, max_value=1e4, allow_nan=False)


@given(
    tariff=st.one_of(st.just(0.0), st.floats(0.01, 5.0)),
    pue=st.floats(1.0, 3.0),
    watts=positive,
    residual=st.floats(0.0, 1e6),
    bump=st.floats(0.001, 10.0),
)
def test_costs_are_monotone_and_full_covers_marginal(
    tariff: float, pue: float, watts: float, residual: float, bump: float
) -> None:
    site = Site("s", "r", tariff_yuan_per_kwh=tariff, pue=pue)
    spec = DeviceSpec("d", DeviceKind.GPU, tdp_watts=watts)
    dc = DeviceClass("s/d", site, spec, 1, economics=Economics(residual_yuan=residual))
    base_m, base_f = marginal_yuan_per_hour(dc), full_yuan_per_hour(dc)
    assert base_f >= base_m >= 0
    more_tariff = replace(dc, site=replace(site, tariff_yuan_per_kwh=tariff + bump))
    more_pue = replace(dc, site=replace(site, pue=pue + bump))
    more_power = replace(dc, spec=replace(spec, tdp_watts=watts + bump))
    for bigger in (more_tariff, more_pue, more_power):
        assert marginal_yuan_per_hour(bigger) >= base_m
        assert full_yuan_per_hour(bigger) >= base_f
    assert marginal_yuan_per_hour(more_power) > base_m or tariff == 0.0
