"""What every benchmark shares: machine facts and the results file format.

Each ``bench/<name>.py`` writes ``bench/results/<name>.json`` as
``{"benchmark", "when", "machine", "metrics": {name: number}}`` with units in metric
names, and always measures a baseline side by side in the same run.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        # these machines are shared and noisy: say how busy this one was
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def write_result(name: str, metrics: dict[str, float], **extra: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    body = {
        "benchmark": name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "metrics": {k: float(v) for k, v in metrics.items()},
        **extra,
    }
    path.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")
    return path


def print_result(path: Path, metrics: dict[str, float]) -> None:
    """Each metric on a line, then where ``write_result`` wrote them."""
    for key, value in metrics.items():
        print(f"{key} {value}")
    print(f"wrote {path}")


def gateway_fixture(tmp: Path, engine_url: str, model: str) -> tuple[str, Path]:
    """A gateway database (``tmp/gw.db``) with tenant "bench", and a replicas file naming
    one ready replica of ``model`` at ``engine_url``: (that tenant's API key, the file)."""
    from scheduler.store.tenancy import session_factory
    from scheduler.tenancy import TenancyService

    tenancy = TenancyService(session_factory(f"sqlite:///{tmp / 'gw.db'}", create_tables=True))
    tenancy.create_tenant("bench")
    key = tenancy.create_key("bench").secret
    replica = {
        "id": "r0", "model": model, "engine_model": model, "base_url": engine_url,
        "quant": "bf16", "device_class": "cpu", "site": "local", "yuan_per_hour": 1.0,
        "state": "ready",
    }  # fmt: skip
    replicas = tmp / "replicas.json"
    replicas.write_text(json.dumps([replica]))
    return key, replicas
