#!/usr/bin/env python3
"""How heavy does a run's timeline get on its page as the run grows?

    .venv/bin/python tests/perf/bench_report.py                    # 1 min, 10 min, 1 h at 20 Hz
    .venv/bin/python tests/perf/bench_report.py --minutes 240 --hz 20

For each run length it builds a synthetic 20 Hz telemetry frame (host CPU, server CPU, RSS,
requests in flight, output tok/s), draws it with report.charts.plot_timeline (what a Run page
embeds), and prints the spec's inline size (the page's weight from that chart), the number of
points drawn against the samples recorded (all of which go to the CSV download) and the time to
build ("rows drawn" counts every row of the spec's datasets: the drawn samples of each series plus
the phase shading). Not a test (pytest collects test_*.py only; it asserts nothing); printed with the load
average, since a time taken on a busy machine measures the neighbours too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow" / "scripts"))

from tokenbench.report.charts import plot_timeline

S = 1_000_000_000
SERIES = ("cpu_util_pct", "server_cpu_util_pct", "server_rss_bytes", "inflight", "output_tok_s")


def telemetry(seconds: float, hz: float, seed: int = 0) -> tuple[pd.DataFrame, list[dict]]:
    rng = np.random.default_rng(seed)
    t_ns = (np.arange(0, seconds, 1 / hz) * S).astype(np.int64)
    n = len(t_ns)
    tl = pd.DataFrame({"t_ns": t_ns, "device": "cpu", "t_s": t_ns / 1e9})
    warm = 0.1 * seconds
    tl["phase"] = np.where(tl["t_s"] < warm, "warmup", "steady")
    tl["cpu_util_pct"] = np.clip(80 + 10 * rng.standard_normal(n), 0, 100)
    tl["server_cpu_util_pct"] = np.clip(70 + 10 * rng.standard_normal(n), 0, 100)
    tl["server_rss_bytes"] = 2**28 + np.cumsum(rng.integers(0, 4096, n))
    tl["inflight"] = rng.integers(0, 9, n)
    tl["output_tok_s"] = np.clip(120 + 20 * rng.standard_normal(n), 0, None)
    marks = [{"name": "warmup", "mode": "poisson", "warmup": True, "start_ns": 0, "end_ns": int(warm * S),
              "drained_ns": int((warm + 1) * S), "target": {"rate_rps": 2}, "label": "warm-up"},
             {"name": "steady", "mode": "closed", "warmup": False, "start_ns": int((warm + 1) * S),
              "end_ns": int((seconds - 2) * S), "drained_ns": int(seconds * S),
              "target": {"users": 8, "ramp_s": 1.0}, "label": "8 users"}]
    return tl, marks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    ap.add_argument("--hz", type=float, default=20)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'run':>8} {'samples':>9} {'values recorded':>16} {'rows drawn':>11} {'spec (KB)':>10} {'CSV rows':>9} "
          f"{'build (s)':>10}")
    for minutes in args.minutes:
        tl, marks = telemetry(minutes * 60, args.hz)
        t0 = time.perf_counter()
        chart, data = plot_timeline(tl, marks, "run")
        spec = json.dumps(chart.to_dict(), separators=(",", ":"))
        took = time.perf_counter() - t0
        drawn = sum(len(rows) for rows in json.loads(spec).get("datasets", {}).values())
        recorded = int(tl[list(SERIES)].notna().sum().sum())
        print(f"{minutes:>6g} m {len(tl):>9,} {recorded:>16,} {drawn:>11,} {len(spec) / 1e3:>10.1f} {len(data):>9,} "
              f"{took:>10.2f}")


if __name__ == "__main__":
    main()
