from types import SimpleNamespace

import pytest

from tokenbench.telemetry import hardware
from tokenbench.analysis.metrics import resolve_peak

from .test_sampler import FakeNvml

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor @ 2.10GHz
cpu MHz\t\t: 2100.000
flags\t\t: fpu sse2 avx avx2 fma avx512f
"""


class HostNvml(FakeNvml):
    """An NVML host with the given (name, pciDeviceId) per index; the rest answers as FakeNvml."""

    def __init__(self, devices):
        super().__init__(n=len(devices))
        self.devices = devices

    def nvmlDeviceGetName(self, h):
        return self.devices[h][0]

    def nvmlDeviceGetPciInfo(self, h):
        if self.devices[h][1] is None:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return SimpleNamespace(pciDeviceId=self.devices[h][1], busId=f"00000000:{h:02x}:00.0")


def _cpuinfo(blocks: list[dict]) -> str:
    return "\n\n".join("\n".join(f"{k}\t: {v}" for k, v in b.items()) for b in blocks) + "\n"


def _cpus(n_logical, cores_per_pkg, name, vendor="GenuineIntel", family=6, model=85, stepping=7,
          flags="fpu sse2 avx avx2 fma avx512f", mhz="3012.345"):
    """/proc/cpuinfo of one package whose logical CPUs 0..n-1 are SMT siblings of cores 0..cores-1."""
    return _cpuinfo([{"processor": i, "vendor_id": vendor, "cpu family": family, "model": model,
                      "model name": name, "stepping": stepping, "cpu MHz": mhz, "physical id": 0,
                      "core id": i % cores_per_pkg, "flags": flags} for i in range(n_logical)])


# ----------------------------------------------------------------------------- GPU matching
@pytest.mark.parametrize("nvml_name, key", [
    ("NVIDIA RTX A4000", "RTX-A4000"),            # substring matching gave the A40
    ("NVIDIA L40", "L40"),                        # ... the L4
    ("NVIDIA A10G", "A10G"),                      # ... the A10
    ("NVIDIA A100-SXM4-40GB", "A100-SXM-40GB"),   # ... the 80 GB SXM bandwidth
    ("NVIDIA A100-PCIE-40GB", "A100-PCIE-40GB"),
    ("NVIDIA A100 80GB PCIe", "A100-PCIE-80GB"),  # ... the SXM part
    ("A100-SXM4-80GB", "A100-SXM-80GB"),          # older drivers: no "NVIDIA " prefix
    ("nvidia  h100 80gb   HBM3", "H100-SXM"),     # case and whitespace
    ("NVIDIA H100 PCIe", "H100-PCIE"),
    ("NVIDIA H100 NVL", "H100-NVL"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA H200 NVL", "H200-NVL"),              # ... the H200 SXM
    ("NVIDIA GeForce RTX 4090", "RTX-4090"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA A40", "A40"),
])
def test_gpu_names_match_exactly(nvml_name, key):
    assert hardware.match_gpu(nvml_name)[0] == key


@pytest.mark.parametrize("nvml_name", ["NVIDIA A40-8Q", "NVIDIA GeForce RTX 4090 D", "NVIDIA A100X",
                                       "NVIDIA H100", "Some Unknown Card", "NVIDIA L4 Ti"])
def test_an_unknown_gpu_is_never_a_neighbour(nvml_name):
    assert hardware.match_gpu(nvml_name) is None


def test_pci_device_id_wins_over_the_name_and_checks_the_vendor():
    # NVML's pciDeviceId: device id in the upper 16 bits, vendor 0x10de in the lower
    assert hardware.match_gpu("renamed by a VM", pci_id=0x233010DE)[0] == "H100-SXM"
    assert hardware.match_gpu("NVIDIA A40", pci_id=0x26B510DE)[0] == "L40"
    assert hardware.match_gpu(None, pci_id="0x20b1")[0] == "A100-PCIE-40GB"
    assert hardware.match_gpu("NVIDIA L4", pci_id=0xFFFF10DE)[0] == "L4"  # unknown id: by name
    assert hardware.pci_device_id(0x233010B5) is None  # another vendor's device
    assert hardware.match_gpu("mystery", pci_id=0x233010B5) is None


def test_table_entries_are_one_sku_each_with_sources():
    table = hardware.hardware_table()["gpus"]
    required = {"A40", "A10", "A10G", "A100-SXM-40GB", "A100-SXM-80GB", "A100-PCIE-40GB", "A100-PCIE-80GB", "L4",
                "L40", "L40S", "RTX-A4000", "RTX-A6000", "RTX-4090", "H100-SXM", "H100-PCIE", "H100-NVL", "H200", "H200-NVL"}
    assert required <= table.keys()
    names, ids = [], []
    allowed = {"names", "pci_device_ids", "peak_fp16_tflops", "peak_fp8_tflops", "peak_int8_tops",
               "mem_bandwidth_gb_s", "memory_gb", "tdp_w", "source", "note"}
    for key, spec in table.items():
        assert set(spec) <= allowed, key
        assert spec["names"] and spec["source"], key
        names += [hardware.normalise_gpu_name(n) for n in spec["names"]]
        ids += [int(i, 16) for i in spec.get("pci_device_ids", [])]
        if spec.get("peak_fp8_tflops"):
            assert spec["peak_fp8_tflops"] == pytest.approx(2 * spec["peak_fp16_tflops"], rel=0.02), key  # L40S prints 362.05 and 733
        if spec.get("peak_fp16_tflops") is None:
            assert spec.get("note"), f"{key}: a missing peak says why"
    assert len(names) == len(set(names)) and len(ids) == len(set(ids))
    # the 40 GB parts do not get the 80 GB SXM bandwidth
    assert table["A100-SXM-40GB"]["mem_bandwidth_gb_s"] == 1555 and table["A100-PCIE-80GB"]["mem_bandwidth_gb_s"] == 1935


# ----------------------------------------------------------------------------- describe on GPUs
def test_describe_counts_the_engines_gpus_not_the_hosts():
    host = HostNvml([(b"NVIDIA H100 80GB HBM3", 0x233010DE)] * 8)
    d = hardware.describe("auto", nvml=host, cpuinfo_text=CPUINFO, gpu_indices=[2, 3])
    assert len(d["gpus"]) == 8 and d["gpus"][0]["pci_device_id"] == "0x2330"
    assert d["gpu_indices"] == [2, 3] and d["gpu_count"] == 2 and d["accelerator"] == "H100-SXM"
    assert d["peak_flops_per_gpu"] == pytest.approx(989.4e12) and d["peak_flops"] == pytest.approx(2 * 989.4e12)
    assert d["mem_bandwidth_gb_s_per_gpu"] == 3350 and d["mem_bandwidth_gb_s"] == 2 * 3350
    assert d["peak_fp8_flops_per_gpu"] == pytest.approx(1978.9e12)
    assert d["peak_note"].startswith("datasheet") and "x 2 GPU" in d["peak_note"] and not d["peak_estimated"]
    everything = hardware.describe("auto", nvml=host, cpuinfo_text=CPUINFO)
    assert everything["gpu_count"] == 8 and everything["peak_flops"] == pytest.approx(8 * 989.4e12)


def test_describe_uses_nvml_when_present():
    d = hardware.describe("auto", nvml=FakeNvml(n=1), cpuinfo_text=CPUINFO)  # no PCI info: by name
    assert d["accelerator"] == "A40" and d["peak_flops"] == pytest.approx(149.7e12) and d["gpu_count"] == 1
    assert d["peak_note"].startswith("datasheet")


def test_mixed_unknown_and_absent_gpus_have_no_peak():
    host = HostNvml([(b"NVIDIA A40", 0x223510DE), (b"NVIDIA L4", 0x27B810DE), (b"NVIDIA Future 9000", 0x2FFF10DE)])
    mixed = hardware.describe("auto", nvml=host, cpuinfo_text=CPUINFO, gpu_indices=[0, 1])
    assert mixed["peak_flops"] is None and mixed["accelerator"] == "mixed" and "different models" in mixed["peak_note"]
    assert "A40 x1" in mixed["peak_note"] and "L4 x1" in mixed["peak_note"]
    unknown = hardware.describe("auto", nvml=host, cpuinfo_text=CPUINFO, gpu_indices=[2])
    assert unknown["peak_flops"] is None and unknown["peak_flops_per_gpu"] is None
    assert "not in the hardware table" in unknown["peak_note"] and "0x2fff" in unknown["peak_note"]
    absent = hardware.describe("auto", nvml=host, cpuinfo_text=CPUINFO, gpu_indices=[5])
    assert absent["peak_flops"] is None and "not on this host" in absent["peak_note"]
    single = hardware.describe("auto", nvml=host, cpuinfo_text=CPUINFO, gpu_indices=[1])
    assert single["accelerator"] == "L4" and single["peak_flops"] == pytest.approx(121e12)


def test_a_gpu_in_the_table_without_a_peak_has_none_but_keeps_its_bandwidth():
    d = hardware.describe("auto", nvml=HostNvml([(b"NVIDIA A10G", 0x223710DE)]), cpuinfo_text=CPUINFO)
    assert d["accelerator"] == "A10G" and d["peak_flops"] is None  # never the A10's 125 TFLOP/s
    assert d["mem_bandwidth_gb_s"] == 600 and "peak unknown" in d["peak_note"]


def test_named_hardware_scales_with_the_engines_gpus():
    d = hardware.describe("A100-SXM-80GB", nvml=HostNvml([(b"NVIDIA A100-SXM4-80GB", None)] * 4),
                          cpuinfo_text=CPUINFO, gpu_indices=[0, 1])
    assert d["accelerator"] == "A100-SXM-80GB" and d["gpu_count"] == 2 and d["peak_flops"] == pytest.approx(624e12)
    assert "set by hardware.name" in d["peak_note"]
    remote = hardware.named_peak("H200")
    assert remote["gpu_count"] == 1 and remote["mem_bandwidth_gb_s"] == 4800


def test_describe_falls_back_to_cpu_without_nvml():
    class NoGpu(FakeNvml):
        def nvmlInit(self):
            raise RuntimeError("no driver")

    d = hardware.describe("auto", nvml=NoGpu(), cpuinfo_text=CPUINFO)
    assert d["accelerator"] == "cpu" and d["peak_note"].startswith("estimated") and d["peak_estimated"]
    assert d["gpu_count"] == 0 and d["peak_flops_per_gpu"] is None


def test_named_hardware_overrides_peak_and_unknown_name_is_an_error():
    detected = {"accelerator": "cpu", "peak_flops": 1e11, "peak_note": "estimated"}
    assert resolve_peak(detected, "A40")["peak_flops"] == pytest.approx(149.7e12)
    assert resolve_peak(detected, "auto")["peak_flops"] == 1e11
    with pytest.raises(ValueError, match="not in the hardware table"):
        hardware.describe("B9000", nvml=FakeNvml(n=0), cpuinfo_text=CPUINFO)


# ----------------------------------------------------------------------------- CPU peak
def test_cpu_peak_is_an_estimate_from_microarchitecture_cores_and_base_clock(monkeypatch):
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _: {0, 1})
    info = hardware.cpu_info(CPUINFO)
    assert info["ghz"] == 2.1 and info["clock_source"] == "base (model name)"
    peak = hardware.cpu_peak(info)
    assert peak["peak_flops"] == pytest.approx(2 * 2.1e9 * 64)
    assert peak["peak_note"].startswith("estimated: physical cores x base GHz x FLOP/cycle (microarchitecture)")
    assert "FMA units assumed" in peak["peak_note"]  # no vendor/family/model: the ISA fallback says so
    avx2 = hardware.cpu_peak({**info, "flags": {"avx2", "fma"}})
    assert avx2["peak_flops"] == pytest.approx(2 * 2.1e9 * 32)
    assert hardware.cpu_peak({**info, "ghz": None})["peak_flops"] is None


def test_smt_siblings_count_once_among_the_cpus_we_may_use(monkeypatch):
    text = _cpus(8, 4, "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz")  # 4 cores, 2 threads each
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _: set(range(8)))
    info = hardware.cpu_info(text)
    assert (info["cores"], info["logical_cpus"]) == (4, 8)
    assert info["microarchitecture"] == "Cascade Lake"
    assert hardware.cpu_peak(info)["peak_flops"] == pytest.approx(4 * 2.5e9 * 64)
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _: {0, 4})  # one core's two threads
    assert hardware.cpu_info(text)["cores"] == 1
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _: {0, 1})
    assert hardware.cpu_info(text)["cores"] == 2


def test_sysfs_topology_when_cpuinfo_has_none(monkeypatch, tmp_path):
    text = _cpuinfo([{"processor": i, "model name": "Some CPU @ 2.00GHz", "flags": "avx2 fma"} for i in range(4)])
    for cpu, core in enumerate([0, 1, 0, 1]):
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "core_id").write_text(f"{core}\n")
        (topo / "physical_package_id").write_text("0\n")
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _: set(range(4)))
    assert hardware.cpu_info(text, sysfs=tmp_path)["cores"] == 2
    no_topology = hardware.cpu_info(text)
    assert no_topology["cores"] == 4 and "logical CPUs counted" in no_topology["core_source"]


def test_skylake_cascade_lake_fma_units_by_sku(monkeypatch):
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _: {0})

    def per_cycle(name, stepping=7):
        _, n, what = hardware.cpu_microarchitecture(hardware.cpu_info(_cpus(1, 1, name, stepping=stepping)))
        return n, what

    assert per_cycle("Intel(R) Xeon(R) Platinum 8280 CPU @ 2.70GHz")[0] == 64
    assert per_cycle("Intel(R) Xeon(R) Silver 4214 CPU @ 2.20GHz")[0] == 32
    assert per_cycle("Intel(R) Xeon(R) Gold 5218 CPU @ 2.30GHz")[0] == 32
    assert per_cycle("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", stepping=4)[0] == 64
    unknown = per_cycle("Intel Xeon Processor (Cascadelake)")
    assert unknown[0] == 64 and "assumed" in unknown[1]


def test_zen4_avx512_is_two_256_bit_pipes_and_its_clock_comes_from_sysfs(monkeypatch, tmp_path):
    text = _cpus(4, 2, "AMD EPYC 9654 96-Core Processor", vendor="AuthenticAMD", family=25, model=17,
                 stepping=1, flags="fpu sse2 avx avx2 fma avx512f avx512bw")
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _: set(range(4)))
    freq = tmp_path / "cpu0" / "cpufreq"
    freq.mkdir(parents=True)
    (freq / "cpuinfo_max_freq").write_text("3700000\n")
    (freq / "scaling_cur_freq").write_text("1500000\n")
    info = hardware.cpu_info(text, sysfs=tmp_path)
    assert info["microarchitecture"] == "Zen 4" and info["cores"] == 2
    assert info["ghz"] == 3.7 and "max turbo" in info["clock_source"] and "upper bound" in info["clock_source"]
    peak = hardware.cpu_peak(info)
    assert peak["peak_flops"] == pytest.approx(2 * 3.7e9 * 32)  # not 64: AVX-512 on 2 x 256-bit FMA
    (freq / "amd_pstate_nominal_freq").write_text("2400000\n")
    based = hardware.cpu_info(text, sysfs=tmp_path)
    assert based["ghz"] == 2.4 and based["clock_source"].startswith("base")


def test_clock_in_the_name_and_never_an_instantaneous_cpu_mhz(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _: {0, 1})
    named = hardware.cpu_info(_cpus(2, 2, "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", mhz="3900.000"))
    assert named["ghz"] == 2.5
    nameless = "Intel(R) Xeon(R) Platinum 8480+"
    # a cpufreq driver (or APERF/MPERF) makes "cpu MHz" an instantaneous reading: not a clock to use
    freq = tmp_path / "cpu0" / "cpufreq"
    freq.mkdir(parents=True)
    (freq / "scaling_cur_freq").write_text("3800000\n")
    spr = dict(model=0x8F, stepping=8, mhz="3800.000")
    assert hardware.cpu_info(_cpus(2, 2, nameless, **spr), sysfs=tmp_path)["ghz"] is None
    assert hardware.cpu_peak(hardware.cpu_info(_cpus(2, 2, nameless, **spr), sysfs=tmp_path))["peak_flops"] is None
    aperf = _cpus(2, 2, nameless, flags="avx2 avx512f aperfmperf", **spr)
    assert hardware.cpu_info(aperf, sysfs=tmp_path / "none")["ghz"] is None
    (freq / "base_frequency").write_text("2000000\n")
    base = hardware.cpu_info(_cpus(2, 2, nameless, **spr), sysfs=tmp_path)
    assert base["ghz"] == 2.0 and base["microarchitecture"] == "Sapphire Rapids"
    # no cpufreq and no APERF/MPERF (a VM): the kernel prints its fixed cpu_khz, labelled as such
    vm = hardware.cpu_info(_cpus(2, 2, "Intel(R) Xeon(R) Processor", model=0xCF, mhz="2300.000"), sysfs=tmp_path / "none")
    assert vm["ghz"] == 2.3 and "cpu_khz" in vm["clock_source"] and vm["microarchitecture"] == "Emerald Rapids"
