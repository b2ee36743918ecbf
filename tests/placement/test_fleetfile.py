"""Fleet file loader: the reference fleet loads as given, round-trips, bad rows are named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.domain import DeviceKind, Quant
from scheduler.errors import InvalidInput
from scheduler.fleetfile import dump_fleet_file, load_fleet_file, parse_fleet

REFERENCE = Path(__file__).resolve().parents[2] / "bench" / "data" / "reference-fleet.yaml"


def reference_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(REFERENCE.read_text())
    return doc


def test_reference_fleet_loads_as_given() -> None:
    ff = load_fleet_file(REFERENCE)
    ids = [c.id for c in ff.fleet.classes]
    assert ids[0] == "hohhot/tesla-p40"
    assert len(ids) == 12 and len(set(ids)) == 12
    p40 = ff.fleet.classes[0]
    assert p40.spec.memory_bytes == 24 * 2**30
    assert p40.spec.compute_capability == (6, 1)
    assert p40.economics.residual_yuan == 800
    assert p40.economics.host_watts == 60  # host share per GPU
    assert p40.spec.tdp_watts == 250  # board_watts
    assert p40.per_node == 8 and p40.count == 64
    cpu = next(c for c in ff.fleet.classes if c.id == "hohhot/xeon-gold-6248")
    assert cpu.spec.kind is DeviceKind.CPU
    assert cpu.spec.cores == 40  # two sockets of 20 cores
    assert cpu.spec.memory_bandwidth_bytes_per_s == pytest.approx(2 * 140.8e9)
    assert cpu.spec.llc_bytes == round(2 * 27.5 * 2**20)  # L3 of both sockets
    assert cpu.economics.host_watts == 0  # a CPU row is the whole server
    assert set(ff.models) >= {"qwen2.5-7b-instruct", "qwen2.5-32b-instruct"}
    assert Quant.INT4_AWQ in ff.models["qwen2.5-7b-instruct"].allowed_quants
    assert len(ff.demands) == 6
    assert ff.demands[-1].klass == "batch" and ff.demands[-1].regions == ("west",)
    hohhot = ff.fleet.sites[0]
    assert hohhot.pue == 1.2 and hohhot.rtt_ms == {"east": 38}


def test_dump_then_parse_is_identity() -> None:
    ff = load_fleet_file(REFERENCE)
    again = parse_fleet(yaml.safe_load(dump_fleet_file(ff)))
    assert again == ff


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["fleet"][1].update(device="Voodoo 9"),
            r"fleet\[1\].*unknown device 'Voodoo 9'",
        ),
        (lambda d: d["sites"][2].update(pue=0.9), r"sites\[2\] \(shanghai\): pue"),
        (lambda d: d["fleet"][0].update(residual_yuan=-5), r"fleet\[0\].*residual_yuan"),
        (lambda d: d["sites"][0].pop("tariff_yuan_per_kwh"), r"sites\[0\].*tariff_yuan_per_kwh"),
        (lambda d: d["fleet"][3].update(site="mars"), r"fleet\[3\].*unknown site 'mars'"),
        (lambda d: d["demand"][0].update(model="gpt-9"), r"demand\[0\].*'gpt-9'"),
        (lambda d: d["demand"][1].update(regions=["north"]), r"demand\[1\].*north"),
    ],
)
def test_bad_rows_are_named(mutate: Any, expected: str, tmp_path: Path) -> None:
    doc = reference_doc()
    mutate(doc)
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InvalidInput, match=expected):
        load_fleet_file(path)


def test_unknown_device_with_specs_is_accepted() -> None:
    doc = reference_doc()
    doc["fleet"].append(
        {
            "site": "guian",
            "device": "Homebrew NPU",
            "count": 4,
            "memory_gb": 32,
            "memory_bandwidth_gbs": 800,
            "fp16_tflops": 100,
            "board_watts": 200,
            "compute_capability": "8.0",
        }
    )
    ff = parse_fleet(doc)
    npu = ff.fleet.classes[-1]
    assert npu.id == "guian/homebrew-npu" and npu.spec.compute_capability == (8, 0)


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read"):
        load_fleet_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: [unclosed\n")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        load_fleet_file(bad)
