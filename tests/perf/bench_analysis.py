#!/usr/bin/env python3
"""Analysis benchmark: how long, and how much memory, do merge_telemetry and compute_metrics /
summarize_metrics take on a large cell?

    .venv/bin/python tests/perf/bench_analysis.py --requests 1000000 --chunks 64 --telemetry-hours 1 --out /tmp/ba

It generates one cell's records the way the load test writes them (``requests.parquet``: the columns
and dtypes of ``tokenbench.load.journal.PANDAS_DTYPES``, ``chunk_ns`` a list of int64 per request;
``telemetry.parquet``: CPU rows at 20 Hz with the sampler's cumulative counters; ``run.json`` with
phase marks; a model manifest), each written with ``tokenbench.records``. Then it runs the Snakemake
wrapper scripts themselves (``workflow/scripts/merge_telemetry.py``, ``compute_metrics.py``,
``summarize_metrics.py``) with a stand-in ``snakemake`` object, each in a fresh Python process with
OMP_NUM_THREADS set to the rule's ``threads`` (as Snakemake sets it), and prints per stage:

- wall s: the process's wall time, interpreter start and imports included (as under Snakemake);
- script s: the wrapper script's own time;
- CPU s: the process's user + system time, all its threads;
- peak RSS MB: the process's VmHWM;

then the totals (peak: the largest stage's). ``--repeat N`` runs the stages N times and also prints
the fastest run of each, the least disturbed by whatever else the host runs.

It is not a test: it asserts nothing and pytest does not collect it. Timings depend on the machine
and on what else runs on it: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import runpy
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "workflow" / "scripts"
sys.path.insert(0, str(SCRIPTS))  # this checkout's tokenbench before any installed one

S = 1_000_000_000
MS = 1_000_000
STAGES = ("merge_telemetry", "compute_metrics", "summarize_metrics")
RULE_THREADS = {"merge_telemetry": 2, "compute_metrics": 2, "summarize_metrics": 1}  # the rules' `threads:`
SLO = {"ttft_ms": 500.0, "tpot_ms": 100.0, "e2e_ms": None}
VALIDITY = {"min_duration_s": 10, "min_requests": 10, "max_error_rate": 0.01}


# ================================================================================ data generation
def phase_plan() -> list[dict]:
    """Phases of a long cell as fractions of its length: an open-loop warmup, an idle cooldown, an
    open-loop (Poisson) steady phase and a closed-loop stress phase."""
    return [
        {"name": "warmup", "mode": "poisson", "warmup": True, "open_loop": True, "share": 0.08,
         "label": "Poisson arrivals", "target": {"rate_rps": None}},
        {"name": "cooldown", "mode": "idle", "warmup": False, "open_loop": False, "share": 0.02,
         "label": "idle", "target": {}},
        {"name": "steady", "mode": "poisson", "warmup": False, "open_loop": True, "share": 0.35,
         "label": "Poisson arrivals", "target": {"rate_rps": None}},
        {"name": "stress", "mode": "closed", "warmup": False, "open_loop": False, "share": 0.55,
         "label": "closed loop", "target": {"users": None}},
    ]


def generate(n_req: int, n_chunks: int, hours: float, out: Path, seed: int = 0) -> dict:
    import numpy as np
    import pandas as pd

    from tokenbench import records
    from tokenbench.load.journal import PANDAS_DTYPES as REQUEST_COLUMNS

    rng = np.random.default_rng(seed)
    total_ns = int(hours * 3600 * S)
    t_start = 10 * S  # monotonic clock offset: the run starts 10 s after the sampler
    plan = phase_plan()
    busy_share = sum(p["share"] for p in plan if p["mode"] != "idle")
    drain_ns = 3 * S  # room for the last requests to finish, at most

    cols: dict[str, list] = {k: [] for k in ("phase", "user", "scheduled_ns", "sent_ns")}
    marks, t, left = [], t_start, n_req
    busy = [p for p in plan if p["mode"] != "idle"]
    for p in plan:
        length = int(p["share"] * total_ns) - drain_ns
        start, end = t, t + length
        n = 0
        if p["mode"] != "idle":
            n = left if p is busy[-1] else round(n_req * p["share"] / busy_share)
            left -= n
        dur_s = length / S
        if p["open_loop"]:
            p["target"] = {"rate_rps": round(n / dur_s, 3), "duration_s": dur_s}
            sched = np.sort(rng.integers(start, end, n))
            lag = rng.exponential(0.3 * MS, n).astype(np.int64)  # the client's send lag
            sent = sched + lag
            user = np.full(n, -1)
        elif p["mode"] == "closed":
            users = max(1, round(n / dur_s * 0.9))  # ~0.9 s per request per user
            p["target"] = {"users": users, "duration_s": dur_s}
            sent = np.sort(rng.integers(start, end, n))
            sched = sent.copy()
            user = rng.integers(0, users, n)
        else:
            p["target"] = {"duration_s": dur_s}
            sched = sent = user = np.array([], dtype=np.int64)
        cols["phase"].append(np.full(n, p["name"], dtype=object))
        cols["user"].append(user)
        cols["scheduled_ns"].append(sched)
        cols["sent_ns"].append(sent)
        marks.append({"name": p["name"], "mode": p["mode"], "warmup": p["warmup"], "start_ns": int(start),
                      "end_ns": int(end), "drained_ns": int(end + drain_ns), "target": p["target"],
                      "label": p["label"], "open_loop": p["open_loop"]})
        t = end + drain_ns + 50 * MS  # the next phase starts a moment after this one drained
    cat = {k: np.concatenate(v) for k, v in cols.items()}
    sent = cat["sent_ns"].astype(np.int64)

    # status: 99 % ok; the rest split between server errors, timeouts and cancellations
    status = rng.choice(np.array(["ok", "http_error", "timeout", "cancelled"], dtype=object), n_req,
                        p=[0.99, 0.005, 0.003, 0.002])
    ok = status == "ok"
    n_ok = int(ok.sum())
    first_byte = sent + rng.gamma(4.0, 10 * MS, n_req).astype(np.int64)
    ttft = (first_byte - sent) + rng.gamma(2.0, 40 * MS, n_req).astype(np.int64)
    first_token = sent + ttft
    # chunk arrivals: per request a mean ITL of 5-20 ms, per gap exponential jitter; ~10 % of gaps
    # 0 (several events in one socket read share its receive time)
    itl_mean = rng.uniform(5 * MS, 20 * MS, n_ok)
    gaps = rng.exponential(1.0, (n_ok, n_chunks - 1)).astype(np.float32)
    gaps *= itl_mean[:, None].astype(np.float32)
    gaps[rng.random((n_ok, n_chunks - 1), dtype=np.float32) < 0.1] = 0
    stamps = np.empty((n_ok, n_chunks), dtype=np.int64)
    stamps[:, 0] = first_token[ok]
    stamps[:, 1:] = first_token[ok][:, None] + np.cumsum(gaps, axis=1, dtype=np.float64).astype(np.int64)
    del gaps
    end = np.where(ok, 0, sent + rng.integers(1 * MS, 500 * MS, n_req))
    end[ok] = stamps[:, -1] + rng.integers(100_000, 2 * MS, n_ok)
    chunk_ns = np.empty(n_req, dtype=object)
    chunk_ns[:] = [np.array([], dtype=np.int64)] * n_req
    chunk_ns[np.flatnonzero(ok)] = list(stamps)  # rows of one (n_ok, n_chunks) array: views, no copies
    texts = np.array(["".join(rng.choice(list("abcdefgh "), 4 * n_chunks)) for _ in range(512)], dtype=object)

    na = pd.NA
    df = pd.DataFrame({
        "request_id": np.arange(n_req),
        "phase": cat["phase"],
        "user": cat["user"],
        "prompt_id": np.char.add("p", (np.arange(n_req) % 977).astype(str)).astype(object),
        "scheduled_ns": cat["scheduled_ns"],
        "sent_ns": sent,
        "headers_ns": pd.array(np.where(status == "cancelled", 0, first_byte - 100_000), dtype="Int64"),
        "first_byte_ns": pd.array(first_byte, dtype="Int64"),
        "first_token_ns": pd.array(np.where(ok, first_token, 0), dtype="Int64"),
        "end_ns": pd.array(end, dtype="Int64"),
        "chunk_ns": chunk_ns,
        "prompt_tokens": pd.array(rng.integers(20, 400, n_req), dtype="Int64"),
        "output_tokens": pd.array(np.full(n_req, n_chunks), dtype="Int64"),
        "output_tokens_source": np.where(ok, "usage", None),
        "output_chars": np.where(ok, 4 * n_chunks, 0),
        "finish_reason": np.where(ok, "length", None),
        "status": status,
        "http_status": pd.array(np.where(status == "http_error", 500, 200), dtype="Int64"),
        "error": np.where(ok, None, "synthetic failure"),
        "attempts": np.ones(n_req, dtype=np.int64),
        "max_tokens": pd.array([na] * n_req, dtype="Int64"),
        "output_text": np.where(ok, texts[rng.integers(0, len(texts), n_req)], ""),
        "client_output_tokens": pd.array(n_chunks + (rng.random(n_req) < 0.02).astype(np.int64), dtype="Int64"),
    }, columns=list(REQUEST_COLUMNS))
    not_ok = ~ok
    df.loc[not_ok, ["first_token_ns", "output_tokens", "client_output_tokens"]] = na
    df.loc[status == "cancelled", ["headers_ns", "first_byte_ns", "end_ns", "http_status"]] = na
    df = df.astype(REQUEST_COLUMNS)
    del stamps

    cell = {"engine": "bench", "model": "synthetic", "load": "long"}
    prov = {"host": {"cpu_cores": 2, "hostname": "bench"}, "config_hash": "bench"}
    extra = {"complete": True, "cell": cell}
    out.mkdir(parents=True, exist_ok=True)
    records.write_table(df, out / "requests.parquet", "requests", prov, extra)
    del df, chunk_ns

    # telemetry: the CPU sampler at 20 Hz from 10 s before the first phase to 5 s after the last drain
    t_end = marks[-1]["drained_ns"] + 5 * S
    tt = np.arange(0, t_end, 50 * MS, dtype=np.int64) + rng.integers(0, 2 * MS, (t_end + 50 * MS - 1) // (50 * MS))
    n_t = len(tt)
    tick = 0.01  # CPU-time counters advance in 10 ms ticks
    busy = np.floor(np.cumsum(rng.uniform(0.05, 0.1, n_t)) / tick) * tick
    srv = np.floor(np.cumsum(rng.uniform(0.02, 0.09, n_t)) / tick) * tick
    tel = pd.DataFrame({
        "t_ns": tt, "device": "cpu", "cpu_busy_s": busy + 12345.0, "server_cpu_s": srv,
        "server_rss_bytes": (2**30 + rng.integers(0, 2**24, n_t)).astype(np.int64),
        "mem_used_bytes": (8 * 2**30 + rng.integers(0, 2**26, n_t)).astype(np.int64),
        "energy_j": np.cumsum(rng.uniform(2.0, 4.0, n_t)) + 1e5,  # RAPL: ~60 W
        "client_cpu_s": np.floor(np.cumsum(rng.uniform(0.0, 0.02, n_t)) / tick) * tick,
        "source": "cpu",
    })
    records.write_table(tel, out / "telemetry.parquet", "telemetry", prov, extra)

    # the engine's own /metrics, scraped at 1 Hz: llama.cpp's counters and gauges
    ts = np.arange(0, t_end, S, dtype=np.int64)
    names = [("llamacpp:prompt_tokens_total", "counter"), ("llamacpp:tokens_predicted_total", "counter"),
             ("llamacpp:requests_processing", "gauge"), ("llamacpp:requests_deferred", "gauge")]
    em = pd.DataFrame({
        "t_ns": np.repeat(ts, len(names)), "path": "/metrics",
        "metric": np.tile([n for n, _ in names], len(ts)), "labels": "{}",
        "type": np.tile([t for _, t in names], len(ts)),
        "value": np.column_stack([np.arange(len(ts)) * 300.0, np.arange(len(ts)) * 1000.0,
                                  rng.integers(0, 9, len(ts)), rng.integers(0, 3, len(ts))]).ravel().astype(float),
    }).astype({"path": "string", "metric": "string", "labels": "string", "type": "string"})
    records.write_table(em, out / "engine_metrics.parquet", "engine_metrics", prov, extra)

    run = {
        "cell": cell, "complete": True, "server_ready_s": 3.2,
        "hardware": {"accelerator": None, "peak_flops": 1.2e12, "peak_note": "ISA-derived CPU peak",
                     "peak_measured": False, "cpu": {"model": "bench", "cores": 2}},
        "phases": marks,
        "client": {"event_loop_lag_p99_ms": 1.0, "event_loop_lag_max_ms": 3.0,
                   "event_loop_lag_by_phase": {m["name"]: {"p99_ms": 1.0, "max_ms": 3.0} for m in marks},
                   "event_loop": "uvloop", "requests_sent": n_req, "status_counts": {}},
    }
    records.write_json(run, out / "run.json", "run", prov)
    records.write_json({"name": "synthetic", "served_name": "synthetic", "path": "/dev/null",
                        "figures": {"parameters": 135_000_000, "quantization": "Q4_1"}},
                       out / "manifest.json", "model", prov)
    return {"requests": n_req, "ok": n_ok, "chunk_stamps": n_ok * n_chunks, "telemetry_rows": n_t,
            "phases": [(m["name"], m["mode"], round((m["end_ns"] - m["start_ns"]) / S)) for m in marks]}


# ================================================================================ stages
class _Io(list):
    """Snakemake's input/output/log objects: a list whose named items are also attributes."""

    def __init__(self, **named):
        super().__init__(named.values())
        self.__dict__.update(named)


def snakemake_object(stage: str, d: Path) -> SimpleNamespace:
    log = _Io(log=str(d / "logs" / f"{stage}.log"))
    if stage == "merge_telemetry":
        return SimpleNamespace(input=_Io(requests=str(d / "requests.parquet"), telemetry=str(d / "telemetry.parquet"),
                                         run=str(d / "run.json")),
                               output=_Io(timeline=str(d / "timeline.parquet")), log=log, params=SimpleNamespace())
    if stage == "compute_metrics":
        return SimpleNamespace(input=_Io(requests=str(d / "requests.parquet"), timeline=str(d / "timeline.parquet"),
                                         run=str(d / "run.json"), model=str(d / "manifest.json"),
                                         engine_metrics=str(d / "engine_metrics.parquet")),
                               output=_Io(metrics=str(d / "metrics.json"), windows=str(d / "windows.parquet")),
                               log=log, params=SimpleNamespace(hardware={"price_usd_per_hour": 1.0},
                                                               slo=SLO, validity=VALIDITY, level=0.95,
                                                               resamples=1000))
    if stage == "summarize_metrics":
        return SimpleNamespace(input=_Io(metrics=[str(d / "metrics.json")]), output=_Io(summary=str(d / "summary.parquet")),
                               log=log, params=SimpleNamespace())
    raise ValueError(stage)


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(stage: str, d: Path, result: Path) -> None:
    """Run one stage's wrapper script as Snakemake would (its own process), record time and peak RSS."""
    t0 = time.perf_counter()
    if stage == "generate":
        args = json.loads(os.environ["BENCH_GEN"])
        info = generate(args["requests"], args["chunks"], args["hours"], d, args["seed"])
    else:
        runpy.run_path(str(SCRIPTS / f"{stage}.py"), init_globals={"snakemake": snakemake_object(stage, d)},
                       run_name="__main__")
        info = {}
    ru = resource.getrusage(resource.RUSAGE_SELF)
    result.write_text(json.dumps({"script_s": time.perf_counter() - t0, "cpu_s": ru.ru_utime + ru.ru_stime,
                                  "peak_rss_mb": vm_hwm_mb(), **info}))


def run_stage(stage: str, d: Path, env: dict | None = None) -> dict:
    result = d / f".{stage}.result.json"
    result.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--_child", stage, "--out", str(d)],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result.exists():
        log = d / "logs" / f"{stage}.log"
        tail = log.read_text()[-3000:] if log.exists() else ""
        sys.exit(f"{stage} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}\n{tail}")
    return {"wall_s": wall, **json.loads(result.read_text())}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--chunks", type=int, default=64, help="content chunks (timestamps) per ok request")
    ap.add_argument("--telemetry-hours", type=float, default=1.0, help="length of the run, telemetry at 20 Hz")
    ap.add_argument("--out", required=True, help="folder for the generated records and the stages' outputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true", help="keep records already generated with the same parameters")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    ap.add_argument("--threads", type=int, default=0,
                    help="threads per stage (OMP_NUM_THREADS, which Snakemake sets to a rule's threads); "
                         "default: each rule's own")
    ap.add_argument("--repeat", type=int, default=1, help="run the stages this many times; prints the fastest too")
    ap.add_argument("--json", help="also write the figures here as JSON")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    d = Path(args.out)
    if args._child:
        child(args._child, d, d / f".{args._child}.result.json")
        return 0

    d.mkdir(parents=True, exist_ok=True)
    params = {"requests": args.requests, "chunks": args.chunks, "hours": args.telemetry_hours, "seed": args.seed}
    stamp = d / "generated.json"
    if args.reuse and stamp.exists() and json.loads(stamp.read_text()).get("params") == params:
        gen = json.loads(stamp.read_text())["info"]
        print(f"records: reused {d} ({gen['requests']:,} requests)")
    else:
        gen = run_stage("generate", d, {"BENCH_GEN": json.dumps(params)})
        stamp.write_text(json.dumps({"params": params, "info": gen}))
        print(f"records: generated in {gen['wall_s']:.1f} s, {gen['peak_rss_mb']:.0f} MB peak")
    print(f"  {gen['requests']:,} requests ({gen['ok']:,} ok, {gen['chunk_stamps']:,} chunk stamps), "
          f"{gen['telemetry_rows']:,} telemetry rows; phases {gen['phases']}")
    sizes = {f: (d / f).stat().st_size / 2**20 for f in ("requests.parquet", "telemetry.parquet")}
    print("  files: " + ", ".join(f"{k} {v:.0f} MB" for k, v in sizes.items()))

    runs = []
    for k in range(args.repeat):
        rows = []
        head = f"run {k + 1} of {args.repeat}" if args.repeat > 1 else "stage"
        print(f"\n{head:<20}{'wall s':>9}{'script s':>10}{'CPU s':>8}{'peak RSS MB':>13}   load avg before")
        for stage in args.stages.split(","):
            la = loadavg()
            r = run_stage(stage, d, {"OMP_NUM_THREADS": str(args.threads or RULE_THREADS[stage])})
            rows.append({"stage": stage, "loadavg_before": la, **r})
            print(f"{stage:<20}{r['wall_s']:>9.2f}{r['script_s']:>10.2f}{r['cpu_s']:>8.2f}{r['peak_rss_mb']:>13.0f}   {la}")
        total = {k: sum(r[k] for r in rows) for k in ("wall_s", "script_s", "cpu_s")}
        total["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rows)
        print(f"{'total':<20}{total['wall_s']:>9.2f}{total['script_s']:>10.2f}{total['cpu_s']:>8.2f}"
              f"{total['peak_rss_mb']:>13.0f}   (peak: the largest stage's)   load avg after {loadavg()}")
        runs.append({"stages": rows, "total": total})
    if args.repeat > 1:  # the least disturbed run of each stage: what the code costs, less the neighbours
        best = {st: min((r for run in runs for r in run["stages"] if r["stage"] == st), key=lambda r: r["wall_s"])
                for st in args.stages.split(",")}
        print(f"\n{'fastest of ' + str(args.repeat):<20}{'wall s':>9}{'script s':>10}{'CPU s':>8}{'peak RSS MB':>13}")
        for st, r in best.items():
            print(f"{st:<20}{r['wall_s']:>9.2f}{r['script_s']:>10.2f}{r['cpu_s']:>8.2f}{r['peak_rss_mb']:>13.0f}")
        print(f"{'total':<20}{sum(r['wall_s'] for r in best.values()):>9.2f}"
              f"{sum(r['script_s'] for r in best.values()):>10.2f}{sum(r['cpu_s'] for r in best.values()):>8.2f}"
              f"{max(r['peak_rss_mb'] for r in best.values()):>13.0f}")
    print(f"host: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"params": params, "generated": gen, "runs": runs,
                                               "cpus": os.cpu_count()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
