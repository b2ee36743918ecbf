"""The assessment loop runs passes on its own and survives a failing one."""

from __future__ import annotations

import time

from scheduler.inventory.periodic import AssessmentLoop
from scheduler.inventory.service import InventoryService
from scheduler.store.db import Database
from tests.inventory.conftest import t4_node
from tests.inventory.test_service import good_profile


def test_loop_runs_passes_and_survives_a_failing_pass(
    two_sites: InventoryService, db: Database
) -> None:
    two_sites.register_node(t4_node("g1"), "op")
    two_sites.add_profile("g1", good_profile(), "agent")
    loop = AssessmentLoop(two_sites, interval_s=0.05)
    loop.start()
    deadline = time.monotonic() + 20
    while loop.passes < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    loop.stop()
    assert loop.passes >= 2 and loop.last is not None and loop.last.assessed == 4
    summaries = two_sites.audit(subject_kind="fleet")
    assert len(summaries) == loop.passes and summaries[0].actor == "assessment"
    # a pass that fails (table gone) is recorded, not raised
    with db.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE devices RENAME TO devices_away")
    try:
        loop.tick()
    finally:
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE devices_away RENAME TO devices")
    assert loop.last_error is not None and "devices" in loop.last_error
    loop.tick()
    assert loop.last_error is None
