"""ReplicaActor logic without Ray or vLLM (the real engine path is in test_engine_vllm.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.actor import ReplicaActor, as_ray_actor
from workers.engines.base import Engine
from workers.engines.vllm_server import VllmConfig


@dataclass
class RecordingEngine:
    """A stand-in Engine that records lifecycle calls."""

    config: VllmConfig
    log_path: Path
    calls: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return "http://127.0.0.1:9"

    @property
    def pid(self) -> int | None:
        return 4242 if "start" in self.calls else None

    def start(self) -> str:
        self.calls.append("start")
        return self.base_url

    def ready(self) -> bool:
        return "start" in self.calls

    def health(self) -> dict[str, Any]:
        return {"state": "ready" if self.ready() else "not started", "pid": self.pid}

    def stop(self) -> None:
        self.calls.append("stop")


def _actor(tmp_path: Path) -> tuple[ReplicaActor, RecordingEngine]:
    made: list[RecordingEngine] = []

    def factory(config: VllmConfig, log_path: Path, env: Mapping[str, str]) -> Engine:
        assert dict(env) == dict(os.environ)  # no overrides sent: this machine's environment
        made.append(RecordingEngine(config, log_path))
        return made[-1]

    config = VllmConfig(model="/models/demo", served_model_name="demo", dtype="bfloat16")
    actor = ReplicaActor("qwen/bf16/cpu-a/tp1#0", config, tmp_path, env={}, engine_factory=factory)
    return actor, made[0]


def test_actor_drives_its_engine_and_reports(tmp_path: Path) -> None:
    actor, engine = _actor(tmp_path)
    assert isinstance(engine, Engine)
    before = actor.health()
    assert before["replica_id"] == "qwen/bf16/cpu-a/tp1#0" and not before["healthy"]
    assert before["state"] == "not started" and before["error"]
    assert actor.start() == "http://127.0.0.1:9"
    assert actor.start() == "http://127.0.0.1:9"  # idempotent: one engine
    assert actor.health()["healthy"] and actor.health()["error"] is None
    info = actor.info()
    assert info["base_url"] == "http://127.0.0.1:9" and info["pid"] == 4242
    assert info["config"]["dtype"] == "bfloat16" and info["config"]["device"] == "cpu"
    # the replica id becomes a safe file name for the engine log
    assert engine.log_path == tmp_path / "engine-qwen_bf16_cpu-a_tp1_0.log"
    actor.stop()
    assert engine.calls == ["start", "stop"]


def test_actor_stops_its_engine_when_collected(tmp_path: Path) -> None:
    actor, engine = _actor(tmp_path)
    actor.start()
    actor.__del__()  # what garbage collection / interpreter exit runs
    assert engine.calls[-1] == "stop"


class _RayLike:
    def __init__(self) -> None:
        self.options: dict[str, Any] | None = None

    def remote(self, *args: Any, **options: Any) -> Any:
        if args:  # @ray.remote without options
            return ("actor-class", args[0])
        self.options = options
        return lambda cls: ("actor-class", cls, options)


def test_as_ray_actor_applies_remote_with_options() -> None:
    ray = _RayLike()
    assert as_ray_actor(ray) == ("actor-class", ReplicaActor)
    assert as_ray_actor(ray, num_cpus=1, resources={"cpu-a": 1}) == (
        "actor-class",
        ReplicaActor,
        {"num_cpus": 1, "resources": {"cpu-a": 1}},
    )
