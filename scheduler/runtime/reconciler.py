"""The reconciler: a tick loop that diffs the desired Plan against observed replicas.

Each ``tick()``:
1. expands the Plan into replica ids (``<model>.<quant>.<class>.tp<N>.<n>``);
2. starts replicas that are desired but absent, honouring exponential backoff after failures;
3. polls every known replica, records failures as status (never raises) and restarts them.
   A dead replica (process or actor gone) fails at once; a live one that stops answering
   its health check keeps serving (the gateway retries elsewhere on a refused connection)
   and fails only after ``unresponsive_after_s`` of consecutive unanswered checks, so a
   busy machine's slow answer (two cores, an engine loading next door) restarts nothing;
   a held replica (below) is never failed for a slow answer, only when it is dead;
4. drains replicas that are no longer desired: a ready one keeps serving while a
   replacement for its model is still starting (make-before-break, so a drain or a move
   never leaves a model without capacity), then stops receiving new requests, waits at
   least ``drain_grace_s`` (gateways learn of the drain within their refresh period) and
   until its in-flight requests finish (``outstanding``), then stops;
5. publishes the endpoints of ready replicas to the sink (the gateway's replica table).

Side effects are injected (``ReplicaLauncher``, ``EndpointSink``, ``outstanding``,
``clock``), so the logic is tested without Ray.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from scheduler.domain import Plan, Replica

log = logging.getLogger(__name__)


class ReplicaState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"  # waiting for its backoff to expire before a restart
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Observation:
    """What the launcher sees of one replica right now."""

    state: ReplicaState  # STARTING, READY or FAILED
    base_url: str | None = None
    error: str | None = None
    # FAILED only: the replica is alive but did not answer (a timeout, an engine that is
    # up but reports unhealthy). It may recover, so it fails after a grace period.
    unresponsive: bool = False


@dataclass(frozen=True)
class ReplicaStatus:
    id: str
    replica: Replica
    state: ReplicaState
    base_url: str | None = None
    attempts: int = 0  # consecutive failed starts
    restarts: int = 0  # total restarts after failures
    last_error: str | None = None
    retry_at: float = 0.0  # clock time before which no restart is tried
    since: float = 0.0
    unresponsive_since: float | None = None  # first of the current run of unanswered checks


class ReplicaLauncher(Protocol):
    """The side effects of running replicas (Ray actors in production)."""

    def start(self, replica_id: str, replica: Replica) -> None:
        """Begin starting a replica; must not block on the engine loading."""

    def poll(self, replica_id: str) -> Observation:
        """Current state of a started replica; FAILED when it died or never came up."""

    def stop(self, replica_id: str) -> None:
        """Stop a replica and free its devices; idempotent."""

    def existing(self) -> Mapping[str, Replica]:
        """Replicas already running (e.g. found after a scheduler restart)."""


class EndpointSink(Protocol):
    def publish(self, statuses: Sequence[ReplicaStatus]) -> None:
        """Receive the full current status of every replica (ready ones carry base_url)."""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def replica_ids(plan: Plan) -> dict[str, Replica]:
    """Stable ids for a plan's replicas: identical replicas are numbered 0, 1, ...

    ``{replica_id: Replica}``
    """
    counts: dict[str, int] = {}
    out: dict[str, Replica] = {}
    for r in plan.replicas:
        stem = ".".join(
            [_slug(r.model), _slug(r.quant), _slug(r.device_class_id), f"tp{r.tp}"]
            + ([_slug(r.node_id)] if r.node_id else [])
        )
        n = counts.get(stem, 0)
        counts[stem] = n + 1
        out[f"{stem}.{n}"] = r
    return out


BACKOFF_BASE_S = 2.0  # first restart after 2 s, then 4, 8, ... capped
BACKOFF_CAP_S = 60.0


def backoff_s(attempts: int) -> float:
    return float(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1)))


class Reconciler:
    def __init__(
        self,
        launcher: ReplicaLauncher,
        sink: EndpointSink,
        *,
        outstanding: Callable[[str], int] = lambda _id: 0,
        clock: Callable[[], float] = time.monotonic,
        drain_timeout_s: float = 120.0,
        drain_grace_s: float = 0.0,
        hold_timeout_s: float = 900.0,
        unresponsive_after_s: float = 30.0,
    ) -> None:
        self._launcher = launcher
        self._sink = sink
        self._outstanding = outstanding
        self._clock = clock
        self._drain_timeout_s = drain_timeout_s
        self._drain_grace_s = drain_grace_s
        self._hold_timeout_s = hold_timeout_s
        self._unresponsive_after_s = unresponsive_after_s
        # {replica_id: clock time since which an undesired ready replica is kept serving}
        self._held: dict[str, float] = {}
        self._desired: dict[str, Replica] = {}
        # {replica_id: ReplicaStatus}
        self._status: dict[str, ReplicaStatus] = {}
        self._lock = threading.RLock()
        self._adopt_existing()

    def _adopt_existing(self) -> None:
        """After a restart, take over replicas that still run instead of duplicating them."""
        now = self._clock()
        for rid, replica in self._launcher.existing().items():
            self._status[rid] = ReplicaStatus(rid, replica, ReplicaState.STARTING, since=now)

    # -- desired state -------------------------------------------------------------
    def apply(self, plan: Plan) -> None:
        with self._lock:
            self._desired = replica_ids(plan)

    def drain(self, replica_id: str) -> None:
        """Stop routing to a replica now; it stops once its in-flight requests finish."""
        with self._lock:
            st = self._status.get(replica_id)
            if st and st.state is not ReplicaState.STOPPED:
                self._status[replica_id] = replace(
                    st, state=ReplicaState.DRAINING, since=self._clock()
                )
            self._desired.pop(replica_id, None)

    def statuses(self) -> list[ReplicaStatus]:
        with self._lock:
            return sorted(self._status.values(), key=lambda s: s.id)

    def base_url_of(self, replica_id: str) -> str | None:
        """The engine URL of a known replica (kept while it drains)."""
        with self._lock:
            st = self._status.get(replica_id)
            return st.base_url if st else None

    def held(self) -> list[str]:
        """Replicas no longer desired but kept serving until their replacement is ready."""
        with self._lock:
            return sorted(self._held)

    # -- the loop --------------------------------------------------------------------
    def tick(self) -> list[ReplicaStatus]:
        with self._lock:
            now = self._clock()
            for rid, replica in self._desired.items():
                self._ensure(rid, replica, now)
            for rid, st in list(self._status.items()):
                if rid not in self._desired and st.state not in (
                    ReplicaState.DRAINING,
                    ReplicaState.STOPPED,
                ):
                    if self._hold(st, now):
                        self._observe(rid, now)
                        continue
                    self._status[rid] = replace(st, state=ReplicaState.DRAINING, since=now)
                self._observe(rid, now)
            self._status = {
                k: v for k, v in self._status.items() if v.state is not ReplicaState.STOPPED
            }
            current = self.statuses()
        self._sink.publish(current)
        return current

    def _hold(self, st: ReplicaStatus, now: float) -> bool:
        """Keep an undesired READY replica serving while its model's desired replicas are
        not all ready yet (replacements starting), up to ``hold_timeout_s``."""
        if st.state is not ReplicaState.READY:
            self._held.pop(st.id, None)
            return False
        model = st.replica.model
        wanted = [rid for rid, r in self._desired.items() if r.model == model]
        ready = [
            rid
            for rid in wanted
            if (s := self._status.get(rid)) is not None and s.state is ReplicaState.READY
        ]
        since = self._held.setdefault(st.id, now)
        if len(ready) < len(wanted) and now - since < self._hold_timeout_s:
            return True
        self._held.pop(st.id, None)
        return False

    def _ensure(self, rid: str, replica: Replica, now: float) -> None:
        st = self._status.get(rid)
        if st is None:
            self._safe_start(ReplicaStatus(rid, replica, ReplicaState.STARTING, since=now))
        elif st.state is ReplicaState.FAILED and now >= st.retry_at:
            log.info("restarting replica %s (attempt %d)", rid, st.attempts + 1)
            self._safe_start(
                replace(st, state=ReplicaState.STARTING, restarts=st.restarts + 1, since=now)
            )

    def _safe_start(self, st: ReplicaStatus) -> None:
        try:
            self._launcher.start(st.id, st.replica)
            self._status[st.id] = st
        except Exception as exc:  # a failed side effect is status, not a crash
            self._fail(st, f"start failed: {exc}", self._clock())

    def _fail(self, st: ReplicaStatus, error: str, now: float) -> None:
        attempts = st.attempts + 1
        self._held.pop(st.id, None)
        log.warning("replica %s failed: %s", st.id, error)
        self._status[st.id] = replace(
            st,
            state=ReplicaState.FAILED,
            base_url=None,
            attempts=attempts,
            last_error=error,
            retry_at=now + backoff_s(attempts),
            since=now,
            unresponsive_since=None,
        )
        try:
            self._launcher.stop(st.id)
        except Exception as exc:
            log.warning("cleaning up replica %s failed: %s", st.id, exc)

    def _observe(self, rid: str, now: float) -> None:
        st = self._status[rid]
        if st.state is ReplicaState.FAILED:
            return
        if st.state is ReplicaState.DRAINING:
            waited_s = now - st.since
            if waited_s < self._drain_grace_s:
                return
            if waited_s > self._drain_timeout_s or self._idle(rid):
                self._safe_stop(st)
            return
        try:
            obs = self._launcher.poll(rid)
        except Exception as exc:
            obs = Observation(ReplicaState.FAILED, error=f"poll failed: {exc}")
        if obs.state is ReplicaState.FAILED:
            if obs.unresponsive and st.state is ReplicaState.READY:
                first = st.unresponsive_since if st.unresponsive_since is not None else now
                # a held replica leaves once its replacement is ready: killing it for a slow
                # answer would cut its streams and leave the model with no capacity meanwhile
                if rid in self._held or now - first < self._unresponsive_after_s:
                    if st.unresponsive_since is None:
                        log.warning("replica %s not answering: %s", rid, obs.error)
                        self._status[rid] = replace(st, unresponsive_since=now)
                    return
                error = f"{obs.error or 'unresponsive'} (for {now - first:.0f} s)"
                self._fail(st, error, now)
                return
            self._fail(st, obs.error or "replica failed", now)
        elif obs.state is ReplicaState.READY and st.state is not ReplicaState.READY:
            self._status[rid] = replace(
                st, state=ReplicaState.READY, base_url=obs.base_url, attempts=0, since=now
            )
        elif obs.state is ReplicaState.READY and st.unresponsive_since is not None:
            log.info("replica %s answers again", rid)
            self._status[rid] = replace(st, unresponsive_since=None)

    def _idle(self, rid: str) -> bool:
        try:
            return self._outstanding(rid) == 0
        except Exception as exc:  # an unreadable load is not a reason to keep a replica forever
            log.warning("in-flight count of %s unreadable: %s", rid, exc)
            return True

    def _safe_stop(self, st: ReplicaStatus) -> None:
        try:
            self._launcher.stop(st.id)
        except Exception as exc:
            log.warning("stopping replica %s failed: %s", st.id, exc)
        self._status[st.id] = replace(st, state=ReplicaState.STOPPED, base_url=None)

    def stop_all(self) -> None:
        """Stop every replica now (shutdown); in-flight work is the caller's concern."""
        with self._lock:
            self._desired = {}
            for st in list(self._status.values()):
                self._safe_stop(st)
            self._status = {}
        self._sink.publish([])


class ReconcilerLoop:
    """Runs ``Reconciler.tick`` every ``interval_s`` on a daemon thread."""

    def __init__(self, reconciler: Reconciler, interval_s: float = 1.0) -> None:
        self.reconciler = reconciler
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconciler.tick()
            except Exception:  # the loop must outlive any one bad tick
                log.exception("reconciler tick failed")
            self._stop.wait(self._interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
