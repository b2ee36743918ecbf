"""Shared fixtures: the reference fleet (input data, loaded as given)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.fleetfile import FleetFile, load_fleet_file

REFERENCE = Path(__file__).resolve().parents[2] / "bench" / "data" / "reference-fleet.yaml"


@pytest.fixture(scope="session")
def reference() -> FleetFile:
    return load_fleet_file(REFERENCE)
