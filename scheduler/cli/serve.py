"""Long-running services for a cluster deployment (what the Helm chart runs).

``cunliang db upgrade``  migrate the database to the newest schema (a Helm hook Job);
``cunliang gateway``     the OpenAI-compatible gateway alone, routing from the runtime table;
``cunliang scheduler``   placement + reconciler against a Ray cluster, publishing replicas.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from typing import Any

from scheduler.errors import ConfigError
from scheduler.settings import Settings


def register(sub: Any) -> None:
    db = sub.add_parser("db", help="database schema (Alembic)")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    db_sub.add_parser("upgrade", help="migrate to the newest schema").set_defaults(func=_db_upgrade)
    db_sub.add_parser("current", help="print the schema revision").set_defaults(func=_db_current)

    gw = sub.add_parser("gateway", help="run the gateway alone (cluster deployment)")
    gw.add_argument("--host", help="listen address (default 127.0.0.1)")
    gw.add_argument("--port", type=int, help="listen port (default 8000)")
    gw.add_argument("--admin-token", help="admin token (or $CUNLIANG_ADMIN_TOKEN)")
    gw.set_defaults(func=_gateway)

    sch = sub.add_parser("scheduler", help="run placement and the reconciler on a Ray cluster")
    sch.add_argument("--ray-address", help="Ray cluster address ('auto' inside a Ray pod)")
    sch.add_argument("--replan-interval-s", type=float, default=15.0)
    sch.add_argument(
        "--metrics-port", type=int, help="port of the scheduler's /metrics (default 9401; 0: off)"
    )
    sch.add_argument("--metrics-host", help="listen address of /metrics (default: --host's)")
    sch.set_defaults(func=_scheduler)


def _db_upgrade(_args: argparse.Namespace, settings: Settings) -> int:
    from scheduler.store.db import current_revision, upgrade

    url = settings.resolved_database_url
    _ensure_sqlite_dir(settings)
    upgrade(url)
    print(f"database at revision {current_revision(url)}")
    return 0


def _db_current(_args: argparse.Namespace, settings: Settings) -> int:
    from scheduler.store.db import current_revision

    print(current_revision(settings.resolved_database_url) or "empty (run: cunliang db upgrade)")
    return 0


def _ensure_sqlite_dir(settings: Settings) -> None:
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)


def _open_migrated(settings: Settings) -> Any:
    from alembic.script import ScriptDirectory

    from scheduler.store.db import alembic_config, current_revision, open_database

    url = settings.resolved_database_url
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    if current_revision(url) != head:
        raise ConfigError(
            "the database schema is not at the newest revision.",
            fix="run `cunliang db upgrade` first (the Helm chart's migration Job does).",
        )
    return open_database(url)


def _gateway(_args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from scheduler.dashboard.wiring import observability
    from scheduler.gateway.app import create_app
    from scheduler.gateway.db_directory import DbGatewayPeers, DbReplicaDirectory
    from scheduler.gateway.serve import SERVER_OPTIONS, prepare_process
    from scheduler.inventory.router import inventory_router
    from scheduler.inventory.service import InventoryService
    from scheduler.inventory.usage import SqlUsageSource
    from scheduler.observability.sources import directory_replica_counts
    from scheduler.preflight import check_port_free
    from scheduler.tenancy import TenancyService

    if not settings.admin_token:
        raise ConfigError("the gateway needs an admin token.", fix="set CUNLIANG_ADMIN_TOKEN.")
    check_port_free(settings.host, settings.port)
    database = _open_migrated(settings)
    directory = DbReplicaDirectory(database.sessions)
    directory.start()
    # every gateway on this database enforces its share of each tenant limit
    peers = DbGatewayPeers(database.sessions)
    try:
        peers.start()
        tenancy = TenancyService(database.sessions)
        inventory = InventoryService(database, usage=SqlUsageSource(database))
        # fleet gauges on /metrics and the operator dashboard on /dashboard
        obs = observability(
            database,
            inventory,
            tenancy,
            directory,
            settings.admin_token,
            directory_replica_counts(directory),
        )
        app = create_app(
            settings,
            tenancy,
            directory,
            obs.registry,
            admin_token=settings.admin_token,
            extra_routers=[inventory_router(inventory, settings.admin_token), obs.router],
            peers=peers,
        )
        obs.install(app)
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises SIGINT/SIGTERM
            prepare_process(settings.gateway_cpus)
            uvicorn.run(
                app, host=settings.host, port=settings.port, log_level="warning", **SERVER_OPTIONS
            )
    finally:
        peers.stop()
        directory.stop()
        database.dispose()
    return 0


def _scheduler(args: argparse.Namespace, settings: Settings) -> int:
    """Controller + reconciler + node watcher against a Ray cluster, until SIGINT/SIGTERM.

    Idempotent across restarts: replicas are detached named actors, adopted by name by
    the next scheduler (no duplicates). Every second the node watcher reads Ray's node
    table (lost hosts: inventory health failures, then quarantine) and the controller
    replans at once when a host is lost; otherwise every ``--replan-interval-s``.
    """
    from prometheus_client import start_http_server

    from scheduler.inventory.periodic import AssessmentLoop
    from scheduler.inventory.service import InventoryService
    from scheduler.inventory.usage import SqlUsageSource
    from scheduler.observability.scheduler_metrics import (
        ControlStats,
        SchedulerCollector,
        scheduler_registry,
    )
    from scheduler.placement import plan
    from scheduler.preflight import check_port_free
    from scheduler.runtime.actors import vllm_actor_args
    from scheduler.runtime.controller import Controller
    from scheduler.runtime.liveness import InventoryHealth, NodeWatcher
    from scheduler.runtime.load import EngineLoad
    from scheduler.runtime.publish import DbEndpointSink
    from scheduler.runtime.ray_backend import RayLauncher, init_ray, ray_nodes
    from scheduler.runtime.reconciler import Reconciler, ReconcilerLoop
    from workers.actor import ReplicaActor

    metrics_port = (
        settings.scheduler_metrics_port if args.metrics_port is None else args.metrics_port
    )
    metrics_host = args.metrics_host or settings.host
    if metrics_port:
        check_port_free(metrics_host, metrics_port)
    database = _open_migrated(settings)
    init_ray(args.ray_address or settings.ray_address or "auto")
    inventory = InventoryService(database, usage=SqlUsageSource(database))
    assessment = AssessmentLoop(inventory, settings.assessment_interval_s)
    holder: dict[str, Any] = {}
    # detached actors outlive this process: a restarted scheduler adopts them (no duplicates)
    launcher = RayLauncher(
        ReplicaActor, vllm_actor_args(settings, lambda: holder["c"].models), detached=True
    )
    reconciler = Reconciler(
        launcher,
        DbEndpointSink(database.sessions),
        outstanding=EngineLoad(lambda rid: holder["r"].base_url_of(rid)),
        # gateways reload the endpoint table every second: 3 s covers a routed request
        drain_grace_s=3.0,
    )
    holder["r"] = reconciler
    watcher = NodeWatcher(
        ray_nodes,
        InventoryHealth(inventory),
        known_ids=lambda: {n.ray_node_id: n.host for n in inventory.list_nodes() if n.ray_node_id},
    )
    controller = Controller(
        inventory.snapshot,
        lambda fleet, demands, models, current: plan(fleet, demands, models, current=current),
        reconciler,
        lost_hosts=watcher.lost,
    )
    holder["c"] = controller
    stats = ControlStats()
    if metrics_port:
        collector = SchedulerCollector(
            reconciler.statuses, lambda: controller.plan, watcher.lost, stats
        )
        start_http_server(metrics_port, metrics_host, registry=scheduler_registry(collector))
    loop = ReconcilerLoop(reconciler, interval_s=1.0)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    adopted = len(reconciler.statuses())
    served = f"; /metrics on {metrics_host}:{metrics_port}" if metrics_port else ""
    print(
        f"cunliang scheduler: running, {adopted} replica(s) adopted "
        f"(replicas survive a scheduler restart){served}",
        flush=True,
    )
    loop.start()
    assessment.start()
    _control_loop(stop, watcher, controller, args.replan_interval_s, stats)
    assessment.stop()
    loop.stop()
    database.dispose()
    return 0


def _control_loop(
    stop: threading.Event, watcher: Any, controller: Any, replan_s: float, stats: Any
) -> None:
    """Watch nodes every second; replan when the lost set changes or every ``replan_s``."""
    lost: frozenset[str] | None = None
    last_plan = 0.0
    while True:
        try:
            now_lost = watcher.tick()
            replanned = False
            if now_lost != lost or time.monotonic() - last_plan >= replan_s:
                replanned = controller.tick() is not None
                lost, last_plan = now_lost, time.monotonic()
            stats.tick(ok=True, replanned=replanned)
        except Exception as exc:  # the scheduler outlives a bad tick (DB or Ray hiccup)
            stats.tick(ok=False, replanned=False)
            print(f"cunliang scheduler: control tick failed: {exc}", file=sys.stderr, flush=True)
        if stop.wait(1.0):
            return
