"""What a gateway outside the scheduler reads from the shared database, in threads.

``DbReplicaDirectory``: a background thread reloads the runtime table every ``refresh_s``
into a ``ReplicaTable``; reads never touch the database. A row the scheduler has not
refreshed for ``stale_after_s`` is served as ``unhealthy`` (the scheduler may be gone; its
engines may be too). ``DbGatewayPeers``: this gateway's heartbeat and the count of live
gateways, which split the tenants' limits (``gateway.peers``).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from scheduler.gateway.replicas import ReplicaEndpoint, ReplicaTable
from scheduler.store.runtime import (
    EndpointRecord,
    gateway_heartbeat,
    live_gateways,
    load_endpoints,
    remove_gateways,
)

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


class _EveryInterval:
    """``refresh()`` once at ``start()`` (errors raise), then every ``interval_s`` on a
    daemon thread until ``stop()``; a failing refresh is logged and the last state kept."""

    def __init__(self, interval_s: float, name: str, failure: str) -> None:
        self._interval_s = interval_s
        self._failure = failure
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def refresh(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.refresh()
            except Exception:  # keep the last known state through database hiccups
                log.exception(self._failure)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


class DbReplicaDirectory(_EveryInterval):
    def __init__(
        self,
        sessions: Any,
        *,
        refresh_s: float = 1.0,
        stale_after_s: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(refresh_s, "replica-directory", "reloading replica endpoints failed")
        self._sessions = sessions
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._table = ReplicaTable()

    def replicas(self) -> Sequence[ReplicaEndpoint]:
        return self._table.replicas()

    def refresh(self) -> None:
        with self._sessions() as session:
            records = load_endpoints(session)
        now = self._clock()
        self._table.set(endpoint_from_record(r, now, self._stale_after_s) for r in records)


class DbGatewayPeers(_EveryInterval):
    """Heartbeats this gateway into ``gateway_instances`` every ``heartbeat_s`` and counts
    the rows refreshed within ``live_within_s`` (a thread; reads never touch the database).

    A gateway that dies without stopping keeps counting for ``live_within_s``: meanwhile
    the others enforce smaller shares than they could (limits stay held, never exceeded).
    """

    def __init__(
        self,
        sessions: Any,
        *,
        heartbeat_s: float = 2.0,
        live_within_s: float = 10.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(heartbeat_s, "gateway-peers", "gateway heartbeat failed")
        self.id = f"gw-{secrets.token_hex(8)}"
        self._sessions = sessions
        self._live_within = timedelta(seconds=live_within_s)
        self._clock = clock
        self._share = (0, 1)

    def share(self) -> tuple[int, int]:
        return self._share  # a tuple swapped whole by the thread: no lock to read

    def refresh(self) -> None:
        now = self._clock()
        with self._sessions.begin() as session:  # one transaction: write, then count
            gateway_heartbeat(session, self.id, now)
            live = live_gateways(session, now - self._live_within)
        if self.id not in live:  # just written, so only a lost write drops it: count us
            live = sorted([*live, self.id])
        self._share = (live.index(self.id), len(live))

    def stop(self) -> None:
        super().stop()
        try:
            with self._sessions.begin() as session:
                remove_gateways(session, self.id, self._clock() - 10 * self._live_within)
        except Exception:  # the others stop counting us after live_within_s anyway
            log.exception("removing the gateway heartbeat failed")
