"""Stored node profiles -> the perf model's efficiency factors for a device class. Pure.

A profile payload is what ``workers.profiler.MachineProfile.to_json()`` wrote, plus the
``device_figures`` the inventory adds (the device slots the measurement is for). Each
engine row — one dtype at one batch size on the reference model — is a
:class:`scheduler.perf.MeasuredPoint`; ``fit_efficiency`` turns a class's points into the
``DeviceClass.efficiency`` the placement optimiser passes to ``perf.predict``.

Old or malformed payloads give no points (never an exception): without the reference
model's shape and the prompt/decode lengths a row cannot be compared with the roofline.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any

from scheduler.catalog import arch_from_hf_config
from scheduler.domain import DeviceSpec, ModelArch, Quant
from scheduler.perf import MeasuredPoint, Workload, fit_efficiency, weight_bytes
from scheduler.support import DTYPE_QUANT

# Below this many weight bytes a reference model sits largely in caches (CPU L3 reaches
# ~1 GiB on cache-stacked EPYCs): its rows show per-step overheads, and bandwidth or
# FLOP efficiencies fitted on them (often > 1) would promise real models far more than
# DRAM delivers. Such profiles fit only the overhead terms; the rest keep the defaults.
CACHE_RESIDENT_WEIGHT_BYTES = 2 * 2**30
OVERHEAD_KEYS: tuple[str, ...] = ("step_overhead_s", "seq_overhead_s", "layer_overhead_s")
ALL_KEYS: tuple[str, ...] = ("decode", "prefill", *OVERHEAD_KEYS)

# the demo model's manifest parameters -> config.json keys (payloads before the config)
_PARAM_KEYS = {
    "hidden": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "intermediate": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_position": "max_position_embeddings",
}


def reference_arch(payload: Mapping[str, Any]) -> ModelArch | None:
    """The reference model's architecture: its config.json, else the demo manifest's
    parameters (the demo model unties its embeddings); None when neither is usable."""
    name = str(payload.get("reference_model") or "reference")
    config = payload.get("reference_model_config")
    if not isinstance(config, Mapping) or not config:
        params = payload.get("reference_model_params")
        if not isinstance(params, Mapping):
            return None
        config = {hf: params[k] for k, hf in _PARAM_KEYS.items() if k in params}
        config["tie_word_embeddings"] = False
    try:
        arch = arch_from_hf_config(dict(config), name)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return arch if arch.params_b > 0 and arch.layers > 0 else None


def points_from_profile(payload: Mapping[str, Any]) -> list[MeasuredPoint]:
    """Every successful engine row of a stored profile as a MeasuredPoint.

    Rows of each working dtype (fp32, bf16, fp16) and of the int8 W8A8 variant, at the
    profile's ``prompt_tokens`` / ``decode_tokens``. Empty for a payload that lacks
    the reference model's shape or those lengths, or whose rows are malformed.
    """
    arch = reference_arch(payload)
    prompt = _positive_int(payload.get("prompt_tokens"))
    decode = _positive_int(payload.get("decode_tokens"))
    if arch is None or prompt is None or decode is None:
        return []
    probes: list[tuple[Quant, Any]] = []
    engine = payload.get("engine")
    for probe in engine if isinstance(engine, list) else []:
        quant = DTYPE_QUANT.get(str(probe.get("dtype"))) if isinstance(probe, Mapping) else None
        if quant is not None:
            probes.append((quant, probe))
    int8 = payload.get("int8_w8a8")
    if isinstance(int8, Mapping):
        probes.append((Quant.INT8_W8A8, int8))
    points = []
    try:
        for quant, probe in probes:
            if probe.get("ok") is not True:
                continue
            for row in probe.get("rows") or ():
                decode_rate = float(row["decode_tokens_per_s"])
                prefill_rate = float(row.get("prefill_tokens_per_s") or 0.0)
                batch = int(row["batch"])
                if batch < 1 or not decode_rate > 0:
                    continue
                workload = Workload(batch, prompt, decode)
                points.append(
                    MeasuredPoint(arch, quant, workload, decode_rate, prefill_rate or None)
                )
    except (KeyError, TypeError, ValueError, AttributeError):
        return []
    return points


def fit_points(payload: Mapping[str, Any]) -> list[MeasuredPoint]:
    """The points a class's efficiency is fitted on: the rows of the profile's chosen
    dtype (the one the node serves in; one set of factors cannot fit dtypes whose kernels
    differ), or every row when no choice is recorded."""
    points = points_from_profile(payload)
    chosen = DTYPE_QUANT.get(str(payload.get("chosen_dtype")))
    picked = [p for p in points if p.quant is chosen]
    return picked or points


def class_points(points: Sequence[MeasuredPoint]) -> list[MeasuredPoint]:
    """One point per (model, quant, workload, tp): the median rates over the class's hosts.

    Devices of a class are identical, so hosts measure the same thing; the median keeps
    the fit a handful of points however many hosts a class has, and shrugs off one
    host measured while busy.
    """
    groups: dict[tuple[Any, ...], list[MeasuredPoint]] = defaultdict(list)
    for p in points:
        groups[(p.arch, p.quant, p.workload, p.tp)].append(p)
    out = []
    for (arch, quant, workload, tp), same in groups.items():
        prefill = [p.prefill_tokens_per_s for p in same if p.prefill_tokens_per_s]
        out.append(
            MeasuredPoint(
                arch,
                quant,
                workload,
                median(p.decode_tokens_per_s for p in same),
                median(prefill) if prefill else None,
                tp,
            )
        )
    return out


def fit_keys(points: Sequence[MeasuredPoint]) -> tuple[str, ...]:
    """Which efficiency factors ``points`` can tell: all of them when every measured
    model outweighs the caches (``CACHE_RESIDENT_WEIGHT_BYTES``), else overheads only."""
    if points and all(weight_bytes(p.arch, p.quant) >= CACHE_RESIDENT_WEIGHT_BYTES for p in points):
        return ALL_KEYS
    return OVERHEAD_KEYS


def measured_slots(payload: Mapping[str, Any]) -> frozenset[int]:
    """Device slots of the node the engine rows were measured on (``device_figures``)."""
    figures = payload.get("device_figures")
    slots = set()
    for figure in figures if isinstance(figures, list) else []:
        slot = figure.get("slot") if isinstance(figure, Mapping) else None
        if isinstance(slot, int):
            slots.add(slot)
    return frozenset(slots)


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


Loader = Callable[[Sequence[int]], Iterable[tuple[int, Mapping[str, Any]]]]


@dataclass(frozen=True)
class _Parsed:
    slots: frozenset[int]  # device slots the profile measured
    points: tuple[MeasuredPoint, ...]


class EfficiencyCache:
    """Fitted factors per (class spec, profiles that fed it), and parsed profiles by id.

    ``fit_efficiency`` runs a least-squares fit (tens of ms) and a class may span
    thousands of hosts; the snapshot is taken every scheduler tick. So each distinct
    (spec, profile rows, slots) is fitted once, and each profile row (rows are never
    updated: a new measurement is a new row) is loaded and parsed once. Bounded: the
    oldest entries go first when more than ``max_entries`` fits or ``max_profiles``
    profiles are held.
    """

    def __init__(self, max_entries: int = 4096, max_profiles: int = 200_000) -> None:
        self._fits: dict[Hashable, dict[str, float]] = {}
        self._profiles: dict[int, _Parsed] = {}
        self._max_entries = max_entries
        self._max_profiles = max_profiles
        self._lock = threading.Lock()  # the scheduler tick and admin requests share it

    def get(
        self, spec: DeviceSpec, profiles: Mapping[int, frozenset[int]], load: Loader
    ) -> dict[str, float]:
        """Factors for ``spec`` fitted on the profiles ``{profile id: the class's device
        slots on that host}``: the points of each profile that measured one of those
        slots, merged over hosts (:func:`class_points`). ``load(ids)`` yields
        ``(id, payload)`` for profiles not parsed before and is only called on a miss.
        {} when no profile measured the class.
        """
        key = (spec, tuple(sorted(profiles.items(), key=lambda kv: kv[0])))
        with self._lock:
            if key not in self._fits:
                self._parse([i for i in profiles if i not in self._profiles], load)
                points = [
                    point
                    for i, slots in profiles.items()
                    if (parsed := self._profiles.get(i)) and parsed.slots & slots
                    for point in parsed.points
                ]
                measured = class_points(points)
                _bounded(self._fits, self._max_entries)
                self._fits[key] = _fit(spec, measured)
            return dict(self._fits[key])

    def _parse(self, ids: Sequence[int], load: Loader) -> None:
        if not ids:
            return
        for profile_id, payload in load(ids):
            _bounded(self._profiles, self._max_profiles)
            self._profiles[profile_id] = _Parsed(
                measured_slots(payload), tuple(fit_points(payload))
            )


def _fit(spec: DeviceSpec, points: Sequence[MeasuredPoint]) -> dict[str, float]:
    if not points:
        return {}
    keys = fit_keys(points)
    # overheads alone cannot explain a cache-resident prefill rate (the FLOP efficiency
    # can, and it is not fitted then): such fits match decode steps only
    prefill_weight = 0.5 if "prefill" in keys else 0.0
    return fit_efficiency(spec, points, prefill_weight=prefill_weight, keys=keys)


def _bounded(cache: dict[Any, Any], max_entries: int) -> None:
    while len(cache) >= max_entries:
        cache.pop(next(iter(cache)))
