import pytest

from tokenbench.telemetry import hardware
from tokenbench.analysis.metrics import resolve_peak

from .test_sampler import FakeNvml

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor @ 2.10GHz
cpu MHz\t\t: 2100.000
flags\t\t: fpu sse2 avx avx2 fma avx512f
"""


def test_cpu_peak_is_an_estimate_from_isa_and_clock(monkeypatch):
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _: {0, 1})
    info = hardware.cpu_info(CPUINFO)
    assert info["ghz"] == 2.1 and info["cores"] == 2
    peak = hardware.cpu_peak(info)
    assert peak["peak_flops"] == pytest.approx(2 * 2.1e9 * 64)
    assert peak["peak_note"].startswith("estimated") and "AVX-512" in peak["peak_note"]
    avx2 = hardware.cpu_peak({**info, "flags": {"avx2", "fma"}})
    assert avx2["peak_flops"] == pytest.approx(2 * 2.1e9 * 32)
    assert hardware.cpu_peak({**info, "ghz": None})["peak_flops"] is None


def test_gpu_table_matching_prefers_the_longest_pattern():
    assert hardware.match_gpu("NVIDIA A40")[0] == "A40"
    assert hardware.match_gpu("NVIDIA A100-SXM4-80GB")[0] == "A100-SXM-80GB"
    assert hardware.match_gpu("NVIDIA H100 80GB HBM3")[0] == "H100-SXM"
    assert hardware.match_gpu("Some Unknown Card") is None


def test_describe_uses_nvml_when_present():
    d = hardware.describe("auto", nvml=FakeNvml(n=1), cpuinfo_text=CPUINFO)
    assert d["accelerator"] == "A40" and d["peak_flops"] == pytest.approx(149.7e12)
    assert d["peak_note"].startswith("datasheet")


def test_describe_falls_back_to_cpu_without_nvml():
    class NoGpu(FakeNvml):
        def nvmlInit(self):
            raise RuntimeError("no driver")

    d = hardware.describe("auto", nvml=NoGpu(), cpuinfo_text=CPUINFO)
    assert d["accelerator"] == "cpu" and d["peak_note"].startswith("estimated")


def test_named_hardware_overrides_peak_and_unknown_name_is_an_error():
    detected = {"accelerator": "cpu", "peak_flops": 1e11, "peak_note": "estimated"}
    assert resolve_peak(detected, "A40")["peak_flops"] == pytest.approx(149.7e12)
    assert resolve_peak(detected, "auto")["peak_flops"] == 1e11
    with pytest.raises(ValueError, match="not in the hardware table"):
        hardware.describe("B9000", nvml=FakeNvml(n=0), cpuinfo_text=CPUINFO)
