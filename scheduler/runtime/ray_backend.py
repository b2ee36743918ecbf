"""Ray side of the runtime: the only module that imports ray.

``RayLauncher`` implements ``ReplicaLauncher`` with one named Ray actor per replica,
pinned to its device class through a custom resource (``device_class_resource``), so a
replica lands exactly on the node that advertises those devices. Actors are named in
the ``cunliang`` namespace, which is how a restarted scheduler finds the replicas that
still run instead of starting duplicates.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import ray
from ray.exceptions import RayActorError, RayError

from scheduler.domain import Engine, Quant, Replica
from scheduler.errors import ConfigError
from scheduler.runtime.reconciler import Observation, ReplicaState

log = logging.getLogger(__name__)

NAMESPACE = "cunliang"
HEALTH_TIMEOUT_S = 10.0  # a health call unanswered this long counts as "not answering"
HEALTH_WAIT_S = 0.5  # how long one poll waits for the call in flight
STOP_TIMEOUT_S = 60.0


def device_class_resource(device_class_id: str) -> str:
    """The Ray custom resource a node advertises once per device of a class."""
    return "device_class:" + device_class_id


def init_ray(
    address: str | None,
    *,
    num_cpus: int | None = None,
    resources: Mapping[str, float] | None = None,
) -> None:
    """Join ``address`` or start a local head advertising ``resources``."""
    if ray.is_initialized():
        return
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
        except ConnectionError as exc:
            raise ConfigError(
                f"no Ray cluster reachable at {address!r} ({str(exc).splitlines()[0]})",
                fix="start one with `cunliang agent --join` / `ray start --head`, or pass "
                "--ray-address HOST:PORT of the head's GCS",
            ) from exc
    else:
        ray.init(
            num_cpus=num_cpus,
            resources=dict(resources or {}),
            namespace=NAMESPACE,
            include_dashboard=False,
            log_to_driver=False,
        )


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds with one line when ``HOST:PORT`` does not answer (``ray.init``
    would retry for minutes); "auto" and ``ray://`` addresses are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(
            f"no Ray cluster reachable at {address!r} ({exc.strerror or exc})",
            fix="start one with `cunliang agent --join` / `ray start --head`, or pass "
            "--ray-address HOST:PORT of the head's GCS",
        ) from exc


def ray_nodes() -> list[dict[str, Any]]:
    """Ray's node table (``NodeID``, ``Alive``, ``Resources`` ...), dead nodes included."""
    rows: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return rows


# Builds the actor's constructor arguments for a replica: (args, kwargs).
ActorArgs = Callable[[str, Replica], tuple[tuple[Any, ...], dict[str, Any]]]


@dataclass
class _Handle:
    actor: Any
    replica: Replica
    start_ref: Any
    ready_url: str | None = None
    failed: bool = False  # seen failed: stopping it is a kill, not a graceful stop
    # at most one health call in flight per replica: a slow actor (a busy machine) is not
    # sent a pile of calls, and a poll never blocks the reconciler's tick on it
    health_ref: Any = None
    health_sent_s: float = 0.0
    last: Observation | None = None  # the last answered check


def replica_to_info(replica: Replica) -> dict[str, Any]:
    return {
        "model": replica.model,
        "quant": str(replica.quant),
        "device_class_id": replica.device_class_id,
        "engine": str(replica.engine),
        "tp": replica.tp,
        "node_id": replica.node_id,
        "dtype": replica.dtype,
        "yuan_per_hour": replica.yuan_per_hour,
        "predicted_output_tokens_per_s": replica.predicted_output_tokens_per_s,
    }


def replica_from_info(info: Mapping[str, Any]) -> Replica:
    return Replica(
        model=info["model"],
        quant=Quant(info["quant"]),
        device_class_id=info["device_class_id"],
        engine=Engine(info["engine"]),
        tp=int(info.get("tp", 1)),
        node_id=info.get("node_id"),
        dtype=info.get("dtype", "auto"),
        yuan_per_hour=float(info.get("yuan_per_hour", 0.0)),
        predicted_output_tokens_per_s=float(info.get("predicted_output_tokens_per_s", 0.0)),
    )


class RayLauncher:
    """ReplicaLauncher over Ray actors.

    The actor class must offer ``start() -> base_url``, ``health() -> {"healthy": bool,
    "error": str | None}``, ``stop()`` and ``info() -> dict`` (with the replica fields).
    """

    def __init__(
        self,
        actor_class: type,
        actor_args: ActorArgs,
        *,
        detached: bool = False,
        pin_resources: bool = True,
    ) -> None:
        self._remote: Any = ray.remote(actor_class)
        self._actor_args = actor_args
        self._detached = detached
        self._pin = pin_resources
        # {replica_id: _Handle}
        self._handles: dict[str, _Handle] = {}

    def start(self, replica_id: str, replica: Replica) -> None:
        self._kill_named(replica_id)  # a dead or stale actor of the same name
        args, kwargs = self._actor_args(replica_id, replica)
        options: dict[str, Any] = {
            "name": replica_id,
            "namespace": NAMESPACE,
            "num_cpus": 0,  # the engine subprocess, not the actor, does the work
            "max_restarts": 0,  # restarts are the reconciler's, with backoff
            "max_concurrency": 4,  # health() must answer while start() loads the model
        }
        if self._pin:
            options["resources"] = {device_class_resource(replica.device_class_id): replica.tp}
        if self._detached:
            options["lifetime"] = "detached"
        actor = self._remote.options(**options).remote(*args, **kwargs)
        self._handles[replica_id] = _Handle(actor, replica, actor.start.remote())

    def poll(self, replica_id: str) -> Observation:
        handle = self._handles.get(replica_id)
        if handle is None:
            return Observation(ReplicaState.FAILED, error="replica unknown to this launcher")
        observation = self._observe(handle)
        handle.failed = observation.state is ReplicaState.FAILED
        return observation

    def _observe(self, handle: _Handle) -> Observation:
        if handle.ready_url is None:
            done, _ = ray.wait([handle.start_ref], timeout=0)
            if not done:
                return Observation(ReplicaState.STARTING)
            try:
                handle.ready_url = str(ray.get(handle.start_ref))
            except RayError as exc:
                return Observation(ReplicaState.FAILED, error=_short(exc))
        now_s = time.monotonic()
        if handle.health_ref is None:
            handle.health_ref = handle.actor.health.remote()
            handle.health_sent_s = now_s
        done, _ = ray.wait([handle.health_ref], timeout=HEALTH_WAIT_S)
        if not done:
            waited_s = now_s - handle.health_sent_s
            if waited_s < HEALTH_TIMEOUT_S:  # not late yet: the last answer stands
                return handle.last or Observation(ReplicaState.READY, base_url=handle.ready_url)
            # the actor lives but is slow (maybe a busy machine); the call stays in flight
            return Observation(
                ReplicaState.FAILED,
                error=f"health check unanswered for {waited_s:.0f} s",
                unresponsive=True,
            )
        ref, handle.health_ref = handle.health_ref, None
        try:
            health = ray.get(ref)
        except (RayActorError, RayError) as exc:
            return Observation(ReplicaState.FAILED, error=f"health check failed: {_short(exc)}")
        if health.get("healthy", False):
            handle.last = Observation(ReplicaState.READY, base_url=handle.ready_url)
        else:
            # "unhealthy": the engine's processes run but /health did not answer in time
            handle.last = Observation(
                ReplicaState.FAILED,
                error=str(health.get("error") or "unhealthy"),
                unresponsive=health.get("state") == "unhealthy",
            )
        return handle.last

    def stop(self, replica_id: str) -> None:
        handle = self._handles.pop(replica_id, None)
        if handle is None:
            self._kill_named(replica_id)
            return
        if handle.failed:
            # a failed replica's actor may sit on a lost node: a graceful stop() would wait
            # for STOP_TIMEOUT_S; killing the actor ends the engine through its supervisor
            ray.kill(handle.actor, no_restart=True)
            return
        try:
            ray.get(handle.actor.stop.remote(), timeout=STOP_TIMEOUT_S)
        except RayError as exc:
            log.info("replica %s did not stop cleanly: %s", replica_id, _short(exc))
        ray.kill(handle.actor, no_restart=True)

    def existing(self) -> Mapping[str, Replica]:
        """Named replica actors still alive in the namespace (after a scheduler restart)."""
        found: dict[str, Replica] = {}
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry.get("namespace") != NAMESPACE:
                continue
            name = entry["name"]
            try:
                actor = ray.get_actor(name, namespace=NAMESPACE)
                info = cast(dict[str, Any], ray.get(actor.info.remote(), timeout=HEALTH_TIMEOUT_S))
                replica = replica_from_info(info["replica"])
                url = info.get("base_url")
            except (RayError, KeyError, ValueError) as exc:
                log.info("ignoring actor %s: %s", name, _short(exc))
                continue
            start_ref = actor.start.remote()  # idempotent: returns the running engine's URL
            self._handles[name] = _Handle(actor, replica, start_ref, url)
            found[name] = replica
        return found

    def _kill_named(self, name: str) -> None:
        with contextlib.suppress(ValueError):  # ValueError: no such actor
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:500] if text else type(exc).__name__
