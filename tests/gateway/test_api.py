"""Tenant API over real HTTP with the real openai client: happy paths and every error."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from tests.gateway.conftest import ENGINE_MODEL, MODEL, Harness


def test_chat_non_streaming_passes_sampling_params_and_renames_model(harness: Harness) -> None:
    client = harness.openai(harness.tenant("acme"))
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello there"}],
        max_tokens=5,
        temperature=0.3,
        top_p=0.9,
        seed=7,
        extra_body={"top_k": 4, "repetition_penalty": 1.1},
    )
    assert reply.model == MODEL  # the engine's name never leaks
    assert reply.choices[0].message.content == "t0 t1 t2 t3 t4 "
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    sent = [r for u in harness.upstreams for r in u.received]
    assert len(sent) == 1
    assert sent[0]["model"] == ENGINE_MODEL
    assert sent[0]["temperature"] == 0.3 and sent[0]["top_p"] == 0.9 and sent[0]["seed"] == 7
    assert sent[0]["top_k"] == 4 and sent[0]["repetition_penalty"] == 1.1


def test_completions_and_streaming_usage_only_when_asked(harness: Harness) -> None:
    client = harness.openai(harness.tenant("acme"))
    text = client.completions.create(model=MODEL, prompt="a b c", max_tokens=3)
    assert text.choices[0].text == "t0 t1 t2 " and text.model == MODEL

    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
    )
    assert all(c.usage is None for c in chunks)  # not asked: the usage chunk is dropped
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "t0 t1 t2 t3 "
    )
    assert all(c.model == MODEL for c in chunks)
    # upstream was asked for usage anyway, so metering is exact
    last = [r for u in harness.upstreams for r in u.received][-1]
    assert last["stream_options"] == {"include_usage": True}

    with_usage = list(
        client.completions.create(
            model=MODEL,
            prompt="x y",
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = [c.usage for c in with_usage if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 6 and usage[0].prompt_tokens == 2


def test_async_client_concurrent_requests(harness: Harness) -> None:
    key = harness.tenant("acme")

    async def run() -> list[str]:
        async with harness.async_openai(key) as client:

            async def one(i: int) -> str:
                stream = await client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"q{i}"}],
                    max_tokens=3,
                    stream=True,
                )
                return "".join(
                    [c.choices[0].delta.content or "" async for c in stream if c.choices]
                )

            return await asyncio.gather(*(one(i) for i in range(20)))

    assert asyncio.run(run()) == ["t0 t1 t2 "] * 20


def test_models_lists_only_allowed(harness: Harness) -> None:
    assert [m.id for m in harness.openai(harness.tenant("all")).models.list()] == [MODEL]
    assert list(harness.openai(harness.tenant("none", models=("other",))).models.list()) == []


def test_bad_key_is_401_and_admin_token_is_not_a_tenant_key(harness: Harness) -> None:
    for key in ("sk-cl-not-a-real-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaa", "adm-cl-test-admin-token"):
        with pytest.raises(openai.AuthenticationError) as err:
            harness.openai(key).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}]
            )
        assert err.value.status_code == 401
        assert err.value.body["type"] == "authentication_error"  # type: ignore[index]
    assert harness.http().get("/v1/models").status_code == 401


def test_revoked_key_and_disabled_tenant(harness: Harness) -> None:
    key = harness.tenant("acme")
    client = harness.openai(key)
    client.models.list()  # now cached
    key_id = harness.tenancy.list_keys("acme")[0].id
    assert harness.admin.post(f"/admin/v1/keys/{key_id}/revoke").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client.models.list()  # revocation takes effect at once despite the cache

    key2 = harness.tenant("beta")
    harness.openai(key2).models.list()
    assert harness.admin.post("/admin/v1/tenants/beta/disable").status_code == 200
    with pytest.raises(openai.PermissionDeniedError):
        harness.openai(key2).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}]
        )


def test_model_not_allowed_403_and_unknown_404(harness: Harness) -> None:
    client = harness.openai(harness.tenant("narrow", models=("something-else",)))
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert denied.value.status_code == 403
    with pytest.raises(openai.NotFoundError) as missing:
        harness.openai(harness.tenant("wide")).chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_malformed_json_400_invalid_422_too_large_413(harness: Harness) -> None:
    http = harness.http(harness.tenant("acme"))
    bad = http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    invalid = http.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert invalid.status_code == 422 and invalid.json()["error"]["param"] == "messages"
    wrong = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": -1})
    assert wrong.status_code == 422
    huge = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x" * 100_000}]},
    )
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"

    def chunked() -> object:
        yield b'{"model": "demo", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 8192
        yield b'"}]}'

    streamed = http.post("/v1/chat/completions", content=chunked())
    assert streamed.status_code == 413


def test_upstream_4xx_forwarded_with_same_status(harness: Harness) -> None:
    client = harness.openai(harness.tenant("acme"))
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="x", max_tokens=10_000)
    assert err.value.status_code == 400
    assert "maximum context length" in err.value.message


def test_rate_limit_429_with_retry_after(harness: Harness) -> None:
    http = harness.http(harness.tenant("slow", requests_per_s=1.0))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    limited = http.post("/v1/chat/completions", json=body)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limit_error"


def test_token_budget_429_with_retry_after(harness: Harness) -> None:
    http = harness.http(harness.tenant("budget", daily_token_budget=20))
    body = {"model": MODEL, "prompt": "a b c d", "max_tokens": 16}
    assert http.post("/v1/completions", json=body).status_code == 200  # 4 + 16 = 20 tokens
    over = http.post("/v1/completions", json=body)
    assert over.status_code == 429 and "daily token budget" in over.json()["error"]["message"]
    assert 1 <= int(over.headers["retry-after"]) <= 86_400


def test_concurrency_limit(harness: Harness) -> None:
    for u in harness.upstreams:
        u.behaviour.delay_s = 0.5
    key = harness.tenant("one-at-a-time", max_concurrent=1)

    async def run() -> list[int]:
        async with harness.async_openai(key) as client:

            async def one() -> int:
                try:
                    await client.completions.create(model=MODEL, prompt="x", max_tokens=1)
                    return 200
                except openai.RateLimitError as exc:
                    assert exc.response.headers["retry-after"]
                    return 429

            return await asyncio.gather(*(one() for _ in range(3)))

    assert sorted(asyncio.run(run())) == [200, 429, 429]


def test_no_ready_replica_503_with_retry_after_and_healthz(harness: Harness) -> None:
    http = harness.http(harness.tenant("acme"))
    assert harness.http().get("/healthz").status_code == 200
    harness.table.mark("r0", "draining")
    harness.table.mark("r1", "starting")
    reply = http.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert reply.status_code == 503 and int(reply.headers["retry-after"]) >= 1
    assert reply.json()["error"]["code"] == "no_healthy_replica"
    health = harness.http().get("/healthz")
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert health.headers["retry-after"]


def test_tenant_usage_is_isolated(harness: Harness) -> None:
    a = harness.openai(harness.tenant("alpha"))
    b_key = harness.tenant("bravo")
    a.completions.create(model=MODEL, prompt="one two", max_tokens=3)
    harness.openai(b_key).completions.create(model=MODEL, prompt="x", max_tokens=5)
    mine = harness.http(b_key).get("/v1/usage").json()
    assert mine["tenant"] == "bravo"
    assert mine["data"] == [
        {
            "model": MODEL,
            "requests": 1,
            "prompt_tokens": 1,
            "completion_tokens": 5,
            "cost_yuan": pytest.approx(mine["data"][0]["cost_yuan"]),
        }
    ]
    assert mine["total_tokens"] == 6
    # no parameter lets a tenant see someone else's usage
    other = harness.http(b_key).get("/v1/usage", params={"tenant": "alpha"}).json()
    assert other["tenant"] == "bravo"


def test_metrics_exposed_with_contract_names(harness: Harness) -> None:
    harness.openai(harness.tenant("acme")).completions.create(model=MODEL, prompt="x", max_tokens=2)
    text = harness.http().get("/metrics").text
    assert 'cunliang_requests_total{model="demo",status="200",tenant="acme"} 1.0' in text
    assert "cunliang_completion_tokens_total{" in text
    assert 'cunliang_replica_up{device_class="cpu-test",model="demo",replica="r0"' in text
    assert "cunliang_e2e_latency_seconds_bucket" in text
    assert "req-" not in text  # no request ids as labels


def test_streaming_records_ttft_and_tpot(harness: Harness) -> None:
    for u in harness.upstreams:
        u.behaviour.token_delay_s = 0.01
    stream = harness.openai(harness.tenant("acme")).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=5, stream=True
    )
    assert len([c for c in stream if c.choices and c.choices[0].delta.content]) == 5
    text = harness.http().get("/metrics").text
    assert 'cunliang_ttft_seconds_count{model="demo"} 1.0' in text
    assert 'cunliang_tpot_seconds_count{model="demo"} 1.0' in text


def test_unknown_path_and_method_are_openai_errors(harness: Harness) -> None:
    http = harness.http(harness.tenant("acme"))
    assert http.get("/v1/nothing").json()["error"]["code"] == "not_found"
    wrong = http.get("/v1/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()
    assert json.loads(http.get("/v1/models/nope").text)["error"]["code"] == "model_not_found"


def test_yuan_budget_429(harness: Harness) -> None:
    # any request costs > 0 yuan (busy share x 1-2 yuan/h), so a tiny budget allows one
    http = harness.http(harness.tenant("thrifty", daily_yuan_budget=1e-12))
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    assert http.post("/v1/completions", json=body).status_code == 200
    over = http.post("/v1/completions", json=body)
    assert over.status_code == 429 and "daily yuan budget" in over.json()["error"]["message"]
    assert int(over.headers["retry-after"]) >= 1
