"""How a planned Replica becomes a worker actor: engine configuration from the model spec."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scheduler.domain import DeviceKind, Engine, ModelSpec, Replica
from scheduler.errors import NotFound
from scheduler.runtime.ray_backend import replica_to_info
from scheduler.settings import Settings

ActorArgs = Callable[[str, Replica], tuple[tuple[Any, ...], dict[str, Any]]]


def vllm_actor_args(settings: Settings, models: Callable[[], Mapping[str, ModelSpec]]) -> ActorArgs:
    """Constructor arguments of ``workers.actor.ReplicaActor`` for a replica.

    The weights are the variant's own source when the operator registered pre-quantised
    weights for that quantisation, else the model's source: the worker then makes the
    variant from that local checkpoint (int8 W8A8, GGUF) and checks it before serving
    (``workers.weights.prepare_weights``).
    """
    from workers.engines.vllm_server import VllmConfig
    from workers.probe import engine_env

    def build(replica_id: str, replica: Replica) -> tuple[tuple[Any, ...], dict[str, Any]]:
        spec = models().get(replica.model)
        if spec is None:
            raise NotFound(f"model {replica.model!r} is not registered")
        if replica.engine is Engine.LLAMA_CPP:
            return llamacpp_args(settings, spec, replica_id, replica)
        device = DeviceKind.CPU if replica.engine is Engine.VLLM_CPU else DeviceKind.GPU
        config = VllmConfig(
            model=spec.variant_sources.get(replica.quant, spec.source),
            served_model_name=replica.model,
            device=device,
            quant=replica.quant,
            dtype=replica.dtype,
            max_model_len=min(settings.max_model_len, spec.arch.max_model_len),
            tensor_parallel_size=replica.tp,
            kv_cache_gib=settings.kv_cache_gib,
        )
        return (replica_id, config, Path(settings.data_dir) / "logs"), {
            "env": engine_env(settings.engine_env_overrides(), settings.kv_cache_gib),
            "start_timeout_s": settings.engine_start_timeout_s,
            "metadata": replica_to_info(replica),
        }

    return build


def llamacpp_args(
    settings: Settings, spec: ModelSpec, replica_id: str, replica: Replica
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Actor arguments for a llama.cpp replica: the GGUF file registered as the variant's
    source, else the model's local checkpoint, which the worker converts and quantises on
    start (cached beside it). Every layer is offered to the GPU (``-1``): a CUDA build on
    a pre-Volta node offloads them all, a CPU build or a machine without a GPU keeps them
    on the CPU; the Ray resource pin decides which machine it is."""
    from workers.engines.llamacpp import LlamaCppConfig, LlamaCppServer

    config = LlamaCppConfig(
        model=spec.variant_sources.get(replica.quant, spec.source),
        served_model_name=replica.model,
        device=DeviceKind.GPU,
        quant=replica.quant,
        max_model_len=min(settings.max_model_len, spec.arch.max_model_len),
    )
    timeout_s = settings.engine_start_timeout_s
    env = settings.engine_env_overrides()
    return (replica_id, config, Path(settings.data_dir) / "logs"), {
        "env": env,
        "start_timeout_s": timeout_s,
        "metadata": replica_to_info(replica),
        # called in the actor, on the replica's machine, with its environment plus ``env``
        "engine_factory": lambda cfg, log, engine_env: LlamaCppServer(
            cfg, log, env=engine_env, start_timeout_s=timeout_s
        ),
    }
