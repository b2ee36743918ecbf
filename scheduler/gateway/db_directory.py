"""A ReplicaDirectory fed from the runtime table, for gateways outside the scheduler.

A background thread reloads the table every ``refresh_s`` into a ``ReplicaTable``; reads
never touch the database. A row the scheduler has not refreshed for ``stale_after_s`` is
served as ``unhealthy`` (the scheduler may be gone; its engines may be too).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from scheduler.gateway.replicas import ReplicaEndpoint, ReplicaTable
from scheduler.store.runtime import EndpointRecord, load_endpoints

log = logging.getLogger(__name__)


def endpoint_from_record(
    record: EndpointRecord, now: datetime, stale_after_s: float
) -> ReplicaEndpoint:
    stale = (now - record.updated_at).total_seconds() > stale_after_s
    return ReplicaEndpoint(
        id=record.id,
        model=record.model,
        engine_model=record.engine_model,
        base_url=record.base_url,
        quant=record.quant,
        device_class=record.device_class,
        site=record.site,
        yuan_per_hour=record.yuan_per_hour,
        state="unhealthy" if stale else record.state,
    )


class DbReplicaDirectory:
    def __init__(
        self,
        sessions: Any,
        *,
        refresh_s: float = 1.0,
        stale_after_s: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = sessions
        self._refresh_s = refresh_s
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._table = ReplicaTable()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replica-directory", daemon=True)

    def replicas(self) -> Sequence[ReplicaEndpoint]:
        return self._table.replicas()

    def refresh(self) -> None:
        with self._sessions() as session:
            records = load_endpoints(session)
        now = self._clock()
        self._table.set(endpoint_from_record(r, now, self._stale_after_s) for r in records)

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._refresh_s):
            try:
                self.refresh()
            except Exception:  # keep serving the last known table through DB hiccups
                log.exception("reloading replica endpoints failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
