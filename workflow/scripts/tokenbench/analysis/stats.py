"""Intervals and tests for benchmark figures: pure functions on arrays, no I/O.

Two kinds of uncertainty, kept apart:

* **Within a run.** Requests of one run are not independent: they share the server's batch, its
  queue and its KV cache over time, so a slow stretch slows every request in flight during it.
  An i.i.d. bootstrap over requests treats n correlated requests as n independent ones and gives
  intervals that are too narrow (tests/unit/analysis/test_stats.py shows it covering a known mean
  in well under 95 % of repetitions). Within-run intervals here are a non-overlapping **block
  bootstrap** over time blocks (:func:`block_length_ns`, :func:`block_index`): whole blocks are
  resampled with replacement, so the dependence inside a block travels with it.
* **Between runs.** Replicate runs of one cell are independent; their figures get a Student t
  interval (:func:`t_interval`), Welch's t test, rank tests and effect sizes, and Holm's
  correction across a family of comparisons. :func:`variation_sources` says which of the two
  dominates.

Bootstrap intervals are percentile intervals of B resamples (default B = 1000, level 0.95, a fixed
seed so that a rerun gives the same figures). Percentiles are computed like ``np.percentile``
(linear interpolation) on the data as is for the estimate and on each resample for the interval,
and exactly, without materialising a resample: means from per-block sums and counts, percentiles
from one sort and per-block counts of runs of sorted values (:class:`_Sorted`). A million values
in 2000 blocks take well under a second for B = 1000 (tests/perf/bench_stats.py).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


class _LazyScipyStats:
    """scipy.stats, imported on first use: it takes 0.6 s to import, and most callers of this module
    (the summary stage, the metrics of short phases) never need it."""

    def __getattr__(self, name):
        from scipy import stats

        return getattr(stats, name)


sps = _LazyScipyStats()

LEVEL = 0.95
MIN_BLOCKS = 8  # fewer blocks than this: no bootstrap interval (the note says so)
MAX_BLOCKS = 2000  # more blocks: neighbours are merged, so the (B x blocks) count matrix stays small
MIN_BLOCK_NS = 1_000_000_000
_F32_EXACT = 2**24  # integer counts are exact in float32 below this


# ---------------------------------------------------------------------------------------------------------------
# the result type


def _num(x) -> float | None:
    """A finite float, or None (NaN and infinities are not JSON)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval at ``level``; lo/hi are None when no interval can be given
    (``note`` says why). ``n`` is what the interval rests on: blocks for a bootstrap, replicates
    for a t interval."""

    estimate: float | None
    lo: float | None
    hi: float | None
    level: float
    method: str
    n: int
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("estimate", "lo", "hi", "level"):
            d[k] = _num(d[k])
        d["n"] = int(d["n"])
        return d

    def excludes(self, value: float) -> bool:
        """True when ``value`` lies outside [lo, hi]; False when there is no interval."""
        if self.lo is None or self.hi is None:
            return False
        return value < self.lo or value > self.hi


def _no_interval(estimate, method: str, n: int, note: str, level: float = LEVEL) -> Interval:
    return Interval(_num(estimate), None, None, level, method, int(n), note)


# ---------------------------------------------------------------------------------------------------------------
# blocks


def block_length_ns(e2e_median_ns: float | None, duration_ns: int, min_block_ns: int = MIN_BLOCK_NS) -> int:
    """Length of the bootstrap's time blocks for one phase: the largest of

    * **2 x the median request duration** (end-to-end latency). A request's latency depends on
      the requests in flight with it (they share the batch, the queue, the KV cache), and that
      set turns over in about one request lifetime. So two requests are correlated when their
      lifetimes overlap, i.e. when they are less than about one request duration apart, and
      nearly independent beyond. With blocks twice that long most correlated pairs fall inside
      one block, whose dependence a block resample keeps, and only requests near a boundary
      couple neighbouring blocks;
    * **min_block_ns** (1 s): short requests still couple through slower state (queue build-up,
      KV-cache pressure, the client's own event loop), and a floor keeps a block from holding
      a handful of requests;
    * **duration / MAX_BLOCKS**, so that a phase never has more than ``MAX_BLOCKS`` blocks.

    A phase shorter than ``MIN_BLOCKS`` blocks gets no bootstrap interval: it has too few
    nearly independent pieces to estimate its own variability (run it longer). A missing or
    non-finite median (no finished request) gives the floor.
    """
    block = int(min_block_ns)
    m = _num(e2e_median_ns)
    if m is not None and m > 0:
        block = max(block, math.ceil(2 * m))
    if duration_ns and duration_ns > 0:
        block = max(block, math.ceil(duration_ns / MAX_BLOCKS))
    return int(block)


def n_blocks(start_ns: int, end_ns: int, block_ns: int) -> int:
    """How many blocks :func:`block_index` cuts [start_ns, end_ns) into (at least 1)."""
    return max(1, int((int(end_ns) - int(start_ns)) // int(block_ns)))


def block_index(t_ns: np.ndarray, start_ns: int, end_ns: int, block_ns: int) -> np.ndarray:
    """Block id of each time in [start_ns, end_ns): ``(t - start) // block_ns``; -1 outside.

    The window holds ``n_blocks(...) = max(1, (end - start) // block_ns)`` blocks; the remainder
    shorter than one block at the end belongs to the last block, so every time inside the window
    counts (the last block is then between 1 and 2 block lengths long; :func:`block_durations_s`
    gives the lengths, which :func:`bootstrap_rate` takes). A window shorter than one block is
    one block. Index a request by the time that places it in the window (its end, as the
    per-window table does), a token or an ITL gap by its arrival time.
    """
    t = np.asarray(t_ns, dtype=np.int64)
    start, end, block = int(start_ns), int(end_ns), int(block_ns)
    if block <= 0:
        raise ValueError(f"block_ns must be positive, got {block_ns}")
    n = n_blocks(start, end, block)
    idx = np.minimum((t - start) // block, n - 1)
    return np.where((t >= start) & (t < end), idx, -1).astype(np.int64)


def block_durations_s(start_ns: int, end_ns: int, block_ns: int) -> np.ndarray:
    """Length in seconds of each block of :func:`block_index` (the last one takes the remainder)."""
    n = n_blocks(start_ns, end_ns, block_ns)
    d = np.full(n, block_ns / 1e9)
    d[-1] = (int(end_ns) - int(start_ns) - (n - 1) * int(block_ns)) / 1e9
    return d


def _compact_blocks(blocks: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Block ids (>= 0, time-ordered) -> 0..n-1, merging runs of ``k`` neighbouring ids when there
    are more than MAX_BLOCKS. Returns (ids, number of blocks, k)."""
    if blocks.size == 0:
        return blocks.astype(np.int64), 0, 1
    k = 1
    span = int(blocks.max()) + 1
    present = np.bincount(blocks, minlength=span) > 0
    if int(present.sum()) > MAX_BLOCKS:
        k = math.ceil(span / MAX_BLOCKS)
        blocks = blocks // k
        present = np.bincount(blocks) > 0
    new_id = np.cumsum(present) - 1  # ids in time order, empty ones skipped
    return new_id[blocks].astype(np.int64), int(present.sum()), k


def block_resamples(n_blocks_: int, B: int, seed: int | np.random.SeedSequence | np.random.Generator = 0) -> np.ndarray:
    """The (B x n_blocks) block indices of B bootstrap resamples, each n_blocks blocks drawn with
    replacement; what :func:`bootstrap_distribution` uses for a given seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_blocks_, size=(B, n_blocks_))


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(B x n) times each block was drawn in each resample (a multinomial count matrix)."""
    B = idx.shape[0]
    flat = (np.arange(B, dtype=np.int64)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=B * n).reshape(B, n)


# ---------------------------------------------------------------------------------------------------------------
# block bootstrap of a sample (latencies): mean and percentiles


def _parse_stat(stat: str) -> float | None:
    """'mean' -> None, 'p99' / 'p99.9' -> 99.0 / 99.9."""
    if stat == "mean":
        return None
    if stat.startswith("p"):
        try:
            q = float(stat[1:])
        except ValueError:
            q = -1.0
        if 0 <= q <= 100:
            return q
    raise ValueError(f"unknown statistic {stat!r}: 'mean' or 'p<percent>' such as 'p50', 'p99.9'")


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """np.percentile's linear interpolation, same rounding (numpy's _lerp)."""
    diff = b - a
    out = a + diff * t
    return np.where(t >= 0.5, b - diff * (1 - t), out)


class _Sorted:
    """One side's data prepared for exact resampled order statistics.

    Values are sorted once and cut, in sorted order, into K runs of M consecutive values ("bins";
    by position, so ties and zeros or negative values need no special case). ``H[b, k]`` counts
    block b's values in bin k. For a resample with block counts C (B x n_blocks), ``C @ H`` counts
    each bin in each resample; its cumulative sum locates the bin holding the j-th smallest
    resampled value, and within that bin (at most M values) the weights C[r, block of value]
    locate the value itself. Cost: the sort, B*n_blocks*K for the product and B*M per order
    statistic, instead of B sorts of n values; the result is exactly what np.percentile gives
    on the materialised resample.
    """

    def __init__(self, values: np.ndarray, ids: np.ndarray, nb: int):
        order = np.argsort(values)  # ties in any order: the same values
        self.v = values[order]
        n = self.n = int(values.size)
        # K bins of M values: the count product costs B*nb*K (float32 GEMM), the in-bin search B*M
        # per percentile (gathers); K ~ sqrt(200 n / nb) balances the two (measured on 1M values)
        self.K = int(min(n, max(16, round(math.sqrt(200 * n / max(nb, 1))))))
        self.M = math.ceil(n / self.K)
        self.K = math.ceil(n / self.M)
        b = ids[order]
        kbin = np.arange(n, dtype=np.int64) // self.M
        self.H = np.bincount(b * self.K + kbin, minlength=nb * self.K).reshape(nb, self.K)
        # block of each value, bin by bin; the padding after the last value is block nb, which
        # the count matrix's extra zero column gives weight 0
        pad = np.full(self.K * self.M, nb, dtype=np.intp)
        pad[:n] = b
        self.bins_blocks = pad.reshape(self.K, self.M)

    def _in_bin(self, C, rows, k):
        """Cumulative resampled weights of the values of bin k[i] in resample rows[i] (None: all rows)."""
        w = np.take_along_axis(C if rows is None else C[rows], self.bins_blocks[k], axis=1)
        return np.cumsum(w, axis=1)

    def order_stats(self, C: np.ndarray, cum: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The j[r]-th and (j[r]+1)-th smallest (0-based) values of resample r, for every row r
        (the (j+1)-th is the j-th where j is the last rank)."""
        rows = np.arange(C.shape[0])
        k = (cum <= j[:, None]).sum(axis=1)  # the bin holding rank j
        before = np.where(k > 0, cum[rows, np.maximum(k - 1, 0)], 0)
        resid = j - before
        cw = self._in_bin(C, None, k)
        first = k * self.M + (cw <= resid[:, None]).sum(axis=1)
        x_j = self.v[first]
        # rank j + 1: the same bin unless rank j is the bin's last in this resample
        same = resid + 1 < cw[:, -1]
        second = k * self.M + (cw <= (resid + 1)[:, None]).sum(axis=1)
        x_next = np.where(same, self.v[np.minimum(second, self.n - 1)], x_j)
        last = cum[:, -1] - 1
        cross = ~same & (j < last)
        if cross.any():  # the next positive-weight bin, for the few rows that need it
            r = rows[cross]
            jj = j[cross] + 1
            k2 = (cum[r] <= jj[:, None]).sum(axis=1)
            cw2 = self._in_bin(C, r, k2)
            before2 = cum[r, k2 - 1]
            x_next[cross] = self.v[k2 * self.M + (cw2 <= (jj - before2)[:, None]).sum(axis=1)]
        return x_j, x_next

    def percentiles(self, C: np.ndarray, qs: Sequence[float]) -> dict[float, np.ndarray]:
        # counts are exact in float32 while every partial sum (<= blocks x the largest bin count of
        # one block) stays below 2**24, in float64 below 2**53
        big = C.shape[1] * int(self.H.max(initial=0)) >= _F32_EXACT
        ft = np.float64 if big else np.float32
        Q = C.astype(ft) @ self.H.astype(ft)
        cum = np.cumsum(np.rint(Q).astype(np.int64), axis=1)
        tot = cum[:, -1]
        dt = np.int32 if int(tot.max()) < 2**31 else np.int64
        Cz = np.zeros((C.shape[0], C.shape[1] + 1), dtype=dt)  # + the padding's zero column
        Cz[:, :-1] = C
        out = {}
        for q in qs:
            h = (tot - 1) * (q / 100.0)
            j = np.floor(h).astype(np.int64)
            lo, hi = self.order_stats(Cz, cum, j)
            out[q] = _lerp(lo, hi, h - j)
        return out


def _clean(values, blocks) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=np.float64).ravel()
    b = np.asarray(blocks).ravel()
    if v.shape != b.shape:
        raise ValueError(f"values ({v.size}) and blocks ({b.size}) differ in length")
    keep = np.isfinite(v) & (b >= 0)
    return v[keep], b[keep].astype(np.int64)


@dataclass(frozen=True)
class BootDistribution:
    """Point estimates and the B resampled values of each statistic (see bootstrap_distribution)."""

    estimates: dict[str, float | None]
    boot: dict[str, np.ndarray] | None  # None when there are fewer than MIN_BLOCKS blocks
    n_values: int
    n_blocks: int
    merged: int  # neighbouring input blocks merged into one (1: none)
    B: int

    def se(self) -> dict[str, float | None]:
        """Bootstrap standard error of each statistic (sd of its B resampled values, ddof=1): the
        within-run SE that :func:`variation_sources` takes. None without a bootstrap."""
        return {s: (None if self.boot is None else _num(np.std(self.boot[s], ddof=1))) for s in self.estimates}


def bootstrap_distribution(values, blocks, stats: Sequence[str] = ("mean", "p50", "p95", "p99"), B: int = 1000,
                           seed: int | np.random.SeedSequence = 0) -> BootDistribution:
    """Non-overlapping block bootstrap of a sample: the statistics on the data as is and on B
    resamples of whole blocks (drawn with replacement, as many as there are blocks).

    ``blocks[i]`` is value i's block id (:func:`block_index`); values with a negative id (outside
    the window) and non-finite values are left out of both. Means come from per-block sums and
    counts: (C @ sums) / (C @ counts) for the (B x blocks) count matrix C. Percentiles are exact
    (np.percentile, linear interpolation, on each resample) without materialising a resample:
    see :class:`_Sorted`. More than MAX_BLOCKS blocks: runs of neighbouring ids are merged.
    """
    qs = {s: _parse_stat(s) for s in stats}
    v, b = _clean(values, blocks)
    ids, nb, merged = _compact_blocks(b)
    if v.size == 0:
        return BootDistribution({s: None for s in stats}, None, 0, 0, merged, B)
    pct = [q for q in qs.values() if q is not None]
    srt = _Sorted(v, ids, nb) if pct and nb >= MIN_BLOCKS else None
    est_p = dict(zip(pct, np.percentile(v if srt is None else srt.v, pct).tolist())) if pct else {}
    estimates = {s: (float(v.mean()) if q is None else float(est_p[q])) for s, q in qs.items()}
    if nb < MIN_BLOCKS:
        return BootDistribution(estimates, None, int(v.size), nb, merged, B)
    C = _counts(block_resamples(nb, B, seed), nb)
    boot: dict[str, np.ndarray] = {}
    if any(q is None for q in qs.values()):
        Cf = C.astype(np.float64)
        sums = np.bincount(ids, weights=v, minlength=nb)
        cnts = np.bincount(ids, minlength=nb).astype(np.float64)
        mean = (Cf @ sums) / (Cf @ cnts)
    boot_p = srt.percentiles(C, pct) if srt is not None else {}
    for s, q in qs.items():
        boot[s] = mean if q is None else boot_p[q]
    return BootDistribution(estimates, boot, int(v.size), nb, merged, B)


def _pct_ci(boot: np.ndarray, level: float) -> tuple[float | None, float | None]:
    a = 100 * (1 - level) / 2
    lo, hi = np.percentile(boot, [a, 100 - a])
    return _num(lo), _num(hi)


def _block_text(block_s: float | None, merged: int) -> str:
    if block_s is None:
        return "" if merged == 1 else f", input blocks merged {merged} at a time (at most {MAX_BLOCKS} blocks)"
    if merged == 1:
        return f", {block_s:g} s blocks"
    return f", {block_s * merged:g} s blocks ({block_s:g} s blocks merged {merged} at a time: at most {MAX_BLOCKS})"


def _method(kind: str, nb: int, B: int, block_s: float | None, merged: int) -> str:
    return f"block bootstrap ({kind}){_block_text(block_s, merged)}, {nb} blocks, B={B}"


def _few_blocks(nb: int) -> str:
    return f"fewer than {MIN_BLOCKS} blocks ({nb}): no bootstrap interval; a longer phase gives one"


def bootstrap_stats(values, blocks, stats: Sequence[str] = ("mean", "p50", "p95", "p99"), B: int = 1000,
                    level: float = LEVEL, seed: int = 0, block_s: float | None = None) -> dict[str, Interval]:
    """Block-bootstrap intervals of a sample's statistics ('mean', 'p50', 'p99.9', ...): estimate =
    the statistic on the data as is, interval = percentile bootstrap at ``level`` over B resamples
    of whole blocks (:func:`bootstrap_distribution`). ``block_s`` (the block length) only goes into
    the method text. Fewer than MIN_BLOCKS blocks: the estimate without an interval."""
    return intervals_from(bootstrap_distribution(values, blocks, stats, B, seed), level, block_s)


def intervals_from(d: BootDistribution, level: float = LEVEL, block_s: float | None = None) -> dict[str, Interval]:
    """Percentile intervals of a bootstrap distribution, one per statistic: what
    :func:`bootstrap_stats` returns. With :meth:`BootDistribution.se`, one bootstrap gives both the
    intervals and the within-run standard errors."""
    method = _method("percentile", d.n_blocks, d.B, block_s, d.merged)
    out = {}
    for s, est in d.estimates.items():
        if d.n_values == 0 or est is None:
            out[s] = _no_interval(None, method, d.n_blocks, "no values" if d.n_values == 0 else "no estimate", level)
        elif d.boot is None:
            out[s] = _no_interval(est, method, d.n_blocks, _few_blocks(d.n_blocks), level)
        else:
            lo, hi = _pct_ci(d.boot[s], level)
            out[s] = Interval(_num(est), lo, hi, level, method, d.n_blocks)
    return out


# ---------------------------------------------------------------------------------------------------------------
# block bootstrap of a rate (throughput)


def _rate_blocks(amount_per_block, block_s) -> tuple[np.ndarray, np.ndarray, int]:
    a = np.asarray(amount_per_block, dtype=np.float64).ravel()
    d = np.broadcast_to(np.asarray(block_s, dtype=np.float64), a.shape).astype(np.float64)
    merged = 1
    if a.size > MAX_BLOCKS:
        merged = math.ceil(a.size / MAX_BLOCKS)
        g = np.arange(a.size) // merged
        a, d = np.bincount(g, weights=a), np.bincount(g, weights=d)
    return a, d, merged


def rate_distribution(amount_per_block, block_s, B: int = 1000,
                      seed: int | np.random.SeedSequence = 0) -> BootDistribution:
    """Block bootstrap of a rate, as one statistic "rate" = sum(amount) / sum(block lengths), on
    the blocks as they are and on B resamples (C @ amount) / (C @ lengths); n_values = blocks.
    More than MAX_BLOCKS blocks: neighbours are merged (amounts and lengths summed)."""
    a, d, merged = _rate_blocks(amount_per_block, block_s)
    nb = int(a.size)
    est = float(a.sum() / d.sum()) if nb and d.sum() > 0 else None
    if nb < MIN_BLOCKS or est is None:
        return BootDistribution({"rate": est}, None, nb, nb, merged, B)
    C = _counts(block_resamples(nb, B, seed), nb).astype(np.float64)
    return BootDistribution({"rate": est}, {"rate": (C @ a) / (C @ d)}, nb, nb, merged, B)


def _scalar_block_s(block_s) -> float | None:
    d = np.asarray(block_s, dtype=np.float64)
    return float(d) if d.ndim == 0 else (float(d[0]) if d.size else None)


def bootstrap_rate(amount_per_block, block_s, B: int = 1000, level: float = LEVEL, seed: int = 0) -> Interval:
    """A throughput over a phase with its block-bootstrap interval: ``amount_per_block[i]`` (tokens,
    requests) arrived in block i, every block of the window included, empty ones as 0. Rate =
    sum(amount) / (n_blocks * block_s); ``block_s`` may also be the array of block lengths
    (:func:`block_durations_s`, whose last block takes the remainder), then rate = sum(amount) /
    sum(block_s), and so are the resampled rates."""
    d = rate_distribution(amount_per_block, block_s, B, seed)
    if d.n_blocks == 0:
        return _no_interval(None, _method("percentile", 0, B, None, 1), 0, "no blocks", level)
    return intervals_from(d, level, _scalar_block_s(block_s))["rate"]


# ---------------------------------------------------------------------------------------------------------------
# comparisons of two configurations within runs


def _compare(est_a, boot_a, est_b, boot_b, method: str, n: int, note: str | None, level: float) -> dict[str, Interval]:
    diff_est = est_a - est_b if est_a is not None and est_b is not None else None
    ratio_est = est_a / est_b if est_a is not None and est_b not in (None, 0) else None
    if boot_a is None or boot_b is None:
        note = note or "no bootstrap distribution"
        return {"difference": _no_interval(diff_est, method, n, note, level),
                "ratio": _no_interval(ratio_est, method, n, note, level)}
    diff = Interval(_num(diff_est), *_pct_ci(boot_a - boot_b, level), level, method, n)
    if np.any(boot_b == 0) or est_b == 0:
        ratio = _no_interval(ratio_est, method, n, "b is 0 in the data or in a resample: no ratio", level)
    else:
        ratio = Interval(_num(ratio_est), *_pct_ci(boot_a / boot_b, level), level, method, n)
    return {"difference": diff, "ratio": ratio}


def _compare_dists(da: BootDistribution, db: BootDistribution, stat: str, blocks: str, B: int,
                   level: float) -> dict[str, Interval]:
    method = (f"block bootstrap (percentile), each side resampled independently{blocks}, "
              f"{da.n_blocks} + {db.n_blocks} blocks, B={B}")
    if da.merged > 1 or db.merged > 1:
        method += f", neighbouring blocks merged {max(da.merged, db.merged)} at a time (at most {MAX_BLOCKS})"
    few = [f"{s}: {d.n_blocks}" for s, d in (("a", da), ("b", db)) if d.n_blocks < MIN_BLOCKS]
    note = f"fewer than {MIN_BLOCKS} blocks ({', '.join(few)}): no bootstrap interval" if few else None
    return _compare(da.estimates[stat], None if da.boot is None else da.boot[stat],
                    db.estimates[stat], None if db.boot is None else db.boot[stat],
                    method, min(da.n_blocks, db.n_blocks), note, level)


def compare_bootstrap(a_values, a_blocks, b_values, b_blocks, stat: str = "mean", B: int = 1000,
                      level: float = LEVEL, seed: int = 0, block_s: float | None = None) -> dict[str, Interval]:
    """Configuration a against b on one statistic of their samples: {"difference": a - b,
    "ratio": a / b}, each with a percentile interval from B pairs of block resamples, each side
    resampled independently (its own blocks, its own stream of the seed). A ratio interval that
    excludes 1 (a difference interval that excludes 0) says the two differ beyond within-run noise.
    ``n`` is the smaller side's block count."""
    sa, sb = np.random.SeedSequence(seed).spawn(2)
    da = bootstrap_distribution(a_values, a_blocks, (stat,), B, sa)
    db = bootstrap_distribution(b_values, b_blocks, (stat,), B, sb)
    return _compare_dists(da, db, stat, _block_text(block_s, 1), B, level)


def compare_rates(a_amount_per_block, a_block_s, b_amount_per_block, b_block_s, B: int = 1000,
                  level: float = LEVEL, seed: int = 0) -> dict[str, Interval]:
    """Throughput of a against b: {"difference": a - b, "ratio": a / b} as :func:`compare_bootstrap`,
    rates as :func:`bootstrap_rate`."""
    sa, sb = np.random.SeedSequence(seed).spawn(2)
    da = rate_distribution(a_amount_per_block, a_block_s, B, sa)
    db = rate_distribution(b_amount_per_block, b_block_s, B, sb)
    bs_a, bs_b = _scalar_block_s(a_block_s), _scalar_block_s(b_block_s)
    blocks = (f", {bs_a:g} s + {bs_b:g} s blocks" if bs_a is not None and bs_b is not None else "")
    return _compare_dists(da, db, "rate", blocks, B, level)


# ---------------------------------------------------------------------------------------------------------------
# between replicate runs


def _finite(values) -> np.ndarray:
    if values is None:
        return np.array([], dtype=np.float64)
    v = np.asarray(values, dtype=np.float64).ravel()  # None -> NaN
    return v[np.isfinite(v)]


def t_interval(replicate_values, level: float = LEVEL) -> Interval:
    """Mean of k replicate values with its Student t interval (k - 1 dof): mean +- t * sd / sqrt(k).
    Missing and non-finite values are left out; k < 2: the value, no interval."""
    v = _finite(replicate_values)
    k = int(v.size)
    method = f"t, {max(k - 1, 0)} dof"
    if k == 0:
        return _no_interval(None, method, 0, "no replicate values", level)
    mean = float(v.mean())
    if k < 2:
        return _no_interval(mean, method, k, "1 replicate: no interval (needs at least 2)", level)
    sd = float(v.std(ddof=1))
    if sd == 0:
        return Interval(mean, mean, mean, level, method, k, f"the {k} replicates are identical")
    lo, hi = sps.t.interval(level, k - 1, loc=mean, scale=sd / math.sqrt(k))
    return Interval(mean, float(lo), float(hi), level, method, k)


def se_from_interval(iv: dict[str, Any] | None, level: float = LEVEL) -> float | None:
    """A standard error read back from an interval's JSON form: its half-width over the normal
    quantile of its level (None without an interval)."""
    if not iv or iv.get("lo") is None or iv.get("hi") is None:
        return None
    return (iv["hi"] - iv["lo"]) / (2 * float(sps.norm.ppf(0.5 + iv.get("level", level) / 2)))


def variation_sources(within_se: list[float | None], replicate_values: list[float]) -> dict[str, Any]:
    """Where a figure's spread comes from: noise within a run, or differences between runs.

    ``replicate_values[i]`` is replicate i's figure, ``within_se[i]`` its within-run standard
    error (the block bootstrap's sd of the figure; None where there is none). A one-way
    random-effects split, by moments: replicate i's value = true value + run effect (sd
    ``between_sd``) + within-run noise (sd se_i), so the variance of the replicate values is
    between_sd^2 + mean(se_i^2) in expectation, and

        within_sd  = sqrt(mean(se_i^2))
        between_sd = sqrt(max(0, var(replicate values, ddof=1) - within_sd^2))

    ``dominant`` is the larger one ("between runs" only when between_sd > within_sd). ``p_between``:
    Cochran's Q test that the runs agree within their SEs (Q = sum((x_i - weighted mean)^2 / se_i^2)
    ~ chi^2(k-1)); small values say the runs differ beyond within-run noise.
    """
    pairs = [(s, x) for s, x in zip(within_se, replicate_values)
             if x is not None and math.isfinite(float(x))]
    x = np.array([float(p[1]) for p in pairs])
    se = np.array([float(s) for s, _ in pairs if s is not None and math.isfinite(float(s))])
    out: dict[str, Any] = {"replicates": int(x.size), "observed_sd": None, "within_sd": None, "between_sd": None,
                           "dominant": None, "p_between": None, "note": None}
    if x.size < 2:
        out["note"] = f"{x.size} replicate(s): the spread between runs needs at least 2"
        return out
    var = float(x.var(ddof=1))
    out["observed_sd"] = math.sqrt(var)
    if se.size == 0:
        out["note"] = "no within-run standard error: the spread cannot be split"
        return out
    within2 = float(np.mean(se**2))
    out["within_sd"] = math.sqrt(within2)
    out["between_sd"] = math.sqrt(max(0.0, var - within2))
    out["dominant"] = "between runs" if out["between_sd"] > out["within_sd"] else "within run"
    have = [(float(s), float(v)) for s, v in pairs if s is not None and math.isfinite(float(s))]
    if len(have) >= 2 and all(s > 0 for s, _ in have):
        s_, v_ = np.array(have).T
        w = 1 / s_**2
        q = float((w * (v_ - (w * v_).sum() / w.sum()) ** 2).sum())
        out["p_between"] = float(sps.chi2.sf(q, len(have) - 1))
    if out["dominant"] == "between runs":
        out["note"] = (f"replicates differ by sd {out['observed_sd']:.3g}, more than within-run noise "
                       f"(se {out['within_sd']:.3g}) explains: run-to-run variation dominates; "
                       "more replicates, not longer runs, narrow the interval")
    else:
        out["note"] = (f"replicates differ by sd {out['observed_sd']:.3g}, about what within-run noise "
                       f"(se {out['within_sd']:.3g}) explains: longer runs narrow the interval")
    if se.size < x.size:
        out["note"] += f"; within-run se from {se.size} of {x.size} replicates"
    return out


def _none_test(keys: Sequence[str], note: str) -> dict[str, Any]:
    return {**{k: None for k in keys}, "note": note}


def welch(a_replicates, b_replicates) -> dict[str, Any]:
    """Welch's two-sided t test (unequal variances; scipy ttest_ind(equal_var=False)):
    {"t", "dof" (Welch-Satterthwaite), "p", "note"}; None-valued with a note when either side has
    fewer than 2 values or both have zero variance."""
    a, b = _finite(a_replicates), _finite(b_replicates)
    keys = ("t", "dof", "p")
    if a.size < 2 or b.size < 2:
        return _none_test(keys, f"Welch's t test needs at least 2 values a side ({a.size} and {b.size})")
    if a.var() == 0 and b.var() == 0:
        return _none_test(keys, "both sides have zero variance: no t statistic")
    r = sps.ttest_ind(a, b, equal_var=False)
    return {"t": _num(r.statistic), "dof": _num(r.df), "p": _num(r.pvalue), "note": None}


def welch_difference(a_replicates, b_replicates, level: float = LEVEL) -> dict[str, Interval]:
    """Difference and ratio of two sides' replicate means with Welch intervals: run-to-run variation
    is the whole of the uncertainty. Difference: mean_a - mean_b +- t(dof) * sqrt(s_a^2/k_a + s_b^2/k_b)
    with Welch-Satterthwaite dof. Ratio: exp of the same for log(mean_a / mean_b), with the delta-method
    variance of a log mean, s^2 / (k * mean^2). Fewer than 2 values a side, or no spread on either side
    (identical replicates, as whole-request counts give): no interval, never a zero-width one."""
    a, b = _finite(a_replicates), _finite(b_replicates)
    method = f"Welch t on replicate means ({a.size} + {b.size} runs)"
    est_d = float(a.mean() - b.mean()) if a.size and b.size else None
    est_r = float(a.mean() / b.mean()) if a.size and b.size and b.mean() != 0 else None
    n = int(a.size + b.size)
    if a.size < 2 or b.size < 2:
        note = f"needs at least 2 replicate runs a side ({a.size} and {b.size})"
        return {"difference": _no_interval(est_d, method, n, note, level), "ratio": _no_interval(est_r, method, n, note, level)}
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size

    def welch_ci(est, va_, vb_, ka, kb):
        se2 = va_ + vb_
        if se2 == 0:  # two runs alike on each side say nothing of how far a third could fall
            return None, None, "the replicates are identical on both sides: no spread to build an interval from"
        dof = se2 ** 2 / ((va_ ** 2 / (ka - 1) if va_ else 0) + (vb_ ** 2 / (kb - 1) if vb_ else 0))
        half = float(sps.t.ppf(0.5 + level / 2, dof)) * math.sqrt(se2)
        return est - half, est + half, None

    lo, hi, note = welch_ci(est_d, va, vb, a.size, b.size)
    out = {"difference": Interval(est_d, _num(lo), _num(hi), level, method, n, note)}
    if est_r is not None and a.mean() > 0 and b.mean() > 0:
        la, lb = va / a.mean() ** 2, vb / b.mean() ** 2
        llo, lhi, note = welch_ci(math.log(est_r), la, lb, a.size, b.size)
        out["ratio"] = Interval(est_r, None if llo is None else math.exp(llo), None if lhi is None else math.exp(lhi),
                                level, method + ", log scale", n, note)
    else:
        out["ratio"] = _no_interval(est_r, method, n, "a mean is not positive: no ratio interval", level)
    return out


def mann_whitney(a, b) -> dict[str, Any]:
    """Mann-Whitney U, two-sided (scipy.stats.mannwhitneyu, its default method): {"u" (a's U),
    "p", "n_a", "n_b", "note"}."""
    x, y = _finite(a), _finite(b)
    out = {"u": None, "p": None, "n_a": int(x.size), "n_b": int(y.size), "note": None}
    if x.size == 0 or y.size == 0:
        out["note"] = "a side has no values"
        return out
    r = sps.mannwhitneyu(x, y, alternative="two-sided")
    out.update(u=_num(r.statistic), p=_num(r.pvalue))
    return out


def brunner_munzel(a, b) -> dict[str, Any]:
    """Brunner-Munzel test, two-sided (scipy.stats.brunnermunzel, t distribution): like
    Mann-Whitney it compares P(a > b) with P(a < b), without assuming equal variances or
    shapes. {"statistic", "p", "note"}; None where undefined (fewer than 2 values a side, or no
    spread in the ranks)."""
    x, y = _finite(a), _finite(b)
    if x.size < 2 or y.size < 2:
        return _none_test(("statistic", "p"), f"needs at least 2 values a side ({x.size} and {y.size})")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        r = sps.brunnermunzel(x, y, alternative="two-sided")
    s, p = _num(r.statistic), _num(r.pvalue)
    return {"statistic": s, "p": p, "note": None if p is not None else "undefined: no spread within the samples' ranks"}


def cohens_d(a, b) -> float | None:
    """Cohen's d = (mean(a) - mean(b)) / s_pooled, with the pooled sd
    s_pooled = sqrt(((n_a - 1) var_a + (n_b - 1) var_b) / (n_a + n_b - 2)) (variances with ddof=1).
    None when a side has fewer than 2 values or s_pooled is 0."""
    x, y = _finite(a), _finite(b)
    if x.size < 2 or y.size < 2:
        return None
    pooled = ((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / (x.size + y.size - 2)
    if pooled <= 0:
        return None
    return float((x.mean() - y.mean()) / math.sqrt(pooled))


def cliffs_delta(a, b) -> float | None:
    """Cliff's delta = P(a > b) - P(a < b) over all pairs (ties count for neither), in
    O((n + m) log m): sort b once, count the b below and above each a with searchsorted.
    None when a side is empty."""
    x, y = _finite(a), np.sort(_finite(b))
    if x.size == 0 or y.size == 0:
        return None
    below = np.searchsorted(y, x, side="left").sum()
    above = (y.size - np.searchsorted(y, x, side="right")).sum()
    return float((below - above) / (x.size * y.size))


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-adjusted p values (statsmodels multipletests, method "holm") over the non-missing
    ones; None (and NaN) stay None."""
    from statsmodels.stats.multitest import multipletests

    idx = [i for i, p in enumerate(pvalues) if _num(p) is not None]
    out: list[float | None] = [None] * len(pvalues)
    if idx:
        adj = multipletests([float(pvalues[i]) for i in idx], method="holm")[1]
        for i, p in zip(idx, adj):
            out[i] = float(p)
    return out


def replicates_needed(difference_frac: float, cv: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Replicate runs per side for a two-sided two-sample t test at ``alpha`` to detect, with
    ``power``, a relative difference ``difference_frac`` (0.05: 5 %) between two configurations
    whose replicate values vary with coefficient of variation ``cv`` (sd / mean). The effect size
    is difference_frac / cv (Cohen's d); statsmodels' TTestIndPower solves for n (rounded up, at
    least 2). None when the difference is 0 or an input is missing; cv 0 gives 2."""
    from statsmodels.stats.power import TTestIndPower

    d, c = _num(difference_frac), _num(cv)
    if d is None or c is None or d == 0 or c < 0:
        return None
    if c == 0:
        return 2
    effect = abs(d) / c
    analysis = TTestIndPower()
    kw = {"alpha": alpha, "ratio": 1.0, "alternative": "two-sided"}
    if analysis.power(effect_size=effect, nobs1=2, **kw) >= power:
        return 2  # the smallest test already resolves it (the solver does not converge below 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            n = analysis.solve_power(effect_size=effect, power=power, **kw)
    except (ValueError, RuntimeError):
        return None
    n = _num(np.asarray(n).item())
    return None if n is None else max(2, math.ceil(n - 1e-9))
