"""kill -9 the gateway (a real subprocess) under load: no completed request's usage record is
lost or duplicated; the next process stores what the WAL holds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
from sqlalchemy import func, select

from scheduler.store.tenancy import UsageRow, session_factory
from scheduler.tenancy import TenancyService
from tests.fakes.openai_upstream import FakeUpstream, UpstreamBehaviour
from tests.fakes.servers import free_port, serve_in_thread
from tests.gateway.conftest import ENGINE_MODEL, MODEL

REPO = Path(__file__).resolve().parents[2]


def start_gateway(tmp_path: Path, port: int, replicas_file: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CUNLIANG_DATA_DIR": str(tmp_path / "data"),
        "CUNLIANG_DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}",
        "CUNLIANG_ADMIN_TOKEN": "adm-cl-kill-test",
        "CUNLIANG_PORT": str(port),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scheduler.gateway.serve",
            "--replicas",
            str(replicas_file),
            "--usage-flush-interval-s",
            "0.5",  # long batches: the kill surely finds records only in the WAL
        ],
        env=env,
        cwd=REPO,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("gateway subprocess did not become healthy")


def test_sigkill_mid_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    sessions = session_factory(f"sqlite:///{tmp_path / 'gw.db'}", create_tables=True)
    tenancy = TenancyService(sessions)
    tenancy.create_tenant("acme")
    key = tenancy.create_key("acme").secret
    upstream = FakeUpstream(
        served_model=ENGINE_MODEL, behaviour=UpstreamBehaviour(token_delay_s=0.002), record=False
    )
    with serve_in_thread(upstream, lifespan="off") as upstream_url:
        replicas_file = tmp_path / "replicas.json"
        replicas_file.write_text(
            json.dumps(
                [
                    {
                        "id": "r0",
                        "model": MODEL,
                        "engine_model": ENGINE_MODEL,
                        "base_url": upstream_url,
                        "quant": "bf16",
                        "device_class": "cpu",
                        "site": "local",
                        "yuan_per_hour": 1.0,
                        "state": "ready",
                    }
                ]
            )
        )
        port = free_port()
        proc = start_gateway(tmp_path, port, replicas_file)
        completed: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def worker(i: int) -> None:
            client = openai.OpenAI(
                api_key=key, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=10
            )
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    if (i + n) % 2:
                        raw = client.completions.with_raw_response.create(
                            model=MODEL, prompt="x", max_tokens=4
                        )
                        raw.parse()
                    else:
                        raw = client.completions.with_raw_response.create(
                            model=MODEL, prompt="x", max_tokens=4, stream=True
                        )
                        assert len([c for c in raw.parse() if c.choices]) >= 4
                except (openai.APIError, AssertionError):
                    return  # the gateway died under us: this request did not complete
                with lock:
                    completed.append(raw.headers["x-request-id"])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=15)
        assert len(completed) > 20, "load did not run"
        wal = list((tmp_path / "data" / "usage-wal").glob("usage-*.wal"))
        assert any(p.stat().st_size for p in wal), "the killed gateway left records in its WAL"
        with sessions() as session:
            before_replay = session.scalar(select(func.count(UsageRow.id))) or 0

        # the WAL it left is the new process's backlog: it serves at once, and stores the
        # backlog while serving; a usage read stores all of it first
        proc = start_gateway(tmp_path, port, replicas_file)
        try:
            usage = httpx.get(
                f"http://127.0.0.1:{port}/v1/usage",
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
            assert usage.status_code == 200, usage.text
            with sessions() as session:
                ids = list(session.scalars(select(UsageRow.request_id)))
                total = session.scalar(select(func.count(UsageRow.id)))
            assert total == len(set(ids))  # never duplicated
            assert total > before_replay  # the restart recovered records from the WAL
            missing = set(completed) - set(ids)
            assert not missing, f"{len(missing)} completed requests lost their usage record"
            rows_ok = [i for i in ids if i in set(completed)]
            assert len(rows_ok) == len(completed)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
        # a graceful stop flushes and removes every segment
        leftover = [
            p for p in (tmp_path / "data" / "usage-wal").glob("usage-*.wal") if p.stat().st_size
        ]
        assert leftover == []
