"""Synthetic fleets for placement benchmarks: many sites, many classes, 12 models.

Deterministic for a seed. Devices come from the catalogue (Pascal to Hopper GPUs and
CPU servers); sites draw a tariff and PUE; demand per model scales with the fleet so
that the fleet is roughly half used by the optimiser.
"""

from __future__ import annotations

import random
from dataclasses import replace

from scheduler import catalog
from scheduler.domain import (
    GIB,
    Demand,
    DeviceClass,
    DeviceKind,
    Economics,
    Fleet,
    ModelSpec,
    Quant,
    Site,
)
from scheduler.fleetfile import FleetFile, slug

GPUS = (
    "Tesla P4", "Tesla P40", "Tesla P100 PCIe 16GB", "Tesla V100 PCIe 16GB",
    "Tesla V100 PCIe 32GB", "Tesla T4", "TITAN V", "A100 PCIe 40GB", "A100 PCIe 80GB",
    "A10", "L4", "L40S", "H100 PCIe", "GeForce GTX 1080 Ti", "GeForce RTX 2080 Ti",
    "GeForce RTX 3090", "GeForce RTX 4090",
)  # fmt: skip
CPUS = ("Xeon Gold 6248", "Xeon Platinum 8480+", "AMD EPYC 7763", "AMD EPYC 9654")
# rough second-hand residual value per device (yuan); CPU entries are whole servers
RESIDUAL_YUAN = {
    "Tesla P4": 400, "Tesla P40": 800, "Tesla P100 PCIe 16GB": 700,
    "Tesla V100 PCIe 16GB": 2500, "Tesla V100 PCIe 32GB": 3800, "Tesla T4": 3500,
    "TITAN V": 2000, "A100 PCIe 40GB": 40000, "A100 PCIe 80GB": 70000, "A10": 9000,
    "L4": 12000, "L40S": 45000, "H100 PCIe": 160000, "GeForce GTX 1080 Ti": 900,
    "GeForce RTX 2080 Ti": 1800, "GeForce RTX 3090": 4500, "GeForce RTX 4090": 13000,
    "Xeon Gold 6248": 6000, "Xeon Platinum 8480+": 60000, "AMD EPYC 7763": 20000,
    "AMD EPYC 9654": 50000,
}  # fmt: skip
QUANTS = (
    Quant.BF16, Quant.FP16, Quant.INT8_W8A8, Quant.INT4_AWQ, Quant.INT4_GPTQ, Quant.GGUF_Q4_K_M
)  # fmt: skip
# output tokens/s per device of demand, per model size (small models see more traffic)
MODELS = (
    "qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct", "qwen2.5-3b-instruct",
    "qwen2.5-7b-instruct", "qwen2.5-14b-instruct", "qwen2.5-32b-instruct",
    "llama-3.1-8b-instruct", "llama-3.2-1b-instruct", "llama-3.2-3b-instruct",
    "mistral-7b-instruct-v0.3", "qwen2.5-72b-instruct", "llama-3.1-70b-instruct",
)  # fmt: skip


def synthetic(n_devices: int, seed: int = 0, load_tokens_per_device: float = 40.0) -> FleetFile:
    """A fleet of about ``n_devices`` devices in classes of 4-64, with 12 model demands."""
    rng = random.Random(seed)
    n_sites = max(2, n_devices // 250)
    sites = tuple(
        Site(
            name=f"site{i:02d}",
            region="west" if i % 2 else "east",
            tariff_yuan_per_kwh=round(rng.uniform(0.3, 0.9), 3),
            pue=round(rng.uniform(1.1, 1.6), 2),
        )
        for i in range(n_sites)
    )
    classes: dict[str, DeviceClass] = {}
    total = 0
    while total < n_devices:
        site = rng.choice(sites)
        name = rng.choice(GPUS) if rng.random() < 0.85 else rng.choice(CPUS)
        cid = f"{site.name}/{slug(name)}"
        if cid in classes:
            continue
        spec = catalog.lookup_device(name)
        assert spec is not None
        if spec.kind is DeviceKind.CPU:
            spec = replace(spec, memory_bytes=rng.choice([256, 512, 1024]) * GIB)
            count, per_node = rng.randint(2, max(2, min(16, n_devices // 50))), 1
        else:
            per_node = rng.choice([4, 8])
            nodes = rng.randint(1, max(1, min(8, n_devices // 100)))
            count = min(per_node * nodes, max(n_devices - total, per_node))
        economics = Economics(
            residual_yuan=RESIDUAL_YUAN[name] * rng.uniform(0.7, 1.3),
            host_watts=60.0 if spec.kind is DeviceKind.GPU else 0.0,
        )
        classes[cid] = DeviceClass(cid, site, spec, count, per_node, economics)
        total += count
    models = {}
    for m in MODELS:
        arch = catalog.lookup_model(m)
        assert arch is not None
        models[m] = ModelSpec(m, m, arch, QUANTS)
    demands = []
    for m in MODELS:
        size = models[m].arch.params_b
        per_device = load_tokens_per_device / max(size, 1.0) ** 0.5 / len(MODELS) * 4
        demands.append(
            Demand(
                model=m,
                output_tokens_per_s=round(per_device * n_devices, 1),
                prompt_tokens=rng.choice([512, 1024, 2048]),
                output_tokens=rng.choice([128, 256, 512]),
                tpot_ms=rng.choice([60.0, 100.0, 150.0]),
                ttft_ms=rng.choice([2000.0, 4000.0]),
                regions=rng.choice([(), ("west",), ("east",)]),
            )
        )
    fleet = Fleet(sites, tuple(classes.values()))
    return FleetFile(fleet=fleet, models=models, demands=tuple(demands))


def tiny(seed: int) -> FleetFile:
    """2-3 classes of at most 8 devices and 1-2 demands: small enough to enumerate."""
    rng = random.Random(seed)
    site = Site("s", "r", tariff_yuan_per_kwh=rng.uniform(0.3, 0.9), pue=1.3)
    names = rng.sample(["Tesla T4", "A10", "Tesla V100 PCIe 32GB", "GeForce RTX 3090",
                        "A100 PCIe 40GB"], rng.randint(2, 3))  # fmt: skip
    classes = []
    for name in names:
        spec = catalog.lookup_device(name)
        assert spec is not None
        per_node = rng.choice([2, 4])
        count = per_node * rng.randint(1, 2)
        econ = Economics(residual_yuan=RESIDUAL_YUAN[name], host_watts=60)
        classes.append(DeviceClass(f"s/{slug(name)}", site, spec, count, per_node, econ))
    model_names = rng.sample(["qwen2.5-7b-instruct", "qwen2.5-14b-instruct",
                              "llama-3.1-8b-instruct"], rng.randint(1, 2))  # fmt: skip
    models = {}
    demands = []
    for m in model_names:
        arch = catalog.lookup_model(m)
        assert arch is not None
        models[m] = ModelSpec(m, m, arch, (Quant.FP16, Quant.INT8_W8A8, Quant.INT4_AWQ))
        demands.append(Demand(m, rng.uniform(200, 3000), 1024, 256, tpot_ms=100.0))
    return FleetFile(Fleet((site,), tuple(classes)), models, tuple(demands))
