"""``cunliang agent``: profile this node, print or save the profile, optionally post it.

    cunliang agent                        # full profile, summary table, JSON to --out
    cunliang agent --profile quick --json # dtype probe only (cached), JSON on stdout
    cunliang agent --post http://inv:8000 --admin-token adm-cl-...
    cunliang agent --join head-host:6379 --post http://inv:8000 --site guian  # cluster node

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
    int8 = profile.int8_w8a8
    if int8 is not None and int8.ok:
        for row in int8.rows:
            lines.append(
                f"vllm int8-w8a8 ({int8.dtype}) batch {row.batch:3d}: "
                f"prefill {row.prefill_tokens_per_s:9.0f} tok/s, "
                f"decode {row.decode_tokens_per_s:8.0f} tok/s"
            )
    elif int8 is not None:
        lines.append(f"vllm int8-w8a8 unsupported: {int8.error}")
    lines.extend(f"note: {note}" for note in profile.notes)
    lines.append(f"chosen dtype: {profile.chosen_dtype}; took {profile.duration_s:.0f} s")
    return "\n".join(lines)


def run_agent(args: argparse.Namespace, settings: Settings) -> int:
    if args.join:
        return run_join(args, settings)
    if args.profile == "none":
        raise InvalidInput("--profile none only makes sense with --join")
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


def local_devices(host_info: Any) -> list[Any]:
    """This machine's devices as the inventory registers them: the CPU server, each GPU."""
    from scheduler.runtime.join import LocalDevice
    from workers.hardware import cpu_device_spec

    cpu = host_info.cpu
    spec = cpu_device_spec(cpu)
    cpu_body = {
        "model": spec.model[:100] or "cpu",
        "kind": "cpu",
        "vendor": spec.vendor,
        "memory_bytes": spec.memory_bytes,
        "isa_flags": sorted(spec.isa_flags),
        "sockets": max(1, cpu.sockets),
    }
    devices = [LocalDevice(cpu_body["model"], 1, cpu_body)]
    by_model: dict[tuple[str, int, str], int] = {}
    for gpu in host_info.gpus:
        cc = "{}.{}".format(*gpu.compute_capability)
        key = (gpu.name[:100], gpu.memory_bytes, cc)
        by_model[key] = by_model.get(key, 0) + 1
    for (name, memory, cc), count in sorted(by_model.items()):
        body = {
            "model": name,
            "kind": "gpu",
            "count": count,
            "memory_bytes": memory,
            "compute_capability": cc,
        }
        devices.append(LocalDevice(name, count, body))
    return devices


def run_join(args: argparse.Namespace, settings: Settings) -> int:
    """Register this machine, start its Ray node, record the node id, profile, heartbeat."""
    import signal
    import subprocess
    import threading

    import httpx

    from scheduler.runtime.join import InventoryApi, join, node_id_from_rows
    from workers.hardware import detect_host

    token: str | None = args.admin_token or settings.admin_token
    if not args.post or not token:
        raise InvalidInput("--join needs --post INVENTORY_URL and --admin-token")

    def run(argv: Any) -> tuple[int, str]:
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=180)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return 127, str(exc)
        return proc.returncode, proc.stdout + proc.stderr

    host_info = detect_host()
    host = args.host or host_info.hostname
    with httpx.Client() as client:
        api = InventoryApi(client, args.post, token)
        result = join(
            api,
            run,
            address=args.join,
            host=host,
            site=args.site or settings.site_name,
            devices=local_devices(host_info),
            num_cpus=args.num_cpus,
            temp_dir=args.ray_temp_dir,
        )
        print(
            f"joined {args.join} as {host} "
            f"({'registered' if result.registered else 'already registered'}); "
            f"resources {json.dumps(dict(result.resources))}",
            flush=True,
        )
        ray_node_id = _find_ray_node(args.join, host, node_id_from_rows)
        if ray_node_id:
            api.set_ray_node(host, ray_node_id)
        if args.profile != "none":
            _profile_and_post(args, settings, client, host, token)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(f"agent: heartbeat every {args.heartbeat_s:.0f} s (Ctrl-C to stop)", flush=True)
        while not stop.wait(args.heartbeat_s):
            try:
                api.health(host, True, "agent heartbeat")
            except (CunliangError, httpx.HTTPError) as exc:
                print(f"agent: heartbeat failed: {exc}", file=sys.stderr, flush=True)
        api.set_ray_node(host, None)
    return 0


def _find_ray_node(address: str, host: str, find: Callable[..., str | None]) -> str | None:
    """Connect briefly as a driver to read the node table (the id is not printed by
    ``ray start``); None when the cluster cannot be read."""
    import ray

    from scheduler.runtime.ray_backend import ray_nodes

    target = "auto" if address == "head" else address
    try:
        ray.init(address=target, log_to_driver=False)
        return find(ray_nodes(), host)
    except Exception as exc:  # the id is a convenience; the host resource names the node
        print(f"agent: could not read the Ray node id: {exc}", file=sys.stderr)
        return None
    finally:
        if ray.is_initialized():
            ray.shutdown()


def _profile_and_post(
    args: argparse.Namespace, settings: Settings, client: Any, host: str, token: str
) -> None:
    from workers.profiler import full_profile, profile_post_body, quick_profile

    run = full_profile if args.profile == "full" else quick_profile
    profile = run(settings.data_dir, timeout_s=settings.probe_timeout_s)
    answer = post_profile(client, args.post, host, profile_post_body(profile), token)
    print(f"profile posted: {json.dumps(answer)[:300]}", flush=True)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "agent", help="profile this node (hardware, bandwidth, matmul, real vLLM throughput)"
    )
    parser.add_argument(
        "--profile",
        choices=("full", "quick", "none"),
        default="full",
        help="none: with --join, register and join without profiling",
    )
    parser.add_argument(
        "--dtypes", default="float32,bfloat16,float16", help="comma-separated dtypes to probe"
    )
    parser.add_argument("--json", action="store_true", help="print the profile JSON")
    parser.add_argument("--out", help="also write the profile JSON to this file")
    parser.add_argument("--post", metavar="URL", help="inventory base URL to post the profile to")
    parser.add_argument("--admin-token", help="admin token for --post")
    parser.add_argument(
        "--join",
        metavar="ADDRESS",
        help="join the Ray cluster at ADDRESS (host:port; 'head' starts a head), register "
        "with the inventory at --post, profile, then keep running (heartbeats)",
    )
    parser.add_argument("--site", help="inventory site of this machine (--join)")
    parser.add_argument("--host", help="name in the inventory (default: hostname)")
    parser.add_argument("--num-cpus", type=int, help="CPUs the Ray node advertises (--join)")
    parser.add_argument("--ray-temp-dir", help="Ray temp dir of the node (--join)")
    parser.add_argument("--heartbeat-s", type=float, default=15.0)
    parser.set_defaults(func=run_agent)
