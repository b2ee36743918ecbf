"""A hand-written stand-in for ``pynvml``: the NVML boundary, for hosts without GPUs.

It implements the calls :class:`workers.hardware.NvmlLike` names, with NVML's units
(milliwatts, bytes) and its habits (``nvmlInit`` fails without a driver; some boards
raise NotSupported for power usage). ``two_t4_and_a_p40()`` is the mixed node the
tests use: two Turing T4s and one Pascal P40.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3


class NVMLError(Exception):
    """NVML's error type (``pynvml.NVMLError``)."""


@dataclass(frozen=True)
class FakeGpu:
    name: str
    memory_bytes: int
    compute_capability: tuple[int, int]
    power_mw: int | None  # None: the board does not report power usage
    power_limit_mw: int
    uuid: str


@dataclass(frozen=True)
class _Memory:
    total: int
    free: int
    used: int


@dataclass
class FakeNvml:
    gpus: list[FakeGpu] = field(default_factory=list)
    driver_version: str = "535.183.01"
    driver_loaded: bool = True
    initialised: int = 0  # nvmlInit calls minus nvmlShutdown calls

    def nvmlInit(self) -> None:
        if not self.driver_loaded:
            raise NVMLError("Driver Not Loaded")
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def _check(self) -> None:
        if self.initialised <= 0:
            raise NVMLError("Uninitialized")

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._check()
        if not 0 <= index < len(self.gpus):
            raise NVMLError("Invalid Argument")
        return self.gpus[index]

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        return handle.name

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        return handle.uuid

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> _Memory:
        return _Memory(total=handle.memory_bytes, free=handle.memory_bytes, used=0)

    def nvmlDeviceGetCudaComputeCapability(self, handle: FakeGpu) -> tuple[int, int]:
        return handle.compute_capability

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        if handle.power_mw is None:
            raise NVMLError("Not Supported")
        return handle.power_mw

    def nvmlDeviceGetEnforcedPowerManagementLimit(self, handle: FakeGpu) -> int:
        return handle.power_limit_mw


def two_t4_and_a_p40() -> FakeNvml:
    """Two Tesla T4 (16 GB, sm75, 70 W) and a Tesla P40 (24 GB, sm61, 250 W)."""
    # NVML reports usable memory: a bit under the marketing figure
    return FakeNvml(
        gpus=[
            FakeGpu("Tesla T4", 15360 * 1024**2, (7, 5), 27_500, 70_000, "GPU-t4-0"),
            FakeGpu("Tesla T4", 15360 * 1024**2, (7, 5), 31_250, 70_000, "GPU-t4-1"),
            FakeGpu("Tesla P40", 23040 * 1024**2, (6, 1), None, 250_000, "GPU-p40-0"),
        ]
    )
