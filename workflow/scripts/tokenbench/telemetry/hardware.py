"""What the load test ran on, and the peak figures MFU and MBU are measured against.

GPU peaks come from a datasheet table (``data/hardware.yaml``), matched exactly: by PCI device id,
else by the full NVML name. A GPU the table does not know has no peak ("peak unknown"), never a
neighbour's. The engine's GPUs (not the host's) set the count: every aggregate is per GPU x count.

A CPU has no datasheet figure here, so its peak is *estimated* as physical cores x base clock x
FP32 FLOPs per cycle of its microarchitecture; every figure built on it is labelled estimated.
"""

from __future__ import annotations

import os
import platform
import re
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

NVIDIA_VENDOR = 0x10DE
SYSFS_CPU = Path("/sys/devices/system/cpu")


# ----------------------------------------------------------------------------- GPU table
def hardware_table() -> dict[str, Any]:
    return yaml.safe_load(resources.files("tokenbench").joinpath("data/hardware.yaml").read_text())


def normalise_gpu_name(name: str) -> str:
    """NVML name -> matching key: case-folded, whitespace collapsed, a leading "NVIDIA " dropped
    (older drivers name the A100 "A100-SXM4-40GB", newer ones "NVIDIA A100-SXM4-40GB")."""
    s = " ".join(str(name).split()).casefold()
    return s[len("nvidia "):] if s.startswith("nvidia ") else s


def pci_device_id(value: int | str | None) -> int | None:
    """NVML's pciDeviceId (0xDDDDVVVV: device id high, vendor low) or a bare 16-bit device id ->
    the 16-bit device id; None for a non-NVIDIA vendor or nothing."""
    if value is None:
        return None
    v = int(value, 16) if isinstance(value, str) else int(value)
    if v > 0xFFFF:
        if v & 0xFFFF != NVIDIA_VENDOR:
            return None
        v >>= 16
    return v


def _table_index(table: dict) -> tuple[dict[int, str], dict[str, str]]:
    by_id, by_name = {}, {}
    for key, spec in table["gpus"].items():
        for pid in spec.get("pci_device_ids") or []:
            by_id[int(str(pid), 16)] = key
        for name in spec.get("names") or []:
            by_name[normalise_gpu_name(name)] = key
    return by_id, by_name


def match_gpu(device_name: str | None, table: dict | None = None,
              pci_id: int | str | None = None) -> tuple[str, dict] | None:
    """The table entry for one GPU: by PCI device id where the table has it, else by exact
    (normalised) NVML name; None when neither matches. Never a substring match: "NVIDIA RTX A4000"
    is not an A40, "NVIDIA L40" not an L4, "NVIDIA A10G" not an A10."""
    table = table or hardware_table()
    by_id, by_name = _table_index(table)
    dev = pci_device_id(pci_id)
    key = by_id.get(dev) if dev is not None else None
    if key is None and device_name:
        key = by_name.get(normalise_gpu_name(device_name))
    return (key, table["gpus"][key]) if key else None


def gpu_spec_peaks(key: str, spec: dict) -> dict[str, Any]:
    """One table entry's per-GPU figures in base units (FLOP/s, GB/s); None where the table has none."""
    def scaled(field, factor):
        return spec[field] * factor if spec.get(field) is not None else None

    return {
        "peak_flops_per_gpu": scaled("peak_fp16_tflops", 1e12),
        "peak_fp8_flops_per_gpu": scaled("peak_fp8_tflops", 1e12),
        "peak_int8_ops_per_gpu": scaled("peak_int8_tops", 1e12),
        "mem_bandwidth_gb_s_per_gpu": spec.get("mem_bandwidth_gb_s"),
        "memory_gb_per_gpu": spec.get("memory_gb"),
        "tdp_w_per_gpu": spec.get("tdp_w"),
    }


def _spec_note(key: str, spec: dict) -> str:
    if spec.get("peak_fp16_tflops") is None:
        why = f": {spec['note']}" if spec.get("note") else ""
        return f"{key}: the hardware table has no dense FP16 peak{why}; peak unknown, no MFU"
    return f"datasheet: {spec['peak_fp16_tflops']} TFLOP/s dense FP16/BF16 per GPU ({spec['source']})"


def named_peak(name: str, gpu_count: int = 1, table: dict | None = None) -> dict[str, Any]:
    """The peak a config's ``hardware.name`` (a table key) sets, for ``gpu_count`` GPUs: the same
    keys as describe()'s peak part. Raises ValueError for a name the table does not have."""
    table = table or hardware_table()
    if name not in table["gpus"]:
        raise ValueError(f"hardware.name '{name}' is not in the hardware table; known: auto, cpu, {', '.join(table['gpus'])}")
    spec = table["gpus"][name]
    out = {"accelerator": name, **_aggregate(gpu_spec_peaks(name, spec), gpu_count),
           "peak_note": _spec_note(name, spec) + f"; x {gpu_count} GPU(s); set by hardware.name",
           "peak_measured": False, "peak_estimated": False, "peak_precision": "dense FP16/BF16 tensor"}
    return out


def _aggregate(per_gpu: dict[str, Any], n: int) -> dict[str, Any]:
    """Per-GPU figures and their totals over the engine's n GPUs (peak_flops, mem_bandwidth_gb_s)."""
    flops, bw = per_gpu["peak_flops_per_gpu"], per_gpu["mem_bandwidth_gb_s_per_gpu"]
    return {**per_gpu, "gpu_count": n,
            "peak_flops": flops * n if flops is not None else None,
            "mem_bandwidth_gb_s": bw * n if bw is not None else None}


def gpu_devices(nvml=None) -> list[dict[str, Any]]:
    """NVML's devices (tokenbench.telemetry.sampler.nvml_devices), each with its ``pci_device_id``
    ("0x2330", from nvmlDeviceGetPciInfo's pciDeviceId) where the driver reports one."""
    from tokenbench.telemetry import sampler as telemetry

    gpus = telemetry.nvml_devices(nvml)
    nv = telemetry.load_nvml(nvml) if gpus else None
    for g in gpus:
        g.setdefault("pci_device_id", None)
        if nv is None or not hasattr(nv, "nvmlDeviceGetPciInfo"):
            continue
        try:
            dev = pci_device_id(nv.nvmlDeviceGetPciInfo(nv.nvmlDeviceGetHandleByIndex(g["index"])).pciDeviceId)
        except Exception:  # NVML_ERROR_NOT_SUPPORTED and friends: match by name instead
            dev = None
        g["pci_device_id"] = f"0x{dev:04x}" if dev is not None else None
    return gpus


_UNKNOWN_PEAK = {"peak_flops_per_gpu": None, "peak_fp8_flops_per_gpu": None, "peak_int8_ops_per_gpu": None,
                 "mem_bandwidth_gb_s_per_gpu": None, "memory_gb_per_gpu": None, "tdp_w_per_gpu": None}


def gpu_peak(gpus: list[dict[str, Any]], table: dict | None = None) -> dict[str, Any]:
    """Peak of the engine's GPUs (already selected): per GPU, and x their count. Unknown (None, with
    the reason in peak_note) when a GPU is not in the table or the GPUs are of different models."""
    table = table or hardware_table()
    n = len(gpus)
    hits = [match_gpu(g["name"], table, g.get("pci_device_id")) for g in gpus]
    base = {"peak_measured": False, "peak_estimated": False, "peak_precision": "dense FP16/BF16 tensor"}
    unknown = [g for g, h in zip(gpus, hits) if h is None]
    if unknown:
        g = unknown[0]
        pci = f" (PCI device {g['pci_device_id']})" if g.get("pci_device_id") else ""
        return {**base, "accelerator": g["name"], **_aggregate(_UNKNOWN_PEAK, n),
                "peak_note": f"'{g['name']}'{pci} is not in the hardware table: peak unknown, no MFU"}
    models = Counter(h[0] for h in hits)
    if len(models) > 1:
        mix = ", ".join(f"{k} x{c}" for k, c in sorted(models.items()))
        return {**base, "accelerator": "mixed", **_aggregate(_UNKNOWN_PEAK, n),
                "peak_note": f"the engine's GPUs are of different models ({mix}): no single peak, no MFU"}
    key, spec = hits[0]
    return {**base, "accelerator": key, **_aggregate(gpu_spec_peaks(key, spec), n),
            "peak_note": _spec_note(key, spec) + f"; x {n} GPU(s) the engine uses"}


# ----------------------------------------------------------------------------- CPU
# FP32 FLOPs per cycle per core = FMA units x FP32 lanes x 2. Keyed by (vendor_id, cpu family,
# model range); a model name pattern narrows a row (Skylake-SP/Cascade Lake ship 1 or 2 AVX-512 FMA
# units by SKU). Where the SKU cannot be told, the row's `unknown_sku` figure is used and the note
# says so: we take the upper bound (2 units), so the peak is never understated and MFU never
# overstated. AMD Zen 4 executes AVX-512 on 2 x 256-bit pipes: 32, not 64. Zen 5 is left to the
# ISA fallback (its datapath is 512-bit on desktop/server parts, 256-bit on mobile ones).
_SKX_SKU = [(r"Platinum|Gold 6\d\d\d|Gold 5122|Gold 5222|W-\d", 64, "2 x 512-bit FMA"),
            (r"Gold 5\d\d\d|Silver|Bronze", 32, "1 x 512-bit FMA (Gold 5xxx/Silver/Bronze)")]
CPU_MICROARCHITECTURES: list[dict[str, Any]] = [
    {"vendor": "GenuineIntel", "family": 6, "models": [0x55], "steppings": range(0, 5), "name": "Skylake-SP",
     "skus": _SKX_SKU, "unknown_sku": (64, "2 x 512-bit FMA assumed: Skylake-SP SKUs have 1 or 2 units, this one's name does not say")},
    {"vendor": "GenuineIntel", "family": 6, "models": [0x55], "steppings": range(5, 8), "name": "Cascade Lake",
     "skus": _SKX_SKU, "unknown_sku": (64, "2 x 512-bit FMA assumed: Cascade Lake SKUs have 1 or 2 units, this one's name does not say")},
    {"vendor": "GenuineIntel", "family": 6, "models": [0x55], "steppings": range(10, 12), "name": "Cooper Lake",
     "per_cycle": 64, "what": "2 x 512-bit FMA"},
    {"vendor": "GenuineIntel", "family": 6, "models": [0x6A, 0x6C], "name": "Ice Lake-SP", "per_cycle": 64, "what": "2 x 512-bit FMA"},
    {"vendor": "GenuineIntel", "family": 6, "models": [0x8F], "name": "Sapphire Rapids", "per_cycle": 64, "what": "2 x 512-bit FMA"},
    {"vendor": "GenuineIntel", "family": 6, "models": [0xCF], "name": "Emerald Rapids", "per_cycle": 64, "what": "2 x 512-bit FMA"},
    {"vendor": "GenuineIntel", "family": 6, "models": [0xAD, 0xAE], "name": "Granite Rapids", "per_cycle": 64, "what": "2 x 512-bit FMA"},
    {"vendor": "AuthenticAMD", "family": 0x17, "models": range(0x00, 0x30), "name": "Zen/Zen+", "per_cycle": 16, "what": "2 x 128-bit FMA"},
    {"vendor": "AuthenticAMD", "family": 0x17, "models": range(0x30, 0x100), "name": "Zen 2", "per_cycle": 32, "what": "2 x 256-bit FMA"},
    {"vendor": "AuthenticAMD", "family": 0x19, "models": [*range(0x10, 0x20), *range(0x60, 0x80), *range(0xA0, 0xB0)],
     "name": "Zen 4", "per_cycle": 32, "what": "2 x 256-bit FMA; AVX-512 runs on them as 2 x 256"},
    {"vendor": "AuthenticAMD", "family": 0x19, "models": range(0x00, 0x100), "name": "Zen 3", "per_cycle": 32, "what": "2 x 256-bit FMA"},
]
# no table row: FP32 FLOPs per cycle implied by the vector ISA, with the FMA unit count assumed
_ISA_FLOPS = [("avx512f", 64, "AVX-512, 2 FMA units assumed"), ("avx2", 32, "AVX2, 2 FMA units assumed"),
              ("sse2", 8, "SSE2"), ("asimd", 16, "NEON/ASIMD, 2 x 128-bit FMA units assumed")]


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    blocks = []
    for chunk in re.split(r"\n\s*\n", text.strip()):
        fields = {}
        for line in chunk.splitlines():
            if ":" in line:
                k, _, v = line.partition(":")
                fields[k.strip()] = v.strip()
        if fields:
            blocks.append(fields)
    return blocks


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _physical_cores(blocks: list[dict[str, str]], allowed: set[int], sysfs: Path | None) -> tuple[int | None, str]:
    """Distinct (package, core) pairs among the CPUs we may use: /proc/cpuinfo's physical id / core
    id, else sysfs topology; None when neither says."""
    topo = {}
    for b in blocks:
        if "processor" in b and "physical id" in b and "core id" in b:
            topo[int(b["processor"])] = (b["physical id"], b["core id"])
    if allowed and allowed <= topo.keys():
        return len({topo[c] for c in allowed}), "physical id/core id in /proc/cpuinfo"
    if sysfs is not None:
        pairs = set()
        for c in allowed:
            pkg = _read(sysfs / f"cpu{c}" / "topology" / "physical_package_id")
            core = _read(sysfs / f"cpu{c}" / "topology" / "core_id")
            if pkg is None or core is None:
                break
            pairs.add((pkg, core))
        else:
            if pairs:
                return len(pairs), "sysfs topology"
    return None, "no topology"


def _cpu_clock(name: str, blocks: list[dict[str, str]], flags: set[str], sysfs: Path | None) -> tuple[float | None, str | None]:
    """Base clock in GHz and where it came from; never an instantaneous reading."""
    nominal = re.search(r"@\s*([\d.]+)\s*GHz", name)
    if nominal:
        return float(nominal.group(1)), "base (model name)"
    freq = sysfs / "cpu0" / "cpufreq" if sysfs is not None else None
    if freq is not None:
        for fname, what in (("base_frequency", "base (cpufreq base_frequency)"),
                            ("amd_pstate_nominal_freq", "base (amd_pstate nominal)")):
            khz = _read(freq / fname)
            if khz and khz.isdigit():
                return int(khz) / 1e6, what
        khz = _read(freq / "cpuinfo_max_freq")
        if khz and khz.isdigit():
            return int(khz) / 1e6, "max turbo (cpuinfo_max_freq): the peak is an upper bound"
    # With no cpufreq driver and no APERF/MPERF (typical of VMs) the kernel's "cpu MHz" is cpu_khz,
    # the calibrated nominal (TSC) rate, fixed for the boot: the only clock such a machine states.
    # Where either exists "cpu MHz" is an instantaneous reading that moves between runs: not used.
    has_cpufreq = freq is not None and freq.is_dir()
    mhz = blocks[0].get("cpu MHz") if blocks else None
    if mhz and not has_cpufreq and "aperfmperf" not in flags:
        return float(mhz) / 1000, "nominal (kernel cpu_khz: no cpufreq driver, no APERF/MPERF)"
    return None, None


def cpu_microarchitecture(info: dict[str, Any]) -> tuple[str | None, int, str]:
    """(microarchitecture or None, FP32 FLOPs per cycle per core, what that assumes)."""
    for row in CPU_MICROARCHITECTURES:
        if (info.get("vendor"), info.get("family")) != (row["vendor"], row["family"]) or info.get("model") not in row["models"]:
            continue
        if "steppings" in row and info.get("stepping") not in row["steppings"]:
            continue
        for pattern, per_cycle, what in row.get("skus", []):
            if re.search(pattern, info["name"]):
                return row["name"], per_cycle, what
        if "skus" in row:
            per_cycle, what = row["unknown_sku"]
            return row["name"], per_cycle, what
        return row["name"], row["per_cycle"], row["what"]
    flags = info.get("flags") or set()
    for flag, per_cycle, what in _ISA_FLOPS:
        if flag in flags:
            return None, per_cycle, what
    return None, 2, "scalar FMA assumed"


def cpu_info(cpuinfo_text: str | None = None, sysfs: Path | str | None = None) -> dict[str, Any]:
    """The CPU the load test may use. ``cores``: physical cores among the CPUs this process may run
    on (sched_getaffinity), SMT siblings counted once; ``logical_cpus``: those CPUs; ``ghz``: the base
    clock (``clock_source`` says where from). ``sysfs`` is the cpu sysfs folder: by default the real
    one when reading the real /proc/cpuinfo, none for a given ``cpuinfo_text``."""
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo_text = fh.read()
        except OSError:
            cpuinfo_text = ""
        sysfs = SYSFS_CPU if sysfs is None else sysfs
    sysfs = Path(sysfs) if sysfs is not None else None
    blocks = _cpuinfo_blocks(cpuinfo_text)
    first = blocks[0] if blocks else {}
    name = first.get("model name") or platform.processor() or "unknown CPU"
    flags = set((first.get("flags") or first.get("Features") or "").split())

    def num(key):
        v = first.get(key)
        return int(v) if v and v.isdigit() else None

    try:
        allowed = set(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        allowed = set(range(os.cpu_count() or 1))
    cores, topology = _physical_cores(blocks, allowed, sysfs)
    if cores is None:
        cores = len(allowed)
        topology = "topology unknown: logical CPUs counted (SMT siblings would count twice)"
    ghz, clock_source = _cpu_clock(name, blocks, flags, sysfs)
    info = {"name": name, "vendor": first.get("vendor_id"), "family": num("cpu family"), "model": num("model"),
            "stepping": num("stepping"), "cores": cores, "logical_cpus": len(allowed), "core_source": topology,
            "ghz": ghz, "clock_source": clock_source, "flags": flags}
    info["microarchitecture"] = cpu_microarchitecture(info)[0]
    return info


def cpu_peak(info: dict[str, Any]) -> dict[str, Any]:
    """Estimated FP32 peak: physical cores x base GHz x FLOP/cycle of the microarchitecture."""
    uarch, per_cycle, what = cpu_microarchitecture(info)
    base = {"peak_measured": False, "peak_estimated": True, "peak_precision": "FP32 vector FMA (estimated)",
            **_aggregate(_UNKNOWN_PEAK, 0)}
    if not info.get("ghz"):
        return {**base, "peak_flops": None, "peak_note": "CPU base clock unknown (no '@ GHz' in the model name, no cpufreq): no peak, no MFU"}
    peak = info["cores"] * info["ghz"] * 1e9 * per_cycle
    clock = info.get("clock_source") or "clock"
    return {**base, "peak_flops": peak,
            "peak_note": (f"estimated: physical cores x base GHz x FLOP/cycle (microarchitecture) = {info['cores']} cores "
                          f"x {info['ghz']:.2f} GHz ({clock}) x {per_cycle} FP32 FLOP/cycle ({uarch or 'no table row'}: {what})")}


# ----------------------------------------------------------------------------- describe
def describe(name: str = "auto", nvml=None, cpuinfo_text: str | None = None,
             gpu_indices: list[int] | None = None, sysfs: Path | str | None = None) -> dict[str, Any]:
    """The hardware a load test measures, with the peaks MFU and MBU divide by.

    ``name``: "auto" (the engine's GPUs through NVML, else this CPU), "cpu", or a hardware.yaml key.
    ``gpu_indices``: the NVML indices of the GPUs the engine uses (None: all the host's GPUs).

    Keys of the returned dict:
      cpu            name, vendor, family, model, stepping, cores (physical, among the CPUs we may
                     use), logical_cpus, core_source, ghz (base), clock_source, microarchitecture
      gpus           every GPU NVML sees on the host: index, name, memory_total_bytes, driver,
                     pci_device_id ("0x2330" or None)
      gpu_indices    the engine's GPUs (NVML indices); [] on CPU
      gpu_count      len(gpu_indices): what every aggregate below is multiplied by
      accelerator    the table key, the NVML name of an unknown GPU, "mixed", or "cpu"
      peak_flops_per_gpu, peak_fp8_flops_per_gpu, peak_int8_ops_per_gpu   dense datasheet peaks, or None
      mem_bandwidth_gb_s_per_gpu, memory_gb_per_gpu, tdp_w_per_gpu        datasheet figures, or None
      peak_flops     what MFU divides by: peak_flops_per_gpu x gpu_count on GPUs (the aggregate the
                     engine can use); the estimated FP32 peak on a CPU; None when unknown
      mem_bandwidth_gb_s   mem_bandwidth_gb_s_per_gpu x gpu_count (None on CPU or unknown)
      peak_note      where the peak comes from, or why there is none
      peak_precision what the peak counts ("dense FP16/BF16 tensor" or "FP32 vector FMA (estimated)")
      peak_measured  False: no figure here is measured
      peak_estimated True for the CPU estimate, False for datasheet figures
    """
    cpu = cpu_info(cpuinfo_text, sysfs)
    gpus = gpu_devices(nvml)
    desc: dict[str, Any] = {
        "cpu": {k: v for k, v in cpu.items() if k != "flags"},
        "gpus": gpus,
        "gpu_indices": [],
        "accelerator": "cpu",
    }
    table = hardware_table()
    if name not in ("auto", "cpu") and name not in table["gpus"]:
        raise ValueError(f"hardware.name '{name}' is not in the hardware table; known: auto, cpu, {', '.join(table['gpus'])}")
    if name == "cpu" or (name == "auto" and not gpus):
        desc.update(cpu_peak(cpu))
        return desc
    by_index = {g["index"]: g for g in gpus}
    wanted = sorted(by_index) if gpu_indices is None else list(gpu_indices)
    missing = [i for i in wanted if i not in by_index]
    desc["gpu_indices"] = wanted
    if name != "auto":
        desc.update(named_peak(name, len(wanted) or 1, table))
        return desc
    if missing or not wanted:
        why = (f"GPU index(es) {missing} not on this host (NVML sees {sorted(by_index)})" if missing
               else "the engine was given no GPU")
        desc.update({"accelerator": "unknown", "peak_measured": False, "peak_estimated": False,
                     "peak_precision": "dense FP16/BF16 tensor", **_aggregate(_UNKNOWN_PEAK, len(wanted)),
                     "peak_note": f"{why}: peak unknown, no MFU"})
        return desc
    desc.update(gpu_peak([by_index[i] for i in wanted], table))
    return desc
