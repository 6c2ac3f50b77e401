"""Merge telemetry onto the request timeline, per phase.

Raw telemetry keeps cumulative counters (CPU seconds, joules); here they become rates between
consecutive samples, every sample gets the phase it falls in, and the request side adds what the
client saw at that instant: requests in flight and output tokens per second.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tokenbench.chunks import Tokens

OUTSIDE = ("startup", "teardown")  # before the first phase / after the last phase drained
# what merge_telemetry reads of requests.parquet (the wrapper reads only these)
REQUEST_COLUMNS_USED = ["status", "sent_ns", "end_ns", "output_tokens", "chunk_ns"]


def phase_of(t_ns: np.ndarray, marks: list[dict[str, Any]]) -> np.ndarray:
    """A phase runs from its start to the next phase's start (its drain included)."""
    out = np.full(len(t_ns), OUTSIDE[0], dtype=object)
    if not marks:
        return out
    for i, m in enumerate(marks):
        stop = marks[i + 1]["start_ns"] if i + 1 < len(marks) else m["drained_ns"]
        out[(t_ns >= m["start_ns"]) & (t_ns < stop)] = m["name"]
    out[t_ns >= marks[-1]["drained_ns"]] = OUTSIDE[1]
    return out


def inflight_at(t_ns: np.ndarray, requests: pd.DataFrame) -> np.ndarray:
    sent = np.sort(requests["sent_ns"].to_numpy(dtype=np.int64))
    ends = requests["end_ns"].astype("Float64").fillna(np.inf).to_numpy(dtype=float)
    ends = np.sort(ends)
    return np.searchsorted(sent, t_ns, side="right") - np.searchsorted(ends, t_ns, side="right")


def rate_from_counter(df: pd.DataFrame, col: str, scale: float = 1.0, min_window_s: float = 0.25) -> pd.Series:
    """Rate of a cumulative counter over a trailing window of at least min_window_s.

    Kernel CPU-time counters tick in 10 ms units: between two 50 ms samples a fully busy core
    reads 40 % or 160 %. Differencing over >= 250 ms keeps that quantisation under 4 %."""
    dt_all = df["t_ns"].diff().median()
    periods = max(1, int(np.ceil(min_window_s * 1e9 / dt_all))) if pd.notna(dt_all) and dt_all > 0 else 1
    dt = df["t_ns"].diff(periods) / 1e9
    dv = df[col].diff(periods)
    rate = dv / dt * scale
    rate[(dv < 0)] = np.nan  # counter wrap or reset: drop the sample, do not invent a value
    return rate


def merge_telemetry(requests: pd.DataFrame, telemetry: pd.DataFrame, run: dict[str, Any],
                    window_s: float = 1.0) -> pd.DataFrame:
    marks = run.get("phases") or []
    cores = run["provenance"]["host"]["cpu_cores"]
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
            if "energy_j" in df and df["energy_j"].notna().any():
                df["power_w"] = rate_from_counter(df, "energy_j")
        parts.append(df)
    tl = pd.concat(parts, ignore_index=True) if parts else telemetry.copy()
    t = tl["t_ns"].to_numpy(dtype=np.int64)
    tl["t_s"] = (t - t0) / 1e9
    tl["phase"] = phase_of(t, marks)
    tl["inflight"] = inflight_at(t, requests) if len(requests) else 0
    w_ns = int(window_s * 1e9)
    q = np.unique(np.concatenate([t, t - w_ns]))
    cum = Tokens.of_requests(requests).until(q) if len(requests) else np.zeros(len(q))
    hi, lo = cum[np.searchsorted(q, t)], cum[np.searchsorted(q, t - w_ns)]
    tl["output_tok_s"] = (hi - lo) / window_s  # tokens in the trailing 1-second window (t - 1 s, t]
    return tl.sort_values(["t_ns", "device"]).reset_index(drop=True)
