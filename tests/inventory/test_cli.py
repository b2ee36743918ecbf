"""The CLI end to end: the real ``cunliang`` entry point in a subprocess for an operator
session, and ``main(argv)`` in-process (same code path, no interpreter start) for the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.cli.main import main
from tests.inventory.test_fleet import REFERENCE

ROOT = Path(__file__).resolve().parents[2]


def cli(data_dir: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUNLIANG_DATA_DIR": str(data_dir)}
    env.pop("CUNLIANG_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "scheduler.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def run(
    capsys: pytest.CaptureFixture[str], data_dir: Path, *args: str, code: int = 0
) -> tuple[str, str]:
    assert main(["--data-dir", str(data_dir), *args]) == code
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_operator_session(tmp_path: Path) -> None:
    cli(
        tmp_path,
        "site",
        "add",
        "guian",
        "--region",
        "west",
        "--hub",
        "guizhou",
        "--tariff-yuan-per-kwh",
        "0.35",
        "--pue",
        "1.25",
        "--tou",
        "8-22=0.6",
    )
    cli(
        tmp_path,
        "node",
        "register",
        "g1",
        "--site",
        "guian",
        "--device",
        "Tesla T4:4",
        "--residual-yuan",
        "3500",
        "--label",
        "rack=r1",
    )
    profile = tmp_path / "profile.json"
    profile.write_text(
        json.dumps(
            {
                "reference_model": "cunliang-demo",
                "output_tokens_per_s": 800,
                "watts": 300,
                "quants": ["fp16"],
            }
        )
    )
    out = cli(tmp_path, "node", "profile", "g1", str(profile)).stdout
    assert "g1/0: admitted" in out
    devices = json.loads(cli(tmp_path, "device", "list", "--state", "admitted", "--json").stdout)
    assert len(devices) == 4 and devices[0]["site"] == "guian"
    cli(tmp_path, "node", "drain", "g1", "--reason", "old cards")
    refused = cli(tmp_path, "node", "retire", "g1", ok=False)
    assert refused.returncode == 2
    assert refused.stderr.startswith("cunliang: error: The runtime cannot confirm")
    assert len(refused.stderr.strip().splitlines()) == 1
    cli(tmp_path, "node", "retire", "g1", "--replicas-moved", "--reason", "moved")
    show = cli(tmp_path, "node", "show", "g1").stdout
    assert "retired" in show and "old cards" in show and "admission" in show
    audit = json.loads(cli(tmp_path, "audit", "list", "--subject", "g1/0", "--json").stdout)
    assert [a["to_state"] for a in audit][:2] == ["retired", "draining"]
    assert audit[0]["actor"].startswith("cli")
    assert (tmp_path / "cunliang.db").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("site", "add", "x", "--region", "r", "--tariff-yuan-per-kwh", "0.5", "--pue", "0.9"),
            "pue",
        ),
        (("node", "register", "h", "--site", "nowhere", "--device", "A10"), "Unknown site"),
        (("node", "show", "ghost"), "Unknown node 'ghost'"),
        (("demand", "set", "nope", "--output-tokens-per-s", "5"), "Unknown model 'nope'"),
        (("fleet", "import", "/nonexistent.yaml"), "cannot read fleet file"),
    ],
)
def test_errors_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    _, err = run(capsys, tmp_path, *args, code=2)
    assert message in err and len(err.strip().splitlines()) == 1


def test_fleet_import_models_and_demand(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out, _ = run(capsys, tmp_path, "fleet", "import", str(REFERENCE))
    assert "imported 784 device(s) on 329 node(s)" in out
    out, _ = run(
        capsys, tmp_path, "device", "list", "--kind", "cpu", "--site", "shanghai", "--json"
    )
    assert len(json.loads(out)) == 24
    run(
        capsys,
        tmp_path,
        "model",
        "add",
        "qwen2.5-3b-instruct",
        "--source",
        "Qwen/Qwen2.5-3B-Instruct",
        "--quant",
        "int4-awq,int8-w8a8",
        "--tpot-ms",
        "80",
        "--ttft-ms",
        "1500",
        "--regions",
        "west",
    )
    run(capsys, tmp_path, "demand", "set", "qwen2.5-3b-instruct", "--output-tokens-per-s", "1200")
    out, _ = run(capsys, tmp_path, "model", "list", "--json")
    qwen3b = next(m for m in json.loads(out) if m["name"] == "qwen2.5-3b-instruct")
    assert qwen3b["quants"] == ["int4-awq", "int8-w8a8"]
    assert qwen3b["demands"][0]["tpot_ms"] == 80 and qwen3b["demands"][0]["regions"] == ["west"]
    _, err = run(capsys, tmp_path, "demand", "from-usage", "qwen2.5-3b-instruct", code=2)
    assert "No output tokens recorded" in err
    exported = tmp_path / "out.yaml"
    run(capsys, tmp_path, "fleet", "export", "-o", str(exported))
    assert "node_ids" in exported.read_text()
    out, _ = run(capsys, tmp_path, "fleet", "assess")
    assert "assessed 0 device(s)" in out  # nothing admitted yet
    out, _ = run(capsys, tmp_path, "site", "report")
    assert "hohhot" in out
    out, _ = run(capsys, tmp_path, "node", "list", "--site", "beijing")
    assert "beijing-a100-pcie-80gb-80g-0001" in out


def test_policy_file_changes_admission(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    strict = tmp_path / "policy.yaml"
    strict.write_text("min_tokens_per_yuan: 1.0e9\ngrace_period_days: 1\n")
    out, _ = run(capsys, tmp_path, "fleet", "policy", "--policy", str(strict))
    assert "min_tokens_per_yuan: 1000000000.0" in out and "grace_period_days: 1.0" in out
    run(
        capsys,
        tmp_path,
        "site",
        "add",
        "s",
        "--region",
        "r",
        "--tariff-yuan-per-kwh",
        "0.4",
        "--pue",
        "1.2",
    )
    run(capsys, tmp_path, "node", "register", "n1", "--site", "s", "--device", "A10:2")
    profile = tmp_path / "p.json"
    profile.write_text(
        json.dumps({"reference_model": "cunliang-demo", "output_tokens_per_s": 1500, "watts": 400})
    )
    out, _ = run(capsys, tmp_path, "node", "profile", "n1", str(profile), "--policy", str(strict))
    assert "n1/0: refused" in out and "tokens/yuan" in out
    out, _ = run(capsys, tmp_path, "node", "profile", "n1", str(profile))  # default policy
    assert "n1/0: admitted" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_site_pue: 0.5\n")
    _, err = run(capsys, tmp_path, "fleet", "assess", "--policy", str(bad), code=2)
    assert "max_site_pue" in err
