from scheduler import catalog
from scheduler.domain import DeviceKind


def test_catalogue_covers_pascal_to_hopper_and_cpus() -> None:
    table = catalog.devices()
    assert table["Tesla P40"].compute_capability == (6, 1)
    assert table["H100 PCIe"].compute_capability == (9, 0)
    assert table["Tesla T4"].memory_bandwidth_bytes_per_s == 320e9
    assert table["Xeon Gold 6248"].kind is DeviceKind.CPU
    assert table["Xeon Gold 6248"].cores == 20
    assert table["Xeon Gold 6248"].llc_bytes == round(27.5 * 2**20)  # L3 per socket
    assert table["AMD EPYC 7763"].llc_bytes == 256 * 2**20
    assert table["Tesla T4"].llc_bytes == 0  # no cache tier for GPUs
    # gaps of the CSV are filled by the supplement
    assert table["A10"].fp16_flops == 125e12


def test_lookup_is_case_insensitive_and_none_for_unknown() -> None:
    assert catalog.lookup_device("tesla t4") is not None
    assert catalog.lookup_device("Voodoo 2") is None
    assert catalog.lookup_model("qwen2.5-7b-instruct") is not None
