"""Hardware telemetry, sampled in its own process for the whole load test.

Backends:
- NVML (``pynvml`` from nvidia-ml-py) when a GPU is present: utilisation, memory, power,
  cumulative energy, temperature and SM clock per device, at 20 Hz by default;
- on CPU: system, server-process-tree and client CPU time (the load generator, which is this
  sampler's parent, and the sampler itself), memory, and RAPL package energy where the powercap
  files are readable: host busy minus server minus client is CPU time someone else took.
- contention on GPUs: processes on the device that are not the server's (checked about once a
  second) and the clock-event (throttle) reasons NVML reports. Counters are recorded raw (cumulative seconds / joules) and turned
  into rates at merge time, so nothing is lost to a too-short sampling window.

Run as ``python -m tokenbench.telemetry.sampler --out F --interval S [--pid P]``; it prints ``ready``
after its first sample and writes Parquet when it receives SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

RAPL_GLOB = "/sys/class/powercap/intel-rapl:[0-9]*"


# ----------------------------------------------------------------------------- NVML
def load_nvml(nvml=None):
    """The pynvml module, initialised, or None when no NVIDIA driver is present."""
    if nvml is None:
        try:
            import pynvml as nvml  # provided by the nvidia-ml-py package
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
    except Exception:
        return None
    return nvml


def nvml_devices(nvml=None) -> list[dict[str, Any]]:
    nv = load_nvml(nvml)
    if nv is None:
        return []
    out = []
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        name = nv.nvmlDeviceGetName(h)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        out.append({
            "index": i,
            "name": name.decode() if isinstance(name, bytes) else name,
            "memory_total_bytes": int(mem.total),
            "driver": _decode(nv.nvmlSystemGetDriverVersion()),
        })
    return out


def _decode(v):
    return v.decode() if isinstance(v, bytes) else v


# clock-event reasons that mean the device was slowed by something other than the workload's own
# demand: hardware slowdown, software/hardware thermal slowdown, power brake (NVML bit values; the
# power cap and idle reasons are normal operation under load and are not counted)
THROTTLE_MASK = 0x8 | 0x20 | 0x40 | 0x80
PROCESS_EVERY = 20  # samples between checks of the device's process list (NVML's slowest call)


class NvmlSampler:
    source = "nvml"

    def __init__(self, nvml, own_pids=None):
        self.nv = nvml
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        self.own_pids = own_pids or (lambda: set())  # the server tree and the client
        self.k = 0

    def _reasons(self, h):
        for fn in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
            if hasattr(self.nv, fn):
                return self._try(getattr(self.nv, fn), h)
        return None

    def _foreign(self, h, own):
        from tokenbench.engines.server import _gpu_processes

        return sum(1 for pid, _ in _gpu_processes(self.nv, h) if pid not in own)

    def _try(self, fn, *args):
        try:
            return fn(*args)
        except Exception:  # a field this GPU does not support: record as missing, keep sampling
            return None

    def sample(self, t_ns: int) -> list[dict[str, Any]]:
        nv = self.nv
        rows = []
        own = self.own_pids() if self.k % PROCESS_EVERY == 0 else None
        self.k += 1
        for i, h in enumerate(self.handles):
            reasons = self._reasons(h)
            util = self._try(nv.nvmlDeviceGetUtilizationRates, h)
            mem = self._try(nv.nvmlDeviceGetMemoryInfo, h)
            power_mw = self._try(nv.nvmlDeviceGetPowerUsage, h)
            energy_mj = self._try(nv.nvmlDeviceGetTotalEnergyConsumption, h)
            temp = self._try(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
            sm = self._try(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM)
            rows.append({
                "t_ns": t_ns, "device": f"gpu{i}",
                "gpu_util_pct": None if util is None else float(util.gpu),
                "gpu_mem_util_pct": None if util is None else float(util.memory),
                "gpu_mem_used_bytes": None if mem is None else int(mem.used),
                "power_w": None if power_mw is None else power_mw / 1000.0,
                "energy_j": None if energy_mj is None else energy_mj / 1000.0,
                "temp_c": None if temp is None else float(temp),
                "sm_clock_mhz": None if sm is None else float(sm),
                "clock_event_reasons": None if reasons is None else int(reasons),
                "throttled": None if reasons is None else bool(int(reasons) & THROTTLE_MASK),
                "foreign_processes": None if own is None else self._foreign(h, own),
            })
        return rows


# ----------------------------------------------------------------------------- CPU
def rapl_zones(pattern: str = RAPL_GLOB) -> list[str]:
    zones = []
    for z in sorted(glob.glob(pattern)):
        try:
            with open(os.path.join(z, "energy_uj")) as fh:
                int(fh.read())
            zones.append(z)
        except (OSError, ValueError):
            continue
    return zones


class CpuSampler:
    source = "cpu"

    def __init__(self, pid: int | None = None, rapl_pattern: str = RAPL_GLOB, client_pid: int | None = None):
        import psutil

        self.psutil = psutil
        self.proc = psutil.Process(pid) if pid else None
        self.me = psutil.Process()
        self.client = psutil.Process(client_pid) if client_pid else None
        self.zones = rapl_zones(rapl_pattern)
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def _tree_cpu(self):
        if self.proc is None:
            return None, None
        cpu, rss = 0.0, 0
        try:
            procs = [self.proc] + self.proc.children(recursive=True)
        except self.psutil.Error:
            return None, None
        for p in procs:
            try:
                t = p.cpu_times()
                cpu += t.user + t.system
                rss += p.memory_info().rss
            except self.psutil.Error:
                continue
        return cpu, rss

    def pids(self) -> set[int]:
        """The benchmark's own processes: the server tree, the client and this sampler."""
        out = {self.me.pid} | ({self.client.pid} if self.client else set())
        if self.proc is not None:
            try:
                out |= {self.proc.pid} | {p.pid for p in self.proc.children(recursive=True)}
            except self.psutil.Error:
                pass
        return out

    def _client_cpu(self):
        """CPU seconds of the client (its own threads, not its children: the server is one) and
        of this sampler."""
        total = 0.0
        for p in (self.me, self.client):
            if p is None:
                continue
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except self.psutil.Error:
                return None
        return total

    def _rapl_j(self):
        if not self.zones:
            return None
        total = 0
        for z in self.zones:
            try:
                with open(os.path.join(z, "energy_uj")) as fh:
                    total += int(fh.read())
            except OSError:
                return None
        return total / 1e6

    def sample(self, t_ns: int) -> list[dict[str, Any]]:
        ct = self.psutil.cpu_times()
        busy = ct.user + ct.nice + ct.system + getattr(ct, "irq", 0) + getattr(ct, "softirq", 0) + getattr(ct, "steal", 0)
        vm = self.psutil.virtual_memory()
        server_cpu, server_rss = self._tree_cpu()
        return [{
            "t_ns": t_ns, "device": "cpu",
            "cpu_busy_s": busy,
            "server_cpu_s": server_cpu,
            "client_cpu_s": self._client_cpu(),
            "server_rss_bytes": server_rss,
            "mem_used_bytes": int(vm.total - vm.available),
            "energy_j": self._rapl_j(),
        }]


# ----------------------------------------------------------------------------- loop
def run_sampler(out: str, interval_s: float, pid: int | None = None, nvml=None,
                max_duration_s: float | None = None, announce=None, client_pid: int | None = None) -> int:
    """Sample until SIGTERM/SIGINT (or max_duration_s); write Parquet; return the sample count.
    client_pid: the load generator's process (default: none; the CLI passes its parent)."""
    import pandas as pd

    nv = load_nvml(nvml)
    cpu = CpuSampler(pid, client_pid=client_pid)
    samplers = [cpu]
    if nv is not None and nv.nvmlDeviceGetCount() > 0:
        samplers.insert(0, NvmlSampler(nv, own_pids=cpu.pids))
    rows: list[dict[str, Any]] = []
    stop = False

    def _stop(*_):
        nonlocal stop
        stop = True

    old = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    interval_ns = int(interval_s * 1e9)
    start = time.monotonic_ns()
    k = 0
    try:
        while not stop:
            t = time.monotonic_ns()
            for s in samplers:
                rows.extend(s.sample(t))
            if k == 0 and announce:
                announce()
            k += 1
            if max_duration_s is not None and t - start >= max_duration_s * 1e9:
                break
            # absolute schedule: sampling does not drift by the time each sample takes
            delay = start + k * interval_ns - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        df = pd.DataFrame(rows)
        df["source"] = df["device"].map(lambda d: "nvml" if d.startswith("gpu") else "cpu")
        df["t_ns"] = df["t_ns"].astype("int64")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(out, index=False)
    return k


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tokenbench.telemetry.sampler")
    ap.add_argument("--out", required=True)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--pid", type=int, default=None, help="server process whose tree's CPU/memory to record")
    ap.add_argument("--max-duration", type=float, default=None)
    args = ap.parse_args(argv)

    def announce():
        print("ready", flush=True)

    run_sampler(args.out, args.interval, args.pid, max_duration_s=args.max_duration, announce=announce,
                client_pid=os.getppid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
