"""Subprocess side of the probes: does one risky measurement and prints one JSON line.

Run as ``python -m workers.probe_child matmul --dtype bfloat16`` or
``python -m workers.probe_child engine --model DIR --dtype float32 --batches 1,8``.
It lives in its own process because an unsupported instruction (SIGILL) or a hung
kernel must cost the agent one probe, not its life. The last stdout line starting with
:data:`RESULT_MARKER` carries the result; everything else (vLLM logs) is noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

RESULT_MARKER = "CUNLIANG_PROBE_RESULT "

# prompt length for prefill timing; prompt + decode must fit max_model_len (256)
PROMPT_TOKENS = 128


def _emit(result: dict[str, Any]) -> None:
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()


def matmul(dtype_name: str, size: int, seconds: float) -> dict[str, Any]:
    """Peak FLOP/s of a square torch matmul in ``dtype_name`` on the CPU (all threads).

    The best of many single multiplications within ``seconds``: on a shared machine an
    average measures the neighbours; the best run measures the hardware.
    """
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.matmul(a, b)  # warm-up: first call picks kernels (and faults on missing ISA)
    best_s = float("inf")
    runs = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 3:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best_s = min(best_s, time.perf_counter() - t0)
        runs += 1
    return {"flops_per_s": 2.0 * size**3 / best_s, "threads": torch.get_num_threads(), "runs": runs}


def _prompts(batch: int, salt: int, vocab_limit: int) -> list[Any]:
    from vllm.inputs import TokensPrompt

    # distinct token ids per request and per run so no prefix-cache hit flatters prefill
    return [
        TokensPrompt(
            prompt_token_ids=[
                1000 + (salt * 7919 + i * 104729 + j * 31) % (vocab_limit - 1000)
                for j in range(PROMPT_TOKENS)
            ]
        )
        for i in range(batch)
    ]


def engine(model: str, dtype: str, batches: list[int], decode_tokens: int) -> dict[str, Any]:
    """Prefill and decode tokens/s of a real vLLM engine at each batch size."""
    from vllm import LLM, SamplingParams

    load_start = time.perf_counter()
    engine_dtype: Any = dtype  # vLLM types it as a Literal; the parent validated it
    llm = LLM(
        model=model,
        dtype=engine_dtype,
        max_model_len=256,
        enforce_eager=True,
        enable_prefix_caching=False,
        seed=0,
    )
    load_s = time.perf_counter() - load_start
    vocab = int(llm.get_tokenizer().vocab_size)
    salt = iter(range(1, 10_000))

    def timed(batch: int, max_tokens: int) -> tuple[float, int]:
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
        start = time.perf_counter()
        outs = llm.generate(_prompts(batch, next(salt), vocab), params, use_tqdm=False)
        return time.perf_counter() - start, sum(len(o.outputs[0].token_ids) for o in outs)

    rows = []
    for batch in batches:
        timed(batch, 2)  # warm-up: the first step at a new shape allocates and picks kernels
        # best of two: a one-off stall must not pass for the prefill rate
        prefill_s = min(timed(batch, 1)[0] for _ in range(2))
        # best of two as well: other tenants of a shared core stall single runs
        total_s, generated = min(timed(batch, decode_tokens) for _ in range(2))
        # decode time = whole request minus its prefill (measured just before, same shape)
        decode_s = max(total_s - prefill_s, 1e-9)
        rows.append(
            {
                "batch": batch,
                "prefill_tokens_per_s": batch * PROMPT_TOKENS / prefill_s,
                "decode_tokens_per_s": (generated - batch) / decode_s,
                "generated_tokens": generated,
            }
        )
    return {"load_s": load_s, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workers.probe_child")
    sub = parser.add_subparsers(dest="what", required=True)
    mm = sub.add_parser("matmul")
    mm.add_argument("--dtype", required=True)
    mm.add_argument("--size", type=int, default=512)
    mm.add_argument("--seconds", type=float, default=1.0)
    en = sub.add_parser("engine")
    en.add_argument("--model", required=True)
    en.add_argument("--dtype", required=True)
    en.add_argument("--batches", default="1")
    en.add_argument("--decode-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    if args.what == "matmul":
        _emit(matmul(args.dtype, args.size, args.seconds))
    else:
        batches = [int(b) for b in args.batches.split(",")]
        _emit(engine(args.model, args.dtype, batches, args.decode_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
