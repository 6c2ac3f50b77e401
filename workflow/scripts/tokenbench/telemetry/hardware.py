"""What the load test ran on, and the peak figures MFU is measured against.

GPU peaks come from a datasheet table (``data/hardware.yaml``). A CPU has no datasheet figure
here, so its peak is *estimated* as cores x clock x FP32 FLOPs per cycle implied by its vector
ISA; every figure built on it is labelled estimated.
"""

from __future__ import annotations

import os
import platform
import re
from importlib import resources
from typing import Any

import yaml

# FP32 FLOPs per cycle per core: lanes x 2 (FMA) x FMA units (assumed 2 for AVX-512/AVX2 cores).
_ISA_FLOPS = [("avx512f", 64, "AVX-512 FMA, 2 units"), ("avx2", 32, "AVX2 FMA, 2 units"), ("sse2", 8, "SSE2")]


def hardware_table() -> dict[str, Any]:
    return yaml.safe_load(resources.files("tokenbench").joinpath("data/hardware.yaml").read_text())


def match_gpu(device_name: str, table: dict | None = None) -> tuple[str, dict] | None:
    table = table or hardware_table()
    best = None
    for key, spec in table["gpus"].items():
        for pat in spec["match"]:
            if pat.lower() in device_name.lower() and (best is None or len(pat) > best[2]):
                best = (key, spec, len(pat))
    return (best[0], best[1]) if best else None


def cpu_info(cpuinfo_text: str | None = None) -> dict[str, Any]:
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo_text = fh.read()
        except OSError:
            cpuinfo_text = ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo_text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo_text, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)$", cpuinfo_text, re.M)
    name = model.group(1).strip() if model else platform.processor() or "unknown CPU"
    ghz = None
    nominal = re.search(r"@\s*([\d.]+)\s*GHz", name)
    if nominal:
        ghz = float(nominal.group(1))
    elif mhz:
        ghz = float(mhz.group(1)) / 1000
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    return {"name": name, "cores": cores, "ghz": ghz, "flags": set(flags.group(1).split()) if flags else set()}


def cpu_peak(info: dict[str, Any]) -> dict[str, Any]:
    for flag, per_cycle, what in _ISA_FLOPS:
        if flag in info["flags"]:
            break
    else:
        per_cycle, what = 2, "scalar"
    if not info["ghz"]:
        return {"peak_flops": None, "peak_note": "CPU clock unknown: no peak, no MFU"}
    peak = info["cores"] * info["ghz"] * 1e9 * per_cycle
    return {
        "peak_flops": peak,
        "peak_note": f"estimated: {info['cores']} cores x {info['ghz']:.2f} GHz x {per_cycle} FP32 FLOP/cycle ({what})",
    }


def describe(name: str = "auto", nvml=None, cpuinfo_text: str | None = None) -> dict[str, Any]:
    """The hardware a load test measures, with its peak FLOP/s and where that figure comes from."""
    from tokenbench.telemetry import sampler as telemetry

    cpu = cpu_info(cpuinfo_text)
    gpus = telemetry.nvml_devices(nvml)
    desc: dict[str, Any] = {
        "cpu": {k: v for k, v in cpu.items() if k != "flags"},
        "gpus": gpus,
        "accelerator": "cpu",
    }
    table = hardware_table()
    if name != "auto":
        if name in table["gpus"]:
            spec = table["gpus"][name]
            desc.update(accelerator=name, peak_flops=spec["peak_fp16_tflops"] * 1e12,
                        peak_note=f"datasheet: {spec['peak_fp16_tflops']} TFLOP/s dense FP16 ({spec['source']})",
                        peak_measured=False, mem_bandwidth_gb_s=spec["mem_bandwidth_gb_s"])
            return desc
        if name != "cpu":
            raise ValueError(f"hardware.name '{name}' is not in the hardware table; known: auto, cpu, {', '.join(table['gpus'])}")
    if gpus and name == "auto":
        hit = match_gpu(gpus[0]["name"], table)
        if hit:
            key, spec = hit
            n = len(gpus)
            desc.update(accelerator=key, peak_flops=spec["peak_fp16_tflops"] * 1e12,
                        peak_note=f"datasheet: {spec['peak_fp16_tflops']} TFLOP/s dense FP16 per GPU ({spec['source']}); MFU is per GPU of {n}",
                        peak_measured=False, mem_bandwidth_gb_s=spec["mem_bandwidth_gb_s"])
        else:
            desc.update(accelerator=gpus[0]["name"], peak_flops=None,
                        peak_note=f"'{gpus[0]['name']}' is not in the hardware table: no MFU", peak_measured=False)
        return desc
    desc.update(cpu_peak(cpu), peak_measured=False, mem_bandwidth_gb_s=None)
    return desc
