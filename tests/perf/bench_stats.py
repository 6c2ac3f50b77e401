#!/usr/bin/env python3
"""How long do tokenbench.analysis.stats' block bootstraps take on a large phase?

    .venv/bin/python tests/perf/bench_stats.py              # 1,000,000 values, B=1000
    .venv/bin/python tests/perf/bench_stats.py --n 200000 --repeat 5

Not a test (pytest collects test_*.py only; it asserts nothing). Times are the best of
``--repeat`` runs, one thread of work at a time, printed with the load average: on a shared
machine a figure taken with the load above the core count measures the neighbours too.
Values are lognormal latencies with every 50th one 0 (ITL gaps of 0 arrive in one socket
read), spread uniformly over a phase cut into 1 s blocks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow" / "scripts"))

from tokenbench.analysis import stats as S


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--B", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--blocks", type=int, nargs="+", default=[60, 600, 2000, 5000])
    a = ap.parse_args()
    rng = np.random.default_rng(1)
    print(f"n={a.n:,} values, B={a.B}, best of {a.repeat}; cores={os.cpu_count()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'blocks':>7} {'stats mean,p50,p95,p99':>23} {'stats mean':>11} {'compare p99':>12} "
          f"{'compare_rates':>14}  p99 interval")
    for nb in a.blocks:
        v = rng.lognormal(0, 1, a.n)
        v[::50] = 0
        dur = nb * 1_000_000_000
        t = np.sort(rng.integers(0, dur, a.n))
        blocks = S.block_index(t, 0, dur, 1_000_000_000)
        w = rng.lognormal(0, 1, a.n) * 1.01
        amount = np.bincount(blocks, weights=v, minlength=nb)
        t_all, r = best(lambda v=v, b=blocks: S.bootstrap_stats(v, b, B=a.B, block_s=1.0), a.repeat)
        t_mean, _ = best(lambda v=v, b=blocks: S.bootstrap_stats(v, b, stats=("mean",), B=a.B), a.repeat)
        t_cmp, _ = best(lambda v=v, w=w, b=blocks: S.compare_bootstrap(v, b, w, b, stat="p99", B=a.B), a.repeat)
        t_rate, _ = best(lambda x=amount: S.compare_rates(x, 1.0, x * 1.1, 1.0, B=a.B), a.repeat)
        p99 = r["p99"]
        print(f"{nb:>7} {t_all:>22.3f}s {t_mean:>10.3f}s {t_cmp:>11.3f}s {t_rate:>13.3f}s  "
              f"{p99.estimate:.4g} [{p99.lo:.4g}, {p99.hi:.4g}] ({p99.method})")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
