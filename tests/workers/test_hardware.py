from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from scheduler.domain import DeviceKind
from tests.fakes.nvml import FakeNvml, two_t4_and_a_p40
from workers.hardware import (
    CpuInfo,
    cpu_device_spec,
    detect_cpu,
    detect_gpus,
    detect_host,
    detect_llc_bytes,
    device_specs,
    parse_cpuinfo,
    read_rapl_watts,
)

TWO_SOCKET_CPUINFO = "\n\n".join(
    f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6248\n"
    f"physical id\t: {i // 4}\ncore id\t: {(i % 4) // 2}\n"
    "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni ht"
    for i in range(8)
)


def test_this_machine_cpu_from_proc() -> None:
    cpu = detect_cpu()
    assert cpu.model_name and cpu.model_name != "unknown"
    assert cpu.logical_cpus == os.cpu_count()
    assert 1 <= cpu.physical_cores <= cpu.logical_cpus
    assert cpu.sockets >= 1 and cpu.numa_nodes >= 1
    assert cpu.memory_bytes > 2**30
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].splitlines()[0].split()
    assert cpu.isa_flags == {f for f in cpu.isa_flags if f in flags}
    if "avx2" in flags:
        assert "avx2" in cpu.isa_flags
    assert "fpu" not in cpu.isa_flags  # only the flags kernels dispatch on are kept


def test_parse_two_socket_hyperthreaded_cpuinfo() -> None:
    model, vendor, sockets, cores, logical, flags = parse_cpuinfo(TWO_SOCKET_CPUINFO)
    assert (model, vendor) == ("Intel(R) Xeon(R) Gold 6248", "GenuineIntel")
    assert (sockets, cores, logical) == (2, 4, 8)
    assert flags == {"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni"}


def test_gpus_through_nvml_fake() -> None:
    nvml = two_t4_and_a_p40()
    gpus, status = detect_gpus(nvml)
    assert status.startswith("ok: 3 GPU(s)")
    assert nvml.initialised == 0  # shut down after use
    assert [g.name for g in gpus] == ["Tesla T4", "Tesla T4", "Tesla P40"]
    t4, _, p40 = gpus
    assert t4.compute_capability == (7, 5) and p40.compute_capability == (6, 1)
    assert t4.power.source == "nvml" and t4.power.watts == 27.5
    assert t4.power_limit_watts == 70.0
    assert p40.power.watts is None and "not supported" in p40.power.note
    assert p40.memory_bytes == 23040 * 1024**2


def test_gpu_specs_come_from_catalogue_with_measured_memory() -> None:
    gpus, _ = detect_gpus(two_t4_and_a_p40())
    host = detect_host(nvml=two_t4_and_a_p40())
    specs = device_specs(host)
    assert [s.kind for s in specs] == [DeviceKind.GPU] * 3 + [DeviceKind.CPU]
    t4 = specs[0]
    assert t4.model == "Tesla T4" and t4.memory_bandwidth_bytes_per_s == 320e9
    assert t4.memory_bytes == gpus[0].memory_bytes and t4.compute_capability == (7, 5)
    assert specs[2].model == "Tesla P40" and specs[2].fp16_flops > 0


def test_no_driver_means_no_gpus_with_reason() -> None:
    gpus, status = detect_gpus(FakeNvml(driver_loaded=False))
    assert gpus == () and "Driver Not Loaded" in status


def test_unknown_cpu_keeps_measured_facts() -> None:
    cpu = CpuInfo("Mystery CPU", "AuthenticAMD", 1, 8, 16, 1, frozenset({"avx2"}), 64 * 2**30)
    spec = cpu_device_spec(cpu)
    assert (spec.model, spec.vendor, spec.cores, spec.memory_bytes) == (
        "Mystery CPU",
        "AMD",
        8,
        64 * 2**30,
    )
    assert spec.isa_flags == {"avx2"}


def _cache(cpu_dir: Path, index: int, level: int, kind: str, size: str, shared: str) -> None:
    d = cpu_dir / f"cache/index{index}"
    d.mkdir(parents=True)
    for name, value in (("level", level), ("type", kind), ("size", size)):
        (d / name).write_text(f"{value}\n")
    (d / "shared_cpu_list").write_text(f"{shared}\n")


def test_llc_counts_each_shared_instance_once(tmp_path: Path) -> None:
    # two sockets of two CPUs: private L1/L2 per CPU, one 27.5 MiB L3 per socket
    for cpu in range(4):
        cpu_dir = tmp_path / f"sys/devices/system/cpu/cpu{cpu}"
        _cache(cpu_dir, 0, 1, "Data", "32K", str(cpu))
        _cache(cpu_dir, 1, 1, "Instruction", "32K", str(cpu))
        _cache(cpu_dir, 2, 2, "Unified", "1024K", str(cpu))
        socket = "0-1" if cpu < 2 else "2-3"
        _cache(cpu_dir, 3, 3, "Unified", "28160K", socket)
    assert detect_llc_bytes(tmp_path) == 2 * 28160 * 1024
    cpu = detect_cpu(tmp_path)
    assert cpu.llc_bytes == 2 * 28160 * 1024
    assert detect_llc_bytes(tmp_path / "nothing") == 0


def test_this_machine_llc_matches_sysfs() -> None:
    sizes = list(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"))
    llc = detect_cpu().llc_bytes
    assert (llc > 0) == bool(sizes)


def test_catalogue_llc_per_socket_when_sysfs_is_silent() -> None:
    cpu = CpuInfo("Intel(R) Xeon(R) Gold 6248", "GenuineIntel", 2, 40, 80, 2, frozenset(), 2**36)
    spec = cpu_device_spec(replace(cpu, model_name="Xeon Gold 6248"))
    assert spec.llc_bytes == round(2 * 27.5 * 2**20)
    measured = cpu_device_spec(replace(cpu, model_name="Xeon Gold 6248", llc_bytes=2**25))
    assert measured.llc_bytes == 2**25


def test_rapl_absent_is_reported(tmp_path: Path) -> None:
    reading = read_rapl_watts(tmp_path)
    assert reading.source == "none" and reading.watts is None and "no RAPL" in reading.note


def test_rapl_power_from_energy_counters(tmp_path: Path) -> None:
    zones = [tmp_path / f"sys/class/powercap/intel-rapl:{i}" for i in range(2)]
    for zone in zones:
        zone.mkdir(parents=True)
        (zone / "energy_uj").write_text("1000000\n")
        (zone / "max_energy_range_uj").write_text("262143328850\n")
    # a sub-zone (core) must not be double counted
    (zones[0] / "intel-rapl:0:0").mkdir()

    def sleep(seconds: float) -> None:  # the package draws 60 W and 40 W meanwhile
        (zones[0] / "energy_uj").write_text(str(1_000_000 + int(60e6 * seconds)))
        (zones[1] / "energy_uj").write_text(str(1_000_000 + int(40e6 * seconds)))

    reading = read_rapl_watts(tmp_path, interval_s=0.5, sleep=sleep)
    assert reading.source == "rapl" and reading.watts is not None
    assert abs(reading.watts - 100.0) < 1e-6
