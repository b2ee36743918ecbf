"""The periodic 准入/退出 assessment: a tick loop on a background thread.

``cunliang up`` (or any long-running process) starts one next to the admin API:

    loop = AssessmentLoop(service, interval_s=3600)
    loop.start(); ...; loop.stop()

A failing pass (database down, runtime unreachable) is recorded in ``last_error`` and
logged; the loop carries on at the next tick instead of dying.
"""

from __future__ import annotations

import logging
import threading

from scheduler.errors import CunliangError
from scheduler.inventory.schemas import AssessmentOut
from scheduler.inventory.service import InventoryService

log = logging.getLogger(__name__)


class AssessmentLoop:
    def __init__(
        self, service: InventoryService, interval_s: float, actor: str = "assessment"
    ) -> None:
        if interval_s <= 0:
            raise CunliangError("The assessment interval must be > 0 seconds.")
        self._service = service
        self._interval_s = interval_s
        self._actor = actor
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.last: AssessmentOut | None = None
        self.last_error: str | None = None

    def tick(self) -> None:
        """One pass; never raises (the loop must survive a bad pass)."""
        try:
            self.last = self._service.assess(self._actor)
            self.last_error = None
        except Exception as exc:  # a tick loop records failures and carries on
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("assessment pass failed: %s", self.last_error)
        self.passes += 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.tick()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="assessment", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
