"""``UsageSource`` over the gateway's ``usage_records`` table (same database).

The gateway writes one row per request with ``model``, ``device_class`` (the plan's class
id, which is the inventory snapshot's class id), ``completion_tokens``, ``status`` and
``created_at``. Tokens are attributed to nodes through the class: a class's tokens are
split over its hosts by how many of its devices each holds. Only the columns named here
are read, so the gateway may add others freely. Until the gateway's table exists (its
migration is merged separately) every answer is empty and ``available`` says why.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import Integer, String, column, func, select, table
from sqlalchemy.exc import OperationalError, ProgrammingError

from scheduler.domain import LifecycleState
from scheduler.inventory import snapshot
from scheduler.store.db import Database
from scheduler.store.types import UtcDateTime

USAGE = table(
    "usage_records",
    column("model", String()),
    column("device_class", String()),
    column("completion_tokens", Integer()),
    column("status", Integer()),
    column("created_at", UtcDateTime()),
)

# a request that failed (4xx/5xx) may still have streamed tokens, but it is not served work
OK_BELOW_STATUS = 400


class SqlUsageSource:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.available = True
        self.problem = ""

    def _sum_by(self, key: str, since: datetime, until: datetime) -> dict[str, int]:
        group = USAGE.c[key]
        query = (
            select(group, func.sum(USAGE.c.completion_tokens))
            .where(
                USAGE.c.created_at >= since,
                USAGE.c.created_at < until,
                USAGE.c.status < OK_BELOW_STATUS,
            )
            .group_by(group)
        )
        try:
            with self._db.read_connection() as connection:
                rows = connection.execute(query).all()
        except (OperationalError, ProgrammingError) as exc:
            # no usage_records table yet (gateway not installed): no evidence, not an error
            self.available = False
            self.problem = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
            return {}
        return {str(name): int(total or 0) for name, total in rows if name}

    def completion_tokens_by_model(self, since: datetime, until: datetime) -> Mapping[str, int]:
        return self._sum_by("model", since, until)

    def completion_tokens_by_device_class(
        self, since: datetime, until: datetime
    ) -> Mapping[str, int]:
        return self._sum_by("device_class", since, until)

    def completion_tokens_by_node(self, since: datetime, until: datetime) -> Mapping[str, int]:
        by_class = self.completion_tokens_by_device_class(since, until)
        if not by_class:
            return {}
        hosts = self._class_hosts(until)
        out: defaultdict[str, int] = defaultdict(int)
        for class_id, tokens in by_class.items():
            members = hosts.get(class_id)
            if not members:
                continue  # class no longer exists (retired): nobody left to judge
            total = sum(members.values())
            for host, devices in members.items():
                out[host] += round(tokens * devices / total)
        return dict(out)

    def _class_hosts(self, now: datetime) -> dict[str, dict[str, int]]:
        """{class id: {host: devices of the class on it}} for serving and draining devices."""
        states = (LifecycleState.ADMITTED, LifecycleState.DRAINING)
        with self._db.readers() as session:
            fleet, _, _ = snapshot.build(session, now, states=states)
        return {c.id: {host: c.per_node for host in c.node_ids} for c in fleet.classes}
