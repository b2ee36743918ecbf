"""`cunliang plan` / `cunliang predict` through the real entry point, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.placement.conftest import REFERENCE

ROOT = Path(__file__).resolve().parents[2]


def cunliang(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "scheduler.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_plan_prints_table_with_baselines() -> None:
    done = cunliang("plan", "--fleet", str(REFERENCE))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("plan: optimal")
    for word in ("TOTAL", "tokens/yuan", "newest-first", "cheapest-first", "single-type"):
        assert word in out
    assert "robustness" in out and "-20%" in out


def test_plan_json_full_cost_and_demand_file(tmp_path: Path) -> None:
    demand = tmp_path / "demand.yaml"
    demand.write_text(
        yaml.safe_dump({"demand": [{"model": "qwen2.5-7b-instruct", "output_tokens_per_s": 1000}]})
    )
    done = cunliang(
        "plan", "--fleet", str(REFERENCE), "--demand", str(demand), "--cost", "full", "--json"
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["cost_basis"] == "full"
    assert doc["plan"]["served_tokens_per_s"] == 1000
    assert doc["plan"]["models"][0]["model"] == "qwen2.5-7b-instruct"
    assert set(doc["baselines"]) == {"newest-first", "cheapest-first", "single-type"}
    for other in doc["baselines"].values():
        assert other["yuan_per_hour"] >= doc["plan"]["yuan_per_hour"] - 1e-9


def test_bad_fleet_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    doc = yaml.safe_load(REFERENCE.read_text())
    doc["sites"][1]["pue"] = 0.8
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    done = cunliang("plan", "--fleet", str(bad))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "sites[1] (guian): pue" in lines[0]
    missing = cunliang("plan", "--fleet", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read fleet file" in missing.stderr


def test_predict_text_json_and_reasons(tmp_path: Path) -> None:
    args = ["predict", "--device", "Tesla T4", "--model", "qwen2.5-7b-instruct"]
    ok = cunliang(
        *args,
        "--quant",
        "int4-awq",
        "--batch",
        "8",
        "--prompt",
        "1024",
        "--output",
        "256",
        "--tpot-ms",
        "100",
    )
    assert ok.returncode == 0, ok.stderr
    assert "decode" in ok.stdout and "TTFT" in ok.stdout and "at SLO" in ok.stdout
    as_json = json.loads(cunliang(*args, "--quant", "int4-awq", "--json").stdout)
    assert as_json["ok"] and as_json["engine"] == "vllm" and as_json["decode_tokens_per_s"] > 0
    oom = cunliang(*args, "--quant", "fp16")
    assert oom.returncode == 1 and "out of memory" in oom.stdout
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "hidden_size": 4096,
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "vocab_size": 128256,
                "intermediate_size": 14336,
                "max_position_embeddings": 131072,
            }
        )
    )
    hf = cunliang("predict", "--device", "A10", "--model-config", str(config), "--json")
    assert (
        hf.returncode == 0 and abs(json.loads(hf.stdout)["weight_bytes_per_device"] - 16.06e9) < 1e8
    )


def test_predict_unknown_device_is_one_line_exit_2() -> None:
    done = cunliang("predict", "--device", "Voodoo 2", "--model", "qwen2.5-7b-instruct")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "unknown device" in done.stderr


def test_plan_from_inventory_uses_admitted_devices_only(tmp_path: Path) -> None:
    from scheduler.fleetfile import load_fleet_file
    from scheduler.inventory.schemas import ProfileIn
    from scheduler.inventory.service import InventoryService
    from scheduler.store.db import open_database, upgrade

    url = f"sqlite:///{tmp_path / 'inv.db'}"
    upgrade(url)
    db = open_database(url)
    try:
        service = InventoryService(db)
        ff = load_fleet_file(REFERENCE)
        service.import_fleet(ff.fleet, tuple(ff.models.values()), ff.demands, "test")
        service.site_action("guian", "probation", "test", "bring guian online")
        for node in service.list_nodes(site="guian"):
            profile = ProfileIn(
                reference_model="cunliang-demo", output_tokens_per_s=2000, watts=600
            )
            service.add_profile(node.host, profile, "agent")
    finally:
        db.dispose()
    done = cunliang("--database-url", url, "plan", "--from-inventory", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    classes = {v["device_class"] for v in doc["plan"]["variants"]}
    assert classes and all(c.startswith("guian/") for c in classes), classes
    both = cunliang("--database-url", url, "plan", "--from-inventory", "--fleet", str(REFERENCE))
    assert both.returncode == 2 and "exactly one" in both.stderr
