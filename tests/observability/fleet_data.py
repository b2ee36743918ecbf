"""A small real inventory (SQLite, migrated) with devices in several lifecycle states."""

from __future__ import annotations

from typing import Any

from scheduler.domain import Quant
from scheduler.inventory.schemas import DeviceIn, NodeIn, ProfileIn, SiteIn
from scheduler.inventory.service import InventoryService
from scheduler.store.db import Database, open_database, upgrade

REF = "cunliang-demo"
GUIAN = SiteIn(name="guian", hub="guizhou", region="west", tariff_yuan_per_kwh=0.35, pue=1.25)
SHANGHAI = SiteIn(name="shanghai", region="east", tariff_yuan_per_kwh=0.82, pue=1.55)


def _nvml_payload(gpus: int, watts: float) -> dict[str, Any]:
    power = {"source": "nvml", "watts": watts, "note": ""}
    return {"host": {"gpus": [{"index": i, "power": power} for i in range(gpus)]}}


def profile(tokens_per_s: float, watts: float, payload: dict[str, Any] | None = None) -> ProfileIn:
    return ProfileIn(
        reference_model=REF,
        output_tokens_per_s=tokens_per_s,
        watts=watts,
        quants=[Quant.FP16],
        payload=payload or {},
    )


def build_fleet(url: str) -> tuple[Database, InventoryService]:
    """guian: 2 nodes x 4 T4 (one measured by NVML, one modelled) admitted, 1 node of 2 T4
    registered only; shanghai: 1 node of 2 V100 admitted then drained."""
    upgrade(url)
    db = open_database(url)
    inv = InventoryService(db)
    inv.add_site(GUIAN, "test")
    inv.add_site(SHANGHAI, "test")
    t4 = [DeviceIn(model="Tesla T4", count=4, residual_yuan=3500)]
    inv.register_node(NodeIn(host="g1", site="guian", devices=t4), "test")
    inv.register_node(NodeIn(host="g2", site="guian", devices=t4), "test")
    two = [DeviceIn(model="Tesla T4", count=2, residual_yuan=3500)]
    inv.register_node(NodeIn(host="g3", site="guian", devices=two), "test")
    v100 = [DeviceIn(model="Tesla V100 PCIe 32GB", count=2, residual_yuan=12000)]
    inv.register_node(NodeIn(host="s1", site="shanghai", devices=v100), "test")
    inv.add_profile("g1", profile(800.0, 240.0, _nvml_payload(4, 55.0)), "test")
    inv.add_profile("g2", profile(800.0, 280.0), "test")
    inv.add_profile("s1", profile(1500.0, 600.0), "test")
    inv.drain_node("s1", "test", "hardware refresh")
    return db, inv
