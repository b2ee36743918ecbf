"""The embedded stack end to end: real openai client → gateway → Ray actor → vLLM CPU engine."""

from __future__ import annotations

import subprocess
import time

import httpx
import openai
import psutil
import pytest

from scheduler.preflight import free_port
from tests.e2e.conftest import Stack, start_stack, stop_stack, up_command

pytestmark = pytest.mark.engine

MODEL = "cunliang-demo"


def _client(stack: Stack, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key=key or stack.api_key, max_retries=0)


def test_models_lists_the_demo_model(stack: Stack) -> None:
    models = _client(stack).models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_completion_non_streaming_reports_usage(stack: Stack) -> None:
    messages = [{"role": "user", "content": "How much does an old card cost per hour?"}]
    resp = _client(stack).chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    assert resp.choices[0].message.content is not None
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 12  # random weights never emit eos this early
    assert resp.usage.prompt_tokens > 5
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 12


def test_chat_completion_streaming_with_usage(stack: Stack) -> None:
    stream = _client(stack).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say something."}],
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert "".join(text)
    assert usage is not None and usage.completion_tokens == 10


def test_completions_endpoint(stack: Stack) -> None:
    client = _client(stack)
    args = {"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 5, "temperature": 0}
    resp = client.completions.create(**args)  # type: ignore[call-overload]
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    stream = client.completions.create(**args, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    usage = [c.usage for c in chunks if c.usage]
    assert usage and usage[-1].completion_tokens == 5
    # greedy decoding: the stream spells out exactly the non-streamed completion
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == resp.choices[0].text


def test_unknown_model_is_404_in_openai_format(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        _client(stack).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    body = err.value.response.json()
    assert body["error"]["code"] == "model_not_found"
    assert "no-such-model" in body["error"]["message"]


@pytest.mark.parametrize("key", ["", "sk-cl-wrong"])
def test_missing_or_wrong_key_is_401(stack: Stack, http: httpx.Client, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
    )
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


def test_malformed_json_is_400_and_wrong_types_422(stack: Stack, http: httpx.Client) -> None:
    auth = {"Authorization": f"Bearer {stack.api_key}", "Content-Type": "application/json"}
    r = http.post("/v1/chat/completions", content=b'{"model": "x", "messages": [', headers=auth)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": "hi"}, headers=auth)
    assert r.status_code == 422
    assert "messages" in r.json()["error"]["message"]


def test_healthz_and_metrics(stack: Stack, http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200
    # at least one completion happened in this session by now
    _client(stack).completions.create(model=MODEL, prompt="hi", max_tokens=2)
    text = http.get("/metrics").text
    assert "cunliang_completion_tokens_total" in text
    assert 'model="cunliang-demo"' in text


def test_port_in_use_is_one_line_and_nonzero(stack: Stack, tmp_path: object) -> None:
    port = int(stack.base_url.rsplit(":", 1)[1])
    proc = subprocess.run(
        up_command(stack.data_dir.parent / "other", port),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "already in use" in lines[0], proc.stderr


def test_unwritable_data_dir_is_one_line_and_nonzero(tmp_path: object) -> None:
    proc = subprocess.run(
        up_command(__import__("pathlib").Path("/proc/cunliang-data"), free_port()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not writable" in lines[0], proc.stderr


def test_ctrl_c_shuts_down_without_orphans(stack: Stack) -> None:
    """Runs last in this module (pytest keeps file order): stops the shared stack."""
    model_dir = str(stack.data_dir)
    assert stop_stack(stack) == 0
    assert any("stopped" in line.lower() for line in stack.lines[-10:])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        orphans = [
            p.info["cmdline"]
            for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"]
            and any(model_dir in a or str(stack.ray_dir) in a for a in p.info["cmdline"])
        ]
        if not orphans:
            break
        time.sleep(1)
    assert orphans == [], orphans


def test_restart_on_the_same_data_dir_serves_with_the_same_key(stack: Stack) -> None:
    """After the stop above: the model and probes come from the cache, the tenant and its
    key from the inventory, and the machine is reprofiled rather than registered twice."""
    assert stack.proc.poll() is not None, "runs after the Ctrl-C test"
    again = start_stack(
        stack.data_dir, stack.ray_dir, stack.data_dir.parent / "up-again.log", stack.api_key
    )
    try:
        text = "\n".join(again.lines)
        assert "registered already" in text and "(cached)" in text
        assert "API key: tenant 'default' exists" in text
        resp = _client(again).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "again"}], max_tokens=3
        )
        assert resp.usage is not None and resp.usage.completion_tokens == 3
    finally:
        assert stop_stack(again) == 0
