"""HTTP schemas of the tenant and admin APIs (pydantic at the edge).

Inference requests are validated for the fields the gateway relies on and otherwise passed
through untouched (``extra="allow"``): sampling parameters go to the engine as sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _PassThrough(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_PassThrough):
    include_usage: bool = False


class ChatMessage(_PassThrough):
    role: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None


class _InferenceRequest(_PassThrough):
    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=16)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)


class ChatCompletionRequest(_InferenceRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_InferenceRequest):
    prompt: str | list[str] | list[int] | list[list[int]]


def plainly_valid(body: dict[str, Any], *, chat: bool) -> bool:
    """Whether ``body`` satisfies the request schema above with exact JSON types.

    The hot path's check: it accepts a subset of what pydantic accepts (exact types only,
    no coercion), and the gateway runs the full pydantic validation on everything else, so
    whatever this rejects is still accepted (coerced) or rejected with pydantic's error.
    Keep in step with the models above; tests/gateway/test_core_units.py checks the subset
    property on random bodies.
    """
    model = body.get("model")
    if type(model) is not str or not 1 <= len(model) <= 256:
        return False
    if type(body.get("stream", False)) is not bool:
        return False
    options = body.get("stream_options")
    if options is not None and (
        type(options) is not dict or type(options.get("include_usage", False)) is not bool
    ):
        return False
    if not _int_in(body.get("max_tokens"), 1, None) or not _int_in(body.get("n"), 1, 16):
        return False
    temperature, top_p = body.get("temperature"), body.get("top_p")
    if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 2):
        return False
    if top_p is not None and not (_is_number(top_p) and 0 < top_p <= 1):
        return False
    if chat:
        messages = body.get("messages")
        return (
            _int_in(body.get("max_completion_tokens"), 1, None)
            and type(messages) is list
            and len(messages) > 0
            and all(_plain_message(m) for m in messages)
        )
    return _plain_prompt(body.get("prompt"))


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


def _int_in(value: Any, low: int, high: int | None) -> bool:
    """None, or an int (not a bool) within [low, high]."""
    if value is None:
        return True
    return type(value) is int and value >= low and (high is None or value <= high)


def _plain_message(message: Any) -> bool:
    if type(message) is not dict:
        return False
    role, content = message.get("role"), message.get("content")
    if type(role) is not str or not role:
        return False
    if content is None or type(content) is str:
        return True
    return type(content) is list and all(type(part) is dict for part in content)


def _plain_prompt(prompt: Any) -> bool:
    if type(prompt) is str:
        return True
    if type(prompt) is not list:
        return False
    return (
        all(type(p) is str for p in prompt)
        or all(type(p) is int for p in prompt)
        or all(type(p) is list and all(type(t) is int for t in p) for p in prompt)
    )


# ---- tenant API responses -------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "cunliang"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ModelUsageOut(BaseModel):
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_yuan: float


class UsageOut(BaseModel):
    object: Literal["usage"] = "usage"
    tenant: str
    since: datetime
    until: datetime | None
    total_tokens: int
    cost_yuan: float
    data: list[ModelUsageOut]


# ---- admin API ------------------------------------------------------------------------


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    allowed_models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    requests_per_s: float | None = Field(default=None, gt=0)
    max_concurrent: int | None = Field(default=None, gt=0)
    tokens_per_min: int | None = Field(default=None, gt=0)
    daily_token_budget: int | None = Field(default=None, gt=0)
    monthly_token_budget: int | None = Field(default=None, gt=0)
    daily_yuan_budget: float | None = Field(default=None, gt=0)
    monthly_yuan_budget: float | None = Field(default=None, gt=0)


class TenantOut(BaseModel):
    id: int
    name: str
    allowed_models: list[str]
    requests_per_s: float | None
    max_concurrent: int | None
    tokens_per_min: int | None
    daily_token_budget: int | None
    monthly_token_budget: int | None
    daily_yuan_budget: float | None
    monthly_yuan_budget: float | None
    disabled: bool
    created_at: datetime


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(min_length=1, max_length=64)
    name: str = Field(default="", max_length=128)


class KeyOut(BaseModel):
    id: str
    tenant: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The API key. Shown once; only its hash is stored.")
