"""Within-run confidence intervals of one phase's figures: a block bootstrap over time.

Requests inside one run are not independent: those in flight together share the server's batch,
so their latencies rise and fall together. Resampling single requests would pretend otherwise
and give intervals that are too narrow. The phase's issuing window is cut into time blocks at
least as long as the correlation (``tokenbench.analysis.stats.block_length_ns`` says the rule);
whole blocks are resampled. A request belongs to the block it was sent in (its ITL gaps too), a
token to the block it arrived in. Fewer than ``stats.MIN_BLOCKS`` blocks: no interval, and the
JSON says why. ITL has one value per chunk (64 million for a million 64-token requests): above
``MAX_ITL_GAPS`` its interval is computed on every k-th request's gaps (whole requests, so their
dependence is kept), which widens the interval a little and never narrows it; the method says k.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tokenbench.analysis import stats
from tokenbench.analysis.registry import WINDOW_S
from tokenbench.chunks import Tokens

# statistics given an interval, per latency metric (the summary columns' statistics)
LATENCY_STATS = ("mean", "p50", "p95", "p99")
LATENCY_METRICS = ("ttft_ms", "tpot_ms", "e2e_ms")
MAX_ITL_GAPS = 1_000_000
LONG_PHASE_WINDOWS = 40  # a phase of at least this many per-window periods gets window-aligned blocks
BLOCK_RULE = (f"block length = max(2 × median E2E, {stats.MIN_BLOCK_NS / 1e9:g} s, duration ÷ {stats.MAX_BLOCKS}): "
              f"longer than the time over which requests in flight together are correlated; in phases of at "
              f"least {LONG_PHASE_WINDOWS * WINDOW_S:g} s rounded up to a whole number of {WINDOW_S:g} s windows; fewer than "
              f"{stats.MIN_BLOCKS} whole blocks in the issuing window: no interval")


def phase_intervals(ok: pd.DataFrame, itl: tuple[np.ndarray, np.ndarray, int], tokens: Tokens,
                    met_end_ns: np.ndarray | None, mark: dict[str, Any], level: float = stats.LEVEL,
                    resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Intervals for a phase's throughput, goodput and latency statistics.

    ok: the phase's ok requests with sent_ns, e2e_ms and the latency columns; itl: (gap values in
    ms, the send time of each gap's request, the request subsampling step k); tokens: the phase's
    chunks; met_end_ns: end times of the requests that met every SLO bound (None: no SLO)."""
    start, end = int(mark["start_ns"]), int(mark["end_ns"])
    e2e = ok["e2e_ms"].to_numpy(dtype=float, na_value=np.nan)
    e2e_median_ns = float(np.nanmedian(e2e) * 1e6) if np.isfinite(e2e).any() else None
    block_ns = stats.block_length_ns(e2e_median_ns, end - start)
    window_ns = int(WINDOW_S * 1e9)
    aligned = end - start >= LONG_PHASE_WINDOWS * window_ns
    if aligned:  # a long phase: whole per-window tables make the blocks (longer blocks are only safer)
        block_ns = -(-block_ns // window_ns) * window_ns
    n_blocks = max(0, (end - start) // block_ns)
    out: dict[str, Any] = {
        "block_s": block_ns / 1e9, "blocks": int(n_blocks), "level": level, "resamples": resamples,
        "rule": BLOCK_RULE,
    }
    if n_blocks == 0:
        return out
    span = n_blocks * block_ns  # whole blocks only: a remainder would be a block of another length
    block_s = block_ns / 1e9

    def boot(values, times):
        blocks = stats.block_index(np.asarray(times, dtype=np.int64), start, start + span, block_ns)
        v = np.asarray(values, dtype=float)
        keep = (blocks >= 0) & np.isfinite(v)
        return {k: iv.to_dict() for k, iv in stats.bootstrap_stats(
            v[keep], blocks[keep], stats=LATENCY_STATS, B=resamples, level=level, seed=seed, block_s=block_s).items()}

    if aligned:  # the tokens per window the window table counted (memoised), summed per block
        per = block_ns // window_ns
        n_win = max(1, (end - start) // window_ns)
        counts = tokens.per_window(start, window_ns, int(n_win), last_closed=True)[:n_blocks * per]
        per_block = counts.reshape(int(n_blocks), int(per)).sum(axis=1)
    else:
        per_block = tokens.per_window(start, block_ns, int(n_blocks))
    out["output_tok_s"] = stats.bootstrap_rate(per_block, block_s, B=resamples, level=level, seed=seed).to_dict()
    if met_end_ns is not None:
        idx = stats.block_index(np.asarray(met_end_ns, dtype=np.int64), start, start + span, block_ns)
        met = np.bincount(idx[idx >= 0], minlength=int(n_blocks)).astype(float)
        out["goodput_rps"] = stats.bootstrap_rate(met, block_s, B=resamples, level=level, seed=seed).to_dict()
    sent = ok["sent_ns"].to_numpy(dtype=np.int64)
    for col in LATENCY_METRICS:
        out[col] = boot(ok[col].to_numpy(dtype=float, na_value=np.nan), sent)
    gaps, gap_sent, step = itl
    out["itl_ms"] = boot(gaps, gap_sent)
    if step > 1:
        for iv in out["itl_ms"].values():
            iv["method"] += f", on every {step}th request's gaps"
    return out


def itl_by_request(tokens: Tokens, pr: pd.DataFrame, max_gaps: int = MAX_ITL_GAPS) -> tuple[np.ndarray, np.ndarray, int]:
    """The gaps between consecutive chunks of the phase's ok requests (ms), the send time of the
    request each gap belongs to (its bootstrap block), and k: every k-th request is taken when there
    are more than max_gaps gaps. ``pr``: the phase's request rows that ``tokens`` was built from."""
    counted, lengths = tokens.counted, tokens.chunks.lengths
    sent_all = pr["sent_ns"].to_numpy(dtype=np.int64)
    if tokens.kept is not None:  # Tokens kept only its counted rows
        sent_all = sent_all[tokens.kept]
    per_row = np.where(counted, np.maximum(lengths - 1, 0), 0)
    total = int(per_row.sum())
    step = max(1, -(-total // max_gaps)) if total else 1
    if step > 1:
        rows = np.flatnonzero(counted)[::step]
        tokens = Tokens(tokens.chunks.take(rows), tokens.weight[rows], tokens.counted[rows])
        sent_all, per_row = sent_all[rows], per_row[rows]
    return tokens.gaps_ms(), np.repeat(sent_all, per_row), step
