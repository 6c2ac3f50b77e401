"""A fake pynvml module at the NVML boundary, driven by recorded-sample fixtures.

Only the library is fake: ``FakeHost(...).module()`` is a module object with pynvml's names
(constants, ``NVMLError`` with ``.value``, the ``nvmlDevice*`` calls the sampler makes, field values
as ``c_nvmlFieldValue_t``-like records whose ``value`` is a union: only the member ``valueType``
names holds the number, the others hold garbage as a C union read through the wrong member would).

Each GPU answers from a trace: rows recorded every ``DT`` s of an idle -> ramp -> saturated -> idle
load (the figures are those of the real parts: idle and board power from the datasheets, the
1 s trailing average that ``nvmlDeviceGetPowerUsage`` returns on Ampere-but-GA100 and newer, an
energy counter that integrates the instantaneous draw from a large since-driver-load value, and
ticks in 100 ms steps). The trace row is chosen by the fake's clock: ``host.at(t)`` in seconds,
or ``clock="monotonic"`` to follow wall time from the first call.
"""

from __future__ import annotations

import time
import types
import uuid as uuidlib
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

DT = 0.02  # s between recorded rows
NVML_SUCCESS, NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_NOT_FOUND = 0, 3, 6
_ERRORS = {NVML_ERROR_NOT_SUPPORTED: "Not Supported", NVML_ERROR_NOT_FOUND: "Not Found"}
ARCH = {"pascal": 4, "volta": 5, "ampere": 7, "hopper": 9}


class NVMLError(Exception):
    def __init__(self, value):
        super().__init__(value)
        self.value = value

    def __str__(self):
        return _ERRORS.get(self.value, f"NVML error {self.value}")


def load_trace(idle_w, busy_w, *, averaged, seed=0, sm_idle=345, sm_busy=1980, mem_total=80 * 2**30,
               phases=(("idle", 2.0), ("ramp", 1.0), ("saturated", 4.0), ("idle", 3.0)),
               energy_start_mj=8_640_000_000, reset_at_s=None):
    """Rows (dicts) every DT s: util, memory, instantaneous and reported power (mW), energy (mJ),
    temperature, SM clock, clock-event reasons."""
    rng = np.random.default_rng(seed)
    util = np.concatenate([
        np.zeros(int(d / DT)) if kind == "idle" else
        np.linspace(0, 100, int(d / DT)) if kind == "ramp" else np.full(int(d / DT), 100.0)
        for kind, d in phases])
    n = len(util)
    # the draw follows utilisation within ~50 ms, with ±4 % ripple under load (kernel boundaries)
    target = idle_w + (busy_w - idle_w) * util / 100 * (1 + 0.04 * rng.standard_normal(n) * (util > 0))
    inst = np.empty(n)
    inst[0] = target[0]
    for i in range(1, n):
        inst[i] = inst[i - 1] + (target[i] - inst[i - 1]) * 0.35
    inst += rng.normal(0, 0.6, n)  # sensor noise, W
    window = int(round(1.0 / DT))
    c = np.concatenate([[0.0], np.cumsum(inst)])
    avg = np.array([(c[i + 1] - c[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(n)])
    energy = energy_start_mj + np.cumsum(inst * DT * 1000)  # mJ
    step = int(round(0.1 / DT))
    energy = energy[(np.arange(n) // step) * step]  # the counter ticks every 100 ms
    if reset_at_s is not None:  # driver reload: the counter starts again from 0
        k = int(reset_at_s / DT)
        energy[k:] -= energy[k] - inst[k] * DT * 1000
    sm = np.where(util > 0, sm_busy - (util > 99) * 225, sm_idle)  # power-capped at saturation
    temp = 33 + 40 * np.convolve(util / 100, np.ones(50) / 50, mode="full")[:n]
    return [{"util": int(util[i]), "mem_util": int(util[i] * 0.62), "mem_used": int(mem_total * (0.02 + 0.9 * (util[:i + 1] > 0).any())),
             "power_instant_mw": int(inst[i] * 1000), "power_usage_mw": int((avg[i] if averaged else inst[i]) * 1000),
             "energy_mj": int(energy[i]), "temp": int(temp[i]), "sm": int(sm[i]), "reasons": 0x4 if util[i] > 99 else 0x1}
            for i in range(n)]


@dataclass
class Gpu:
    name: str
    pci_device_id: int  # device id << 16 | vendor 0x10DE
    arch: str
    idle_w: float
    busy_w: float
    mem_total: int
    mig: bool | None = None  # None: not MIG-capable (nvmlDeviceGetMigMode says NOT_SUPPORTED)
    energy: bool = True
    instant_field: bool = True
    instant_value_type: int = 1  # NVML_VALUE_TYPE_UNSIGNED_INT
    averaged: bool = False  # nvmlDeviceGetPowerUsage is a 1 s average
    seed: int = 0
    reset_at_s: float | None = None
    uuid: str = ""
    mig_uuids: list[str] = field(default_factory=list)
    trace: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.uuid = self.uuid or "GPU-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_OID, f"{self.name}/{self.seed}"))
        if self.mig:
            self.mig_uuids = ["MIG-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_OID, f"{self.uuid}/mig{k}")) for k in range(2)]
        self.trace = load_trace(self.idle_w, self.busy_w, averaged=self.averaged, seed=self.seed,
                                mem_total=self.mem_total, reset_at_s=self.reset_at_s)


def h100(seed=0, mig=False, **kw):  # SXM5 80 GB: 700 W board power, ~70 W idle; Hopper averages over 1 s
    return Gpu("NVIDIA H100 80GB HBM3", 0x233010DE, "hopper", 70, 690, 80 * 2**30, mig=mig, averaged=True, seed=seed, **kw)


def a40(seed=0, **kw):  # GA102, 300 W, not MIG-capable; Ampere other than GA100 averages over 1 s
    return Gpu("NVIDIA A40", 0x223510DE, "ampere", 30, 295, 48 * 2**30, averaged=True, seed=seed, **kw)


def a100(seed=0, mig=False, **kw):  # GA100 SXM4 80 GB, 400 W: instantaneous nvmlDeviceGetPowerUsage
    return Gpu("NVIDIA A100-SXM4-80GB", 0x20B210DE, "ampere", 55, 395, 80 * 2**30, mig=mig, seed=seed, **kw)


def v100(seed=0, **kw):  # Volta: energy counter, no NVML_FI_DEV_POWER_INSTANT field
    return Gpu("Tesla V100-SXM2-32GB", 0x1DB510DE, "volta", 40, 295, 32 * 2**30, instant_field=False, seed=seed, **kw)


def p100(seed=0, **kw):  # Pascal: no energy counter (NVML has it from Volta on), no instant field
    return Gpu("Tesla P100-PCIE-16GB", 0x15F810DE, "pascal", 30, 245, 16 * 2**30, energy=False,
               instant_field=False, seed=seed, **kw)


@dataclass(frozen=True)
class Handle:
    gpu: int
    mig: int | None = None


class FakeHost:
    """A host's GPUs as NVML reports them. ``module()`` is the pynvml stand-in."""

    def __init__(self, gpus: list[Gpu], clock=None, driver="550.54.15"):
        self.gpus, self.driver = gpus, driver
        self.t, self._t0 = 0.0, None
        self.clock = clock
        self.calls: dict[str, int] = {}

    def at(self, t_s: float) -> "FakeHost":
        self.t = t_s
        return self

    def row(self, h: Handle) -> dict:
        if self.clock == "monotonic":
            now = time.monotonic()
            self._t0 = self._t0 if self._t0 is not None else now
            t = now - self._t0
        else:
            t = self.t
        trace = self.gpus[h.gpu].trace
        return trace[min(int(t / DT), len(trace) - 1)]

    def gpu(self, h: Handle) -> Gpu:
        return self.gpus[h.gpu]

    # --------------------------------------------------------------- the pynvml surface
    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlSystemGetDriverVersion(self):
        return self.driver

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < len(self.gpus):
            raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
        return Handle(i)

    def nvmlDeviceGetName(self, h):
        return self.gpu(h).name

    def nvmlDeviceGetUUID(self, h):
        g = self.gpu(h)
        return g.uuid if h.mig is None else g.mig_uuids[h.mig]

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(pciDeviceId=self.gpu(h).pci_device_id, busId=f"00000000:{0x18 + h.gpu:02X}:00.0")

    def nvmlDeviceGetArchitecture(self, h):
        return ARCH[self.gpu(h).arch]

    def nvmlDeviceGetMigMode(self, h):
        mig = self.gpu(h).mig
        if mig is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return [int(mig), int(mig)]

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        if self.gpu(h).mig is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, k):
        if k >= len(self.gpu(h).mig_uuids):
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return Handle(h.gpu, k)

    def nvmlDeviceGetMemoryInfo(self, h):
        g = self.gpu(h)
        used = self.row(h)["mem_used"]
        return SimpleNamespace(total=g.mem_total, used=used, free=g.mem_total - used)

    def nvmlDeviceGetUtilizationRates(self, h):
        self._count("nvmlDeviceGetUtilizationRates")
        if self.gpu(h).mig:  # MIG mode: NVML reports no GPU-level utilisation
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        r = self.row(h)
        return SimpleNamespace(gpu=r["util"], memory=r["mem_util"])

    def nvmlDeviceGetPowerUsage(self, h):
        return self.row(h)["power_usage_mw"]

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self._count("nvmlDeviceGetTotalEnergyConsumption")
        if not self.gpu(h).energy:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return self.row(h)["energy_mj"]

    def nvmlDeviceGetFieldValues(self, h, field_ids):
        self._count("nvmlDeviceGetFieldValues")
        g, out = self.gpu(h), []
        for fid in field_ids:
            ok = fid == NVML_FI_DEV_POWER_INSTANT and g.instant_field
            out.append(SimpleNamespace(
                fieldId=fid, scopeId=0, timestamp=int(time.time() * 1e6), latencyUsec=0,
                valueType=g.instant_value_type if ok else 0,
                nvmlReturn=NVML_SUCCESS if ok else NVML_ERROR_NOT_SUPPORTED,
                value=_union(g.instant_value_type, self.row(h)["power_instant_mw"] if ok else 0)))
        return out

    def nvmlDeviceGetTemperature(self, h, kind):
        return self.row(h)["temp"]

    def nvmlDeviceGetClockInfo(self, h, kind):
        return self.row(h)["sm"]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self.row(h)["reasons"]

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return []

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return []

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def module(self, old_pynvml: bool = False) -> types.ModuleType:
        """The fake pynvml. old_pynvml: a release from before NVML_FI_DEV_POWER_INSTANT,
        nvmlDeviceGetFieldValues and nvmlDeviceGetArchitecture."""
        m = types.ModuleType("pynvml")
        for k, v in CONSTANTS.items():
            setattr(m, k, v)
        m.NVMLError = NVMLError
        for name in dir(self):
            if name.startswith("nvml"):
                setattr(m, name, getattr(self, name))
        if old_pynvml:
            for name in ("NVML_FI_DEV_POWER_INSTANT", "nvmlDeviceGetFieldValues", "nvmlDeviceGetArchitecture",
                         "nvmlDeviceGetCurrentClocksEventReasons"):
                delattr(m, name)
        m.host = self
        return m


NVML_FI_DEV_POWER_INSTANT = 186
CONSTANTS = {"NVML_SUCCESS": NVML_SUCCESS, "NVML_ERROR_NOT_SUPPORTED": NVML_ERROR_NOT_SUPPORTED,
             "NVML_TEMPERATURE_GPU": 0, "NVML_CLOCK_SM": 1, "NVML_DEVICE_MIG_ENABLE": 1,
             "NVML_FI_DEV_POWER_INSTANT": NVML_FI_DEV_POWER_INSTANT, "NVML_VALUE_TYPE_DOUBLE": 0,
             "NVML_VALUE_TYPE_UNSIGNED_INT": 1, "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG": 3}
_MEMBERS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")


def _union(value_type: int, v: int) -> SimpleNamespace:
    """A c_nvmlValue_t holding v in the member value_type names; every other member reads garbage."""
    garbage = {"dVal": 4.9e-318, "uiVal": 0xDEAD, "ulVal": 0xDEAD << 40, "ullVal": (0xDEAD << 40) | v,
               "sllVal": -1, "siVal": -1, "usVal": 0xBEEF}
    garbage[_MEMBERS[value_type]] = float(v) if value_type == 0 else v
    return SimpleNamespace(**garbage)


class FakeNvml:
    """The older, constant fake other tests subclass (int handles; tests/unit/engines/test_server.py,
    test_hardware.py): n A40s answering fixed values; fail_energy: no energy counter."""
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    def __init__(self, n=2, fail_energy=False):
        self.n, self.calls, self.fail_energy = n, 0, fail_energy

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA A40"

    def nvmlSystemGetDriverVersion(self):
        return "550.54"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=48 * 2**30, used=(20 + h) * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=99, memory=60)

    def nvmlDeviceGetPowerUsage(self, h):
        return 298_900  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if self.fail_energy:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        self.calls += 1
        return 1_000_000 + 300 * self.calls  # mJ

    def nvmlDeviceGetTemperature(self, h, kind):
        return 72

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 1410


def eight_gpu_host(**kw) -> FakeHost:
    return FakeHost([h100(seed=i) for i in range(8)], **kw)
