"""The gateway's usage writer through a database outage: memory while it lasts, and how
long the records take to reach the database once it is back.

Each run is a subprocess with one ``UsageWriter`` (scheduler/gateway/metering.py), with the
gateway's flush settings (``GatewayConfig``: once a second, or at 16,384 queued records), in
front of a real SQLite tenancy store, fed usage records at a steady rate on its event loop as the
gateway's requests would (a record built and submitted per request). After ``--up-s``
seconds, another connection takes SQLite's write lock (``BEGIN EXCLUSIVE``) for
``--outage-s`` seconds: every flush waits out the store's busy timeout (10 s) and fails
with "database is locked", as with a database that is down. Then the lock goes, and the run
ends when every record submitted until then is in the database (or ``--drain-timeout-s``
passes), records going on at the same rate meanwhile.
Measured per run: the process's peak resident memory above its level before the outage
(``VmHWM`` from /proc), the seconds from the lock's release until every record is stored,
and whether each record was stored exactly once; for each outage length in ``--outage-s``
(memory that grows with the outage's length is unbounded). Then a restart: a writer is
killed (no flush, its lock dropped) with ``--restart-records`` records in its WAL, as a
gateway killed after a long outage, and a new one opens the same directory: measured, the
seconds until ``open()`` returns (a gateway listens after it) and until every record is
stored (the new writer's flushes, once a second, a share each). With ``--compare-repo`` the
same runs use another checkout's writer too (e.g. the commit before the backlog), in the
same invocation, alternating.

    PYTHONPATH=$PWD .venv/bin/python bench/usage_outage.py [--rate 4500] [--outage-s 30,90]
        [--restart-records 400000] [--compare-repo <checkout>]

Writes bench/results/usage_outage.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import print_result, write_result  # noqa: E402

# what both runs' subprocesses share: a SQLite tenancy store in the temporary directory
# argv[1], a tenant, the records (as a gateway's requests write them), a writer with the
# gateway's flush settings, and a count of what reached the database
_COMMON = r"""
import asyncio, json, os, sqlite3, sys, time
from datetime import UTC, datetime
from pathlib import Path
from sqlalchemy import func, select
from scheduler.gateway.config import GatewayConfig
from scheduler.gateway.metering import UsageWriter
from scheduler.settings import Settings
from scheduler.store.tenancy import UsageRow, session_factory
from scheduler.tenancy import TenancyService, UsageRecord

tmp = Path(sys.argv[1])
db_file = tmp / "gw.db"
sessions = session_factory(f"sqlite:///{db_file}", create_tables=True)
tenancy = TenancyService(sessions)
tenant = tenancy.create_tenant("bench")


def record(i):
    return UsageRecord(
        request_id=f"req-{i:x}", tenant_id=tenant.id, key_id="k", model="demo", status=200,
        created_at=datetime.now(UTC), quant="fp32", replica_id="r0", device_class="cpu",
        site="local", prompt_tokens=12, completion_tokens=4, ttft_ms=None, latency_ms=1.5,
        cost_yuan=1e-7, stream=False,
    )


def gateway_writer():
    config = GatewayConfig.from_settings(Settings(data_dir=tmp))  # the gateway's flush cadence
    return UsageWriter(
        tenancy, tmp / "wal", batch_max=config.usage_batch_max,
        flush_interval_s=config.usage_flush_interval_s,
    )


def stored():
    with sessions() as session:
        return session.execute(
            select(func.count(), func.count(func.distinct(UsageRow.request_id)))
        ).one()
"""

_RUN = (
    _COMMON
    + r"""
rate, up_s, outage_s, drain_timeout_s = (
    int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]),
)


def peak_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


# records created before `when` (the outage's end) in the database: not the traffic after
# it, which flushes store alongside shares of the backlog
def stored_before(when):
    with sessions() as session:
        return session.execute(
            select(func.count()).where(UsageRow.created_at <= when)
        ).scalar_one()


async def main():
    writer = gateway_writer()
    writer.open()
    await writer.start()
    submitted = 0
    tick_s = 0.01

    async def feed(seconds):
        nonlocal submitted
        start, fed = time.monotonic(), 0
        while (elapsed := time.monotonic() - start) < seconds:
            while fed < int((elapsed + tick_s) * rate):
                writer.submit(record(submitted))
                submitted += 1
                fed += 1
            await asyncio.sleep(tick_s)

    await feed(up_s)
    before_kib = peak_kib()
    lock = sqlite3.connect(db_file, isolation_level=None, timeout=30)
    lock.execute("BEGIN EXCLUSIVE")
    await feed(outage_s)
    failed = writer.failed_flushes
    lock.execute("COMMIT")
    lock.close()
    released = time.monotonic()
    released_at = datetime.now(UTC).replace(tzinfo=None)  # as stored: naive UTC
    owed = submitted  # every record up to the outage's end
    traffic = asyncio.create_task(feed(drain_timeout_s))  # requests go on meanwhile
    drained_s = None
    while time.monotonic() - released < drain_timeout_s:
        await asyncio.sleep(0.2)
        if await asyncio.to_thread(stored_before, released_at) >= owed:
            drained_s = time.monotonic() - released
            break
    traffic.cancel()
    await writer.stop()
    rows, distinct = stored()
    print(json.dumps({
        "submitted": submitted, "stored_rows": rows, "stored_distinct": distinct,
        "peak_over_before_outage_mib": (peak_kib() - before_kib) / 1024,
        "failed_flushes": failed,
        "drain_s": drained_s if drained_s is not None else -1.0,
    }))


asyncio.run(main())
"""
)

_RESTART = (
    _COMMON
    + r"""
records = int(sys.argv[2])
killed = UsageWriter(tenancy, tmp / "wal")
killed.open()
for i in range(records):
    killed.submit(record(i))
os.close(killed._lock_fd)  # killed: no flush; the kernel drops its lock


async def main():
    started = time.monotonic()
    writer = gateway_writer()
    await asyncio.to_thread(writer.open)  # as Gateway.startup, before it listens
    ready_s = time.monotonic() - started
    await writer.start()
    while writer.pending:  # the writer's own count: no query competing with the inserts
        await asyncio.sleep(0.05)
    stored_s = time.monotonic() - started
    await writer.stop()
    rows, distinct = stored()
    print(json.dumps({
        "ready_s": ready_s, "stored_s": stored_s, "lost": records - distinct,
        "duplicated": rows - distinct,
    }))


asyncio.run(main())
"""
)


def _run_script(repo: Path, script: str, *args: object, timeout_s: float) -> dict[str, float]:
    """``script`` with ``repo``'s code in a subprocess, a temporary directory first in its
    arguments; the JSON object its last line prints."""
    with tempfile.TemporaryDirectory(prefix="cl-outage-") as tmp:
        out = subprocess.run(
            [sys.executable, "-c", script, tmp, *map(str, args)],
            cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
            capture_output=True, text=True, check=True, timeout=timeout_s,
        )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def restart(repo: Path, records: int) -> dict[str, float]:
    return _run_script(repo, _RESTART, records, timeout_s=1800)


def run(repo: Path, args: argparse.Namespace, outage_s: float) -> dict[str, float]:
    return _run_script(
        repo,
        _RUN,
        args.rate,
        args.up_s,
        outage_s,
        args.drain_timeout_s,
        timeout_s=outage_s + 600,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=4500, help="records (requests) per second")
    parser.add_argument("--up-s", type=float, default=5.0, help="seconds before the outage")
    parser.add_argument("--outage-s", default="30,90", help="outage lengths, comma-separated")
    parser.add_argument("--drain-timeout-s", type=float, default=300.0)
    parser.add_argument(
        "--restart-records", type=int, default=400_000, help="WAL records at the restart (0: skip)"
    )
    parser.add_argument("--compare-repo", type=Path, help="baseline checkout, run the same way")
    args = parser.parse_args()
    runs = {"writer": REPO}
    if args.compare_repo is not None:
        runs["baseline"] = args.compare_repo.resolve()
    outages = [float(x) for x in args.outage_s.split(",") if x]
    metrics: dict[str, float] = {}
    for outage_s in outages:
        for name, repo in runs.items():
            r = run(repo, args, outage_s)
            print(f"outage {outage_s:.0f} s, {name}: {r}", file=sys.stderr)
            tag = f"{name}_outage{outage_s:.0f}s"
            metrics[f"{tag}_peak_memory_over_before_mib"] = round(
                r["peak_over_before_outage_mib"], 1
            )
            metrics[f"{tag}_drain_after_s"] = round(r["drain_s"], 1)
            metrics[f"{tag}_records_lost"] = r["submitted"] - r["stored_distinct"]
            metrics[f"{tag}_records_duplicated"] = r["stored_rows"] - r["stored_distinct"]
        if "baseline" in runs:
            key = f"outage{outage_s:.0f}s_peak_memory_over_before_mib"
            metrics[f"outage{outage_s:.0f}s_peak_memory_writer_over_baseline_ratio"] = round(
                metrics[f"writer_{key}"] / max(0.1, metrics[f"baseline_{key}"]), 3
            )
    for name, repo in runs.items() if args.restart_records else ():
        r = restart(repo, args.restart_records)
        print(f"restart, {name}: {r}", file=sys.stderr)
        metrics[f"{name}_restart_listening_after_ms"] = round(r["ready_s"] * 1000, 1)
        metrics[f"{name}_restart_all_stored_after_s"] = round(r["stored_s"], 1)
        metrics[f"{name}_restart_records_lost"] = r["lost"]
        metrics[f"{name}_restart_records_duplicated"] = r["duplicated"]
    if args.restart_records and "baseline" in runs:
        metrics["restart_listening_writer_over_baseline_ratio"] = round(
            metrics["writer_restart_listening_after_ms"]
            / max(0.1, metrics["baseline_restart_listening_after_ms"]),
            4,
        )
    path = write_result(
        "usage_outage",
        metrics,
        config={
            "rate_records_per_s": args.rate,
            "up_s": args.up_s,
            "outage_s": outages,
            "database": "SQLite (WAL mode, busy timeout 10 s), write lock held during the outage",
            "restart_records": args.restart_records,
            "baseline": str(args.compare_repo) if args.compare_repo else None,
        },
    )
    print_result(path, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
