"""Admin REST API over real HTTP (FastAPI TestClient) on both database backends."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from scheduler.api.errors import install_error_handlers
from scheduler.inventory.router import inventory_router
from scheduler.inventory.service import InventoryService
from tests.fakes.inventory import FakeReplicas, FakeUsage

TOKEN = "adm-cl-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SITE = {
    "name": "guian",
    "hub": "guizhou",
    "region": "west",
    "tariff_yuan_per_kwh": 0.35,
    "pue": 1.25,
}
NODE = {
    "host": "g1",
    "site": "guian",
    "devices": [{"model": "Tesla T4", "count": 4, "residual_yuan": 3500}],
}
PROFILE = {
    "reference_model": "cunliang-demo",
    "output_tokens_per_s": 800,
    "watts": 300,
    "quants": ["fp16"],
    "engine": "vllm",  # extra agent fields are kept in the payload
}


@pytest.fixture
def client(service: InventoryService) -> TestClient:
    app = FastAPI(title="cunliang admin")
    install_error_handlers(app)
    app.include_router(inventory_router(service, TOKEN))
    return TestClient(app)


def post(client: TestClient, path: str, body: Any = None, expect: int = 200) -> Any:
    response = client.post(path, json=body, headers=AUTH)
    assert response.status_code == expect, response.text
    return response.json()


def error_message(response: Any) -> str:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return str(body["error"]["message"])


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Basic abc"}, 401),
        ({"Authorization": "Bearer sk-cl-tenant-key"}, 403),
    ],
)
def test_admin_routes_need_the_admin_token(
    client: TestClient, headers: dict[str, str], status: int
) -> None:
    for method, path in (("GET", "/admin/v1/sites"), ("POST", "/admin/v1/nodes/g1/profiles")):
        response = client.request(method, path, headers=headers, json=PROFILE)
        assert response.status_code == status
        assert error_message(response)
    assert client.get("/admin/v1/sites", headers=AUTH).json() == []


def test_register_profile_admit_and_show(client: TestClient) -> None:
    post(client, "/admin/v1/sites", SITE, 201)
    node = post(client, "/admin/v1/nodes", NODE, 201)
    assert node["states"] == {"registered": 4}
    result = post(client, "/admin/v1/nodes/g1/profiles", PROFILE, 201)
    assert result["profile"]["version"] == 1
    assert all(a["admitted"] for a in result["admission"])
    detail = client.get("/admin/v1/nodes/g1", headers=AUTH).json()
    assert detail["node"]["states"] == {"admitted": 4}
    assert detail["latest_profile"]["output_tokens_per_s"] == 800
    assert any(a["action"] == "profile" for a in detail["audit"])
    devices = client.get(
        "/admin/v1/devices",
        params={"site": "guian", "state": "admitted", "kind": "gpu"},
        headers=AUTH,
    ).json()
    assert len(devices) == 4 and devices[0]["model"] == "Tesla T4"
    sites = client.get("/admin/v1/sites", headers=AUTH).json()
    assert sites[0]["nodes"] == 1 and sites[0]["devices"] == 4


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/admin/v1/sites", {**SITE, "pue": 0.8}, 422, "pue"),
        (
            "/admin/v1/sites",
            {k: v for k, v in SITE.items() if k != "tariff_yuan_per_kwh"},
            422,
            "tariff",
        ),
        ("/admin/v1/nodes", {**NODE, "site": "atlantis"}, 404, "Unknown site 'atlantis'"),
        (
            "/admin/v1/nodes",
            {**NODE, "devices": [{"model": "Tesla T4", "memory_bytes": 10**15}]},
            400,
            "impossible",
        ),
        (
            "/admin/v1/nodes",
            {**NODE, "devices": [{"model": "Tesla T4", "purchase_yuan": -1}]},
            422,
            "purchase_yuan",
        ),
        ("/admin/v1/nodes/ghost/profiles", PROFILE, 404, "Unknown node 'ghost'"),
        ("/admin/v1/nodes/g1/drain", {}, 409, "cannot become draining"),
    ],
)
def test_bad_input_is_4xx_with_a_message_and_writes_nothing(
    client: TestClient, path: str, body: dict[str, Any], status: int, message: str
) -> None:
    post(client, "/admin/v1/sites", SITE, 201)
    post(client, "/admin/v1/nodes", NODE, 201)
    before = client.get("/admin/v1/audit", headers=AUTH).json()
    response = client.post(path, json=body, headers=AUTH)
    assert response.status_code == status, response.text
    assert message in error_message(response)
    assert client.get("/admin/v1/audit", headers=AUTH).json() == before


def test_duplicate_host_is_409(client: TestClient) -> None:
    post(client, "/admin/v1/sites", SITE, 201)
    post(client, "/admin/v1/nodes", NODE, 201)
    response = client.post("/admin/v1/nodes", json=NODE, headers=AUTH)
    assert response.status_code == 409
    assert "already registered" in error_message(response)


def test_drain_retire_readmit_over_http(client: TestClient, replicas: FakeReplicas) -> None:
    post(client, "/admin/v1/sites", SITE, 201)
    post(client, "/admin/v1/nodes", NODE, 201)
    post(client, "/admin/v1/nodes/g1/profiles", PROFILE, 201)
    assert post(client, "/admin/v1/nodes/g1/drain", {"reason": "old"})["to_state"] == "draining"
    replicas.running["g1"] = 3
    response = client.post("/admin/v1/nodes/g1/retire", headers=AUTH)
    assert response.status_code == 409 and "still runs 3" in error_message(response)
    replicas.running["g1"] = 0
    assert post(client, "/admin/v1/nodes/g1/retire")["to_state"] == "retired"
    assert post(client, "/admin/v1/nodes/g1/readmit")["devices_changed"] == 4
    audit = client.get(
        "/admin/v1/audit", params={"subject_kind": "device", "subject": "g1/0"}, headers=AUTH
    ).json()
    assert [a["to_state"] for a in audit][:3] == ["admitted", "probation", "retired"]


def test_site_lifecycle_report_and_assessment(client: TestClient, usage: FakeUsage) -> None:
    post(client, "/admin/v1/sites", SITE, 201)
    post(client, "/admin/v1/nodes", NODE, 201)
    post(client, "/admin/v1/nodes/g1/profiles", PROFILE, 201)
    usage.by_node["g1"] = 10_000_000
    report = client.get("/admin/v1/sites/report", params={"window_hours": 24}, headers=AUTH).json()
    assert report[0]["site"] == "guian" and report[0]["tokens_per_yuan"] > 0
    out = post(client, "/admin/v1/assessments", None)
    assert out["assessed"] == 4
    moved = post(
        client, "/admin/v1/sites/guian/lifecycle", {"action": "probation", "reason": "audit"}
    )
    assert moved["devices_changed"] == 4
    response = client.post(
        "/admin/v1/sites/guian/lifecycle", json={"action": "explode"}, headers=AUTH
    )
    assert response.status_code == 422


def test_models_and_demand(client: TestClient, usage: FakeUsage) -> None:
    model = {
        "name": "qwen2.5-7b-instruct",
        "source": "Qwen/Qwen2.5-7B-Instruct",
        "quants": ["int4-awq"],
    }
    created = post(client, "/admin/v1/models", model, 201)
    assert created["arch"]["layers"] == 28  # from the catalogue
    assert client.post("/admin/v1/models", json=model, headers=AUTH).status_code == 409
    response = client.put(
        "/admin/v1/models/qwen2.5-7b-instruct/demand",
        json={"output_tokens_per_s": 500, "tpot_ms": 80},
        headers=AUTH,
    )
    assert response.status_code == 200 and response.json()["tpot_ms"] == 80
    missing = client.put(
        "/admin/v1/models/nope/demand", json={"output_tokens_per_s": 1}, headers=AUTH
    )
    assert missing.status_code == 404
    usage.by_model["qwen2.5-7b-instruct"] = 3600 * 24 * 100  # 100 tokens/s for a day
    from_usage = post(
        client,
        "/admin/v1/models/qwen2.5-7b-instruct/demand/from-usage",
        {"window_hours": 24, "headroom": 0.5},
    )
    assert from_usage["output_tokens_per_s"] == pytest.approx(150.0)
    assert from_usage["source"] == "usage"
    listed = client.get("/admin/v1/models", headers=AUTH).json()
    assert listed[0]["demands"][0]["output_tokens_per_s"] == pytest.approx(150.0)


def test_openapi_documents_routes_with_response_models(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert "/admin/v1/nodes/{host}/profiles" in paths
    ok = paths["/admin/v1/nodes/{host}/profiles"]["post"]["responses"]["201"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("ProfileResult")
    assert "401" in paths["/admin/v1/sites"]["get"]["responses"]
    assert {"SiteIn", "NodeIn", "DeviceOut", "AuditOut"} <= set(spec["components"]["schemas"])


def test_agent_shaped_profile_and_runtime_hooks(client: TestClient) -> None:
    """The body ``workers.profiler.profile_post_body`` builds (CPU server, per-device figures,
    whole profile as payload), the Ray join hook and health reports."""
    post(client, "/admin/v1/sites", SITE, 201)
    cpu = {
        "host": "c1",
        "site": "guian",
        "devices": [{"model": "Xeon Gold 6248", "memory_bytes": 384 * 2**30, "sockets": 2}],
    }
    post(client, "/admin/v1/nodes", cpu, 201)
    body = {
        "reference_model": "cunliang-demo",
        "output_tokens_per_s": 0.0,  # every engine probe failed: stored, then refused
        "watts": 310.0,
        "measured_at": "2026-03-01T07:00:00Z",
        "quants": ["bf16", "some-future-format"],
        "devices": [],
        "payload": {"host": {"hostname": "c1"}, "matmul": [{"dtype": "bfloat16", "ok": False}]},
    }
    result = post(client, "/admin/v1/nodes/c1/profiles", body, 201)
    assert result["admission"][0]["admitted"] is False
    assert any("tokens/yuan" in r for r in result["admission"][0]["reasons"])
    body.update(
        output_tokens_per_s=60.0, devices=[{"slot": 0, "output_tokens_per_s": 60.0, "watts": 310.0}]
    )
    result = post(client, "/admin/v1/nodes/c1/profiles", body, 201)
    assert result["profile"]["version"] == 2
    assert result["admission"][0]["figures"]["tokens_per_joule"] == pytest.approx(60 / 310)
    response = client.put("/admin/v1/nodes/c1/ray", json={"ray_node_id": "a1b2c3"}, headers=AUTH)
    assert response.status_code == 200 and response.json()["ray_node_id"] == "a1b2c3"
    for _ in range(3):
        node = post(client, "/admin/v1/nodes/c1/health", {"healthy": False, "detail": "OOM"})
    assert node["health_failures"] == 3 and set(node["states"]) == {"quarantined"}
    detail = client.get("/admin/v1/nodes/c1", headers=AUTH).json()
    assert [a["action"] for a in detail["audit"]][:2] == ["health", "transition"]
