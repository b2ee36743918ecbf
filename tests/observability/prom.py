"""A real Prometheus server (Debian package) for tests: temp config, temp storage, free port."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fakes.servers import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
RULES = (
    Path(__file__).resolve().parents[2] / "deploy" / "helm" / "cunliang" / "files" / "rules.yaml"
)


@dataclass
class Prometheus:
    url: str
    client: httpx.Client

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        body = self.client.get("/api/v1/query", params=params).json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """{sorted labels (without __name__): value} of an instant query now."""
        return {
            tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(
                r["value"][1]
            )
            for r in self.query(expr)
        }

    def wait_for(self, expr: str, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f"no result for {expr} within {timeout_s} s")


def fast_rules(tmp: Path, interval_s: int = 1) -> Path:
    """The project's rules file with every group evaluated each ``interval_s`` (30 s in the
    chart) so a test sees recorded series within seconds; expressions are unchanged."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        group["interval"] = f"{interval_s}s"
    path = tmp / "rules.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@contextlib.contextmanager
def run_prometheus(tmp: Path, target: str, scrape_interval_s: int = 1) -> Iterator[Prometheus]:
    """Prometheus scraping ``target`` (host:port, path /metrics) with the project's rules."""
    if not Path(PROMETHEUS).exists():
        pytest.skip("prometheus not installed (scripts/system-deps.sh installs it)")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "global": {
            "scrape_interval": f"{scrape_interval_s}s",
            "evaluation_interval": f"{scrape_interval_s}s",
        },
        "rule_files": [str(fast_rules(tmp))],
        "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [target]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/-/ready").status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"prometheus did not start: {(tmp / 'prometheus.log').read_text()}"
                )
            time.sleep(0.1)
        yield Prometheus(f"http://127.0.0.1:{port}", client)
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
