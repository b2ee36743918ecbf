"""Profile serialisation and the inventory post body (measurements themselves are engine tests)."""

from __future__ import annotations

import json

from tests.fakes.nvml import two_t4_and_a_p40
from workers.hardware import detect_host
from workers.probe import BatchThroughput, DtypeProbe, MatmulProbe
from workers.profiler import (
    MachineProfile,
    memory_bandwidth_bytes_per_s,
    profile_post_body,
    proven_quant_names,
)


def sample_profile(int8_ok: bool) -> MachineProfile:
    rows = (BatchThroughput(1, 1000.0, 50.0), BatchThroughput(8, 4000.0, 300.0))
    return MachineProfile(
        kind="full",
        host=detect_host(nvml=two_t4_and_a_p40()),
        measured_at="2026-11-25T05:00:00+00:00",
        duration_s=100.0,
        fingerprint="abc",
        reference_model="cunliang-demo",
        reference_model_params={"hidden": 256},
        versions={"vllm": "0.32.0"},
        memory_bandwidth_bytes_per_s=3.2e10,
        matmul=(MatmulProbe("float32", True, 2e11), MatmulProbe("float16", False, error="x")),
        engine=(
            DtypeProbe("float32", True, 50.0, 1000.0, rows=rows),
            DtypeProbe("bfloat16", False, error="killed by SIGILL"),
        ),
        chosen_dtype="float32",
        int8_w8a8=DtypeProbe(
            "float32",
            int8_ok,
            rows=(BatchThroughput(8, 5000.0, 420.0),) if int8_ok else (),
            error="" if int8_ok else "exited with status 1: no int8 kernel",
        ),
    )


def test_profile_json_is_plain_json_with_sorted_flags() -> None:
    document = sample_profile(True).to_json()
    text = json.dumps(document)  # raises on frozenset / dataclass leftovers
    back = json.loads(text)
    assert back["host"]["cpu"]["isa_flags"] == sorted(back["host"]["cpu"]["isa_flags"])
    assert [g["name"] for g in back["host"]["gpus"]] == ["Tesla T4", "Tesla T4", "Tesla P40"]
    assert back["engine"][1] == {
        "dtype": "bfloat16",
        "ok": False,
        "decode_tokens_per_s": 0.0,
        "prefill_tokens_per_s": 0.0,
        "error": "killed by SIGILL",
        "rows": [],
        "load_s": 0.0,
        "wall_s": 0.0,
    }


def test_post_body_carries_best_decode_rate_and_proven_formats() -> None:
    body = profile_post_body(sample_profile(True))
    assert body["output_tokens_per_s"] == 420.0  # int8 W8A8 at batch 8 was the best
    assert body["quants"] == ["fp32", "int8-w8a8"] == proven_quant_names(sample_profile(True))
    assert body["devices"] == [{"slot": 3, "output_tokens_per_s": 420.0, "watts": None}]
    assert body["payload"]["fingerprint"] == "abc"
    failed = profile_post_body(sample_profile(False))
    assert failed["quants"] == ["fp32"] and failed["output_tokens_per_s"] == 300.0


def test_memory_bandwidth_is_measured() -> None:
    rate = memory_bandwidth_bytes_per_s(size_bytes=32 * 2**20, seconds=0.2)
    assert 1e8 < rate < 1e13  # between a 2005 laptop and an HBM3 GPU
