"""Inventory service on real SQLite and PostgreSQL: registration, bad input, concurrency,
profiles and admission, drain/retire/readmit, quarantine, audit, snapshot."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from scheduler.domain import DeviceKind, LifecycleState, Quant
from scheduler.errors import Conflict, CunliangError, InvalidInput, NotFound
from scheduler.inventory.schemas import DeviceIn, HealthIn, NodeIn, ProfileIn, SiteIn, parse
from scheduler.inventory.service import InventoryService
from scheduler.store.db import Database
from tests.fakes.inventory import FakeClock, FakeReplicas
from tests.inventory.conftest import t4_node

S = LifecycleState
REF = "cunliang-demo"


def good_profile(tokens_per_s: float = 800.0, watts: float = 300.0) -> ProfileIn:
    return ProfileIn(
        reference_model=REF,
        output_tokens_per_s=tokens_per_s,
        watts=watts,
        quants=[Quant.FP16, Quant.INT8_W8A8],
        bandwidth_gbs=290.1,  # unknown fields are kept in the payload
    )


def test_register_node_fills_gaps_from_catalogue(two_sites: InventoryService) -> None:
    node = two_sites.register_node(t4_node("g1"), "op")
    assert node.devices == 4 and node.states == {"registered": 4}
    devices = two_sites.list_devices(host="g1")
    assert [d.slot for d in devices] == [0, 1, 2, 3]
    t4 = devices[0]
    assert t4.kind is DeviceKind.GPU and t4.memory_bytes == 16 * 2**30
    assert t4.compute_capability == "7.5" and t4.tdp_watts == 70
    assert t4.residual_yuan == 3500


@pytest.mark.parametrize(
    ("node", "error", "message"),
    [
        (t4_node("g1", site="atlantis"), NotFound, "Unknown site 'atlantis'"),
        (
            NodeIn(
                host="g1", site="guian", devices=[DeviceIn(model="Tesla T4", memory_bytes=2**50)]
            ),
            InvalidInput,
            "impossible for a gpu",
        ),
        (
            NodeIn(host="g1", site="guian", devices=[DeviceIn(model="Quantum X9")]),
            InvalidInput,
            "not in the catalogue",
        ),
        (
            # the catalogue has no RAM size for CPU servers: it must be given
            NodeIn(host="c1", site="guian", devices=[DeviceIn(model="Xeon Gold 6248", sockets=2)]),
            InvalidInput,
            "memory size",
        ),
    ],
)
def test_bad_registrations_write_nothing(
    two_sites: InventoryService, node: NodeIn, error: type[CunliangError], message: str
) -> None:
    audit_before = len(two_sites.audit())
    with pytest.raises(error, match=message):
        two_sites.register_node(node, "op")
    assert two_sites.list_nodes() == []
    assert two_sites.list_devices() == []
    assert len(two_sites.audit()) == audit_before


def test_batch_with_one_bad_node_writes_nothing(two_sites: InventoryService) -> None:
    two_sites.register_node(t4_node("taken"), "op")
    with pytest.raises(Conflict, match="'taken' is already registered"):
        two_sites.register_nodes([t4_node("new-1"), t4_node("taken"), t4_node("new-2")], "op")
    assert [n.host for n in two_sites.list_nodes()] == ["taken"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "region": "west", "tariff_yuan_per_kwh": 0.5, "pue": 0.9}, "pue"),
        ({"name": "x", "region": "west", "pue": 1.2}, "tariff_yuan_per_kwh"),
        ({"name": "x", "region": "west", "tariff_yuan_per_kwh": -1, "pue": 1.2}, "tariff"),
        (
            {
                "name": "x",
                "region": "west",
                "tariff_yuan_per_kwh": 0.5,
                "pue": 1.2,
                "tou_bands": [
                    {"start_hour": 8, "end_hour": 12, "tariff_yuan_per_kwh": 1.0},
                    {"start_hour": 10, "end_hour": 14, "tariff_yuan_per_kwh": 1.0},
                ],
            },
            "overlap",
        ),
    ],
)
def test_site_validation_messages(data: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse(SiteIn, data)


def test_negative_price_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="residual_yuan"):
        parse(
            NodeIn, {"host": "h", "site": "s", "devices": [{"model": "A10", "residual_yuan": -5}]}
        )


def test_duplicate_site_is_a_conflict(two_sites: InventoryService) -> None:
    with pytest.raises(Conflict, match="already exists"):
        two_sites.add_site(SiteIn(name="guian", region="x", tariff_yuan_per_kwh=1, pue=1.1), "op")


def test_concurrent_registrations_of_one_host_make_one_node(db: Database) -> None:
    """Eight threads race to register the same host: one wins, seven get Conflict."""
    service = InventoryService(db)
    service.add_site(SiteIn(name="guian", region="west", tariff_yuan_per_kwh=0.35, pue=1.25), "t")
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def register() -> None:
        barrier.wait()
        try:
            service.register_node(t4_node("racer"), "thread")
            result = "ok"
        except Conflict:
            result = "conflict"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=register) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]
    assert len(service.list_nodes()) == 1
    assert len(service.list_devices()) == 4
    assert len(service.audit(subject_kind="node", subject="racer")) == 1


def test_profile_admits_devices_that_meet_policy(two_sites: InventoryService) -> None:
    two_sites.register_node(t4_node("g1"), "op")
    result = two_sites.add_profile("g1", good_profile(), "agent:g1")
    assert result.profile.version == 1
    assert all(a.admitted for a in result.admission)
    figures = result.admission[0].figures
    assert figures["output_tokens_per_s"] == pytest.approx(200.0)  # node figure / 4 devices
    assert figures["tokens_per_joule"] == pytest.approx(200.0 / 75.0)
    assert {d.state for d in two_sites.list_devices()} == {S.ADMITTED}
    detail = two_sites.get_node("g1")
    assert detail.latest_profile is not None and detail.latest_profile.quants == [
        "fp16",
        "int8-w8a8",
    ]
    actions = [(a.action, a.from_state, a.to_state) for a in reversed(detail.audit)]
    assert actions[0] == ("register", None, "registered")
    assert ("transition", "registered", "probation") in actions
    assert ("transition", "probation", "admitted") in actions


def test_profile_below_policy_keeps_probation_with_reasons(two_sites: InventoryService) -> None:
    two_sites.register_node(t4_node("slow", site="shanghai"), "op")
    result = two_sites.add_profile("slow", good_profile(tokens_per_s=4.0, watts=400), "agent")
    assert not any(a.admitted for a in result.admission)
    reasons = result.admission[0].reasons
    assert any("tokens/yuan" in r for r in reasons) and any("tokens/J" in r for r in reasons)
    assert {d.state for d in two_sites.list_devices()} == {S.PROBATION}
    refused = two_sites.audit(subject_kind="device", subject="slow/0")
    assert refused[0].action == "admission_refused" and refused[0].figures["watts"] == 100.0


def test_admission_checks_pue_and_reference_model(two_sites: InventoryService) -> None:
    two_sites.add_site(SiteIn(name="hot", region="south", tariff_yuan_per_kwh=0.5, pue=2.2), "op")
    two_sites.register_node(t4_node("h1", site="hot"), "op")
    result = two_sites.add_profile(
        "h1", good_profile().model_copy(update={"reference_model": "other"}), "agent"
    )
    reasons = " ".join(result.admission[0].reasons)
    assert "PUE 2.20 > max 1.80" in reasons and "policy needs" in reasons


def test_profile_versions_increase(two_sites: InventoryService) -> None:
    two_sites.register_node(t4_node("g1"), "op")
    versions = [two_sites.add_profile("g1", good_profile(), "a").profile.version for _ in range(3)]
    assert versions == [1, 2, 3]


def test_profile_for_unknown_node_is_not_found(two_sites: InventoryService) -> None:
    with pytest.raises(NotFound, match="Unknown node 'ghost'"):
        two_sites.add_profile("ghost", good_profile(), "agent")


def test_drain_retire_readmit_cycle(two_sites: InventoryService, replicas: FakeReplicas) -> None:
    two_sites.register_node(t4_node("g1"), "op")
    two_sites.add_profile("g1", good_profile(), "agent")
    with pytest.raises(Conflict, match="cannot become retired"):
        two_sites.retire_node("g1", "op", "skip the drain")
    assert two_sites.drain_node("g1", "op", "old cards").devices_changed == 4
    # draining devices are not offered to placement
    assert two_sites.snapshot()[0].classes == ()
    replicas.running["g1"] = 2
    with pytest.raises(Conflict, match="still runs 2 replica"):
        two_sites.retire_node("g1", "op", "done")
    replicas.running["g1"] = 0
    assert two_sites.retire_node("g1", "op", "done").devices_changed == 4
    with pytest.raises(Conflict, match="node g1 is retired"):
        two_sites.drain_node("g1", "op", "again")
    # readmission: the (recent) profile meets policy, so the devices come straight back
    assert two_sites.readmit_node("g1", "op", "demand grew").to_state is S.ADMITTED
    assert {d.state for d in two_sites.list_devices()} == {S.ADMITTED}


def test_retire_without_runtime_needs_operator_confirmation(db: Database) -> None:
    service = InventoryService(db)  # no ReplicaCounter: the runtime is not there to ask
    service.add_site(SiteIn(name="s", region="r", tariff_yuan_per_kwh=0.5, pue=1.3), "op")
    service.register_node(t4_node("n", site="s"), "op")
    service.add_profile("n", good_profile(), "agent")
    service.drain_node("n", "op", "")
    with pytest.raises(Conflict, match="cannot confirm"):
        service.retire_node("n", "op", "")
    assert service.retire_node("n", "op", "checked", replicas_moved=True).to_state is S.RETIRED


def test_readmit_after_stale_profile_waits_for_reprofiling(
    two_sites: InventoryService, clock: FakeClock
) -> None:
    two_sites.register_node(t4_node("g1"), "op")
    two_sites.add_profile("g1", good_profile(), "agent")
    two_sites.drain_node("g1", "op", "")
    two_sites.retire_node("g1", "op", "", replicas_moved=True)
    clock.advance(days=60)
    out = two_sites.readmit_node("g1", "op", "back")
    assert out.to_state is S.PROBATION
    reasons = two_sites.audit(subject_kind="device", subject="g1/0")[0].reason
    assert "days old" in reasons
    two_sites.add_profile("g1", good_profile(), "agent")  # reprofiled
    assert {d.state for d in two_sites.list_devices()} == {S.ADMITTED}


def test_repeated_health_failures_quarantine(two_sites: InventoryService) -> None:
    two_sites.register_node(t4_node("g1"), "op")
    two_sites.add_profile("g1", good_profile(), "agent")
    for _ in range(2):
        node = two_sites.record_health("g1", HealthIn(healthy=False, detail="Xid 79"), "probe")
    assert node.states == {"admitted": 4}
    node = two_sites.record_health("g1", HealthIn(healthy=False, detail="Xid 79"), "probe")
    assert node.states == {"quarantined": 4} and node.health_failures == 3
    # a profile while still unhealthy does not bring it back
    two_sites.add_profile("g1", good_profile(), "agent")
    assert {d.state for d in two_sites.list_devices()} == {S.QUARANTINED}
    two_sites.record_health("g1", HealthIn(healthy=True), "probe")
    two_sites.add_profile("g1", good_profile(), "agent")
    assert {d.state for d in two_sites.list_devices()} == {S.ADMITTED}


def test_site_actions_move_every_device(
    two_sites: InventoryService, replicas: FakeReplicas
) -> None:
    for host in ("a", "b"):
        two_sites.register_node(t4_node(host, site="shanghai"), "op")
        two_sites.add_profile(host, good_profile(), "agent")
    two_sites.register_node(t4_node("c"), "op")  # guian: untouched
    out = two_sites.site_action("shanghai", "drain", "op", "east is expensive")
    assert out.devices_changed == 8
    replicas.running.update({"a": 0, "b": 0})
    assert two_sites.site_action("shanghai", "retire", "op", "").devices_changed == 8
    states = {d.host: d.state for d in two_sites.list_devices()}
    assert states == {"a": S.RETIRED, "b": S.RETIRED, "c": S.REGISTERED}
    with pytest.raises(NotFound):
        two_sites.site_action("nowhere", "drain", "op", "")


def test_device_filters(two_sites: InventoryService) -> None:
    two_sites.register_node(t4_node("g1"), "op")
    two_sites.register_node(
        NodeIn(
            host="cpu1",
            site="shanghai",
            devices=[DeviceIn(model="Xeon Gold 6248", memory_bytes=384 * 2**30, sockets=2)],
        ),
        "op",
    )
    two_sites.add_profile("g1", good_profile(), "agent")
    assert len(two_sites.list_devices(site="guian")) == 4
    assert [d.host for d in two_sites.list_devices(kind="cpu")] == ["cpu1"]
    assert len(two_sites.list_devices(model="tesla t4")) == 4
    assert len(two_sites.list_devices(state="admitted")) == 4
    assert len(two_sites.list_devices(state="registered", site="shanghai")) == 1
    with pytest.raises(InvalidInput, match="Unknown lifecycle state"):
        two_sites.list_devices(state="sleeping")


def test_snapshot_aggregates_identical_devices_per_site(two_sites: InventoryService) -> None:
    for host in ("g1", "g2"):
        two_sites.register_node(t4_node(host), "op")
        two_sites.add_profile(host, good_profile(), "agent")
    two_sites.register_node(t4_node("s1", site="shanghai"), "op")
    two_sites.add_profile("s1", good_profile(), "agent")
    two_sites.register_node(t4_node("g3"), "op")  # not admitted: not offered
    fleet, demands, models = two_sites.snapshot()
    assert {c.id: c.count for c in fleet.classes} == {
        "guian/tesla-t4": 8,
        "shanghai/tesla-t4": 4,
    }
    guian = next(c for c in fleet.classes if c.site.name == "guian")
    assert guian.node_ids == ("g1", "g2") and guian.per_node == 4
    assert guian.measured_quants == frozenset({Quant.FP16, Quant.INT8_W8A8})
    assert guian.spec.fp16_flops > 0 and guian.site.pue == 1.25
    assert guian.economics.residual_yuan == 3500
    assert demands == () and models == {}


def test_snapshot_ids_disambiguate_one_model_in_two_server_shapes(
    two_sites: InventoryService,
) -> None:
    two_sites.register_node(t4_node("g1"), "op")
    two_sites.register_node(t4_node("g2", count=2), "op")
    for host in ("g1", "g2"):
        two_sites.add_profile(host, good_profile(), "agent")
    fleet, _, _ = two_sites.snapshot()
    assert {c.id: c.count for c in fleet.classes} == {
        "guian/tesla-t4-16g-x2": 2,
        "guian/tesla-t4-16g-x4": 4,
    }


def test_time_of_use_tariff_raises_cost(db: Database, clock: FakeClock) -> None:
    service = InventoryService(db, clock=clock)
    service.add_site(SiteIn(name="flat", region="r", tariff_yuan_per_kwh=0.5, pue=1.2), "op")
    service.add_site(
        parse(
            SiteIn,
            {
                "name": "tou",
                "region": "r",
                "tariff_yuan_per_kwh": 0.5,
                "pue": 1.2,
                "tou_bands": [{"start_hour": 8, "end_hour": 20, "tariff_yuan_per_kwh": 1.5}],
            },
        ),
        "op",
    )
    costs = {}
    for site in ("flat", "tou"):
        service.register_node(t4_node(site, site=site), "op")
        result = service.add_profile(site, good_profile(), "agent")
        costs[site] = result.admission[0].figures["full_yuan_per_hour"]
    # 12 of 24 hours at 1.0 yuan/kWh more: +0.5 yuan/kWh average on 75 W x PUE 1.2
    assert costs["tou"] - costs["flat"] == pytest.approx(0.075 * 1.2 * 0.5)
    assert timedelta(0) == timedelta(0)


def test_retirement_records_who_confirmed_no_replicas(
    two_sites: InventoryService, replicas: FakeReplicas
) -> None:
    for host in ("r1", "r2"):
        two_sites.register_node(t4_node(host), "op")
        two_sites.add_profile(host, good_profile(), "agent")
    two_sites.site_action("guian", "drain", "op", "move east")
    replicas.running["r1"] = 0  # the runtime vouches for r1 only
    with pytest.raises(Conflict, match="cannot confirm that r2"):
        two_sites.site_action("guian", "retire", "op", "")
    two_sites.site_action("guian", "retire", "op", "checked r2 by hand", replicas_moved=True)
    entry = two_sites.audit(subject_kind="device", subject="r2/3")[0]
    assert entry.to_state == "retired" and entry.reason == "checked r2 by hand"
    assert entry.figures == {
        "replicas_running": 0,
        "hosts_confirmed_by_runtime": 1,
        "hosts_confirmed_by_operator": 1,
    }


def test_time_of_use_bands_may_wrap_midnight_but_not_overlap() -> None:
    base = {"name": "x", "region": "r", "tariff_yuan_per_kwh": 0.5, "pue": 1.2}
    night = {"start_hour": 22, "end_hour": 6, "tariff_yuan_per_kwh": 0.3}
    site = parse(SiteIn, {**base, "tou_bands": [night]})
    assert site.tou_bands[0].hours() == {22, 23, 0, 1, 2, 3, 4, 5}
    late = {"start_hour": 5, "end_hour": 8, "tariff_yuan_per_kwh": 0.9}
    with pytest.raises(InvalidInput, match="overlap"):
        parse(SiteIn, {**base, "tou_bands": [night, late]})
