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
