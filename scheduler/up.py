"""`cunliang up`: the whole product on one machine, every stage real.

Stages, in order (each prints a numbered line; long ones show a progress bar):
 1. preflight: data dir writable, port free (one-line errors, nothing started);
 2. inventory: SQLite (or --database-url) migrated to head with Alembic;
 3. model: the configured Hugging Face id / path, or the generated demo model;
 4. this machine: detected and registered as site + node + device;
 5. profile: which dtypes the engine really runs here (subprocess probes, cached) and how
    fast; posted to the inventory, which decides admission (准入);
 6. plan: the placement optimiser over the inventory's admitted fleet and the demand;
 7. runtime: a local Ray head and one replica actor per planned replica, run by the
    reconciler loop;
 8. gateway: tenant + API key, OpenAI-compatible API, /metrics, /healthz on host:port.

Ctrl-C / SIGTERM stops the gateway, every replica (engine process groups) and Ray.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from scheduler.domain import Quant
from scheduler.errors import ConfigError, EngineError, NoCapacity
from scheduler.preflight import check_data_dir, check_port_free
from scheduler.settings import Settings
from scheduler.support import DTYPE_QUANT

STEPS = 8
DEFAULT_TENANT = "default"
# demand the embedded stack plans for: one replica's worth, interactive SLO
DEMO_OUTPUT_TOKENS_PER_S = 1.0


class Console:
    """Numbered progress lines on stdout and tqdm bars on stderr."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.step_no = 0

    def step(self, message: str) -> None:
        self.step_no += 1
        print(f"[{self.step_no}/{STEPS}] {message}", file=self.out, flush=True)

    def info(self, message: str) -> None:
        print(f"      {message}", file=self.out, flush=True)

    @contextmanager
    def bar(self, desc: str) -> Iterator[Callable[[str, float], None]]:
        """A progress callback ``(label, fraction 0..1)`` drawn as a tqdm bar."""
        from tqdm import tqdm

        with tqdm(total=100, desc=desc, unit="%", leave=False, file=sys.stderr) as bar:

            def update(label: str, fraction: float) -> None:
                bar.set_postfix_str(label[:40], refresh=False)
                bar.n = round(100 * max(0.0, min(1.0, fraction)))
                bar.refresh()

            yield update


@dataclass
class _Local:
    host: str
    model_dir: Path
    model_name: str
    dtype: str


def run_up(settings: Settings, console: Console | None = None) -> int:
    console = console or Console()
    data_dir = check_data_dir(settings.data_dir)
    check_port_free(settings.host, settings.port)
    settings = settings.model_copy(update={"data_dir": data_dir})
    console.step(f"preflight ok: data in {data_dir}, gateway on {settings.host}:{settings.port}")
    # SIGTERM takes the same clean path as Ctrl-C: unwind the ExitStack, stop engines and Ray
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with ExitStack() as cleanup:
            return _EmbeddedStack(settings, console, cleanup).run()
    except KeyboardInterrupt:
        print("cunliang: interrupted while starting; stopped.", file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


class _EmbeddedStack:
    def __init__(self, settings: Settings, console: Console, cleanup: ExitStack) -> None:
        self.s = settings
        self.c = console
        self.cleanup = cleanup

    def run(self) -> int:
        from scheduler.inventory.periodic import AssessmentLoop
        from scheduler.inventory.service import InventoryService
        from scheduler.inventory.usage import SqlUsageSource
        from scheduler.store.db import open_database, upgrade

        url = self.s.resolved_database_url
        self.c.step(f"inventory: {_redact(url)}")
        upgrade(url)
        database = open_database(url)
        self.cleanup.callback(database.dispose)
        model_dir, model_name = self._model()
        inventory = InventoryService(
            database, policy=self._policy(model_dir), usage=SqlUsageSource(database)
        )
        assessment = AssessmentLoop(inventory, self.s.assessment_interval_s, actor="cunliang up")
        assessment.start()
        self.cleanup.callback(assessment.stop)

        local = self._register_and_profile(inventory, model_dir, model_name)
        plan, spec = self._plan(inventory, local)
        table, reconciler = self._runtime(plan, local, spec)
        return self._serve(database, inventory, table, reconciler)

    # -- stages -------------------------------------------------------------------------
    def _policy(self, model_dir: Path) -> Any:
        from scheduler.lifecycle import AdmissionPolicy

        # the embedded stack judges this machine on the model it profiles and serves
        return AdmissionPolicy(reference_model=model_dir.name)

    def _model(self) -> tuple[Path, str]:
        if self.s.model:
            self.c.step(f"model: {self.s.model}")
            return _resolve_model(self.s.model), self.s.served_model_name
        from workers.demo_model import ensure_demo_model

        self.c.step("model: generating the demo model (random-weight Llama, cached)")
        with self.c.bar("demo model") as progress:
            path = ensure_demo_model(self.s.data_dir, progress=progress)
        self.c.info(f"at {path}")
        return path, self.s.served_model_name

    def _register_and_profile(self, inventory: Any, model_dir: Path, model_name: str) -> _Local:
        from scheduler.inventory.schemas import NodeIn, SiteIn
        from workers.hardware import detect_host

        host_info = detect_host()
        cpu = host_info.cpu
        host = _hostname()
        self.c.step(
            f"this machine: {host}, {cpu.model_name}, {cpu.physical_cores} cores, "
            f"{cpu.memory_bytes / 2**30:.0f} GiB"
        )
        if not any(site.name == self.s.site_name for site in inventory.list_sites()):
            inventory.add_site(
                SiteIn(
                    name=self.s.site_name,
                    region=self.s.site_region,
                    tariff_yuan_per_kwh=self.s.tariff_yuan_per_kwh,
                    pue=self.s.pue,
                ),
                actor="cunliang up",
            )
        if not any(node.host == host for node in inventory.list_nodes(site=self.s.site_name)):
            inventory.register_node(
                NodeIn(host=host, site=self.s.site_name, devices=[_cpu_device_in(cpu)]),
                actor="cunliang up",
            )
        else:
            self.c.info(f"{host} is registered already: reprofiling it")
        dtype, profile = self._probe(model_dir)
        result = inventory.add_profile(host, profile, actor="cunliang up")
        for d in result.admission:
            figures = d.figures
            verdict = "admitted" if d.admitted else f"{d.state}: {'; '.join(d.reasons)}"
            self.c.info(
                f"admission of {d.device}: {verdict} "
                f"({figures.get('tokens_per_yuan', 0):,.0f} tokens/yuan, "
                f"{figures.get('tokens_per_joule', 0):.1f} tokens/J)"
            )
        return _Local(host, model_dir, model_name, dtype)

    def _probe(self, model_dir: Path) -> tuple[str, Any]:
        """The agent's quick profile (dtype probes with the real engine, cached)."""
        from scheduler.inventory.schemas import ProfileIn
        from workers.profiler import profile_post_body, quick_profile

        dtypes = ("float32", "bfloat16", "float16") if self.s.dtype == "auto" else (self.s.dtype,)
        self.c.step(f"profile: probing dtypes {', '.join(dtypes)} with the real engine")
        with self.c.bar("dtype probes") as progress:
            profile = quick_profile(
                self.s.data_dir,
                model_dir=model_dir,
                dtypes=dtypes,
                timeout_s=self.s.probe_timeout_s,
                env=self.s.engine_base_env(),
                progress=progress,
            )
        for p in profile.engine:
            verdict = (
                ", ".join(f"batch {r.batch}: {r.decode_tokens_per_s:,.0f}" for r in p.rows)
                + " decode tok/s"
                if p.ok
                else f"fails: {p.error}"
            )
            self.c.info(f"{p.dtype}: {verdict}")
        if profile.chosen_dtype is None:
            raise EngineError(
                "no dtype runs on this machine with the serving engine.",
                fix=f"see the probe logs under {self.s.data_dir / 'probes'}.",
            )
        cached = " (cached)" if profile.notes else ""
        self.c.info(f"chosen dtype: {profile.chosen_dtype}{cached}")
        return profile.chosen_dtype, ProfileIn.model_validate(profile_post_body(profile))

    def _plan(self, inventory: Any, local: _Local) -> tuple[Any, Any]:
        from scheduler.catalog import arch_from_hf_config
        from scheduler.domain import Demand, ModelSpec
        from scheduler.placement import plan as make_plan

        self.c.step("plan: placement over the admitted fleet")
        fleet, _demands, _models = inventory.snapshot()
        config = json.loads((local.model_dir / "config.json").read_text())
        quant = DTYPE_QUANT.get(local.dtype, Quant.FP32)
        spec = ModelSpec(
            name=local.model_name,
            source=str(local.model_dir),
            arch=arch_from_hf_config(config, local.model_name),
            allowed_quants=(quant,),
        )
        demand = Demand(
            model=local.model_name,
            output_tokens_per_s=DEMO_OUTPUT_TOKENS_PER_S,
            prompt_tokens=64,
            output_tokens=64,
            tpot_ms=1000.0,
            ttft_ms=10000.0,
        )
        plan = make_plan(fleet, [demand], {spec.name: spec})
        if not plan.replicas:
            reasons = "; ".join(u.reason for u in plan.unplaced) or plan.status
            raise NoCapacity(f"placement found no device for {local.model_name}: {reasons}")
        for r in plan.replicas:
            self.c.info(
                f"{r.model} {r.quant} on {r.device_class_id} via {r.engine} "
                f"({r.yuan_per_hour:.3f} yuan/h, ~{r.predicted_output_tokens_per_s:.0f} tok/s)"
            )
        return plan, spec

    def _runtime(self, plan: Any, local: _Local, spec: Any) -> tuple[Any, Any]:
        from scheduler.gateway.replicas import ReplicaTable
        from scheduler.runtime.actors import vllm_actor_args
        from scheduler.runtime.ray_backend import RayLauncher, device_class_resource
        from scheduler.runtime.reconciler import Reconciler, ReconcilerLoop
        from workers.actor import ReplicaActor

        ray_dir = self.s.ray_temp_dir or Path(tempfile.mkdtemp(prefix="cl-ray-"))
        self.c.step(f"runtime: local Ray head ({ray_dir}), {len(plan.replicas)} replica(s)")
        resources = {device_class_resource(r.device_class_id): r.tp for r in plan.replicas}
        _start_ray(ray_dir, resources, self.s.ray_num_cpus)
        self.cleanup.callback(_stop_ray)

        table = ReplicaTable()
        launcher = RayLauncher(ReplicaActor, vllm_actor_args(self.s, lambda: {spec.name: spec}))
        reconciler = Reconciler(launcher, _TableSink(table))
        self.cleanup.callback(reconciler.stop_all)
        reconciler.apply(_with_dtype(plan, local.dtype))
        loop = ReconcilerLoop(reconciler, interval_s=1.0)
        loop.start()
        self.cleanup.callback(loop.stop)
        self._wait_ready(reconciler)
        return table, reconciler

    def _wait_ready(self, reconciler: Any) -> None:
        from scheduler.runtime.reconciler import ReplicaState

        deadline = time.monotonic() + self.s.engine_start_timeout_s
        started = time.monotonic()
        with self.c.bar("loading engine") as progress:
            while time.monotonic() < deadline:
                statuses = reconciler.statuses()
                if statuses and all(s.state is ReplicaState.READY for s in statuses):
                    self.c.info(f"replicas ready in {time.monotonic() - started:.0f} s")
                    return
                failed = [s for s in statuses if s.state is ReplicaState.FAILED]
                if failed and failed[0].attempts >= 3:
                    raise EngineError(f"replica {failed[0].id} failed: {failed[0].last_error}")
                # engines load in ~30-60 s on CPU: show elapsed time against a minute
                progress("loading", min(0.95, (time.monotonic() - started) / 60.0))
                time.sleep(0.5)
        raise EngineError(
            f"replicas not ready after {self.s.engine_start_timeout_s:.0f} s.",
            fix="see the engine logs under the data dir's logs/ folder.",
        )

    def _serve(self, database: Any, inventory: Any, table: Any, reconciler: Any) -> int:
        import uvicorn

        from scheduler.dashboard.wiring import observability
        from scheduler.gateway.app import create_app
        from scheduler.gateway.serve import SERVER_OPTIONS, prepare_process
        from scheduler.inventory.router import inventory_router
        from scheduler.observability.sources import reconciler_replica_counts
        from scheduler.tenancy import TenancyService

        self.c.step(f"gateway: http://{self.s.host}:{self.s.port}/v1")
        tenancy = TenancyService(database.sessions)
        admin_token = self.s.admin_token or _admin_token(self.s.data_dir)
        api_key = _first_key(tenancy)
        # fleet gauges on /metrics and the operator dashboard on /dashboard
        obs = observability(
            database, inventory, tenancy, table, admin_token, reconciler_replica_counts(reconciler)
        )
        app = create_app(
            self.s,
            tenancy,
            table,
            obs.registry,
            admin_token=admin_token,
            extra_routers=[inventory_router(inventory, admin_token), obs.router],
        )
        obs.install(app)
        prepare_process(self.s.gateway_cpus)
        config = uvicorn.Config(
            app,
            host=self.s.host,
            port=self.s.port,
            log_level="warning",
            lifespan="on",
            **SERVER_OPTIONS,
        )
        server = uvicorn.Server(config)
        threading.Thread(
            target=self._announce, args=(server, api_key, admin_token), daemon=True
        ).start()
        # uvicorn re-raises the SIGINT/SIGTERM it handled: that is the normal way to stop
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
        if not server.started:
            raise ConfigError(
                f"the gateway could not listen on {self.s.host}:{self.s.port}.",
                fix="pass --port with a free port.",
            )
        print("cunliang: stopping replicas and Ray ...", flush=True)
        reconciler.stop_all()
        print("cunliang: stopped.", flush=True)
        return 0

    def _announce(self, server: Any, api_key: str | None, admin_token: str) -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.1)
        if not server.started:
            return
        base = f"http://{self.s.host}:{self.s.port}/v1"
        lines = [
            f"Admin token: {admin_token}",
            f"Dashboard: http://{self.s.host}:{self.s.port}/dashboard (log in with the admin token)",
        ]
        if api_key:
            lines += [f"API key: {api_key}   (shown once; tenant '{DEFAULT_TENANT}')"]
        else:
            lines += [
                f"API key: tenant '{DEFAULT_TENANT}' exists; its key was shown at first start "
                f"(make another: cunliang key create --tenant {DEFAULT_TENANT})"
            ]
        key = api_key or "$CUNLIANG_API_KEY"
        model = self.s.served_model_name
        lines += [
            "",
            "Try it:",
            f"  curl {base}/chat/completions -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' "
            f'-d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'',
            "",
            "  from openai import OpenAI",
            f"  client = OpenAI(base_url='{base}', api_key='{key}')",
            f"  client.chat.completions.create(model='{model}', "
            "messages=[{'role': 'user', 'content': 'Hello'}])",
            "",
            "cunliang is ready. Press Ctrl-C to stop.",
        ]
        print("\n".join(lines), flush=True)


# -- helpers ----------------------------------------------------------------------------


class _TableSink:
    """Publishes reconciler statuses straight into the in-process gateway's replica table."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def publish(self, statuses: Sequence[Any]) -> None:
        from datetime import UTC, datetime

        from scheduler.gateway.db_directory import endpoint_from_record
        from scheduler.runtime.publish import records_from_statuses

        now = datetime.now(UTC)
        records = records_from_statuses(statuses, now)
        self.table.set(endpoint_from_record(r, now, stale_after_s=float("inf")) for r in records)


def _with_dtype(plan: Any, dtype: str) -> Any:
    from dataclasses import replace

    return replace(plan, replicas=tuple(replace(r, dtype=dtype) for r in plan.replicas))


def _start_ray(ray_dir: Path, resources: dict[str, float], num_cpus: int | None) -> None:
    import ray

    from scheduler.runtime.ray_backend import NAMESPACE

    ray.init(
        num_cpus=num_cpus,
        resources=resources,
        namespace=NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(ray_dir),
    )
    # ray.init installs a SIGTERM handler that exits at once; keep ours (a clean stop)
    signal.signal(signal.SIGTERM, _raise_interrupt)


def _stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _hostname() -> str:
    name = socket.gethostname().split(".")[0].lower() or "localhost"
    return "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in name)


def _cpu_device_in(cpu: Any) -> Any:
    from scheduler.domain import DeviceKind
    from scheduler.inventory.schemas import DeviceIn
    from workers.hardware import cpu_device_spec

    spec = cpu_device_spec(cpu)
    return DeviceIn(
        model=spec.model[:100] or "cpu",
        kind=DeviceKind.CPU,
        vendor=spec.vendor,
        memory_bytes=spec.memory_bytes,
        isa_flags=sorted(spec.isa_flags),
        sockets=max(1, cpu.sockets),
        tdp_watts=spec.tdp_watts or None,
        memory_bandwidth_bytes_per_s=spec.memory_bandwidth_bytes_per_s or None,
    )


def _resolve_model(source: str) -> Path:
    path = Path(source).expanduser()
    if path.exists():
        return path.absolute()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source))
    except Exception as exc:
        raise ConfigError(
            f"model {source!r} is neither a local path nor a downloadable Hugging Face id "
            f"({type(exc).__name__}).",
            fix="pass --model with a local model directory or a reachable Hugging Face id.",
        ) from exc


def _admin_token(data_dir: Path) -> str:
    from scheduler.api.auth import ADMIN_TOKEN_PREFIX

    path = data_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    token = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(24)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


def _first_key(tenancy: Any) -> str | None:
    """Create the first tenant and its key once; later starts show no key (it is hashed)."""
    if any(t.name == DEFAULT_TENANT for t in tenancy.list_tenants()):
        return None
    tenancy.create_tenant(DEFAULT_TENANT)
    created = tenancy.create_key(DEFAULT_TENANT, name="first key (cunliang up)")
    secret: str = created.secret
    return secret


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
