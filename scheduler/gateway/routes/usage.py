"""GET /v1/usage: the calling tenant's own usage (never another tenant's)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from scheduler.errors import InvalidInput
from scheduler.gateway.deps import GatewayDep, PrincipalDep
from scheduler.gateway.limits import day_start, month_start
from scheduler.gateway.schemas import ModelUsageOut, UsageOut
from scheduler.tenancy import UsageSummary

router = APIRouter(tags=["usage"])


def usage_out(summary: UsageSummary) -> UsageOut:
    return UsageOut(
        tenant=summary.tenant,
        since=summary.since,
        until=summary.until,
        total_tokens=summary.total_tokens,
        cost_yuan=summary.cost_yuan,
        data=[
            ModelUsageOut(
                model=m.model,
                requests=m.requests,
                prompt_tokens=m.prompt_tokens,
                completion_tokens=m.completion_tokens,
                cost_yuan=m.cost_yuan,
            )
            for m in summary.by_model
        ],
    )


def window(
    period: str, since: datetime | None, until: datetime | None, now: datetime
) -> tuple[datetime, datetime | None]:
    if since is not None:
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        until = until.replace(tzinfo=UTC) if until is not None and not until.tzinfo else until
        if until is not None and until <= since:
            raise InvalidInput("'until' must be after 'since'.", param="until")
        return since, until
    starts = {
        "day": day_start(now),
        "month": month_start(now),
        "all": datetime(1970, 1, 1, tzinfo=UTC),
    }
    return starts[period], until


@router.get("/v1/usage", response_model=UsageOut)
async def my_usage(
    gateway: GatewayDep,
    principal: PrincipalDep,
    period: Annotated[Literal["day", "month", "all"], Query()] = "month",
    since: Annotated[datetime | None, Query()] = None,
    until: Annotated[datetime | None, Query()] = None,
) -> UsageOut:
    start, end = window(period, since, until, gateway.wall_clock())
    await gateway.store_usage()  # records of completed requests are visible at once
    summary = await asyncio.to_thread(
        gateway.tenancy.usage_summary, principal.tenant.name, start, end
    )
    return usage_out(summary)
