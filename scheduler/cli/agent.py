"""``cunliang agent``: profile this node, print or save the profile, optionally post it.

    cunliang agent                        # full profile, summary table, JSON to --out
    cunliang agent --profile quick --json # dtype probe only (cached), JSON on stdout
    cunliang agent --post http://inv:8000 --admin-token adm-cl-...

Posting goes to ``POST {URL}/admin/v1/nodes/{host}/profiles`` (the inventory's admin
API) with the body :func:`profile_post_body` builds; the HTTP client is injectable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from scheduler.errors import CunliangError, InvalidInput
from scheduler.settings import Settings


class HttpResponse(Protocol):
    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...


class HttpPoster(Protocol):
    """The slice of ``httpx.Client`` posting needs."""

    def post(
        self, url: str, *, json: Any, headers: Mapping[str, str], timeout: float
    ) -> HttpResponse: ...


def profiles_endpoint(base_url: str, host: str) -> str:
    return f"{base_url.rstrip('/')}/admin/v1/nodes/{host}/profiles"


def post_profile(
    client: HttpPoster, base_url: str, host: str, body: Mapping[str, Any], admin_token: str
) -> dict[str, Any]:
    """POST the profile; return the inventory's answer. Raises CunliangError on non-2xx."""
    url = profiles_endpoint(base_url, host)
    response = client.post(
        url, json=dict(body), headers={"Authorization": f"Bearer {admin_token}"}, timeout=30.0
    )
    if not 200 <= response.status_code < 300:
        raise CunliangError(
            f"posting the profile to {url} failed: HTTP {response.status_code} "
            f"{response.text[:300]}",
            fix="check --post URL, --admin-token and that the node is registered",
        )
    answer: dict[str, Any] = json.loads(response.text) if response.text else {}
    return answer


def _progress_bar() -> tuple[Callable[[str, float], None], Callable[[], None]]:
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed}")

    def update(stage: str, fraction: float) -> None:
        bar.set_description(stage[:40])
        bar.update(max(0, round(fraction * 100) - bar.n))

    return update, bar.close


def _summary(profile: Any) -> str:
    lines = [
        f"host {profile.host.hostname}: {profile.host.cpu.model_name}, "
        f"{profile.host.cpu.physical_cores} cores, {len(profile.host.gpus)} GPU(s)",
    ]
    if profile.memory_bandwidth_bytes_per_s:
        lines.append(f"memory copy bandwidth {profile.memory_bandwidth_bytes_per_s / 1e9:.1f} GB/s")
    for mm in profile.matmul:
        rate = f"{mm.flops_per_s / 1e9:.1f} GFLOP/s" if mm.ok else f"unsupported ({mm.error})"
        lines.append(f"matmul {mm.dtype:9s} {rate}")
    for probe in profile.engine:
        if not probe.ok:
            lines.append(f"vllm {probe.dtype:9s} unsupported: {probe.error}")
            continue
        for row in probe.rows:
            lines.append(
                f"vllm {probe.dtype:9s} batch {row.batch:3d}: "
                f"prefill {row.prefill_tokens_per_s:9.0f} tok/s, "
                f"decode {row.decode_tokens_per_s:8.0f} tok/s"
            )
    lines.append(f"chosen dtype: {profile.chosen_dtype}; took {profile.duration_s:.0f} s")
    return "\n".join(lines)


def run_agent(args: argparse.Namespace, settings: Settings) -> int:
    from workers.profiler import full_profile, profile_post_body, quick_profile

    dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    unknown = sorted(set(dtypes) - {"float32", "bfloat16", "float16"})
    if unknown or not dtypes:
        raise InvalidInput(f"--dtypes must list float32/bfloat16/float16, got {args.dtypes!r}")
    token: str | None = args.admin_token or settings.admin_token
    if args.post and not token:
        raise InvalidInput("--post needs --admin-token (or CUNLIANG_ADMIN_TOKEN)")
    update, close = _progress_bar()
    try:
        run = full_profile if args.profile == "full" else quick_profile
        profile = run(
            settings.data_dir,
            dtypes=dtypes,
            timeout_s=settings.probe_timeout_s,
            progress=update,
        )
    finally:
        close()
    document = profile.to_json()
    text = json.dumps(document, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", "utf-8")
    print(text if args.json else _summary(profile))
    if args.post and token:
        import httpx

        with httpx.Client() as client:
            answer = post_profile(
                client,
                args.post,
                profile.host.hostname,
                profile_post_body(profile),
                token,
            )
        print(f"posted: {json.dumps(answer)[:500]}", file=sys.stderr)
    return 0 if profile.chosen_dtype is not None else 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "agent", help="profile this node (hardware, bandwidth, matmul, real vLLM throughput)"
    )
    parser.add_argument("--profile", choices=("full", "quick"), default="full")
    parser.add_argument(
        "--dtypes", default="float32,bfloat16,float16", help="comma-separated dtypes to probe"
    )
    parser.add_argument("--json", action="store_true", help="print the profile JSON")
    parser.add_argument("--out", help="also write the profile JSON to this file")
    parser.add_argument("--post", metavar="URL", help="inventory base URL to post the profile to")
    parser.add_argument("--admin-token", help="admin token for --post")
    parser.set_defaults(func=run_agent)
