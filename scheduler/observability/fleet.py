"""Fleet figures for the scrape-time gauges: pure functions over domain values, no I/O.

What the four fleet metrics mean (the contract rules.yaml reads):

  cunliang_device_yuan_per_hour{device_class,site,cost}  yuan/hour of the class's *powered*
      devices (admitted, probation, draining: they draw power and may serve), summed;
      cost = full (with capex) | marginal (power x PUE x tariff + ops), at the site's 24-hour
      mean tariff unless an hour is given (as placement prices plans and replicas).
  cunliang_device_watts{device_class,site,source}  average draw of the same devices.
      source = nvml | rapl when every powered device of the class has a measured reading
      in its node's newest profile; otherwise the whole class is modelled (TDP x average
      utilisation + host share, ``cost.average_watts``) and labelled tdp. One source per
      class, so the rules' "measured, else modelled" choice never mixes halves.
  cunliang_devices{device_class,site,state}        device count per lifecycle state.
  cunliang_replicas{model,state}                   state = planned | running.

Cardinality: classes x sites x (2 costs + 1 source + 6 states) + models x 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from scheduler.cost import CostBasis, average_watts, device_yuan_per_hour
from scheduler.domain import DeviceClass, DeviceKind, LifecycleState

# devices that draw power and may serve: they count in the fleet's cost and watts
POWERED_STATES = (LifecycleState.ADMITTED, LifecycleState.PROBATION, LifecycleState.DRAINING)
MODELLED_SOURCE = "tdp"


@dataclass(frozen=True)
class ClassFigures:
    """One device class at one site: counts per state, and cost/power of its powered devices."""

    device_class: str
    site: str
    states: Mapping[str, int]
    full_yuan_per_hour: float = 0.0
    marginal_yuan_per_hour: float = 0.0
    watts: float = 0.0
    watts_source: str = MODELLED_SOURCE


@dataclass(frozen=True)
class FleetFigures:
    """Everything the fleet collector exports at one scrape."""

    classes: tuple[ClassFigures, ...] = ()
    # {model: {"planned": n, "running": n}}
    replicas: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


def measured_reading(payload: Mapping[str, Any], kind: DeviceKind, per_node: int) -> Any:
    """``(source, watts)`` the node's profile measured for its devices of one class, or None.

    A CPU class reads the RAPL package power; a GPU class sums NVML board power over the
    node's GPUs, only when the node's GPU count equals the class's devices per node
    (a node mixing GPU models cannot be split by board, so it stays modelled).
    """
    host = payload.get("host")
    if not isinstance(host, Mapping):
        return None
    if kind is DeviceKind.CPU:
        power = host.get("cpu_power") or {}
        if power.get("source") == "rapl" and power.get("watts"):
            return ("rapl", float(power["watts"]))
        return None
    gpus = host.get("gpus") or []
    readings = [g.get("power") or {} for g in gpus if isinstance(g, Mapping)]
    if len(readings) != per_node or not readings:
        return None
    if all(r.get("source") == "nvml" and r.get("watts") for r in readings):
        return ("nvml", sum(float(r["watts"]) for r in readings))
    return None


def class_figures(
    dc: DeviceClass,
    states: Mapping[str, int],
    payloads: Mapping[str, Mapping[str, Any]],
    hour: int | None,
) -> ClassFigures:
    """Cost and watts of ``dc`` (its ``count`` = powered devices) plus its state counts.

    ``payloads``: newest profile payload per host of ``dc.node_ids`` (missing = none).
    """
    full = dc.count * device_yuan_per_hour(dc, CostBasis.FULL, hour)
    marginal = dc.count * device_yuan_per_hour(dc, CostBasis.MARGINAL, hour)
    readings = [
        measured_reading(payloads.get(h, {}), dc.spec.kind, dc.per_node) for h in dc.node_ids
    ]
    sources = {r[0] for r in readings if r is not None}
    if dc.node_ids and all(r is not None for r in readings) and len(sources) == 1:
        # measured board/package power plus the modelled host share of each device
        measured = sum(r[1] for r in readings if r is not None)
        watts = measured + dc.count * dc.economics.host_watts
        source = sources.pop()
    else:
        watts, source = dc.count * average_watts(dc.spec, dc.economics), MODELLED_SOURCE
    return ClassFigures(dc.id, dc.site.name, dict(states), full, marginal, watts, source)


def merge_states(
    powered: list[ClassFigures], counts: Mapping[tuple[str, str], Mapping[str, int]]
) -> tuple[ClassFigures, ...]:
    """Attach state counts to the powered classes; classes with no powered device get a
    zero-cost row so ``cunliang_devices`` still counts them."""
    by_key = {(c.device_class, c.site): c for c in powered}
    out = []
    for key in sorted(set(by_key) | set(counts)):
        base = by_key.get(key) or ClassFigures(key[0], key[1], {})
        out.append(replace(base, states=dict(counts.get(key, base.states))))
    return tuple(out)


def replica_counts(
    planned: Mapping[str, int], running: Mapping[str, int]
) -> dict[str, dict[str, int]]:
    """{model: {"planned": n, "running": n}} over every model either side names."""
    return {
        m: {"planned": planned.get(m, 0), "running": running.get(m, 0)}
        for m in sorted(set(planned) | set(running))
    }
