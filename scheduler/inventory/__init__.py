"""Inventory and lifecycle (准入/退出): sites, nodes, devices, economics, profiles, audit.

Public interface::

    InventoryService(db, *, policy=AdmissionPolicy(), usage=UsageSource, replicas=ReplicaCounter,
                     clock=utcnow)                       # scheduler.inventory.service
        .snapshot() -> (Fleet, tuple[Demand, ...], dict[str, ModelSpec])   # admitted only
        .add_profile(host, ProfileIn, actor) -> ProfileResult            # runs admission
        .assess(actor, window_hours=None) -> AssessmentOut               # one bulk pass
        .import_fleet(fleet, models, demands, actor) / .export_fleet() -> YAML
        .drain_node / .retire_node / .readmit_node / .site_action / .record_health / ...
    inventory_router(service, admin_token) -> APIRouter   # scheduler.inventory.router
    AssessmentLoop(service, interval_s)                   # scheduler.inventory.periodic
    SqlUsageSource(db)                                    # scheduler.inventory.usage

Database: ``scheduler.store.db.open_database(url)`` and ``upgrade(url)`` (Alembic head).
"""
