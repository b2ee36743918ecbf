"""Schemathesis fuzzing over the gateway's OpenAPI schema: no input makes it answer 5xx,
and every error is in the OpenAI format. Bounded examples per operation (runs in seconds)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.gateway.conftest import ADMIN_TOKEN, MODEL, Harness

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES_PER_OPERATION = 15


def test_no_server_errors_on_any_operation(harness: Harness) -> None:
    tenant_key = harness.tenant("fuzz")
    schema = schemathesis.openapi.from_url(harness.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15  # the whole tenant + admin + operations surface
    seen: list[tuple[str, str, int]] = []

    def fuzz(operation: Any) -> None:
        token = ADMIN_TOKEN if operation.path.startswith("/admin") else tenant_key

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: Any) -> None:
            if isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = MODEL  # reach routing and the engine, not just the 404
            response = case.call(headers={"Authorization": f"Bearer {token}"}, timeout=30)
            seen.append((case.method, case.path, response.status_code))
            assert response.status_code < 500, (case.method, case.path, response.text[:300])
            if response.status_code >= 400:
                assert set(response.json()["error"]) >= {"message", "type", "code"}

        check()

    for operation in operations:
        fuzz(operation)

    assert len(seen) >= len(operations)
    assert any(status == 200 for *_, status in seen)  # fuzzing reached real work too
