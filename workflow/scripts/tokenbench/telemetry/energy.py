"""Energy over exact windows, from cumulative counters, cross-checked against power samples.

A phase's tokens are counted inside its issuing window [start, end); its energy must be too. The
telemetry sampler reads cumulative counters (NVML's total-energy counter per GPU, in mJ since the
driver loaded; RAPL package energy, unwrapped by the sampler), so the energy of any window is the
counter interpolated at the window's two ends, not a sum of samples that happen to fall inside it.

Where a GPU has no counter, its energy is the trapezoid integral of its power samples:
``power_instant_w`` (NVML field ``NVML_FI_DEV_POWER_INSTANT``) where the driver has it, else
``power_usage_w`` (``nvmlDeviceGetPowerUsage``: a 1 s moving average on Ampere except GA100, and
newer; instantaneous on older GPUs). Where both exist, the integral is kept as a cross-check and a
disagreement over ``CHECK_TOLERANCE`` is flagged: a 1 s-averaged trace integrates to the right energy
over long windows but lags by ~0.5 s, so a flag on a short window says the power trace cannot resolve
it.

Old recordings (before the sensors were split) carry one ``power_w`` column per GPU: it reads as
``power_usage_w``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

CHECK_TOLERANCE = 0.05  # counter against power integral: |integral − counter| ÷ counter above this is flagged
SLACK_INTERVALS = 2  # a window's ends may lie this many sampling intervals beyond the samples (no further)

# the power signal a GPU's integral is taken from, best first, and what each one is
POWER_SIGNALS = (("power_instant_w", "NVML instantaneous power (field value)"),
                 ("power_usage_w", "NVML power usage (a 1 s average on Ampere and newer)"),
                 ("power_w", "NVML power usage (a 1 s average on Ampere and newer)"))
COUNTER_SOURCE = {"gpu": "NVML energy counter", "cpu": "RAPL package energy"}


def cumulative(values: np.ndarray) -> np.ndarray:
    """A counter's running increase from its first sample: a drop is a reset (counted from 0, as
    Prometheus does), so no wrap or driver reload turns into negative or enormous energy."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return v
    d = np.diff(v)
    return np.concatenate([[0.0], np.cumsum(np.where(d >= 0, d, v[1:]))])


def integral(t_ns: np.ndarray, y: np.ndarray, t0: int, t1: int) -> float:
    """Trapezoid integral of y over [t0, t1] (y interpolated linearly at the ends), in y·seconds."""
    inside = (t_ns > t0) & (t_ns < t1)
    t = np.concatenate([[t0], t_ns[inside], [t1]]).astype(float)
    v = np.interp(t, t_ns.astype(float), y)
    return float(np.trapezoid(v, t) / 1e9)


def update_interval_ms(t_ns: np.ndarray, values: np.ndarray) -> float | None:
    """Median time between changes of a sampled signal: its effective resolution (a counter that
    updates every 100 ms sampled at 20 Hz changes every second sample)."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    t, v = t_ns[ok], v[ok]
    changes = t[1:][np.diff(v) != 0]
    if changes.size < 3:
        return None
    return float(np.median(np.diff(changes)) / 1e6)


def sampling(t_ns: np.ndarray) -> dict[str, Any]:
    """The achieved sampling interval: p50, p99 and the largest gap (ms), over the distinct sample
    times (several devices read at one sample share its time)."""
    t = np.unique(np.asarray(t_ns, dtype=np.int64))
    if t.size < 2:
        return {"samples": int(t.size), "interval_p50_ms": None, "interval_p99_ms": None, "max_gap_ms": None}
    dt = np.diff(t) / 1e6
    return {"samples": int(t.size), "interval_p50_ms": float(np.percentile(dt, 50)),
            "interval_p99_ms": float(np.percentile(dt, 99)), "max_gap_ms": float(dt.max())}


@dataclass
class DeviceTrace:
    """One device's energy-related samples: a counter (J, cumulative) and/or a power signal (W)."""
    device: str
    t_ns: np.ndarray
    counter_t_ns: np.ndarray | None = None
    counter_j: np.ndarray | None = None  # cumulative(), from the first counter sample
    power_t_ns: np.ndarray | None = None
    power_w: np.ndarray | None = None
    power_signal: str | None = None  # the column power_w came from
    resolution: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "gpu" if self.device.startswith("gpu") else "cpu"

    @staticmethod
    def _covered(t: np.ndarray | None, t0: int, t1: int) -> bool:
        """The samples span the window, give or take SLACK_INTERVALS sampling intervals at each end
        (there the signal is held at its first or last value: nothing is extrapolated)."""
        if t is None or t.size < 2 or t1 <= t0:
            return False
        slack = SLACK_INTERVALS * float(np.median(np.diff(t)))
        return t[0] <= t0 + slack and t[-1] >= t1 - slack

    def counter_energy(self, t0: int, t1: int) -> float | None:
        if not self._covered(self.counter_t_ns, t0, t1):
            return None
        a, b = np.interp([t0, t1], self.counter_t_ns.astype(float), self.counter_j)
        return float(b - a)

    def power_energy(self, t0: int, t1: int) -> float | None:
        if not self._covered(self.power_t_ns, t0, t1):
            return None
        return integral(self.power_t_ns, self.power_w, t0, t1)

    def energy(self, t0: int, t1: int) -> dict[str, Any]:
        """This device's energy over [t0, t1]: from the counter where it has one, else the power
        integral; with the cross-check where it has both."""
        counter, power = self.counter_energy(t0, t1), self.power_energy(t0, t1)
        out: dict[str, Any] = {"device": self.device, "energy_j": None, "source": None,
                               "power_integral_j": power, "counter_vs_power_pct": None, "check_flagged": None}
        if counter is not None:
            out.update(energy_j=counter, source=COUNTER_SOURCE[self.kind])
            if power is not None and counter > 0:
                out["counter_vs_power_pct"] = (power - counter) / counter * 100
                out["check_flagged"] = bool(abs(power - counter) > CHECK_TOLERANCE * counter)
        elif power is not None:
            out.update(energy_j=power, source=dict(POWER_SIGNALS)[self.power_signal] + " integral")
        seconds = (t1 - t0) / 1e9
        out["power_w"] = out["energy_j"] / seconds if (out["energy_j"] is not None and seconds > 0) else None
        return out


def _finite_series(t: np.ndarray, v: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    x = pd.to_numeric(v, errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(x)
    return (t[ok], x[ok]) if ok.sum() >= 2 else None


def device_traces(telemetry: pd.DataFrame) -> dict[str, DeviceTrace]:
    """Per device with an energy counter or power samples, its trace (GPUs and the CPU's RAPL)."""
    out: dict[str, DeviceTrace] = {}
    if telemetry is None or not len(telemetry) or "device" not in telemetry:
        return out
    for device, df in telemetry.groupby("device", sort=True):
        device = str(device)
        df = df.sort_values("t_ns")
        t = df["t_ns"].to_numpy(dtype=np.int64)
        tr = DeviceTrace(device, t)
        if "energy_j" in df:
            s = _finite_series(t, df["energy_j"])
            if s is not None:
                tr.counter_t_ns, tr.counter_j = s[0], cumulative(s[1])
                tr.resolution["energy_counter_update_ms"] = update_interval_ms(*s)
        if device.startswith("gpu"):
            for col, _ in POWER_SIGNALS:
                s = _finite_series(t, df[col]) if col in df else None
                if s is not None:
                    if tr.power_w is None:
                        tr.power_t_ns, tr.power_w, tr.power_signal = s[0], s[1], col
                    tr.resolution[f"{col.removesuffix('_w')}_update_ms"] = update_interval_ms(*s)
        if tr.counter_j is not None or tr.power_w is not None:
            out[device] = tr
    return out


class EnergyMeter:
    """Energy of any window of a cell: the GPUs' (summed) where the telemetry has GPUs, else the
    CPU package's (RAPL), else none. ``window`` gives the total and each device's share."""

    def __init__(self, telemetry: pd.DataFrame):
        traces = device_traces(telemetry)
        sampled = sorted(map(str, telemetry["device"].unique())) if (telemetry is not None and "device" in telemetry) \
            else []
        # every GPU sampled counts, measurable or not: one without any power signal makes the total unknown
        self.devices = [d for d in sampled if d.startswith("gpu")] or [d for d in sampled if d == "cpu" and d in traces]
        self.traces = {d: traces[d] for d in self.devices if d in traces}

    def window(self, t0: int | None, t1: int | None) -> dict[str, Any]:
        """Energy (J), mean power (W) and source over [t0, t1]; per device; the counter cross-check."""
        none = {"energy_j": None, "power_w": None, "power_source": None, "per_device": [],
                "counter_vs_power_pct": None, "energy_check_flagged": None}
        if not self.traces or t0 is None or t1 is None or t1 <= t0:
            return none
        per = [self.traces[d].energy(t0, t1) if d in self.traces else
               {"device": d, "energy_j": None, "power_w": None, "source": None} for d in self.devices]
        if any(p["energy_j"] is None for p in per):
            return {**none, "per_device": per}
        joules = float(sum(p["energy_j"] for p in per))
        sources = sorted({p["source"] for p in per})
        checks = [p["counter_vs_power_pct"] for p in per if p.get("counter_vs_power_pct") is not None]
        worst = max(checks, key=abs) if checks else None
        return {"energy_j": joules, "power_w": joules / ((t1 - t0) / 1e9), "power_source": "; ".join(sources),
                "per_device": per, "counter_vs_power_pct": worst,
                "energy_check_flagged": any(bool(p.get("check_flagged")) for p in per) if checks else None}

    def quality(self, telemetry: pd.DataFrame) -> dict[str, Any]:
        """Per device: the achieved sampling interval and each signal's effective resolution."""
        out = {}
        for device, df in telemetry.groupby("device", sort=True):
            tr = self.traces.get(str(device))
            out[str(device)] = {**sampling(df["t_ns"].to_numpy(dtype=np.int64)),
                                **(tr.resolution if tr is not None else {})}
        return out
