import numpy as np
import pandas as pd

from tokenbench.analysis.intervals import itl_by_request
from tokenbench.chunks import Tokens

S = 1_000_000_000


def phase_rows(n, failed_every=None):
    """n requests sent 1 s apart, request i's 5 chunks (i + 1) ms apart; some cut off mid-stream (their
    chunks recorded, their status not ok)."""
    status = ["disconnect" if failed_every and i % failed_every == 0 else "ok" for i in range(n)]
    chunks = [i * S + np.arange(5, dtype=np.int64) * (i + 1) * 1_000_000 for i in range(n)]
    return pd.DataFrame({"status": status, "sent_ns": np.arange(n, dtype=np.int64) * S, "output_tokens": 5,
                         "chunk_ns": chunks})


def test_every_gap_carries_its_own_requests_send_time():
    pr = phase_rows(6)
    gaps, sent, step = itl_by_request(Tokens.of_requests(pr), pr)
    assert step == 1 and len(gaps) == 6 * 4
    assert np.allclose(gaps, np.repeat(np.arange(1, 7), 4))  # request i's gaps are i + 1 ms
    assert np.array_equal(sent, np.repeat(np.arange(6) * S, 4))


def test_rows_dropped_by_tokens_stay_aligned():
    pr = phase_rows(12, failed_every=2)  # half cut off: Tokens keeps only the ok rows
    tokens = Tokens.of_requests(pr)
    assert tokens.kept is not None
    gaps, sent, _ = itl_by_request(tokens, pr)
    ok = np.arange(12)[np.arange(12) % 2 == 1]
    assert np.array_equal(sent, np.repeat(ok * S, 4)) and np.allclose(gaps, np.repeat(ok + 1, 4))


def test_many_gaps_are_subsampled_by_whole_requests():
    pr = phase_rows(10)
    gaps, sent, step = itl_by_request(Tokens.of_requests(pr), pr, max_gaps=20)
    assert step == 2 and len(gaps) == 5 * 4  # every 2nd request, all four of its gaps
    assert np.array_equal(np.unique(sent), np.arange(0, 10, 2) * S)
