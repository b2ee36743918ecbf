"""``cunliang agent --post`` against the real inventory admin API (SQLite, FastAPI TestClient)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from scheduler.api.errors import install_error_handlers
from scheduler.cli.agent import post_profile
from scheduler.inventory.router import inventory_router
from scheduler.inventory.service import InventoryService
from scheduler.store.db import open_database, upgrade
from tests.fakes.inventory import FakeReplicas, FakeUsage
from tests.workers.test_profiler import sample_profile
from workers.profiler import profile_post_body

TOKEN = "adm-cl-agent-test"


def test_profile_body_is_accepted_and_stored_by_the_inventory(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cunliang.db'}"
    upgrade(url)
    db = open_database(url)
    try:
        app = FastAPI()
        install_error_handlers(app)
        service = InventoryService(db, usage=FakeUsage(), replicas=FakeReplicas())
        app.include_router(inventory_router(service, TOKEN))
        client = TestClient(app)  # an httpx.Client: the agent's HttpPoster
        auth = {"Authorization": f"Bearer {TOKEN}"}
        site = {"name": "lab", "region": "east", "tariff_yuan_per_kwh": 0.6, "pue": 1.4}
        assert client.post("/admin/v1/sites", json=site, headers=auth).status_code == 201
        profile = sample_profile(int8_ok=True)
        host = profile.host.hostname
        # GPUs first, then the CPU: the slots profile_post_body assumes
        node = {
            "host": host,
            "site": "lab",
            "devices": [
                {"model": "Tesla T4", "count": 2},
                {"model": "Tesla P40"},
                {"model": "AMD EPYC 7763", "kind": "cpu"},
            ],
        }
        response = client.post("/admin/v1/nodes", json=node, headers=auth)
        assert response.status_code == 201, response.text

        answer = post_profile(client, "http://testserver", host, profile_post_body(profile), TOKEN)
        stored = answer["profile"]
        assert stored["host"] == host and stored["version"] == 1
        assert stored["output_tokens_per_s"] == 420.0
        assert stored["quants"] == ["fp32", "int8-w8a8"]
        assert {a["device"] for a in answer["admission"]}
    finally:
        db.dispose()
