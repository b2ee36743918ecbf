"""The real dtype probe (vLLM in a subprocess) through ``cunliang agent``. Engine-marked."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import scheduler.cli.main as cli_main

pytestmark = pytest.mark.engine


def test_quick_agent_probes_float32_for_real_then_reads_the_cache(
    demo_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ("scheduler.cli.agent",))
    argv = ["--data-dir", str(demo_data_dir), "agent", "--profile", "quick"]
    argv += ["--dtypes", "float32", "--out", str(tmp_path / "first.json")]
    assert cli_main.main(argv) == 0
    first = json.loads((tmp_path / "first.json").read_text())
    (probe,) = first["engine"]
    assert probe["dtype"] == "float32" and probe["ok"], probe["error"]
    assert [r["batch"] for r in probe["rows"]] == [1, 8]
    assert all(
        r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0 for r in probe["rows"]
    )
    assert probe["decode_tokens_per_s"] == probe["rows"][0]["decode_tokens_per_s"]
    assert first["chosen_dtype"] == "float32" and first["matmul"][0]["ok"]
    assert first["host"]["cpu"]["physical_cores"] >= 1

    start = time.monotonic()
    argv[-1] = str(tmp_path / "second.json")
    assert cli_main.main(argv) == 0
    assert time.monotonic() - start < 20  # no vLLM start: the probe comes from the cache
    second = json.loads((tmp_path / "second.json").read_text())
    assert second["notes"] == ["dtype probe from cache"]
    assert second["engine"] == first["engine"] and second["fingerprint"] == first["fingerprint"]
