"""`cunliang scheduler`'s outer loop: watch nodes every second, replan at once on a loss."""

from __future__ import annotations

import threading
import time

from scheduler.cli.serve import _control_loop
from scheduler.observability.scheduler_metrics import ControlStats


class Watcher:
    def __init__(self) -> None:
        self.lost: frozenset[str] = frozenset()
        self.ticks = 0

    def tick(self) -> frozenset[str]:
        self.ticks += 1
        if self.ticks == 3:
            self.lost = frozenset({"gpu-1"})
        if self.ticks == 4:
            raise RuntimeError("ray unreachable")  # a bad tick does not end the loop
        return self.lost


class Controller:
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.ticks: list[int] = []

    def tick(self) -> object:
        self.ticks.append(self.watcher.ticks)
        return object()  # a new plan


def test_replans_at_start_on_a_lost_host_and_survives_a_bad_tick() -> None:
    watcher = Watcher()
    controller = Controller(watcher)
    stop = threading.Event()
    stats = ControlStats()
    thread = threading.Thread(
        target=_control_loop, args=(stop, watcher, controller, 3600.0, stats), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while watcher.ticks < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    # first tick (nothing known yet) and the tick that saw gpu-1 lost; not the others
    assert controller.ticks == [1, 3]
    assert stats.errors == 1 and stats.ok == watcher.ticks - 1 and stats.replans == 2
