"""1,000 concurrent streaming clients through a real gateway process: every stream completes
with the right content and its usage record, and the gateway's memory stays bounded.

The engine is the fake upstream in its own process, slowed to 100 ms a token so that all
1,000 streams are open at once (each lasts at least 16 x 100 ms); the gateway is
``python -m scheduler.gateway.serve`` in its own process, so its RSS is its own. Three rounds
of 1,000: the first warms pools and allocator arenas, the later ones must not grow it.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import psutil
from sqlalchemy import func, select

from scheduler.store.tenancy import UsageRow, session_factory
from scheduler.tenancy import TenancyService
from tests.fakes.servers import free_port
from tests.gateway.conftest import ENGINE_MODEL, MODEL
from tests.gateway.test_durability import REPO, start_gateway

STREAMS = 1000
TOKENS = 16
ROUNDS = 3
PEAK_GROWTH_MB = 100  # per-connection state of 1,000 client + 1,000 engine connections
LEAK_MB = 10  # RSS after round 3 vs after round 1


def _raise_fd_limit() -> None:
    # 1,000 streams hold 3,000 sockets across the three processes; children inherit this
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class _Open:
    """Streams open at once (response started, not finished), and the most seen."""

    now = 0
    most = 0


async def _stream(session: aiohttp.ClientSession, url: str, i: int) -> tuple[str, int, str]:
    """(text, completion tokens from the usage event, last event) of one streamed completion."""
    body = {
        "model": MODEL,
        "prompt": f"client {i}",
        "max_tokens": TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    text, tokens, last = [], -1, ""
    async with session.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        _Open.now += 1
        _Open.most = max(_Open.most, _Open.now)
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            last = line[6:].strip().decode()
            if last == "[DONE]":
                continue
            event = json.loads(last)
            assert "error" not in event, event
            text.extend(choice["text"] for choice in event["choices"])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    _Open.now -= 1
    return "".join(text), tokens, last


async def _round(url: str, key: str) -> list[tuple[str, int, str]]:
    connector = aiohttp.TCPConnector(limit=0)  # one connection per stream, all at once
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers
    ) as session:
        return await asyncio.gather(*(_stream(session, url, i) for i in range(STREAMS)))


class _PeakRss:
    """Samples a process's RSS every 50 ms in a thread; ``peak`` is the largest seen."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.peak = process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def test_thousand_concurrent_streams_complete_with_bounded_memory(tmp_path: Path) -> None:
    _raise_fd_limit()
    _Open.now = _Open.most = 0
    sessions = session_factory(f"sqlite:///{tmp_path / 'gw.db'}", create_tables=True)
    tenancy = TenancyService(sessions)
    tenancy.create_tenant("crowd")
    key = tenancy.create_key("crowd").secret
    engine_port, port = free_port(), free_port()
    engine = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.openai_upstream",
            "--port",
            str(engine_port),
            "--model",
            ENGINE_MODEL,
            "--token-delay-s",
            "0.1",
        ],
        cwd=REPO,
    )
    gateway = None
    try:
        replicas_file = tmp_path / "replicas.json"
        replica = {
            "id": "r0",
            "model": MODEL,
            "engine_model": ENGINE_MODEL,
            "base_url": f"http://127.0.0.1:{engine_port}",
            "quant": "bf16",
            "device_class": "cpu",
            "site": "local",
            "yuan_per_hour": 1.0,
            "state": "ready",
        }
        replicas_file.write_text(json.dumps([replica]))
        gateway = start_gateway(tmp_path, port, replicas_file)
        process = psutil.Process(gateway.pid)
        url = f"http://127.0.0.1:{port}/v1/completions"
        expected_text = "".join(f"t{i} " for i in range(TOKENS))
        rss_after: list[int] = []
        peaks: list[int] = []
        start_rss = process.memory_info().rss
        started = time.monotonic()
        for _ in range(ROUNDS):
            sampler = _PeakRss(process)
            results = asyncio.run(_round(url, key))
            peaks.append(sampler.stop())
            assert len(results) == STREAMS
            assert all(r == (expected_text, TOKENS, "[DONE]") for r in results), [
                r for r in results if r != (expected_text, TOKENS, "[DONE]")
            ][:3]
            rss_after.append(process.memory_info().rss)
        elapsed_s = time.monotonic() - started

        # every stream left exactly one usage record, billed its 16 tokens
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with sessions() as session:
                count = session.scalar(select(func.count(UsageRow.id))) or 0
            if count >= ROUNDS * STREAMS:
                break
            time.sleep(0.2)
        with sessions() as session:
            rows = session.execute(
                select(
                    UsageRow.status, UsageRow.completion_tokens, func.count(UsageRow.id)
                ).group_by(UsageRow.status, UsageRow.completion_tokens)
            ).all()
        assert [tuple(r) for r in rows] == [(200, TOKENS, ROUNDS * STREAMS)]

        mb = 1024 * 1024
        peak_growth_mb = (max(peaks) - start_rss) / mb
        leak_mb = (rss_after[-1] - rss_after[0]) / mb
        report = (
            f"rss start {start_rss / mb:.0f} MB, peaks {[round(p / mb) for p in peaks]} MB, "
            f"after rounds {[round(r / mb) for r in rss_after]} MB, {elapsed_s:.1f} s"
        )
        print(report, f"most streams open at once {_Open.most}")
        assert _Open.most >= STREAMS * 0.9  # the streams really overlapped
        assert peak_growth_mb < PEAK_GROWTH_MB, report
        assert leak_mb < LEAK_MB, report
    finally:
        for proc in (gateway, engine):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
