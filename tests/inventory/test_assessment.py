"""Periodic assessment on real usage figures: watch, drain after grace, retire when empty,
recover; and the site roll-up ranking."""

from __future__ import annotations

import pytest

from scheduler.domain import LifecycleState
from scheduler.inventory.service import InventoryService
from tests.fakes.inventory import FakeClock, FakeReplicas, FakeUsage
from tests.inventory.conftest import t4_node
from tests.inventory.test_service import good_profile

S = LifecycleState


@pytest.fixture
def fleet(two_sites: InventoryService) -> InventoryService:
    for host, site in (("busy", "guian"), ("idle", "guian"), ("east", "shanghai")):
        two_sites.register_node(t4_node(host, site=site), "op")
        two_sites.add_profile(host, good_profile(), "agent")
    return two_sites


def states(service: InventoryService) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for d in service.list_devices():
        out.setdefault(d.host, set()).add(str(d.state))
    return out


def test_underperformer_is_watched_drained_then_retired(
    fleet: InventoryService, usage: FakeUsage, clock: FakeClock, replicas: FakeReplicas
) -> None:
    # a week of traffic: 'busy' covers its cost many times over, 'idle' barely serves
    usage.by_node.update({"busy": 100_000_000, "idle": 1_000_000, "east": 80_000_000})
    first = fleet.assess()
    assert (first.assessed, first.kept, first.watching) == (12, 8, 4)
    assert states(fleet)["idle"] == {"admitted"}  # grace period running, still serving
    clock.advance(days=8)
    second = fleet.assess()
    assert second.drained == 4
    assert states(fleet) == {"busy": {"admitted"}, "idle": {"draining"}, "east": {"admitted"}}
    drain = fleet.audit(subject_kind="device", subject="idle/0")[0]
    assert drain.to_state == "draining" and drain.actor == "assessment"
    assert drain.figures["tokens_per_yuan"] < fleet.policy.min_tokens_per_yuan
    assert "tokens/yuan" in drain.reason
    # due for retirement, but the runtime still has a replica there
    clock.advance(days=2)
    replicas.running["idle"] = 1
    third = fleet.assess()
    assert (third.retired, third.retire_blocked) == (0, 4)
    replicas.running["idle"] = 0
    assert fleet.assess().retired == 4
    assert states(fleet)["idle"] == {"retired"}
    summary = fleet.audit(subject_kind="fleet")[0]
    assert summary.action == "assessment" and summary.figures["retired"] == 4


def test_recovery_clears_the_grace_clock(
    fleet: InventoryService, usage: FakeUsage, clock: FakeClock
) -> None:
    usage.by_node.update({"busy": 100_000_000, "idle": 1_000_000, "east": 80_000_000})
    fleet.assess()
    clock.advance(days=5)
    usage.by_node["idle"] = 90_000_000
    assert fleet.assess().recovered == 4
    clock.advance(days=5)
    usage.by_node["idle"] = 1_000_000
    # below again: a new grace period starts, no drain yet
    out = fleet.assess()
    assert out.watching == 4 and out.drained == 0


def test_no_usage_records_means_no_judgement(fleet: InventoryService) -> None:
    out = fleet.assess()
    assert out.kept == 12 and out.drained == 0 and out.watching == 0


def test_site_report_ranks_cheap_western_power_first(
    fleet: InventoryService, usage: FakeUsage
) -> None:
    usage.by_node.update({"busy": 50_000_000, "idle": 50_000_000, "east": 50_000_000})
    report = fleet.site_report(window_hours=168)
    assert [r.site for r in report] == ["guian", "shanghai"]
    guian, shanghai = report
    assert guian.admitted_devices == 8 and shanghai.admitted_devices == 4
    assert guian.tokens_per_yuan > shanghai.tokens_per_yuan
    # facility energy: same cards and tokens per card, so tokens/J scale with 1/PUE
    assert shanghai.tokens_per_joule == pytest.approx(guian.tokens_per_joule * 1.25 / 1.55)
    assert 0 < guian.utilisation <= 1
    assert guian.output_tokens == pytest.approx(100_000_000)
