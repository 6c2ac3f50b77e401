import json

import numpy as np
import pandas as pd
import pytest

from tokenbench.telemetry.merge import foreign_shares, merge_telemetry

S = 1_000_000_000


def cpu_rows(n=41, walk_every=20):
    """A 2-CPU host sampled every 50 ms: a foreign `make` took 0.4 s of CPU between walks (1 s
    apart), and steal ran at a tenth of a core."""
    t = np.arange(n) * S // 20
    top = [json.dumps([] if k == 0 else [["make", 40, 0.4]]) if k % walk_every == 0 else None for k in range(n)]
    return pd.DataFrame({"t_ns": t, "device": "cpu", "cpu_busy_s": t / S * 1.5, "cpu_steal_s": t / S * 0.1,
                         "server_cpu_s": t / S * 0.5, "client_cpu_s": t / S * 0.1, "foreign_top": top})


def test_foreign_shares_turn_each_walks_cpu_seconds_into_a_share_of_all_cores():
    df = cpu_rows()
    shares = foreign_shares(df, cores=2)
    walks = shares.dropna()
    assert list(walks.index) == [20, 40]  # the first walk (row 0) only took the baseline
    for js in walks:
        [[name, pid, pct]] = json.loads(js)
        assert (name, pid) == ("make", 40) and pct == pytest.approx(0.4 / 1.0 / 2 * 100)


def test_merge_adds_steal_and_the_foreign_shares():
    run = {"phases": [{"name": "steady", "start_ns": 0, "end_ns": 2 * S, "drained_ns": 2 * S}],
           "provenance": {"host": {"cpu_cores": 2}}}
    no_requests = pd.DataFrame({"status": pd.Series([], dtype=str), "sent_ns": pd.Series([], dtype="int64"),
                                "end_ns": pd.Series([], dtype="Int64"), "chunk_ns": [], "output_tokens": []})
    tl = merge_telemetry(no_requests, cpu_rows(), run)
    assert tl["steal_cpu_pct"].dropna().to_numpy() == pytest.approx(5.0)  # 0.1 core of 2
    assert tl["foreign_cpu_pct"].dropna().to_numpy() == pytest.approx(45.0)  # (1.5 - 0.5 - 0.1) of 2 cores
    assert tl["foreign_top_pct"].notna().sum() == 2
