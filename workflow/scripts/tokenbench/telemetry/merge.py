"""Merge telemetry onto the request timeline, per phase.

Raw telemetry keeps cumulative counters (CPU seconds, joules); here they become rates between
consecutive samples, every sample gets the phase it falls in, and the request side adds what the
client saw at that instant: requests in flight and output tokens per second.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from tokenbench.chunks import Tokens
from tokenbench.telemetry.energy import POWER_SIGNALS

OUTSIDE = ("startup", "teardown")  # before the first phase / after the last phase drained
DRAIN = "drain"  # after a phase stopped issuing, before the next phase starts (or the last drained)
BASELINE = "baseline"  # before the server was launched: the host with no engine (run.json baseline window)
# what merge_telemetry reads of requests.parquet (the wrapper reads only these)
REQUEST_COLUMNS_USED = ["status", "sent_ns", "end_ns", "output_tokens", "chunk_ns"]


def phase_of(t_ns: np.ndarray, marks: list[dict[str, Any]], baseline: tuple[int, int] | None = None) -> np.ndarray:
    """A sample belongs to a phase inside its issuing window [start, end), the window its tokens are
    counted in; from its end to the next phase's start (or its own drain's end) it is the phase's
    drain (DRAIN); before the first phase "startup" (BASELINE inside the ``baseline`` window, before
    the server's launch); after the last drain "teardown"."""
    out = np.full(len(t_ns), OUTSIDE[0], dtype=object)
    if baseline is not None:
        out[(t_ns >= baseline[0]) & (t_ns < baseline[1])] = BASELINE
    if not marks:
        return out
    for i, m in enumerate(marks):
        stop = marks[i + 1]["start_ns"] if i + 1 < len(marks) else m["drained_ns"]
        out[(t_ns >= m["end_ns"]) & (t_ns < stop)] = DRAIN
        out[(t_ns >= m["start_ns"]) & (t_ns < m["end_ns"])] = m["name"]
    out[t_ns >= marks[-1]["drained_ns"]] = OUTSIDE[1]
    return out


def baseline_window(run: dict[str, Any]) -> tuple[int, int] | None:
    """run.json's baseline window (monotonic ns): the sampler running before the server's launch."""
    b = run.get("baseline") or {}
    return (int(b["start_ns"]), int(b["end_ns"])) if b.get("start_ns") is not None and b.get("end_ns") else None


def inflight_at(t_ns: np.ndarray, requests: pd.DataFrame) -> np.ndarray:
    sent = np.sort(requests["sent_ns"].to_numpy(dtype=np.int64))
    ends = requests["end_ns"].astype("Float64").fillna(np.inf).to_numpy(dtype=float)
    ends = np.sort(ends)
    return np.searchsorted(sent, t_ns, side="right") - np.searchsorted(ends, t_ns, side="right")


def rate_from_counter(df: pd.DataFrame, col: str, scale: float = 1.0, min_window_s: float = 0.25,
                      centred: bool = False) -> pd.Series:
    """Rate of a cumulative counter over a trailing window of at least min_window_s (``centred``: a
    window centred on the sample, so the rate lines up in time with gauges sampled at that instant).

    Kernel CPU-time counters tick in 10 ms units: between two 50 ms samples a fully busy core
    reads 40 % or 160 %. Differencing over >= 250 ms keeps that quantisation under 4 %."""
    dt_all = df["t_ns"].diff().median()
    periods = max(1, int(np.ceil(min_window_s * 1e9 / dt_all))) if pd.notna(dt_all) and dt_all > 0 else 1
    dt = df["t_ns"].diff(periods) / 1e9
    dv = df[col].diff(periods)
    rate = dv / dt * scale
    rate[(dv < 0)] = np.nan  # counter wrap or reset: drop the sample, do not invent a value
    return rate.shift(-(periods // 2)) if centred else rate


def gpu_power(df: pd.DataFrame) -> pd.Series:
    """One GPU's power per sample for the timeline: the energy counter's rate where it has one (the
    exact mean over >= 250 ms centred on the sample), else the instantaneous field value, else NVML's power usage (a 1 s
    average on Ampere and newer); an old recording's single ``power_w`` column is power usage."""
    if "energy_j" in df and pd.to_numeric(df["energy_j"], errors="coerce").notna().sum() >= 2:
        return rate_from_counter(df.assign(energy_j=pd.to_numeric(df["energy_j"], errors="coerce")), "energy_j",
                                 centred=True)
    for col, _ in POWER_SIGNALS:
        if col in df and df[col].notna().any():
            return pd.to_numeric(df[col], errors="coerce")
    return pd.Series(np.nan, index=df.index)


def cpus_sampled(run: dict[str, Any]) -> int:
    """The logical CPUs host CPU time was summed over (the sampler's, else the provenance's): the
    CPUs this process may use, so that 100 % means all of them busy."""
    sampled = ((run.get("telemetry") or {}).get("cpu") or {}).get("cpu_count")
    host = run["provenance"]["host"]
    return int(sampled or host.get("logical_cpus") or host["cpu_cores"])


def foreign_shares(df: pd.DataFrame, cores: int) -> pd.Series:
    """Each process walk's foreign processes (the sampler's ``foreign_top``: CPU seconds since the
    previous walk) as % of all cores over the time since that walk, JSON ``[[name, pid, pct], ...]``
    on the walk's row; None elsewhere and on the first walk, which only took the baseline."""
    out = pd.Series(None, index=df.index, dtype=object)
    walks = df.index[df["foreign_top"].notna()]
    prev_t = None
    for i in walks:
        t = int(df.at[i, "t_ns"])
        if prev_t is not None and t > prev_t:
            span = (t - prev_t) / 1e9 * cores
            out.at[i] = json.dumps([[name, pid, cpu_s / span * 100.0] for name, pid, cpu_s in json.loads(df.at[i, "foreign_top"])])
        prev_t = t
    return out


def merge_telemetry(requests: pd.DataFrame, telemetry: pd.DataFrame, run: dict[str, Any],
                    window_s: float = 1.0) -> pd.DataFrame:
    marks = run.get("phases") or []
    cores = cpus_sampled(run)
    t0 = marks[0]["start_ns"] if marks else (int(telemetry["t_ns"].min()) if len(telemetry) else 0)
    parts = []
    for device, df in telemetry.groupby("device", sort=True):
        df = df.sort_values("t_ns").reset_index(drop=True).copy()
        if device == "cpu":
            df["cpu_util_pct"] = rate_from_counter(df, "cpu_busy_s", 100.0 / cores)
            if df["server_cpu_s"].notna().any():
                df["server_cpu_util_pct"] = rate_from_counter(df, "server_cpu_s", 100.0 / cores)
            if "client_cpu_s" in df and df["client_cpu_s"].notna().any():
                df["client_cpu_util_pct"] = rate_from_counter(df, "client_cpu_s", 100.0 / cores)
                # CPU time nobody in the benchmark used: another job competing for the cores
                df["foreign_cpu_pct"] = (df["cpu_util_pct"] - df.get("server_cpu_util_pct", 0.0)
                                         - df["client_cpu_util_pct"]).clip(lower=0)
            if "cpu_steal_s" in df and df["cpu_steal_s"].notna().any():
                df["steal_cpu_pct"] = rate_from_counter(df, "cpu_steal_s", 100.0 / cores)
            if "foreign_top" in df and df["foreign_top"].notna().any():
                df["foreign_top_pct"] = foreign_shares(df, cores)
            if "energy_j" in df and df["energy_j"].notna().any():
                df["power_w"] = rate_from_counter(df, "energy_j")
        else:
            df["power_w"] = gpu_power(df)
        parts.append(df)
    tl = pd.concat(parts, ignore_index=True) if parts else telemetry.copy()
    t = tl["t_ns"].to_numpy(dtype=np.int64)
    tl["t_s"] = (t - t0) / 1e9
    tl["phase"] = phase_of(t, marks, baseline_window(run))
    tl["inflight"] = inflight_at(t, requests) if len(requests) else 0
    w_ns = int(window_s * 1e9)
    q = np.unique(np.concatenate([t, t - w_ns]))
    cum = Tokens.of_requests(requests).until(q) if len(requests) else np.zeros(len(q))
    hi, lo = cum[np.searchsorted(q, t)], cum[np.searchsorted(q, t - w_ns)]
    tl["output_tok_s"] = (hi - lo) / window_s  # tokens in the trailing 1-second window (t - 1 s, t]
    return tl.sort_values(["t_ns", "device"]).reset_index(drop=True)
