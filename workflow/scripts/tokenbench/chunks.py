"""Content-chunk timestamps (``chunk_ns``) as flat arrays, and the token counts over time the
analysis takes from them, without a Python loop over requests.

Request ``i``'s chunk timestamps are ``values[offsets[i]:offsets[i + 1]]``: the layout of an Arrow
list array, which is how requests.parquet stores ``chunk_ns``, so a column read as Arrow
(``records.read_table(..., arrow_lists=True)``) gives these arrays without a copy. A million
requests of 64 chunks are 64 M timestamps (512 MB): everything here works on them in whole-array
steps, in blocks where a temporary of that size would cost memory, and never sorts them.

Output tokens are placed in time as the registry's conventions say: a request's count (the
server's usage count, else its chunk count) spread evenly over its content chunks.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa

from tokenbench.joblog import threads

BLOCK = 1 << 22  # timestamps per step where a temporary per timestamp would otherwise be allocated
LIST = pa.large_list(pa.int64())
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _split(fn, blocks: list) -> list:
    """``fn`` over interleaved shares of ``blocks``, one share per thread the job may use
    (``joblog.threads``): one here, the others on worker threads (NumPy releases the GIL in its
    array loops). Returns each share's result."""
    global _POOL
    n = threads()
    shares = [blocks[i::n] for i in range(min(n, len(blocks)))]
    if len(shares) < 2:
        return [fn(blocks)]
    with _POOL_LOCK:  # the analysis may call in from two threads
        if _POOL is None:
            _POOL = ThreadPoolExecutor(n - 1, thread_name_prefix="chunks")
    rest = [_POOL.submit(fn, share) for share in shares[1:]]
    return [fn(shares[0])] + [f.result() for f in rest]


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + n)`` for each (s, n)."""
    lengths = lengths.astype(np.int64, copy=False)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(starts.astype(np.int64, copy=False) - (ends - lengths), lengths) + np.arange(total)


@dataclass(frozen=True, eq=False)
class Chunks:
    """Per-row int64 timestamp lists, flat."""
    values: np.ndarray  # int64
    offsets: np.ndarray  # int64, one more than there are rows

    @classmethod
    def of(cls, column) -> Chunks:
        """From a pandas column (Arrow list dtype, or objects: lists, arrays, None) or an Arrow array."""
        if isinstance(column, pd.Series):
            column = column.array
        if isinstance(column, pd.arrays.ArrowExtensionArray):
            column = pa.array(column)
        if not isinstance(column, (pa.Array, pa.ChunkedArray)):
            column = pa.array(np.asarray(column, dtype=object), type=LIST, from_pandas=True)
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)) \
                or column.type.value_type != pa.int64():
            column = column.cast(LIST)
        if column.null_count or column.values.null_count:
            lengths = np.asarray(column.value_lengths().fill_null(0), dtype=np.int64)
            values = np.asarray(column.flatten().drop_null(), dtype=np.int64)
            return cls(values, np.concatenate([[0], np.cumsum(lengths)]))
        offsets = np.asarray(column.offsets, dtype=np.int64)
        values = column.values.to_numpy(zero_copy_only=False)
        a, b = int(offsets[0]), int(offsets[-1])
        if a or b != len(values):  # a slice of a larger array: its own part, still without a copy
            values, offsets = values[a:b], offsets - a
        return cls(values, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> Chunks:
        """The given rows (ascending indices); a view when they are one contiguous run."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return Chunks(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64))
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo == len(rows):
            a, b = self.offsets[lo], self.offsets[hi]
            return Chunks(self.values[a:b], self.offsets[lo:hi + 1] - a)
        arr = pa.LargeListArray.from_arrays(pa.array(self.offsets), pa.array(self.values, type=pa.int64()))
        return Chunks.of(arr.take(pa.array(rows)))

    def blocks(self):
        """(first row, end row) of consecutive row ranges of about BLOCK timestamps each."""
        n = len(self)
        if n == 0:
            return
        marks = np.searchsorted(self.offsets, np.arange(BLOCK, self.offsets[-1], BLOCK), side="left")
        bounds = np.unique(np.concatenate([[0], marks, [n]]))
        yield from zip(bounds[:-1].tolist(), bounds[1:].tolist())


@dataclass(eq=False)
class Tokens:
    """The content chunks of a set of requests, each carrying its request's output tokens spread
    evenly over its chunks (``weight``: tokens per chunk, per row). Rows not ``counted`` (requests
    that did not finish ok) may stay in the arrays, so that a phase's rows remain one copy-free
    slice of the column; they add no tokens and no gaps."""
    chunks: Chunks
    weight: np.ndarray  # float, per row; 0 where not counted
    counted: np.ndarray  # bool, per row: finished ok, with at least one chunk
    _memo: dict = field(default_factory=dict, repr=False)
    kept: np.ndarray | None = None  # positions among the requests' rows, where only counted rows were kept

    @classmethod
    def of_requests(cls, req: pd.DataFrame, chunks: Chunks | None = None,
                    rows: np.ndarray | None = None) -> Tokens:
        """The ok requests' tokens among ``req``'s rows (or among ``rows``, ascending positions);
        ``chunks``: all of ``req["chunk_ns"]`` already flattened (else it is taken from ``req``)."""
        ok = (req["status"] == "ok").to_numpy(dtype=bool, na_value=False)
        n_tok = req["output_tokens"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            ok, n_tok = ok[rows], n_tok[rows]
            chunks = Chunks.of(req["chunk_ns"].iloc[rows]) if chunks is None else chunks.take(rows)
        elif chunks is None:
            chunks = Chunks.of(req["chunk_ns"])
        lengths = chunks.lengths
        counted = ok & (lengths > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = np.where(counted, np.where(np.isnan(n_tok), 1.0, n_tok / lengths), 0.0)
        if 4 * int((~counted & (lengths > 0)).sum()) > len(lengths):  # many uncounted rows with chunks
            keep = np.flatnonzero(counted)
            return cls(chunks.take(keep), weight[keep], counted[keep], kept=keep)
        return cls(chunks, weight, counted)

    @cached_property
    def row_total(self) -> np.ndarray:
        """Tokens per row (its usage count, else its chunk count; 0 where not counted)."""
        return self.weight * self.chunks.lengths

    @cached_property
    def _row_span(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The counted rows, and each one's earliest and latest chunk."""
        c = self.chunks
        nonempty = np.flatnonzero(c.lengths > 0)
        if len(nonempty) == 0:
            return nonempty, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        starts = c.offsets[nonempty]  # distinct and ascending: each run up to the next is one row
        lo = np.minimum.reduceat(c.values, starts)
        hi = np.maximum.reduceat(c.values, starts)
        sel = self.counted[nonempty]
        return nonempty[sel], lo[sel], hi[sel]

    def _binned(self, bin_of, n: int) -> np.ndarray:
        """Tokens per bin 0..n-1, where ``bin_of`` maps timestamps to bins and never decreases
        with time. A row whose earliest and latest chunk share a bin adds its whole count there;
        only the rows that straddle bins are binned chunk by chunk."""
        out = np.zeros(n, dtype=float)
        rows, lo, hi = self._row_span
        if len(rows) == 0:
            return out
        b_lo, b_hi = bin_of(lo), bin_of(hi)
        same = b_lo == b_hi
        inside = same & (b_lo >= 0) & (b_lo < n)
        out += np.bincount(b_lo[inside], weights=self.row_total[rows[inside]], minlength=n)[:n]
        split = rows[~same & (b_hi >= 0) & (b_lo < n)]
        if len(split):
            c = self.chunks
            lengths = c.lengths[split]
            b = bin_of(c.values[_ranges(c.offsets[split], lengths)])
            w = np.repeat(self.weight[split], lengths)
            keep = (b >= 0) & (b < n)
            out += np.bincount(b[keep], weights=w[keep], minlength=n)[:n]
        return out

    def between(self, lo_ns: int, hi_ns: int) -> float:
        """Tokens whose chunk arrived in [lo_ns, hi_ns)."""
        return float(self._binned(lambda t: (t >= lo_ns).astype(np.int64) + (t >= hi_ns) - 1, 1)[0])

    def per_window(self, start_ns: int, width_ns: int, n: int, last_closed: bool = False) -> np.ndarray:
        """Tokens per window [start + k width, start + (k + 1) width), k < n; ``last_closed``: the
        last window includes its end (as ``np.histogram``'s last bin does)."""
        key = ("per_window", start_ns, width_ns, n, last_closed)
        if key not in self._memo:  # a phase's windows are asked for twice (its metrics, the windows table)
            end = start_ns + n * width_ns

            def bin_of(t):
                k = (t - start_ns) // width_ns
                if last_closed:
                    k[t == end] = n - 1
                return k
            self._memo[key] = self._binned(bin_of, n)
        return self._memo[key].copy()

    def until(self, q: np.ndarray) -> np.ndarray:
        """Tokens whose chunk arrived at or before each of the ascending times ``q``.

        Each timestamp falls in a cell of a uniform grid (2^20 ns, about 1 ms). A cell with no query
        time in it adds its tokens to the first query after it wholesale; only the timestamps in the
        few cells that hold a query time are compared with the queries one by one."""
        q = np.asarray(q, dtype=np.int64)
        m = len(q)
        if m == 0:
            return np.zeros(0)
        shift = 20
        t0 = int(q[0]) - (1 << shift)  # cell 0 holds no query: everything before q[0] lands there
        ncell = int((int(q[-1]) - t0) >> shift) + 2  # the last cell: everything after q[-1]
        holds_q = np.zeros(ncell, dtype=bool)
        holds_q[(q - t0) >> shift] = True
        cell_bin = np.searchsorted(q, t0 + (np.arange(ncell, dtype=np.int64) << shift), side="left")
        c = self.chunks
        common = self._common_weight()

        def share(blocks):
            per_cell = np.zeros(ncell, dtype=float)
            exact_t, exact_w = [np.zeros(0, dtype=np.int64)], [np.zeros(0)]
            for r0, r1 in blocks:
                a, b = c.offsets[r0], c.offsets[r1]
                cell = c.values[a:b] - t0
                np.right_shift(cell, shift, out=cell)
                np.clip(cell, 0, ncell - 1, out=cell)
                w_rows, len_rows = self.weight[r0:r1], c.lengths[r0:r1]
                w_tok = None
                if common is not None and ((w_rows == common) | (len_rows == 0)).all():
                    per_cell += np.bincount(cell, minlength=ncell) * common
                else:
                    w_tok = np.repeat(w_rows, len_rows)
                    per_cell += np.bincount(cell, weights=w_tok, minlength=ncell)
                sel = np.flatnonzero(holds_q[cell])
                exact_t.append(c.values[a:b][sel])
                exact_w.append(np.full(len(sel), common) if w_tok is None else w_tok[sel])
            return per_cell, np.concatenate(exact_t), np.concatenate(exact_w)

        parts = _split(share, list(c.blocks()))
        per_cell = sum(p[0] for p in parts)
        counts = np.bincount(cell_bin[~holds_q], weights=per_cell[~holds_q], minlength=m + 1)
        et, ew = np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
        counts += np.bincount(np.searchsorted(q, et, side="left"), weights=ew, minlength=m + 1)
        return np.cumsum(counts[:m])

    def _common_weight(self) -> float | None:
        w = self.weight[self.counted]
        if len(w) == 0:
            return None
        if (w == w[0]).all():
            return float(w[0])
        vals, n = np.unique(w, return_counts=True)
        return float(vals[np.argmax(n)])

    def times(self) -> tuple[np.ndarray, np.ndarray]:
        """Every counted chunk's timestamp and tokens, in row order."""
        c = self.chunks
        rows = np.flatnonzero(self.counted)
        lengths = c.lengths[rows]
        t = c.values.copy() if len(rows) == len(c) else c.values[_ranges(c.offsets[rows], lengths)]
        return t, np.repeat(self.weight[rows], lengths)

    def gaps_ms(self) -> np.ndarray:
        """Gaps between consecutive chunks of each counted row, in ms, in row order."""
        c = self.chunks
        lengths = c.lengths
        n_gap = np.concatenate([[0], np.cumsum(np.where(self.counted, np.maximum(lengths - 1, 0), 0))])
        out = np.empty(int(n_gap[-1]), dtype=float)

        def share(blocks):
            for r0, r1 in blocks:
                a, b = int(c.offsets[r0]), int(c.offsets[r1])
                if b - a < 2:
                    continue
                v = c.values[a:b]
                ln, cnt = lengths[r0:r1], self.counted[r0:r1]
                width = int(ln.max())
                if width > 1 and ((ln == 0) | ((ln == width) & cnt)).all():  # rows all as long (max_tokens)
                    rows = v.reshape(-1, width)
                    np.divide(rows[:, 1:] - rows[:, :-1], 1e6, out=out[n_gap[r0]:n_gap[r1]].reshape(-1, width - 1))
                    continue
                d = v[1:] - v[:-1]  # the gap after each timestamp; drop those across rows and in uncounted rows
                keep = np.ones(len(d), dtype=bool)
                cross = c.offsets[r0 + 1:r1] - a - 1
                keep[cross[(cross >= 0) & (cross < len(d))]] = False
                skip = np.flatnonzero(~self.counted[r0:r1] & (lengths[r0:r1] > 1)) + r0
                if len(skip):
                    keep[_ranges(c.offsets[skip] - a, lengths[skip] - 1)] = False
                np.divide(d[keep], 1e6, out=out[n_gap[r0]:n_gap[r1]])

        _split(share, list(c.blocks()))
        return out
