"""Whether a phase's figures can be trusted: MLPerf-LoadGen-style checks, contention, stability.

Each failed check is named with its numbers; an invalid phase is left out of fits, comparisons,
hypotheses and verdicts, and listed with its reasons.

The bounds (``validity:`` in the config) and why they sit where they do:

- **Contention, CPU** (``max_foreign_cpu_pct``, default 10 % of all cores): host CPU busy minus
  the server's process tree minus the client (load generator and telemetry sampler), averaged
  over the phase's telemetry window. A quiet host leaves 1-3 % of all cores to the kernel and
  the workflow manager; a competing job shows up as tens of percent. llama.cpp on a 2-core host
  loses most of its throughput to one busy competitor, so 10 % (a fifth of a core on 2 cores)
  is already a visible share of the machine. A failure names who took it: the heaviest processes
  outside the benchmark (the sampler walks every process about once a second, kernel threads
  included) and the hypervisor's steal, where they reach 1 % each.
- **Contention, GPU** (``max_gpu_contended_share``, default 5 % of samples): samples where a
  process that is not the server's held the device, or NVML reported thermal, hardware-slowdown
  or power-brake clock events. The power cap is normal operation under load and is not counted.
- **Stability** (``max_halves_change``, default 25 %): the issuing window's halves compared:
  output throughput (closed loop only; open-loop throughput follows its random arrivals) and
  median TPOT of the requests ending in each half (at least 5 in each). A steady closed loop on a
  quiet host changes by a few percent between halves; a host that got busy mid-window (TPOT 65 ->
  234 ms in the run that motivated this check) changes by multiples.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from tokenbench.config import ValiditySpec

FOREIGN_NAMED = 3  # processes named in a contention failure
FOREIGN_NAMED_MIN_PCT = 1.0  # % of all cores a process (or steal) must have taken to be named
MIN_PER_HALF = 5  # requests per half for a TPOT comparison
DURATION_SLACK_S = 0.05


def contention(tl: pd.DataFrame, phase: str) -> dict[str, Any]:
    """Foreign CPU (mean % of all cores) and the share of GPU samples with a foreign process or
    clock throttling, over a phase's telemetry window; None where not recorded."""
    t = tl[tl["phase"] == phase] if len(tl) else tl
    out: dict[str, Any] = {"foreign_cpu_pct": None, "steal_cpu_pct": None, "foreign_cpu_top": None,
                           "gpu_contended_share": None}
    for col in ("foreign_cpu_pct", "steal_cpu_pct"):
        if col in t:
            s = t[col].dropna()
            out[col] = float(s.mean()) if len(s) else None
    if "foreign_top_pct" in t:
        out["foreign_cpu_top"] = foreign_top(t["foreign_top_pct"].dropna())
    if "device" in t and len(t):
        gpu = t[t["device"].astype(str).str.startswith("gpu")]
        flags = []
        if "throttled" in gpu and gpu["throttled"].notna().any():
            flags.append(gpu["throttled"].astype("boolean"))
        if "foreign_processes" in gpu and gpu["foreign_processes"].notna().any():
            # checked about once a second: a sample counts as contended when the last check saw a foreign process
            seen = gpu.groupby("device")["foreign_processes"].ffill()
            flags.append(seen.fillna(0).astype(float) > 0)
        if flags:
            any_flag = flags[0].fillna(False)
            for f in flags[1:]:
                any_flag = any_flag | f.fillna(False)
            out["gpu_contended_share"] = float(any_flag.astype(bool).mean())
    return out


def foreign_top(walks: pd.Series, n: int = FOREIGN_NAMED) -> list[dict[str, Any]] | None:
    """The processes that took the most foreign CPU over a window: each one's mean share of all
    cores over the window's process walks (JSON ``[[name, pid, pct], ...]`` each, merge's
    ``foreign_top_pct``), heaviest first, those of at least FOREIGN_NAMED_MIN_PCT; None with no walk."""
    if not len(walks):
        return None
    total: Counter = Counter()
    for js in walks:
        for name, pid, pct in json.loads(js):
            total[(name, int(pid))] += pct
    return [{"name": name, "pid": pid, "cpu_pct": v / len(walks)} for (name, pid), v in total.most_common()
            if v / len(walks) >= FOREIGN_NAMED_MIN_PCT][:n]


def named_foreign(m: dict[str, Any]) -> str:
    """Who the foreign CPU was, in words: the heaviest processes, and the hypervisor's steal."""
    parts = [f"{p['name']} (pid {p['pid']}) {p['cpu_pct']:.0f} %" for p in m.get("foreign_cpu_top") or []]
    steal = m.get("steal_cpu_pct")
    if steal is not None and steal >= FOREIGN_NAMED_MIN_PCT:
        parts.append(f"hypervisor steal {steal:.0f} %")
    if not parts and m.get("foreign_cpu_top") is not None:
        return "no one process stood out: short-lived processes or the kernel"
    return ", ".join(parts)


def stability(tokens, ok: pd.DataFrame, mark: dict[str, Any]) -> dict[str, Any]:
    """The issuing window's halves: output tok/s and median TPOT of requests ending in each half.
    tokens: the phase's chunks (``tokenbench.chunks.Tokens``: ``between(lo, hi)`` counts tokens)."""
    start, end = int(mark["start_ns"]), int(mark["end_ns"])
    mid = start + (end - start) // 2
    half_s = (end - start) / 2e9
    out: dict[str, Any] = {"tok_s_halves": None, "tok_s_change": None, "tpot_p50_halves_ms": None,
                           "tpot_change": None}
    if half_s <= 0:
        return out
    first = tokens.between(start, mid) / half_s
    second = tokens.between(mid, end) / half_s
    out["tok_s_halves"] = [first, second]
    if first > 0:
        out["tok_s_change"] = (second - first) / first
    if len(ok) and "tpot_ms" in ok:
        ends = ok["end_ns"].to_numpy(dtype=float, na_value=np.nan)
        tpot = ok["tpot_ms"].to_numpy(dtype=float, na_value=np.nan)
        a = tpot[(ends >= start) & (ends < mid) & np.isfinite(tpot)]
        b = tpot[(ends >= mid) & (ends < end) & np.isfinite(tpot)]
        if a.size >= MIN_PER_HALF and b.size >= MIN_PER_HALF:
            ma, mb = float(np.median(a)), float(np.median(b))
            out["tpot_p50_halves_ms"] = [ma, mb]
            out["tpot_change"] = (mb - ma) / ma if ma > 0 else None
    return out


def validity(m: dict[str, Any], bounds: ValiditySpec, loop_lag: dict[str, Any] | None) -> dict[str, Any]:
    """Every check of one phase; each failure names the check and the numbers."""
    fails = []
    if m.get("stopped_reason"):
        fails.append(f"stopped early: {m['stopped_reason']}"
                     + (f"; {m['not_sent_breaker_open']} scheduled arrivals not sent" if m.get("not_sent_breaker_open") else ""))
    over = m.get("over_max_tokens")
    if over:
        fails.append(f"server ignored max_tokens: up to {over['max_returned']} tokens returned for {over['asked']} "
                     f"asked in {over['requests']} request{'s' if over['requests'] != 1 else ''}")
    # a phase stops issuing on the event loop's next tick after its deadline, or a hair before it:
    # DURATION_SLACK_S keeps a 10 s phase that ran 9.9996 s from failing a 10 s minimum
    if m["duration_s"] < bounds.min_duration_s - DURATION_SLACK_S:
        fails.append(f"ran {m['duration_s']:.1f} s < min_duration_s {bounds.min_duration_s:g}")
    if m["requests_sent"] < bounds.min_requests:
        fails.append(f"sent {m['requests_sent']} requests < min_requests {bounds.min_requests}")
    err = 1 - m["success_rate"] if m.get("success_rate") is not None else None
    if err is not None and err > bounds.max_error_rate:
        bad = {k: v for k, v in (m.get("status_counts") or {}).items() if k != "ok" and v}
        what = ", ".join(f"{v} {k}" + (f" (timeout_s {m['timeout_s']:g})" if k == "timeout" and m.get("timeout_s")
                                       else "") for k, v in sorted(bad.items(), key=lambda kv: -kv[1]))
        fails.append(f"error rate {err:.1%} > max_error_rate {bounds.max_error_rate:.1%}" + (f": {what}" if what else ""))
    lag = (m.get("send_lag_ms") or {}).get("p99")
    if lag is not None and lag > bounds.max_send_lag_p99_ms:
        fails.append(f"send lag p99 {lag:.2f} ms > {bounds.max_send_lag_p99_ms:g} ms (client or concurrency cap behind schedule)")
    ll = (loop_lag or {}).get("p99_ms")
    if ll is not None and ll > bounds.max_loop_lag_p99_ms:
        fails.append(f"client event-loop lag p99 {ll:.2f} ms > {bounds.max_loop_lag_p99_ms:g} ms (client is a bottleneck)")
    delivered = m.get("delivered_ratio")
    if delivered is not None and delivered < bounds.min_rate_ratio and not m.get("stopped_reason"):
        fails.append(f"the client sent {delivered:.1%} of its scheduled arrivals inside the window "
                     f"(< min_rate_ratio {bounds.min_rate_ratio:.0%}): it fell behind its schedule")
    foreign = m.get("foreign_cpu_pct")
    if foreign is not None and foreign > bounds.max_foreign_cpu_pct:
        who = named_foreign(m)
        fails.append(f"contended: other processes used {foreign:.0f} % of all CPU cores "
                     f"(> max_foreign_cpu_pct {bounds.max_foreign_cpu_pct:g} %)" + (f": {who}" if who else ""))
    share = m.get("gpu_contended_share")
    if share is not None and share > bounds.max_gpu_contended_share:
        fails.append(f"contended: a foreign process on the GPU or thermal/slowdown clock throttling in {share:.0%} of "
                     f"samples (> max_gpu_contended_share {bounds.max_gpu_contended_share:.0%})")
    st = m.get("stability") or {}
    if not m.get("open_loop") and st.get("tok_s_change") is not None and abs(st["tok_s_change"]) > bounds.max_halves_change:
        a, b = st["tok_s_halves"]
        fails.append(f"not steady: output tok/s went from {a:.1f} to {b:.1f} between the window's halves "
                     f"({st['tok_s_change']:+.0%}, bound ±{bounds.max_halves_change:.0%})")
    if st.get("tpot_change") is not None and abs(st["tpot_change"]) > bounds.max_halves_change:
        a, b = st["tpot_p50_halves_ms"]
        fails.append(f"not steady: median TPOT went from {a:.1f} to {b:.1f} ms between the window's halves "
                     f"({st['tpot_change']:+.0%}, bound ±{bounds.max_halves_change:.0%})")
    return {"valid": not fails, "failed_checks": fails, "event_loop_lag_p99_ms": ll}
