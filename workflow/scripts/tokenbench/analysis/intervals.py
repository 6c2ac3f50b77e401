"""Within-run confidence intervals of one phase's figures: a block bootstrap over time.

Requests inside one run are not independent: those in flight together share the server's batch,
so their latencies rise and fall together. Resampling single requests would pretend otherwise
and give intervals that are too narrow. The phase's issuing window is cut into time blocks at
least as long as the correlation (``tokenbench.analysis.stats.block_length_ns`` says the rule);
whole blocks are resampled. A request belongs to the block it was sent in (its ITL gaps too), a
token to the block it arrived in. Fewer than ``stats.MIN_BLOCKS`` blocks: no interval, and the
JSON says why.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tokenbench.analysis import stats

# statistics given an interval, per latency metric (the summary columns' statistics)
LATENCY_STATS = ("mean", "p50", "p95", "p99")
LATENCY_METRICS = ("ttft_ms", "tpot_ms", "e2e_ms")
BLOCK_RULE = (f"block length = max(2 × median E2E, {stats.MIN_BLOCK_NS / 1e9:g} s): longer than the time over which "
              f"requests in flight together are correlated; fewer than {stats.MIN_BLOCKS} whole blocks in the "
              f"issuing window: no interval")


def phase_intervals(ok: pd.DataFrame, itl: tuple[np.ndarray, np.ndarray], tok: tuple[np.ndarray, np.ndarray],
                    met_end_ns: np.ndarray, mark: dict[str, Any], level: float = stats.LEVEL, resamples: int = 1000,
                    seed: int = 0) -> dict[str, Any]:
    """Intervals for a phase's throughput, goodput and latency statistics.

    ok: the phase's ok requests with sent_ns, e2e_ms and the latency columns; itl: (gap values in
    ms, sent_ns of the request each gap belongs to); tok: (token arrival times, tokens each);
    met_end_ns: end times of the requests that met every SLO bound (None-free; empty if no SLO)."""
    start, end = int(mark["start_ns"]), int(mark["end_ns"])
    e2e = ok["e2e_ms"].to_numpy(dtype=float, na_value=np.nan)
    e2e_median_ns = float(np.nanmedian(e2e) * 1e6) if np.isfinite(e2e).any() else None
    block_ns = stats.block_length_ns(e2e_median_ns, end - start)
    n_blocks = max(0, (end - start) // block_ns)
    out: dict[str, Any] = {
        "block_s": block_ns / 1e9, "blocks": int(n_blocks), "level": level, "resamples": resamples,
        "rule": BLOCK_RULE,
    }
    if n_blocks == 0:
        return out
    span = n_blocks * block_ns  # whole blocks only: a remainder would be a block of another length
    block_s = block_ns / 1e9

    def per_block(times: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        idx = stats.block_index(np.asarray(times, dtype=np.int64), start, start + span, block_ns)
        keep = idx >= 0
        w = None if weights is None else np.asarray(weights, dtype=float)[keep]
        return np.bincount(idx[keep], weights=w, minlength=n_blocks).astype(float)

    out["output_tok_s"] = stats.bootstrap_rate(per_block(*tok), block_s, B=resamples, level=level,
                                               seed=seed).to_dict()
    if met_end_ns is not None:
        out["goodput_rps"] = stats.bootstrap_rate(per_block(met_end_ns), block_s, B=resamples, level=level,
                                                  seed=seed).to_dict()
    sent = ok["sent_ns"].to_numpy(dtype=np.int64)
    blocks = stats.block_index(sent, start, start + span, block_ns)
    for col in LATENCY_METRICS:
        v = ok[col].to_numpy(dtype=float, na_value=np.nan)
        keep = (blocks >= 0) & np.isfinite(v)
        out[col] = {k: iv.to_dict() for k, iv in stats.bootstrap_stats(
            v[keep], blocks[keep], stats=LATENCY_STATS, B=resamples, level=level, seed=seed).items()}
    gaps, gap_sent = itl
    gb = stats.block_index(np.asarray(gap_sent, dtype=np.int64), start, start + span, block_ns)
    keep = gb >= 0
    out["itl_ms"] = {k: iv.to_dict() for k, iv in stats.bootstrap_stats(
        np.asarray(gaps, dtype=float)[keep], gb[keep], stats=LATENCY_STATS, B=resamples, level=level,
        seed=seed).items()}
    return out


def itl_by_request(ok: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Every gap between consecutive chunks of the ok requests (ms), and the send time of the
    request each gap belongs to (its bootstrap block)."""
    if not len(ok):
        return np.array([]), np.array([], dtype=np.int64)
    chunks = [np.asarray(c, dtype=np.int64) if c is not None else np.array([], dtype=np.int64) for c in ok["chunk_ns"]]
    lengths = np.fromiter((c.size for c in chunks), dtype=np.int64, count=len(chunks))
    if lengths.sum() == 0:
        return np.array([]), np.array([], dtype=np.int64)
    flat = np.concatenate(chunks)
    owner = np.repeat(np.arange(len(chunks)), lengths)
    same = owner[1:] == owner[:-1]  # a gap lies inside one request, never across two
    gaps = np.diff(flat)[same] / 1e6
    sent = ok["sent_ns"].to_numpy(dtype=np.int64)[owner[1:][same]]
    return gaps, sent
