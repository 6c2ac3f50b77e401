"""Hardware telemetry, sampled in its own process for the whole load test.

Backends:
- NVML (``pynvml`` from nvidia-ml-py) when a GPU is present: utilisation, memory, power,
  cumulative energy, temperature and SM clock per device, at 20 Hz by default;
- on CPU: system, server-process-tree and client CPU time (the load generator, which is this
  sampler's parent, and the sampler itself), memory, and RAPL package energy where the powercap
  files are readable: host busy minus server minus client is CPU time someone else took.
- contention on GPUs: processes on the device that are not the server's (checked about once a
  second) and the clock-event (throttle) reasons NVML reports. Counters are recorded raw (cumulative
  seconds / joules) and turned into rates at merge time, so nothing is lost to a too-short sampling
  window.

Run as ``python -m tokenbench.telemetry.sampler --out F --interval S [--pid P] [--devices 0,2]
[--pid-stdin]`` (``--pid-stdin``: the server's pid arrives on stdin once it is launched, so the
sampler can start first and record the baseline and the start-up; a "stop" line there comes before
an orderly SIGTERM);
it prints ``ready`` after its first sample and writes Parquet ``F`` and the sidecar ``F.json`` when
it receives SIGTERM or SIGINT (or after ``--max-duration``). Should its parent (the load test) die,
it writes nothing, reaps the server's process group and exits (``run_sampler``'s ``parent``).

Raw columns, one row per device per sample (``source`` is "nvml" or "cpu"):

GPU rows (``device`` = "gpu<NVML index>"): ``t_ns`` (CLOCK_MONOTONIC ns); ``gpu_util_pct``,
``gpu_mem_util_pct`` (%, None on a MIG-enabled GPU, which reports no utilisation);
``gpu_mem_used_bytes``; ``power_usage_w`` (W, ``nvmlDeviceGetPowerUsage``: a 1 s trailing
average on Ampere except GA100 and newer, instantaneous before; the sidecar says which);
``power_instant_w`` (W, the ``NVML_FI_DEV_POWER_INSTANT`` field value, None where the driver
lacks it); ``energy_j`` (J, ``nvmlDeviceGetTotalEnergyConsumption``, cumulative since the driver
loaded, recorded exactly as read: a driver reload resets it, merge drops the negative step);
``temp_c``; ``sm_clock_mhz``; ``clock_event_reasons`` (NVML bit mask) and ``throttled``;
``foreign_processes`` (count, every ``PROCESS_EVERY`` samples, None between). There is no raw
``power_w``: merge derives the power it reports from these.

CPU row (``device`` = "cpu"): ``cpu_busy_s`` (s, busy time summed over the CPUs this process may
run on, ``os.sched_getaffinity``, not the whole host: the merge divides by that CPU count; steal
included); ``cpu_steal_s`` (s, the part of it the hypervisor gave another guest);
``server_cpu_s``, ``client_cpu_s`` (s, cumulative; the server's over its process tree, whose
members are re-read every ``TREE_EVERY`` samples; the client is the load test's process, its
shard workers (``client PID`` lines on stdin) and this sampler); ``foreign_top`` (JSON
``[[name, pid, cpu_s], ...]`` every ``FOREIGN_EVERY`` samples, less often where a walk would cost
more than ``FOREIGN_BUDGET`` of the time, None between: the processes outside the benchmark,
kernel threads included, that used the most CPU since the previous walk); ``server_rss_bytes`` (RSS summed over the
server's process tree: an upper bound, shared pages count once per process); ``server_pss_bytes``
(PSS summed over the tree: shared pages divided among the processes that map them, read from
``/proc/PID/smaps_rollup`` every ``PSS_EVERY`` samples, less often where a read would cost more
than ``PSS_BUDGET`` of the time, None between, because that walk costs time proportional to the
tree's resident memory: ~14 ms of CPU per GiB here); ``mem_used_bytes`` (host);
``energy_j`` (J, RAPL: the sum of the top-level package zones ``intel-rapl:N``, never their
sub-zones (core, uncore, dram lie inside the package) nor psys (which contains the package);
unwrapped here: each zone's ``energy_uj`` wraps at its ``max_energy_range_uj``, and when a
reading drops that range is added, so the column never goes backwards; None where unreadable).

Sidecar ``F.json`` (``F.with_suffix(".json")``), written with the Parquet::

    {"interval_s": 0.05,                       # requested
     "samples": 1200, "interval_p50_ms": 50.0, "interval_p99_ms": 50.4, "max_gap_ms": 61.2,
     "nvml": true,                             # an NVIDIA driver answered
     "gpus": [{"index": 2, "device": "gpu2", "name": "NVIDIA H100 80GB HBM3",
               "uuid": "GPU-...", "pci_device_id": "0x233010de", "architecture": "hopper",
               "mig_mode": false,              # None where not queryable
               "power_usage_semantics": "1 s average",   # or "instantaneous", or "unknown"
               "power_instant_field": true,    # power_instant_w is recorded
               "energy_counter": true,         # energy_j is recorded
               "utilization": true,            # gpu_util_pct is recorded (false under MIG)
               "unsupported": {}}],            # reading -> error of its first try (never retried)
     "cpu": {"cpu_count": 2, "cpus": [0, 1], "pss_every": 10,
             "rapl": {"readable": true, "zones": ["package-0"], "paths": ["/sys/.../intel-rapl:0"],
                      "max_energy_range_uj": [262143328850], "excluded": ["psys"],
                      "unreadable": [],               # zones whose energy_uj we may not read
                      "wraps": 0}}}                   # counter wraps unwrapped during the run

Each optional NVML reading is tried once at start; one that fails then (NVML_ERROR_NOT_SUPPORTED:
no energy counter, no utilisation under MIG, no instantaneous-power field on an older driver) is
recorded as None for the whole run and not called again, so the 20 Hz loop pays nothing for it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenbench.engines.server import parent_gone
from tokenbench.telemetry import hardware
from tokenbench.telemetry.energy import sampling

POWERCAP = "/sys/class/powercap"
RAPL_GLOB = POWERCAP + "/intel-rapl:[0-9]*"  # matches sub-zones too; _rapl_scan keeps top-level ones
_TOP_LEVEL = re.compile(r"^intel-rapl:\d+$")


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

# nvmlDeviceArchitecture_t values (nvml.h); stable across driver versions
ARCHITECTURES = {2: "kepler", 3: "maxwell", 4: "pascal", 5: "volta", 6: "turing", 7: "ampere",
                 8: "ada", 9: "hopper", 10: "blackwell", 13: "rubin"}
AMPERE = 7
# GA100 (A100, A30, A800): the one Ampere die whose nvmlDeviceGetPowerUsage is still instantaneous.
# PCI device ids 0x20B0-0x20BF and 0x20F0-0x20FF (the upper 16 bits of pciDeviceId, vendor 0x10DE)
_GA100_IDS = (range(0x20B0, 0x20C0), range(0x20F0, 0x2100))
# nvmlValueType_t -> the c_nvmlValue_t union member holding a field value of that type
_VALUE_MEMBERS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def is_ga100(pci_device_id: int | None, name: str | None) -> bool:
    dev = hardware.pci_device_id(pci_device_id)
    if dev is not None:
        return any(dev in r for r in _GA100_IDS)
    return bool(name) and any(k in name for k in ("A100", "A30", "A800"))


def power_usage_semantics(arch: int | None, pci_device_id: int | None, name: str | None) -> str:
    """What nvmlDeviceGetPowerUsage returns on this GPU: per NVML's documentation, a 1 s average on
    Ampere (except GA100) and newer, the instantaneous draw on GA100 and older architectures."""
    if arch is None or arch not in ARCHITECTURES:
        return "unknown"
    if arch >= AMPERE and not is_ga100(pci_device_id, name):
        return "1 s average"
    return "instantaneous"


def field_value(fv) -> float | int | None:
    """A c_nvmlFieldValue_t's value, read through the union member its valueType names; None
    when the field's own nvmlReturn is not NVML_SUCCESS (0)."""
    if int(fv.nvmlReturn) != 0:
        return None
    member = _VALUE_MEMBERS.get(int(fv.valueType))
    return None if member is None else getattr(fv.value, member)


class _Gpu:
    """One sampled GPU: its handle, what it supports (decided once) and its metadata."""

    def __init__(self, nv, index: int):
        self.index, self.label = index, f"gpu{index}"
        self.h = nv.nvmlDeviceGetHandleByIndex(index)
        self.unsupported: dict[str, str] = {}
        self.meta = self._meta(nv)

    def _meta(self, nv) -> dict[str, Any]:
        h = self.h
        name = _opt(lambda: _decode(nv.nvmlDeviceGetName(h)))
        pci = _opt(lambda: int(nv.nvmlDeviceGetPciInfo(h).pciDeviceId))
        arch = _opt(lambda: int(nv.nvmlDeviceGetArchitecture(h))) if hasattr(nv, "nvmlDeviceGetArchitecture") else None
        mig = None
        if hasattr(nv, "nvmlDeviceGetMigMode"):
            cur = _opt(lambda: nv.nvmlDeviceGetMigMode(h)[0])
            mig = None if cur is None else int(cur) == getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1)
        return {
            "index": self.index, "device": self.label, "name": name,
            "uuid": _opt(lambda: _decode(nv.nvmlDeviceGetUUID(h))),
            "pci_device_id": None if pci is None else f"0x{pci:08x}",
            "architecture": ARCHITECTURES.get(arch, None if arch is None else f"unknown ({arch})"),
            "mig_mode": mig,
            "power_usage_semantics": power_usage_semantics(arch, pci, name),
        }


def _opt(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return None


class NvmlSampler:
    """Samples the GPUs at NVML indices ``devices`` (default: all)."""
    source = "nvml"

    def __init__(self, nvml, own_pids=None, devices: list[int] | None = None):
        self.nv = nv = nvml
        count = nv.nvmlDeviceGetCount()
        devices = list(range(count)) if devices is None else list(devices)
        bad = [d for d in devices if not 0 <= d < count]
        if bad:
            raise ValueError(f"--devices {','.join(map(str, devices))}: NVML index {bad[0]} does not exist "
                             f"(this host has {count} GPU{'s' if count != 1 else ''}, 0..{count - 1})")
        self.gpus = [_Gpu(nv, i) for i in devices]
        self.handles = [g.h for g in self.gpus]
        self.own_pids = own_pids or (lambda: set())  # the server tree and the client
        self.k = 0
        instant = getattr(nv, "NVML_FI_DEV_POWER_INSTANT", None)  # absent from old pynvml
        self.instant_ids = [instant] if instant is not None and hasattr(nv, "nvmlDeviceGetFieldValues") else None
        reasons = next((getattr(nv, f) for f in ("nvmlDeviceGetCurrentClocksEventReasons",
                                                 "nvmlDeviceGetCurrentClocksThrottleReasons") if hasattr(nv, f)), None)
        temp_kind, sm_kind = getattr(nv, "NVML_TEMPERATURE_GPU", 0), getattr(nv, "NVML_CLOCK_SM", 1)
        # reading -> (function of the handle, raw value -> column values); each tried once per GPU now
        self.readings: dict[str, tuple[Callable, Callable]] = {
            "utilization": (nv.nvmlDeviceGetUtilizationRates,
                            lambda u: {"gpu_util_pct": float(u.gpu), "gpu_mem_util_pct": float(u.memory)}),
            "memory": (nv.nvmlDeviceGetMemoryInfo, lambda m: {"gpu_mem_used_bytes": int(m.used)}),
            "power_usage": (nv.nvmlDeviceGetPowerUsage, lambda mw: {"power_usage_w": mw / 1000.0}),
            "power_instant": (self._instant, lambda mw: {"power_instant_w": mw / 1000.0}),
            "energy": (nv.nvmlDeviceGetTotalEnergyConsumption, lambda mj: {"energy_j": mj / 1000.0}),
            "temperature": (lambda h: nv.nvmlDeviceGetTemperature(h, temp_kind), lambda c: {"temp_c": float(c)}),
            "sm_clock": (lambda h: nv.nvmlDeviceGetClockInfo(h, sm_kind), lambda c: {"sm_clock_mhz": float(c)}),
            "clock_event_reasons": (reasons, lambda r: {"clock_event_reasons": int(r),
                                                        "throttled": bool(int(r) & THROTTLE_MASK)}),
        }
        self.empty = {"gpu_util_pct": None, "gpu_mem_util_pct": None, "gpu_mem_used_bytes": None,
                      "power_usage_w": None, "power_instant_w": None, "energy_j": None, "temp_c": None,
                      "sm_clock_mhz": None, "clock_event_reasons": None, "throttled": None}
        for g in self.gpus:
            for key, (fn, _) in self.readings.items():
                try:
                    if fn is None:
                        raise NotImplementedError("not in this pynvml")
                    if fn(g.h) is None:
                        raise LookupError("no value")
                except Exception as exc:
                    g.unsupported[key] = f"{type(exc).__name__}: {exc}"[:200]
            g.plan = [(fn, conv) for key, (fn, conv) in self.readings.items() if key not in g.unsupported]
            g.meta.update(power_instant_field="power_instant" not in g.unsupported,
                          energy_counter="energy" not in g.unsupported,
                          utilization="utilization" not in g.unsupported,
                          unsupported=dict(g.unsupported))

    def _instant(self, h):
        if self.instant_ids is None:
            raise NotImplementedError("no NVML_FI_DEV_POWER_INSTANT in this pynvml")
        fv = self.nv.nvmlDeviceGetFieldValues(h, self.instant_ids)[0]
        if int(fv.nvmlReturn) != 0:  # the call succeeds and the field carries its own status
            raise LookupError(f"NVML_FI_DEV_POWER_INSTANT: nvmlReturn {int(fv.nvmlReturn)}")
        return field_value(fv)

    def meta(self) -> list[dict[str, Any]]:
        return [g.meta for g in self.gpus]

    def _foreign(self, h, own):
        from tokenbench.engines.server import _gpu_processes

        return sum(1 for pid, _ in _gpu_processes(self.nv, h) if pid not in own)

    def sample(self, t_ns: int) -> list[dict[str, Any]]:
        rows = []
        own = self.own_pids() if self.k % PROCESS_EVERY == 0 else None
        self.k += 1
        for g in self.gpus:
            row = {"t_ns": t_ns, "device": g.label, **self.empty}
            for fn, conv in g.plan:
                try:
                    v = fn(g.h)
                except Exception:  # supported at start, failed now: missing for this sample only
                    continue
                if v is not None:
                    row.update(conv(v))
            row["foreign_processes"] = None if own is None else _opt(lambda h=g.h: self._foreign(h, own))
            rows.append(row)
        return rows


# ----------------------------------------------------------------------------- CPU
def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


def _read_text(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _rapl_scan(pattern: str) -> dict[str, Any]:
    top = [z for z in sorted(glob.glob(pattern)) if _TOP_LEVEL.match(os.path.basename(z))]
    named = [(z, _read_text(os.path.join(z, "name")) or os.path.basename(z)) for z in top]
    excluded = [n for _, n in named if n.startswith("psys")]
    named = [(z, n) for z, n in named if not n.startswith("psys")]
    zones, unreadable = [], []
    for z, n in named:
        if _read_int(os.path.join(z, "energy_uj")) is None:
            unreadable.append(n)  # since Linux 5.10 energy_uj is root-only (CVE-2020-8694)
        else:
            zones.append({"path": z, "name": n, "max_uj": _read_int(os.path.join(z, "max_energy_range_uj"))})
    return {"zones": zones, "excluded": excluded, "unreadable": unreadable}


class Rapl:
    """RAPL package energy, unwrapped at the source: per zone, a reading below the previous one
    adds the zone's max_energy_range_uj (read once) to its offset, so the sum never goes back. A
    zone without a readable range adds its previous reading instead (the counter taken as reset):
    a lower bound, and the sidecar says the range was unknown."""

    def __init__(self, pattern: str = RAPL_GLOB):
        scan = _rapl_scan(pattern)
        self.zones, self.excluded, self.unreadable = scan["zones"], scan["excluded"], scan["unreadable"]
        self.files = [os.path.join(z["path"], "energy_uj") for z in self.zones]
        self.last: list[int | None] = [None] * len(self.zones)
        self.offset = [0] * len(self.zones)
        self.wraps = 0

    def read_j(self) -> float | None:
        if not self.zones:
            return None
        total = 0
        for i, f in enumerate(self.files):
            raw = _read_int(f)
            if raw is None:
                return None
            last = self.last[i]
            if last is not None and raw < last:
                self.offset[i] += self.zones[i]["max_uj"] or last
                self.wraps += 1
            self.last[i] = raw
            total += raw + self.offset[i]
        return total / 1e6

    def meta(self) -> dict[str, Any]:
        return {"readable": bool(self.zones), "zones": [z["name"] for z in self.zones],
                "paths": [z["path"] for z in self.zones],
                "max_energy_range_uj": [z["max_uj"] for z in self.zones],
                "excluded": self.excluded, "unreadable": self.unreadable, "wraps": self.wraps}


PSS_EVERY = 10  # samples between PSS reads (smaps_rollup walks the tree's page tables: ~2 Hz at 20 Hz)
PSS_BUDGET = 0.02  # the PSS reads' share of the sampler's time at most: an engine holding tens of GiB
                   # is read every few seconds rather than cost the host a core (tests/perf/bench_sampler.py)
# samples between re-reads of which processes make up the server's tree (psutil's children() reads
# every process's /proc/PID/stat to find parents: the sampler's largest cost at 20 Hz). Between them
# the known processes are read alone; a child born since is counted, with all its CPU so far, at the
# next re-read; one born and gone in between is in its parent's reaped-children time at once.
TREE_EVERY = 10
FOREIGN_EVERY = 20  # samples between walks of every process on the host, naming who took foreign CPU (~1 Hz)
FOREIGN_TOP = 5  # the heaviest foreign processes recorded per walk
FOREIGN_MIN_S = 0.005  # CPU seconds a process must have used since the last walk to be named
FOREIGN_BUDGET = 0.02  # the walks' share of the sampler's time at most: on a host with thousands of processes
                       # (a walk of ~220 takes ~22 ms here) the walks space out rather than cost the samples


def _within_budget(fn: Callable[[], Any], budget: float) -> tuple[Any, float]:
    """``fn()``, and the ``time.monotonic()`` before which the next such call would take more than
    ``budget`` of the time: its CPU (not the time a busy host kept it waiting) over ``budget``."""
    start, cpu = time.monotonic(), time.thread_time()
    out = fn()
    return out, start + (time.thread_time() - cpu) / budget


def affinity_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def _online_cpus() -> list[int] | None:
    """CPU numbers in /proc/stat's order (psutil's per-CPU list skips offline CPUs)."""
    text = _read_text("/sys/devices/system/cpu/online")
    if not text:
        return None
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


class CpuSampler:
    source = "cpu"

    def __init__(self, pid: int | None = None, rapl_pattern: str = RAPL_GLOB, client_pid: int | None = None,
                 cpus: list[int] | None = None):
        import psutil

        self.psutil = psutil
        self.proc = psutil.Process(pid) if pid else None
        self.server_group = _group_led_by(pid)  # the followed server's process group: reaped if the parent dies
        self.me = psutil.Process()
        self.client = psutil.Process(client_pid) if client_pid else None
        self.rapl = Rapl(rapl_pattern)
        self.zones = [z["path"] for z in self.rapl.zones]
        self.cpus = sorted(cpus) if cpus is not None else affinity_cpus()
        self.cores = len(self.cpus)
        online = _online_cpus()
        pos = {c: i for i, c in enumerate(online)} if online else {c: c for c in self.cpus}
        self.positions = [pos[c] for c in self.cpus if c in pos]  # indices into cpu_times(percpu=True)
        self.k = 0
        self.tree: list[Any] | None = None  # the server's processes as last read (TREE_EVERY)
        self.client_procs: list[Any] = []  # the load generator's shard workers (add_client)
        self.client_seen: dict[int, float] = {}  # their last CPU seconds
        self.foreign_seen: dict[int, tuple[float, float]] | None = None  # pid -> (create time, CPU seconds)
        self.foreign_walk_t = 0.0
        self.walk_after = 0.0  # time.monotonic() before which no walk starts (FOREIGN_BUDGET)
        self.pss_after = 0.0  # and no PSS read (PSS_BUDGET)

    def follow(self, pid: int) -> None:
        """From now on, the server process tree is the one under ``pid`` (a gone pid: none)."""
        self.server_group = _group_led_by(pid)
        self.tree = None
        try:
            self.proc = self.psutil.Process(pid)
        except self.psutil.Error:
            self.proc = None

    def _busy(self) -> tuple[float, float]:
        """Busy and steal seconds summed over the sampled CPUs. Steal (time the hypervisor ran
        another guest on this one's virtual CPU) counts as busy: it is CPU this run could not have."""
        per = self.psutil.cpu_times(percpu=True)
        busy = steal = 0.0
        for i in self.positions:
            if i < len(per):
                ct = per[i]
                st = getattr(ct, "steal", 0)
                busy += ct.user + ct.nice + ct.system + getattr(ct, "irq", 0) + getattr(ct, "softirq", 0) + st
                steal += st
        return busy, steal

    def _tree(self, pss: bool, members: bool = True):
        """CPU seconds, RSS and (when pss) PSS summed over the server's process tree; PSS is None
        when any process's could not be read (a partial sum would read as a drop). ``members``:
        re-read which processes the tree has (else the ones last read, ``TREE_EVERY``).

        A process's CPU seconds include those of its children that ended and were reaped: a
        short-lived helper (a compiler run by a JIT, a worker pool's process) leaves the tree with
        the CPU it used, and without them the server's counter would drop by that much and the
        time would read as another job's (foreign CPU)."""
        if self.proc is None:
            return None, None, None
        cpu, rss, pss_sum = 0.0, 0, 0 if pss else None
        if members or self.tree is None:
            try:
                self.tree = [self.proc] + self.proc.children(recursive=True)
            except self.psutil.Error:
                self.tree = None
                return None, None, None
        for p in self.tree:
            try:
                t = p.cpu_times()
                cpu += t.user + t.system + t.children_user + t.children_system
                m = None
                if pss_sum is not None:
                    try:
                        m = p.memory_full_info()  # /proc/PID/smaps_rollup, and statm's RSS
                        pss_sum += m.pss
                    except (self.psutil.AccessDenied, AttributeError, OSError):
                        pss_sum = None
                rss += (m or p.memory_info()).rss
            except self.psutil.Error:  # gone since children(): its CPU is in its parent's reaped-children time
                if p is self.proc:
                    return None, None, None
                continue
        return cpu, rss, pss_sum

    def pids(self) -> set[int]:
        """The benchmark's own processes: the server tree, the client and this sampler."""
        out = {self.me.pid} | ({self.client.pid} if self.client else set())
        if self.proc is not None:
            try:
                out |= {self.proc.pid} | {p.pid for p in self.proc.children(recursive=True)}
            except self.psutil.Error:
                pass
        return out

    def add_client(self, pid: int) -> None:
        """From now on, ``pid`` (a load-generator shard worker) is part of the client."""
        try:
            self.client_procs.append(self.psutil.Process(pid))
        except self.psutil.Error:
            pass

    def _client_cpu(self):
        """CPU seconds of the client (the load test's process, its own threads, not its children:
        the server is one; and its shard workers, ``add_client``) and of this sampler. A worker that
        ended keeps its last reading, so the counter never drops."""
        total = 0.0
        for p in (self.me, self.client):
            if p is None:
                continue
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except self.psutil.Error:
                return None
        for p in list(self.client_procs):
            try:
                t = p.cpu_times()
                self.client_seen[p.pid] = t.user + t.system
            except self.psutil.Error:
                continue
        return total + sum(self.client_seen.values())

    def _walk(self) -> str | None:
        top, self.walk_after = _within_budget(
            lambda: _opt(lambda: self._foreign_top(self.pids() | {p.pid for p in self.client_procs})), FOREIGN_BUDGET)
        return top

    def _foreign_top(self, own: set[int]) -> str:
        """The processes outside the benchmark (kernel threads included) that used the most CPU
        since the last walk, as JSON ``[[name, pid, cpu_s], ...]``, heaviest first: who the foreign
        CPU was. A process's CPU includes that of the children it reaped, so a helper born and gone
        between two walks shows under its parent (one seen by a walk before it ended may then count
        twice, once alone and once in its parent). A process born since the last walk counts all
        its CPU time. The first walk only takes the baseline ("[]")."""
        now = time.time()
        seen: dict[int, tuple[float, float]] = {}
        used = []
        for p in self.psutil.process_iter(["name", "cpu_times", "create_time"]):
            info = p.info
            ct = info.get("cpu_times")
            if ct is None or p.pid in own:
                continue
            # with the children it reaped: a workflow manager's or a build's short-lived helpers (a
            # solver, a compiler) are born and gone between two walks, and show under their parent
            cpu_s = ct.user + ct.system + getattr(ct, "children_user", 0.0) + getattr(ct, "children_system", 0.0)
            born = info.get("create_time") or 0.0
            seen[p.pid] = (born, cpu_s)
            if self.foreign_seen is None:
                continue
            prev = self.foreign_seen.get(p.pid)
            if prev is not None and prev[0] == born:
                d = cpu_s - prev[1]
            elif born >= self.foreign_walk_t - 1.0:  # born since the last walk (create_time has jiffy resolution)
                d = cpu_s
            else:
                d = 0.0
            if d >= FOREIGN_MIN_S:
                used.append((info.get("name") or "?", p.pid, round(d, 3)))
        self.foreign_seen, self.foreign_walk_t = seen, now
        used.sort(key=lambda u: -u[2])
        return json.dumps(used[:FOREIGN_TOP])

    def _rapl_j(self):
        return self.rapl.read_j()

    def meta(self) -> dict[str, Any]:
        return {"cpu_count": self.cores, "cpus": self.cpus, "pss_every": PSS_EVERY, "pss_budget": PSS_BUDGET,
                "tree_every": TREE_EVERY, "rapl": self.rapl.meta()}

    def sample(self, t_ns: int) -> list[dict[str, Any]]:
        vm = self.psutil.virtual_memory()
        members = self.k % TREE_EVERY == 0
        if self.k % PSS_EVERY == 0 and time.monotonic() >= self.pss_after:
            (server_cpu, server_rss, server_pss), self.pss_after = _within_budget(
                lambda: self._tree(pss=True, members=members), PSS_BUDGET)
        else:
            server_cpu, server_rss, server_pss = self._tree(pss=False, members=members)
        walk = self.k % FOREIGN_EVERY == 0 and time.monotonic() >= self.walk_after
        self.k += 1
        busy, steal = self._busy()
        return [{
            "t_ns": t_ns, "device": "cpu",
            "cpu_busy_s": busy,
            "cpu_steal_s": steal,
            "server_cpu_s": server_cpu,
            "client_cpu_s": self._client_cpu(),
            "foreign_top": self._walk() if walk else None,
            "server_rss_bytes": server_rss,
            "server_pss_bytes": server_pss,
            "mem_used_bytes": int(vm.total - vm.available),
            "energy_j": self._rapl_j(),
        }]


# ----------------------------------------------------------------------------- loop
def sidecar_path(out: str | Path) -> Path:
    return Path(out).with_suffix(".json")


def run_sampler(out: str, interval_s: float, pid: int | None = None, nvml=None,
                max_duration_s: float | None = None, announce=None, client_pid: int | None = None,
                devices: list[int] | None = None, rapl_pattern: str = RAPL_GLOB, pid_lines=None,
                parent: int | None = None, orphan_grace_s: float = 10.0) -> int:
    """Sample until SIGTERM/SIGINT (or max_duration_s); write Parquet and its JSON sidecar; return
    the sample count. client_pid: the load generator's process (default: none; the CLI passes its
    parent). devices: NVML indices of the GPUs to sample (default: all). pid_lines: a text stream
    (the CLI's stdin with --pid-stdin) whose lines name the server process to follow from then on:
    the sampler starts before the server, to record the baseline and the start-up.

    parent: the pid of the load test that started this sampler (the CLI's parent). Should it die
    (SIGKILLed: its death signal, or, as a fallback, this process found re-parented at a sample),
    the sampler stops at once, writes nothing (no job will read it) and reaps the server it was
    following: SIGTERM to its process group, SIGKILL after ``orphan_grace_s``, so that an engine's
    own children, which no death signal reaches, go too. Returns the sample count."""
    import pandas as pd

    nv = load_nvml(nvml)
    cpu = CpuSampler(pid, rapl_pattern=rapl_pattern, client_pid=client_pid)
    samplers: list[Any] = [cpu]
    gpu = None
    if nv is not None and nv.nvmlDeviceGetCount() > 0:
        gpu = NvmlSampler(nv, own_pids=cpu.pids, devices=devices)
        samplers.insert(0, gpu)
    elif devices:
        raise ValueError(f"--devices {','.join(map(str, devices))}: no NVIDIA GPU is visible to NVML here")
    rows: list[dict[str, Any]] = []
    times: list[int] = []
    stop = False
    told_to_stop = threading.Event()  # the parent's own "stop" line: an orderly end, not its death
    if pid_lines is not None:
        threading.Thread(target=follow_pids, args=(cpu, pid_lines, told_to_stop), daemon=True,
                         name="pid-stdin").start()

    def _stop(*_):
        nonlocal stop
        stop = True

    old = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    interval_ns = int(interval_s * 1e9)
    start = time.monotonic_ns()
    k = 0
    try:
        while not stop:
            if parent_gone(parent):
                break
            t = time.monotonic_ns()
            for s in samplers:
                rows.extend(s.sample(t))
            times.append(t)
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
        # stopping already: a further SIGTERM (a dying parent's death signal comes once per thread of it
        # that the sampler is handed to on its way out) must not cut the reaping or the writing short
        for sig in old:
            signal.signal(sig, signal.SIG_IGN)
        try:
            if stop and pid_lines is not None and not told_to_stop.is_set():
                # SIGTERM with no "stop" line first: the death signal of a parent whose forking thread
                # died before its other threads, which keep its pid a moment longer: wait for it to go
                deadline = time.monotonic() + 2.0
                while not parent_gone(parent) and time.monotonic() < deadline:
                    time.sleep(0.01)
            if parent_gone(parent):
                reap_group(cpu.server_group, orphan_grace_s)
                return k
            df = pd.DataFrame(rows, columns=None if rows else ["t_ns", "device"])
            df["source"] = df["device"].map(lambda d: "nvml" if d.startswith("gpu") else "cpu")
            df["t_ns"] = df["t_ns"].astype("int64")
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            df.to_parquet(out, index=False)
            meta = {"interval_s": interval_s, **sampling(times), "nvml": nv is not None,
                    "gpus": gpu.meta() if gpu is not None else [], "cpu": cpu.meta()}
            sidecar_path(out).write_text(json.dumps(meta, indent=1) + "\n")
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)
    return k


def _group_led_by(pid: int | None) -> int | None:
    """``pid``'s process group if ``pid`` leads it (a server started in its own session), else None."""
    try:
        return pid if pid and os.getpgid(pid) == pid else None
    except OSError:
        return None


def reap_group(pgid: int | None, grace_s: float) -> None:
    """SIGTERM the process group ``pgid``, then SIGKILL what is left of it after ``grace_s``; its
    leader may be gone already (an engine that obeyed its death signal) while its children are not."""
    from tokenbench.engines.server import _signal_group, _wait_group_gone

    if pgid is None:
        return
    _signal_group(pgid, signal.SIGTERM)
    if not _wait_group_gone(pgid, grace_s):
        _signal_group(pgid, signal.SIGKILL)
        _wait_group_gone(pgid, 5.0)


def follow_pids(cpu: CpuSampler, lines, told_to_stop: threading.Event | None = None) -> None:
    """Point ``cpu`` at each server pid read from ``lines`` (one per line) as it arrives; "client
    PID" adds a load-generator worker to the client; a "stop" line (the parent's, just before its
    SIGTERM) sets ``told_to_stop``."""
    for line in lines:
        line = line.strip()
        if line.isdigit():
            cpu.follow(int(line))
        elif line.startswith("client ") and line[7:].isdigit():
            cpu.add_client(int(line[7:]))
        elif line == "stop" and told_to_stop is not None:
            told_to_stop.set()


def parse_devices(text: str | None) -> list[int] | None:
    """``--devices 0,2`` -> [0, 2]; None or "all" -> None (every GPU)."""
    if text is None or text.strip().lower() == "all":
        return None
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--devices {text!r}: expected NVML indices like 0,2") from None
    if len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"--devices {text!r}: an index is repeated")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tokenbench.telemetry.sampler")
    ap.add_argument("--out", required=True)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--pid", type=int, default=None, help="server process whose tree's CPU/memory to record")
    ap.add_argument("--max-duration", type=float, default=None)
    ap.add_argument("--pid-stdin", action="store_true",
                    help="read the server's pid from stdin when it is launched (the sampler starts first)")
    ap.add_argument("--devices", type=parse_devices, default=None,
                    help="NVML indices of the GPUs to sample, e.g. 0,2 (tokenbench.telemetry.devices maps "
                         "CUDA_VISIBLE_DEVICES to these); default all")
    ap.add_argument("--orphan-grace", type=float, default=10.0,
                    help="seconds the server's group gets after SIGTERM, should the parent die, before SIGKILL")
    args = ap.parse_args(argv)

    def announce():
        print("ready", flush=True)

    run_sampler(args.out, args.interval, args.pid, max_duration_s=args.max_duration, announce=announce,
                client_pid=os.getppid(), devices=args.devices, pid_lines=sys.stdin if args.pid_stdin else None,
                parent=os.getppid(), orphan_grace_s=args.orphan_grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
