"""tokenbench.chunks against the plain per-request loops it replaces."""
import numpy as np
import pandas as pd
import pytest

from tokenbench import chunks as C
from tokenbench.chunks import Chunks, Tokens

S = 1_000_000_000


def cell(seed, n=300, fixed=False):
    """Requests with ragged (some unsorted, some empty or missing) chunk lists, failures that
    streamed chunks, and usage counts that differ from the chunk counts; ``fixed``: every ok
    request streams 16 chunks, the others none (the max_tokens + ignore_eos shape)."""
    rng = np.random.default_rng(seed)
    lists, status, usage = [], [], []
    for _ in range(n):
        k = 16 if fixed else int(rng.integers(0, 30))
        t = int(rng.integers(0, 20 * S)) + np.cumsum(rng.choice([0, 1, 10**6, 2 * 10**7, S], size=k))
        if rng.random() < 0.1:
            t = t[::-1]
        if rng.random() < 0.1 and k:
            t[0] = 5 * S * int(rng.integers(0, 4))  # on a window edge
        st = str(rng.choice(["ok", "ok", "ok", "timeout", "http_error"]))
        if fixed and st != "ok":
            t = t[:0]
        lists.append(None if rng.random() < 0.03 else [int(x) for x in t])
        status.append(st)
        usage.append(None if rng.random() < 0.3 else int(rng.choice([k, 2 * k, k + 1])))
    return pd.DataFrame({"status": pd.array(status, dtype="string"), "output_tokens": pd.array(usage, dtype="Int64"),
                         "chunk_ns": lists})


def naive(req):
    """(timestamp, tokens) of every chunk of every ok request, and each ok request's gaps in ms."""
    times, weights, gaps = [], [], []
    for c, st, n in zip(req["chunk_ns"], req["status"], req["output_tokens"]):
        if st != "ok" or not c:
            continue
        times += list(c)
        weights += [(n if pd.notna(n) else len(c)) / len(c)] * len(c)
        gaps += list(np.diff(np.asarray(c, dtype=np.int64)) / 1e6)
    return np.array(times, dtype=np.int64), np.array(weights), np.array(gaps)


@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("block", [3, 50, C.BLOCK])
@pytest.mark.parametrize("seed", range(6))
def test_tokens_match_a_loop_over_requests(seed, block, fixed, monkeypatch):
    monkeypatch.setattr(C, "BLOCK", block)
    req = cell(seed, fixed=fixed)
    t, w, gaps = naive(req)
    rows = np.flatnonzero(np.random.default_rng(seed).random(len(req)) < 0.7) if seed % 2 else None
    tok = Tokens.of_requests(req, Chunks.of(req["chunk_ns"]), rows) if rows is not None else Tokens.of_requests(req)
    if rows is not None:
        t, w, gaps = naive(req.iloc[rows])
    np.testing.assert_allclose(tok.gaps_ms(), gaps)
    tt, tw = tok.times()
    np.testing.assert_array_equal(tt, t)
    np.testing.assert_allclose(tw, w)
    assert tok.between(3 * S, 11 * S) == pytest.approx(w[(t >= 3 * S) & (t < 11 * S)].sum())
    edges = np.arange(5) * 5 * S
    np.testing.assert_allclose(tok.per_window(0, 5 * S, 4, last_closed=True), np.histogram(t, edges, weights=w)[0])
    q = np.unique(np.concatenate([np.sort(t)[::7], np.arange(-S, 25 * S, S // 3)]))
    order = np.argsort(t, kind="stable")
    expect = np.concatenate([[0.0], np.cumsum(w[order])])[np.searchsorted(t[order], q, side="right")]
    np.testing.assert_allclose(tok.until(q), expect)


def test_chunks_from_objects_arrow_and_slices():
    col = pd.Series([[3, 4], None, [], [7]], dtype=object)
    c = Chunks.of(col)
    assert c.values.tolist() == [3, 4, 7] and c.offsets.tolist() == [0, 2, 2, 2, 3]
    import pyarrow as pa

    arr = pa.array([[1], [2, 3], [4, 5, 6], [7]]).slice(1, 2)
    s = Chunks.of(pd.Series(pd.arrays.ArrowExtensionArray(arr)))
    assert s.values.tolist() == [2, 3, 4, 5, 6] and s.offsets.tolist() == [0, 2, 5]
    assert Chunks.of(pa.array([[1], [2, 3], [4, 5, 6], [7]])).take(np.array([1, 3])).values.tolist() == [2, 3, 7]
