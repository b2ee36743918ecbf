"""What hardware this node has: CPU from /proc and /sys, GPUs through NVML, power if readable.

Side effects sit at two edges, both injectable: the filesystem root (``root``, so a
captured /proc tree can be read in a test) and the NVML module (``nvml``: the real
``pynvml`` or a hand-written fake). Detection never raises for missing hardware: a node
without GPUs or without RAPL counters reports that, with the reason, in the result.
"""

from __future__ import annotations

import platform
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from scheduler.catalog import lookup_device
from scheduler.domain import DeviceKind, DeviceSpec

# ISA features that matter for inference kernels (what vLLM / llama.cpp / oneDNN dispatch on)
_ISA_PATTERN = re.compile(r"^(avx.*|amx.*|fma|f16c|sse4_2|.*vnni.*|.*bf16.*|.*fp16.*)$")


@dataclass(frozen=True)
class CpuInfo:
    model_name: str
    vendor: str
    sockets: int
    physical_cores: int
    logical_cpus: int
    numa_nodes: int
    isa_flags: frozenset[str]
    memory_bytes: int
    llc_bytes: int = 0  # last-level cache of all sockets; 0 when /sys does not say


@dataclass(frozen=True)
class PowerReading:
    """A power measurement and where it came from; ``watts`` None when not measurable."""

    source: str  # "nvml", "rapl" or "none"
    watts: float | None
    note: str = ""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    uuid: str
    memory_bytes: int
    compute_capability: tuple[int, int]
    power: PowerReading
    power_limit_watts: float | None


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    kernel: str
    cpu: CpuInfo
    cpu_power: PowerReading
    gpus: tuple[GpuInfo, ...]
    gpu_status: str  # "ok: N GPUs" or why none were found


class NvmlLike(Protocol):
    """The part of ``pynvml`` cunliang uses (method names as NVML spells them)."""

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> str: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int: ...
    def nvmlDeviceGetEnforcedPowerManagementLimit(self, handle: Any) -> int: ...


# ---------------------------------------------------------------------------- CPU


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8", "replace")
    except OSError:
        return ""


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    for chunk in text.strip().split("\n\n"):
        block: dict[str, str] = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                block[key.strip()] = value.strip()
        if block:
            blocks.append(block)
    return blocks


def parse_cpuinfo(text: str) -> tuple[str, str, int, int, int, frozenset[str]]:
    """(model name, vendor, sockets, physical cores, logical CPUs, ISA flags) of /proc/cpuinfo."""
    blocks = [b for b in _cpuinfo_blocks(text) if "processor" in b]
    if not blocks:
        return ("unknown", "", 1, 1, 1, frozenset())
    first = blocks[0]
    flags = frozenset(f for f in first.get("flags", "").split() if _ISA_PATTERN.match(f))
    sockets = {b.get("physical id", "0") for b in blocks}
    cores = {(b.get("physical id", "0"), b.get("core id", b["processor"])) for b in blocks}
    return (
        first.get("model name", "unknown"),
        first.get("vendor_id", ""),
        len(sockets),
        len(cores),
        len(blocks),
        flags,
    )


def _meminfo_bytes(text: str) -> int:
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


def _cache_size_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, re.IGNORECASE)
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()] if match else 0


def detect_llc_bytes(root: Path = Path("/")) -> int:
    """Total last-level cache of the machine from ``root``/sys/devices/system/cpu/*/cache.

    Each CPU lists its caches as ``index*/{level,type,size,shared_cpu_list}``; the
    highest data/unified level is the LLC, and CPUs that share one instance list the same
    ``shared_cpu_list``, so each instance is counted once (a two-socket server, or an EPYC
    with one L3 per CCX, sums them). 0 when the kernel does not expose caches.
    """
    instances: dict[str, tuple[int, int]] = {}  # shared_cpu_list -> (level, bytes)
    for index in (root / "sys/devices/system/cpu").glob("cpu[0-9]*/cache/index[0-9]*"):
        if _read(index / "type").strip() == "Instruction":
            continue
        level = int(_read(index / "level").strip() or 0)
        size = _cache_size_bytes(_read(index / "size"))
        shared = _read(index / "shared_cpu_list").strip() or str(index.parent.parent)
        if size > 0 and level > 0:
            key = f"L{level}:{shared}"
            instances[key] = (level, size)
    if not instances:
        return 0
    top = max(level for level, _ in instances.values())
    return sum(size for level, size in instances.values() if level == top)


def detect_cpu(root: Path = Path("/")) -> CpuInfo:
    """CPU facts from ``root``/proc/cpuinfo, /proc/meminfo and /sys (NUMA nodes, caches)."""
    model, vendor, sockets, cores, logical, flags = parse_cpuinfo(_read(root / "proc/cpuinfo"))
    node_dir = root / "sys/devices/system/node"
    numa = len(list(node_dir.glob("node[0-9]*"))) if node_dir.is_dir() else 0
    return CpuInfo(
        model_name=model,
        vendor=vendor,
        sockets=sockets,
        physical_cores=cores,
        logical_cpus=logical,
        numa_nodes=max(numa, 1),
        isa_flags=flags,
        memory_bytes=_meminfo_bytes(_read(root / "proc/meminfo")),
        llc_bytes=detect_llc_bytes(root),
    )


def read_rapl_watts(
    root: Path = Path("/"),
    *,
    interval_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> PowerReading:
    """Package power from RAPL energy counters (summed over sockets), or why not.

    Reads ``energy_uj`` of each top-level ``intel-rapl:N`` zone (AMD exposes the same
    interface) twice ``interval_s`` apart; wrap-around uses ``max_energy_range_uj``.
    """
    base = root / "sys/class/powercap"
    zones = sorted(p for p in base.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not zones:
        return PowerReading("none", None, f"no RAPL zones under {base}")

    def energies() -> list[int] | None:
        try:
            return [int((z / "energy_uj").read_text()) for z in zones]
        except (OSError, ValueError):
            return None

    before = energies()
    if before is None:
        return PowerReading("none", None, f"RAPL counters under {base} are not readable")
    sleep(interval_s)
    after = energies() or before
    total_uj = 0
    for zone, a, b in zip(zones, before, after, strict=True):
        delta = b - a
        if delta < 0:  # the counter wrapped
            delta += int(_read(zone / "max_energy_range_uj") or 0)
        total_uj += delta
    return PowerReading("rapl", total_uj / 1e6 / interval_s, f"{len(zones)} RAPL package zone(s)")


# ---------------------------------------------------------------------------- GPU


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _gpu(nvml: NvmlLike, index: int) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    try:
        power = PowerReading("nvml", nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
    except Exception as exc:  # NVMLError_NotSupported on some boards
        power = PowerReading("none", None, f"NVML power usage not supported: {exc}")
    try:
        limit: float | None = nvml.nvmlDeviceGetEnforcedPowerManagementLimit(handle) / 1000.0
    except Exception:
        limit = None
    return GpuInfo(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        memory_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
        compute_capability=(int(major), int(minor)),
        power=power,
        power_limit_watts=limit,
    )


def _load_pynvml() -> NvmlLike | None:
    try:
        import pynvml
    except ImportError:
        return None
    module: NvmlLike = pynvml
    return module


def detect_gpus(nvml: NvmlLike | None = None) -> tuple[tuple[GpuInfo, ...], str]:
    """(GPUs, status). ``nvml`` defaults to the installed ``pynvml``; no driver = no GPUs."""
    lib = nvml if nvml is not None else _load_pynvml()
    if lib is None:
        return (), "no GPUs: nvidia-ml-py (pynvml) is not installed"
    try:
        lib.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded on GPU-less hosts
        return (), f"no GPUs: NVML did not initialise ({exc})"
    try:
        gpus = tuple(_gpu(lib, i) for i in range(lib.nvmlDeviceGetCount()))
        driver = _text(lib.nvmlSystemGetDriverVersion())
    finally:
        lib.nvmlShutdown()
    return gpus, f"ok: {len(gpus)} GPU(s), driver {driver}"


def detect_host(root: Path = Path("/"), nvml: NvmlLike | None = None) -> HostInfo:
    """Everything above for this machine (reads power for ~0.5 s when RAPL exists)."""
    gpus, status = detect_gpus(nvml)
    return HostInfo(
        hostname=socket.gethostname(),
        kernel=platform.release(),
        cpu=detect_cpu(root),
        cpu_power=read_rapl_watts(root),
        gpus=gpus,
        gpu_status=status,
    )


# ---------------------------------------------------------------------------- domain


def _catalog_gpu(name: str) -> DeviceSpec | None:
    # NVML says "NVIDIA A100-SXM4-40GB" or "Tesla T4"; the catalogue mostly drops the brand
    for candidate in (name, name.removeprefix("NVIDIA ").strip()):
        spec = lookup_device(candidate)
        if spec is not None:
            return spec
    return None


def gpu_device_spec(gpu: GpuInfo) -> DeviceSpec:
    """Catalogue spec for the GPU's name, with the measured memory, capability and limit."""
    known = _catalog_gpu(gpu.name)
    base = known or DeviceSpec(model=gpu.name, kind=DeviceKind.GPU, vendor="NVIDIA")
    return replace(
        base,
        memory_bytes=gpu.memory_bytes,
        compute_capability=gpu.compute_capability,
        tdp_watts=base.tdp_watts or (gpu.power_limit_watts or 0.0),
    )


_CPU_VENDORS = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}


# Server CPUs draw ~4-8 W per core under load (Xeon Gold 6248: 150 W / 20 cores = 7.5;
# EPYC 7763: 280 W / 64 = 4.4); the upper end keeps unknown CPUs' costs conservative.
FALLBACK_WATTS_PER_CORE = 7.5


def cpu_device_spec(cpu: CpuInfo) -> DeviceSpec:
    """The CPU (all sockets of the server) as one device, catalogue figures when known;
    memory, ISA flags, cores and the last-level cache as measured here (the catalogue's
    LLC, per socket, where /sys shows none)."""
    known = lookup_device(cpu.model_name)
    vendor = _CPU_VENDORS.get(cpu.vendor, cpu.vendor)
    base = known or DeviceSpec(
        model=cpu.model_name,
        kind=DeviceKind.CPU,
        vendor=vendor,
        # unknown CPU (often a VM slice): model its power from the cores we see
        tdp_watts=cpu.physical_cores * FALLBACK_WATTS_PER_CORE,
    )
    return replace(
        base,
        kind=DeviceKind.CPU,
        memory_bytes=cpu.memory_bytes,
        isa_flags=cpu.isa_flags,
        cores=cpu.physical_cores,
        llc_bytes=cpu.llc_bytes or base.llc_bytes * max(cpu.sockets, 1),
    )


def device_specs(host: HostInfo) -> list[DeviceSpec]:
    """One DeviceSpec per GPU, then one for the CPU."""
    return [gpu_device_spec(g) for g in host.gpus] + [cpu_device_spec(host.cpu)]
