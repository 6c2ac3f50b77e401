#!/usr/bin/env python3
"""Client benchmark: how fast and how accurate are tokenbench's load-generating clients?

One command runs everything and prints tables (and writes JSON with --out):

    .venv/bin/python tests/perf/bench_client.py            # ~6 min
    .venv/bin/python tests/perf/bench_client.py --quick    # ~1 min
    .venv/bin/python tests/perf/bench_client.py --peers none --out bench.json

The fake server (tests.fakes.fast_fake_server, a raw asyncio server) runs in its own process pinned to
one core; each client under test runs in its own process pinned to another core. Clients:

- ``tokenbench``: tokenbench.load.generator as the pipeline runs it (``session_factory`` + ``Client`` +
  ``LoadTest``, over tokenbench.load.http_stream, with the request journal);
- ``tokenbench+uvloop``: the same on uvloop's event loop, as the pipeline and ``tokenbench run``
  use it wherever uvloop is installed (a project dependency on Linux and macOS);
- peers from PyPI (guidellm, aiperf), installed into their own venvs under ``.venv-peers/``.

Sections: client capacity (closed loop, zero injected delays: output tokens/s), timing error (TTFT
20 ms / ITL 5 ms injected), open-loop accuracy (Poisson and constant arrivals). See
tests/perf/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "workflow" / "scripts"
sys.path[:0] = [str(ROOT), str(SCRIPTS)]  # tests.fakes, and this checkout's tokenbench before any installed one

now_ns = time.monotonic_ns
PEERS_DIR = ROOT / ".venv-peers"
PEER_VERSIONS = {"guidellm": "guidellm==0.8.1", "aiperf": "aiperf==0.13.0"}
EXTRAS_DIR = PEERS_DIR / "extras"  # optional speed-ups tried by the bench (pip --target), not project deps
EXTRAS = ["uvloop==0.23.0"]

CAPS = {"chat", "completions", "stream_usage", "ignore_eos"}


def request_spec(max_tokens: int):
    from tokenbench.config import RequestSpec

    return RequestSpec(endpoint="chat", max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


# =================================================================================================
# the http_stream-based client: loadgen.Client's contract, http_stream underneath
# =================================================================================================

class _JsonShim:
    """json.loads that remembers the server's send stamp ("t_ns") and receipt stamp ("rx_ns", the
    kernel's receive time of the request's last byte; "rx_kernel": false where it was user-space) of
    the object it last parsed.

    Used only in timing runs: the client appends to ``rec.chunk_ns`` synchronously right after
    parsing the chunk, so a chunk_ns that reads ``last`` on append pairs each arrival with its stamp.
    """

    last = None
    last_rx = None
    last_rx_kernel = True

    def __init__(self):
        self._loads = json.loads

    def loads(self, data):
        obj = self._loads(data)
        d = isinstance(obj, dict)
        _JsonShim.last = obj.get("t_ns") if d else None
        _JsonShim.last_rx = obj.get("rx_ns") if d else None
        _JsonShim.last_rx_kernel = obj.get("rx_kernel", True) if d else True
        return obj

    def __getattr__(self, name):
        return getattr(json, name)


class StampArray(array):
    """RequestRecord.chunk_ns (an ``array('q')``) that also keeps each chunk's server send stamp and
    the first chunk's server receipt stamp (the journal copies only the arrivals)."""

    def __new__(cls, *args):
        self = super().__new__(cls, "q")
        self.stamps, self.rx, self.rx_kernel = [], None, True
        return self

    def append(self, t):
        array.append(self, t)
        self.stamps.append(_JsonShim.last)
        if self.rx is None:
            self.rx, self.rx_kernel = _JsonShim.last_rx, _JsonShim.last_rx_kernel


def instrument_stamps():
    """Pair every recorded content-chunk arrival with the server's send stamp."""
    from tokenbench.load import generator as loadgen

    shim = _JsonShim()
    loadgen._loads = shim.loads  # json instead of orjson in timing runs: only timing is measured there
    record = loadgen.RequestRecord

    def stamped_record(*args, **kw):  # LoadTest._new builds records through this module-level name
        rec = record(*args, **kw)
        rec.chunk_ns = StampArray()
        return rec

    loadgen.RequestRecord = stamped_record


# =================================================================================================
# worker: runs jobs for one client kind in this (pinned) process, prints JSON results
# =================================================================================================

def pct(xs, q):
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def client_factory(kind: str, url: str, max_tokens: int):
    from tokenbench.load import generator as loadgen

    req = request_spec(max_tokens)
    return loadgen.session_factory(url, "/v1", "fake", req, CAPS)


class _NoJournal:
    """--no-journal: finished records are dropped (LoadTest requires a journal)."""
    path = None

    def add(self, rec):
        pass

    def flush(self):
        pass

    def close(self):
        pass


SCRATCH: list = []


def journal_file():
    """A scratch request journal (Arrow IPC, removed when the worker ends), as the pipeline always
    writes one; a journal that drops records with --no-journal."""
    if not JOURNAL:
        return _NoJournal()
    import tempfile

    from tokenbench.load.journal import Journal
    if not SCRATCH:
        SCRATCH.append(tempfile.mkdtemp(prefix="tokenbench-bench-journal-"))
    return Journal(Path(SCRATCH[0]) / f"j{time.monotonic_ns()}.arrow")


def long_prompts(kb: int) -> list[dict]:
    """One synthetic prompt of ``kb`` KiB of text (~kb/4 k tokens at ~4 characters a token; the fake
    server does not tokenize it)."""
    words = "the quick brown fox jumps over the lazy dog while benchmarking long context prefill "
    text = (words * (kb * 1024 // len(words) + 1))[:kb * 1024]
    return [{"id": f"long{kb}k", "text": text}]


async def job_closed(kind, url, conc, duration, warmup, max_tokens, timing, warm=None, prompt_kb=None,
                     split=False):
    from tokenbench.load import generator as loadgen
    from tokenbench.load.phases import ClosedPhase
    from tokenbench.load.prompts import PromptStream, builtin_prompts

    prompts = long_prompts(prompt_kb) if prompt_kb else builtin_prompts()
    test = loadgen.LoadTest(client_factory(kind, url, max_tokens), PromptStream(prompts, 0),
                            journal=journal_file())
    records: list = []  # this job's records, seen as each finishes (before the journal takes it)
    test.on_finished.append(records.append)
    phase = ClosedPhase(name="c", users=conc, duration_s=duration, timeout_s=120, drain_timeout_s=60,
                        warm_connections=warm)
    cpu0, scpu0, wall0 = time.process_time(), proc_cpu_s(SERVER_PID), time.monotonic()
    await test.run([phase])
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    scpu = proc_cpu_s(SERVER_PID) - scpu0 if SERVER_PID else None
    mark = test.marks[0]
    w0, w1 = mark.start_ns + int(warmup * 1e9), mark.end_ns
    span = (w1 - w0) / 1e9
    tokens = sum(1 for r in records for t in r.chunk_ns if w0 <= t < w1)
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    out = {"client": kind, "concurrency": conc, "duration_s": duration, "window_s": span,
           "output_tok_s": tokens / span,
           "requests_s": sum(1 for r in records if r.end_ns and w0 <= r.end_ns < w1 and r.status == "ok") / span,
           "statuses": statuses, "client_cpu_s": cpu, "wall_s": wall,
           "client_cpu_util": cpu / wall, "server_cpu_util": scpu / wall if scpu is not None else None,
           "tok_per_client_cpu_s": sum(len(r.chunk_ns) for r in records) / cpu if cpu else None,
           "loop_lag_ms_p99": (pct([v for _, v in test.loop_lag], 99) or 0) / 1e6}
    if timing:
        out.update(timing_errors(records, w0, timing))
    if split:
        out.update(ttft_split(records, timing[0], timing[1]))
    out["requests"] = len(records)
    out["warm_connections"] = mark.warm_connections
    return out


def ttft_split(records, ttft_ms, itl_ms):
    """TTFT error against the server's ground truth, for each user's first request and for all.

    Ground truth per request: the server's first-content-chunk send stamp (``t_ns``, taken just
    before its write) − the kernel receive timestamp of the request's last byte at the server
    (``rx_ns``). The client's TTFT is its kernel receive timestamp of that chunk − ``written_ns``
    (the new definition) or − ``sent_ns`` (the attempt start: the old one). Error = client − truth,
    split into its two halves: write = ``written_ns`` − server ``rx_ns`` (how long after the request
    reached the server the client stamped it written), delivery = client receive − server send
    stamp. Also: connect (written − sent), the server's own lateness against the injected TTFT
    (inside the old "measured − injected" error, not a client error), and ITL error per gap against
    the server's own gap (client gap − server gap, both sides stamped), beside |gap − injected|."""
    first: dict[int, object] = {}
    timed = [r for r in records if r.status == "ok" and r.first_token_ns is not None and r.chunk_ns
             and getattr(r.chunk_ns, "rx", None) and r.chunk_ns.stamps and r.chunk_ns.stamps[0]]
    for r in timed:
        if r.user not in first or r.sent_ns < first[r.user].sent_ns:
            first[r.user] = r
    out = {"kernel_rx_stamps": sum(1 for r in timed if r.chunk_ns.rx_kernel), "timed": len(timed)}
    for label, recs in (("first", list(first.values())), ("all", timed)):
        truth = [(r.chunk_ns.stamps[0] - r.chunk_ns.rx) / 1e6 for r in recs]
        sent = [(r.chunk_ns[0] - r.sent_ns) / 1e6 - t for r, t in zip(recs, truth)]
        written = [(r.chunk_ns[0] - r.written_ns) / 1e6 - t for r, t in zip(recs, truth) if r.written_ns]
        write = [(r.written_ns - r.chunk_ns.rx) / 1e6 for r in recs if r.written_ns]
        delivery = [(r.chunk_ns[0] - r.chunk_ns.stamps[0]) / 1e6 for r in recs]
        late = [t - ttft_ms for t in truth]
        conn = [(r.written_ns - r.sent_ns) / 1e6 for r in recs if r.written_ns]
        for q in (50, 99):
            out[f"ttft_err_sent_{label}_p{q}"] = pct(sent, q)
            out[f"ttft_err_written_{label}_p{q}"] = pct(written, q)
            out[f"ttft_abs_err_written_{label}_p{q}"] = pct([abs(x) for x in written], q)
            out[f"write_{label}_ms_p{q}"] = pct(write, q)
            out[f"delivery_{label}_ms_p{q}"] = pct(delivery, q)
            out[f"server_late_{label}_ms_p{q}"] = pct(late, q)
            out[f"connect_{label}_ms_p{q}"] = pct(conn, q)
        out[f"ttft_abs_err_written_{label}_max"] = max((abs(x) for x in written), default=None)
        out[f"n_{label}"] = len(recs)
        out[f"connections_{label}"] = dict(sorted({c: sum(1 for r in recs if r.connection == c)
                                                   for c in {r.connection for r in recs}}.items(), key=str))
    gaps, vs_injected = [], []
    for r in timed:
        st = r.chunk_ns.stamps
        for i in range(1, len(r.chunk_ns)):
            if st[i] and st[i - 1]:
                gaps.append(abs((r.chunk_ns[i] - r.chunk_ns[i - 1]) - (st[i] - st[i - 1])) / 1e6)
            vs_injected.append(abs((r.chunk_ns[i] - r.chunk_ns[i - 1]) / 1e6 - itl_ms))
    for q in (50, 99):
        out[f"itl_abs_err_ms_p{q}"] = pct(gaps, q)
        out[f"itl_abs_dev_injected_ms_p{q}"] = pct(vs_injected, q)
    out["itl_gaps"] = len(gaps)
    return out


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def job_memory(kind, url, users, requests, max_tokens):
    """Peak RSS of this (fresh) process over a closed loop of ``requests`` requests, minus its RSS
    before the run (after imports)."""
    import resource

    from tokenbench.load import generator as loadgen
    from tokenbench.load.phases import ClosedPhase
    from tokenbench.load.prompts import PromptStream, builtin_prompts

    test = loadgen.LoadTest(client_factory(kind, url, max_tokens), PromptStream(builtin_prompts(), 0),
                            journal=journal_file())
    rss0 = rss_kib()
    wall0, cpu0 = time.monotonic(), time.process_time()
    await test.run([ClosedPhase(name="m", users=users, requests=requests, timeout_s=120, drain_timeout_s=60)])
    wall = time.monotonic() - wall0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    size = sum(os.path.getsize(p) for p in test.journal_paths if p and os.path.exists(p))
    return {"what": f"{requests:,} requests", "requests": test.requests_sent, "ok": test.status_counts.get("ok", 0),
            "rss_before_mib": rss0 / 1024, "peak_rss_mib": peak / 1024, "growth_mib": (peak - rss0) / 1024,
            "kib_per_request": (peak - rss0) / max(1, test.requests_sent), "seconds": wall,
            "requests_s": test.requests_sent / wall, "client_cpu_s": time.process_time() - cpu0,
            "journal_mib": size / 2**20, "statuses": dict(test.status_counts)}


def job_journal(n, chunks):
    """``n`` synthetic finished records of ``chunks`` chunk arrivals each through Journal.add (no network)."""
    import resource

    from tokenbench.load.journal import RequestRecord
    j = journal_file()
    rss0 = rss_kib()
    t0 = time.monotonic()
    base = 10**15
    step = 20_000_000  # records 20 ms apart, chunks 1 ms apart
    for i in range(n):
        t = base + i * step
        rec = RequestRecord(i, "j", i % 64, "p", t, sent_ns=t + 1000, connected_ns=t + 2000, written_ns=t + 3000,
                            headers_ns=t + 4000, first_byte_ns=t + 5000, first_event_ns=t + 6000,
                            first_token_ns=t + 7000, first_output_token_ns=t + 7000, end_ns=t + chunks * 1_000_000,
                            prompt_tokens=8, output_tokens=chunks, output_tokens_source="usage", output_chars=4 * chunks,
                            finish_reason="length", status="ok", http_status=200, connection="reused", attempts=1)
        rec.chunk_ns = array("q", range(t + 7000, t + 7000 + chunks * 1_000_000, 1_000_000))
        j.add(rec)
    j.close()
    wall = time.monotonic() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = os.path.getsize(j.path) if j.path else 0
    return {"what": f"journal: {n:,} records × {chunks} chunks", "requests": n, "rss_before_mib": rss0 / 1024,
            "peak_rss_mib": peak / 1024, "growth_mib": (peak - rss0) / 1024, "kib_per_request": (peak - rss0) / n,
            "seconds": wall, "requests_s": n / wall, "journal_mib": size / 2**20}


def job_shards(url, processes, users, duration, warmup, max_tokens):
    """Capacity through tokenbench.load.shards.load_test on ``processes`` client processes; client CPU is
    this process's plus its joined workers' (getrusage RUSAGE_CHILDREN: they are waited for by the run)."""
    import resource

    from pyarrow import compute as pc
    from tokenbench.load.generator import run_async
    from tokenbench.load.journal import batches
    from tokenbench.load.phases import ClosedPhase
    from tokenbench.load.prompts import builtin_prompts
    from tokenbench.load.shards import ClientSpec, load_test

    journal = journal_file()
    journal.close()
    spec = ClientSpec(url, "/v1", "fake", request_spec(max_tokens), frozenset(CAPS))
    test = load_test(processes, spec, builtin_prompts(), "bench", 0, journal.path)
    phase = ClosedPhase(name="p", users=users, duration_s=duration, timeout_s=60, drain_timeout_s=10)
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0, scpu0, wall0 = time.process_time(), proc_cpu_s(SERVER_PID), time.monotonic()
    run_async(test.run([phase]))
    wall = time.monotonic() - wall0
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = time.process_time() - cpu0
    children = (ch1.ru_utime - ch0.ru_utime) + (ch1.ru_stime - ch0.ru_stime)
    scpu = proc_cpu_s(SERVER_PID) - scpu0 if SERVER_PID else None
    mark = test.marks[0]
    w0, w1 = mark.start_ns + int(warmup * 1e9), mark.end_ns
    span = (w1 - w0) / 1e9
    tokens = reqs = 0
    for b in batches(*test.journal_paths):
        flat = b.column("chunk_ns").flatten().to_numpy()
        tokens += int(((flat >= w0) & (flat < w1)).sum())
        end = b.column("end_ns").to_numpy(zero_copy_only=False)
        ok = pc.equal(b.column("status"), "ok").to_numpy(zero_copy_only=False)
        reqs += int((ok & (end >= w0) & (end < w1)).sum())
    cpu = own + children
    sent = test.requests_sent
    return {"processes": processes, "concurrency": users, "window_s": span, "requests_s": reqs / span,
            "output_tok_s": tokens / span, "requests": sent, "statuses": dict(test.status_counts),
            "client_cpu_s": cpu, "client_cpu_s_parent": own, "client_cpu_s_workers": children, "wall_s": wall,
            "client_cpu_s_per_request": cpu / max(1, sent), "requests_per_client_cpu_s": sent / cpu if cpu else None,
            "server_cpu_util": scpu / wall if scpu is not None else None}


def timing_errors(records, w0, timing):
    ttft_ms, itl_ms = timing
    ttft, itl, err_ttft, err_itl, stamp_err = [], [], [], [], []
    for r in records:
        if r.status != "ok" or r.sent_ns < w0 or r.first_token_ns is None:
            continue
        t = (r.first_token_ns - r.sent_ns) / 1e6
        ttft.append(t)
        err_ttft.append(abs(t - ttft_ms))
        for a, b in zip(r.chunk_ns, r.chunk_ns[1:]):
            g = (b - a) / 1e6
            itl.append(g)
            err_itl.append(abs(g - itl_ms))
        stamps = getattr(r.chunk_ns, "stamps", None)
        if stamps:
            stamp_err += [(a - s) / 1e6 for a, s in zip(r.chunk_ns, stamps) if s]
    return {"ttft_ms_p50": pct(ttft, 50), "ttft_ms_p99": pct(ttft, 99), "itl_ms_p50": pct(itl, 50),
            "itl_ms_p99": pct(itl, 99),
            "abs_err_ttft_ms_p50": pct(err_ttft, 50), "abs_err_ttft_ms_p99": pct(err_ttft, 99),
            "abs_err_itl_ms_p50": pct(err_itl, 50), "abs_err_itl_ms_p99": pct(err_itl, 99),
            "stamp_err_ms_p50": pct(stamp_err, 50), "stamp_err_ms_p99": pct(stamp_err, 99),
            "stamp_err_ms_max": max(stamp_err) if stamp_err else None, "timed_requests": len(ttft)}


def schedule(arrival: str, rate: float, duration: float, seed: int = 0):
    """Offsets (ns) of the arrivals in [0, duration): exponential gaps or a constant period."""
    if arrival == "constant":  # the first at 0: exactly rate × duration arrivals
        return [int(i / rate * 1e9) for i in range(int(round(rate * duration)))]
    rng = random.Random(f"{seed}:{arrival}:{rate}")
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return [int(x * 1e9) for x in out]
        out.append(t)


async def job_open(kind, url, arrival, rate, duration, scheduler, max_tokens):
    """Open loop. scheduler 'loadgen': LoadTest running a PoissonPhase, as the pipeline does.
    scheduler 'precise': sleep until 1.5 ms before each arrival, then yield in a loop until it is due."""
    from tokenbench.load import generator as loadgen
    from tokenbench.load.phases import PoissonPhase
    from tokenbench.load.prompts import PromptStream, builtin_prompts

    cpu0 = time.process_time()
    if scheduler == "loadgen":
        test = loadgen.LoadTest(client_factory(kind, url, max_tokens), PromptStream(builtin_prompts(), 0),
                                journal=journal_file())
        recs: list = []
        test.on_finished.append(recs.append)
        phase = PoissonPhase(name="o", rate_rps=rate, duration_s=duration, timeout_s=30, drain_timeout_s=10)
        await test.run([phase])
        start, end = test.marks[0].start_ns, test.marks[0].end_ns
        scheduled = len(recs)
    else:
        prompts = PromptStream(builtin_prompts(), 0)
        offsets = schedule(arrival, rate, duration)
        recs = []
        async with client_factory(kind, url, max_tokens)() as client:
            tasks = set()
            start = now_ns() + 50_000_000
            for i, off in enumerate(offsets):
                t_sched = start + off
                d = t_sched - now_ns()
                if d > 2_000_000:
                    await asyncio.sleep((d - 1_500_000) / 1e9)
                while now_ns() < t_sched:
                    await asyncio.sleep(0)
                p = prompts.next()
                rec = loadgen.RequestRecord(i, "o", -1, p["id"], t_sched)
                recs.append(rec)
                task = asyncio.create_task(client.send(rec, p["text"], 30))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            end = start + int(duration * 1e9)
            d = end - now_ns()
            if d > 0:
                await asyncio.sleep(d / 1e9)
            if tasks:
                await asyncio.wait(tasks, timeout=10)
        scheduled = len(offsets)
    cpu = time.process_time() - cpu0
    sent = [r for r in recs if r.sent_ns and start <= r.sent_ns < end]
    lag = [(r.sent_ns - r.scheduled_ns) / 1e6 for r in recs if r.sent_ns]
    statuses: dict[str, int] = {}
    for r in recs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    span = (end - start) / 1e9
    return {"client": kind, "scheduler": scheduler, "arrival": arrival, "target_rps": rate,
            "scheduled_rps": scheduled / span, "achieved_rps": len(sent) / span,
            "achieved_vs_target": len(sent) / span / rate, "achieved_vs_scheduled": len(sent) / max(1, scheduled),
            "send_lag_ms_p50": pct(lag, 50), "send_lag_ms_p99": pct(lag, 99), "send_lag_ms_max": max(lag) if lag else None,
            "statuses": statuses, "client_cpu_s": cpu, "window_s": span}


SERVER_PID = None
JOURNAL = True


def proc_cpu_s(pid) -> float:
    """user + system CPU seconds of a process, from /proc (0 where unreadable)."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def worker(spec: dict) -> None:
    global SERVER_PID, JOURNAL
    SERVER_PID = spec.get("server_pid")
    JOURNAL = spec.get("journal", True)
    if spec.get("cpu") is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {spec["cpu"]})
    kind = spec["client"]
    run_jobs = asyncio.run  # plain asyncio: the baseline
    if kind == "tokenbench+uvloop":
        from tokenbench.load.generator import event_loop_name, run_async

        sys.path.append(str(EXTRAS_DIR))  # after the project's own packages
        if event_loop_name() == "asyncio":
            print(json.dumps({"error": "uvloop is not installed"}))
            return
        run_jobs = run_async  # uvloop's event loop, exactly as the pipeline and `tokenbench run` start it
        kind = "tokenbench"
    if spec.get("stamps"):
        instrument_stamps()
    results = []
    try:
        for job in spec["jobs"]:
            results.append(run_job(kind, spec, job, run_jobs))
    finally:
        for d in SCRATCH:
            shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(results))


def run_job(kind, spec, job, run_jobs):
    if job["mode"] == "journal":
        return job_journal(job["records"], job["chunks"])
    if job["mode"] == "shards":
        return job_shards(spec["url"], job["processes"], job["concurrency"], job["duration"], job["warmup"],
                          spec["max_tokens"])
    if True:
        if job["mode"] == "closed":
            coro = job_closed(kind, spec["url"], job["concurrency"], job["duration"], job["warmup"],
                              job.get("max_tokens", spec["max_tokens"]), job.get("timing"), job.get("warm"),
                              job.get("prompt_kb"), job.get("split", False))
        elif job["mode"] == "memory":
            coro = job_memory(kind, spec["url"], job["concurrency"], job["requests"], spec["max_tokens"])
        else:
            coro = job_open(kind, spec["url"], job["arrival"], job["rate"], job["duration"], job["scheduler"],
                            spec["max_tokens"])
        r = run_jobs(coro)
        r["client"] = spec["client"]
        return r


# =================================================================================================
# parser micro-benchmark: no sockets, no event loop, so it is steady even on a busy machine
# =================================================================================================

def parser_bench() -> list[dict]:
    from tokenbench.load.http_stream import StreamResult, _Conn

    from tests.fakes.fast_fake_server import _SSE_HEAD, FastBehaviour, _frame, _Stream

    class _T:
        def write(self, b):
            pass

        def abort(self):
            pass

    class _F:
        done_ = False

        def done(self):
            return self.done_

        def set_result(self, r):
            self.done_ = True

    st = _Stream(None, FastBehaviour(), 64, True, "fake", 1, 0)
    frames = [_frame(st.role())] + [_frame(st.chunk(i, 0)) for i in range(64)]
    frames[-1] = _frame(st.chunk(63, 0) + st.tail(0)) + b"0\r\n\r\n"
    sample = st.chunk(7, 0)[6:-2]
    rows = []
    for per_read in (1, 8, 65):
        reads = [b"".join(frames[i:i + per_read]) for i in range(0, len(frames), per_read)]
        best = None
        for _ in range(3):
            c = _Conn(None)
            c.transport = _T()
            n = 0
            t0 = time.perf_counter()
            for _ in range(1000):
                res, fut = StreamResult(), _F()
                c.start(res, lambda t, d: None, fut, b"")
                c.data_received(_SSE_HEAD)
                for r in reads:
                    c.data_received(r)
                n += res.events
            dt = (time.perf_counter() - t0) / n * 1e6
            best = dt if best is None else min(best, dt)
        rows.append({"what": f"http_stream parse, {per_read} events/read", "us_per_event": best})
    decoders = [("json.loads(bytes)  [loadgen today]", json.loads),
                ("JSONDecoder().raw_decode(bytes.decode())", lambda d, rd=json.JSONDecoder().raw_decode: rd(d.decode())[0])]
    try:
        sys.path.append(str(EXTRAS_DIR))
        import orjson
        decoders.append(("orjson.loads", orjson.loads))
    except ImportError:
        pass
    for name, f in decoders:
        best = None
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(50000):
                f(sample)
            dt = (time.perf_counter() - t0) / 50000 * 1e6
            best = dt if best is None else min(best, dt)
        rows.append({"what": name + " of one chunk", "us_per_event": best})
    # loadgen's journal line per finished request (LoadTest._finished): asdict deep-copies chunk_ns
    import dataclasses
    import tempfile

    from tokenbench.load.generator import RequestRecord
    rec = RequestRecord(1, "p", 0, "x", 10**15, sent_ns=1, headers_ns=2, first_byte_ns=3, first_token_ns=4,
                        end_ns=5, chunk_ns=list(range(10**15, 10**15 + 64)), prompt_tokens=8, output_tokens=64,
                        output_tokens_source="usage", output_chars=300, finish_reason="length", status="ok",
                        http_status=200)
    shallow = lambda r: {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
    with tempfile.TemporaryFile("w") as f:
        for name, fn in [("journal line, json.dumps(asdict(rec)) + write + flush  [loadgen today]",
                          lambda: (f.write(json.dumps(dataclasses.asdict(rec)) + "\n"), f.flush())),
                         ("journal line, json.dumps(shallow dict) + write, no flush",
                          lambda: f.write(json.dumps(shallow(rec)) + "\n"))]:
            best = None
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in range(2000):
                    fn()
                dt = (time.perf_counter() - t0) / 2000 * 1e6
                best = dt if best is None else min(best, dt)
            rows.append({"what": name + " (64-chunk record; per request)", "us_per_event": best})
    return rows


# =================================================================================================
# orchestration
# =================================================================================================

NO_JOURNAL = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpus():
    try:
        c = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None, None
    if len(c) >= 2:
        return c[0], c[1]
    return None, None


def env_with_scripts():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + str(SCRIPTS) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Server:
    def __init__(self, cpu, tokens, ttft_ms=0.0, itl_ms=0.0, stamp=False, precise=False, burst=False):
        self.port = free_port()
        cmd = [sys.executable, "-m", "tests.fakes.fast_fake_server", "--port", str(self.port), "--tokens", str(tokens),
               "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms)]
        cmd += ["--stamp"] * stamp + ["--precise"] * precise + ["--burst"] * burst
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        self.proc = subprocess.Popen(cmd, env=env_with_scripts(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"fake server did not start: {line}{self.proc.stdout.read()}")
        self.url = f"http://127.0.0.1:{self.port}"

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def stats(self, reset=False) -> dict:
        import urllib.request
        with urllib.request.urlopen(self.url + "/stats" + ("?reset=1" if reset else ""), timeout=5) as r:
            return json.loads(r.read())

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_worker(client, server, jobs, cpu, max_tokens, stamps=False, timeout=None):
    spec = {"client": client, "url": server.url if server else None, "jobs": jobs, "cpu": cpu, "max_tokens": max_tokens,
            "stamps": stamps, "server_pid": server.proc.pid if server else None, "journal": not NO_JOURNAL}
    budget = timeout or (sum(j.get("duration", 60) for j in jobs) + 30 + 5 * len(jobs))
    p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env_with_scripts(),
                       capture_output=True, text=True, timeout=budget)
    if p.returncode != 0:
        return [{"client": client, "error": (p.stderr or p.stdout).strip().splitlines()[-1:] or ["failed"]}]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if isinstance(out, dict) and "error" in out:
        return [{"client": client, **out}]
    return out


# -- peers ---------------------------------------------------------------------------------------

def peer_python(name: str) -> Path:
    return PEERS_DIR / name / "bin" / "python"


def ensure_peer(name: str, install: bool, log) -> str | None:
    """Make .venv-peers/<name> (a venv of its own) with the peer installed; return an error or None."""
    py = peer_python(name)
    exe = PEERS_DIR / name / "bin" / name
    if exe.exists():
        return None
    if not install:
        return f"{name} is not installed in {PEERS_DIR / name} (run without --no-peer-install)"
    base = shutil.which("python3.11") or sys.executable
    try:
        log(f"  installing {PEER_VERSIONS[name]} into {PEERS_DIR / name} (first time only; guidellm pulls torch)")
        subprocess.run([base, "-m", "venv", str(PEERS_DIR / name)], check=True, capture_output=True, timeout=120)
        p = subprocess.run([str(py), "-m", "pip", "install", "-q", PEER_VERSIONS[name]], capture_output=True,
                           text=True, timeout=1800)
        if p.returncode != 0:
            return f"pip install {PEER_VERSIONS[name]} failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}"
    except (subprocess.SubprocessError, OSError) as exc:
        return f"could not install {name}: {exc}"
    return None if exe.exists() else f"{name} installed but {exe} is missing"


TOKENIZER_SCRIPT = r"""
import sys
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
words = ["[UNK]", "[PAD]"] + [f"w{i}" for i in range(2000)] + [f"t{i}" for i in range(10000)]
tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(sys.argv[1])
"""


def ensure_tokenizer(name: str) -> Path:
    """Peers need a Hugging Face tokenizer for synthetic prompts; the hub is out of reach, so make a
    tiny local word-level one (the fake server counts tokens itself and reports usage)."""
    d = PEERS_DIR / "tokenizer"
    if not (d / "tokenizer.json").exists():
        subprocess.run([str(peer_python(name)), "-c", TOKENIZER_SCRIPT, str(d)], check=True, capture_output=True,
                       timeout=300)
    return d


def peer_cmd(name, url, concs, duration, tokens, outdir, tok):
    """One invocation sweeping all concurrencies (each peer starts slowly: guidellm imports torch)."""
    bindir = PEERS_DIR / name / "bin"
    if name == "guidellm":
        return [str(bindir / "guidellm"), "run",
                "--backend", f"kind=openai_http,target={url},model=fake",
                "--profile", f"kind=concurrent,streams={concs[0]}",
                "--override", "profile.streams", ",".join(map(str, concs)),
                "--constraint", f"kind=max_duration,seconds={duration}",
                "--data", f"kind=synthetic_text,prompt_tokens=16,output_tokens={tokens}",
                "--tokenizer", f"kind=huggingface_auto,model={tok}",
                "--output", f"kind=json,path={outdir}/guidellm.json", "--disable-console-interactive"]
    return [str(bindir / "aiperf"), "profile", "--model", "fake", "--url", url, "--endpoint-type", "chat",
            "--streaming", "--concurrency", ",".join(map(str, concs)), "--benchmark-duration", str(duration),
            "--prompt-input-tokens-mean", "16", "--prompt-output-tokens-mean", str(tokens),
            "--tokenizer", str(tok), "--use-server-token-count", "--output-artifact-dir", str(outdir),
            "--ui-type", "none"]


def read_peer(name, outdir, concs) -> dict[int, dict]:
    """Each concurrency's figures, as the peer itself reported them."""
    out = {}
    if name == "guidellm":
        for b in json.loads((Path(outdir) / "guidellm.json").read_text())["benchmarks"]:
            m = b["metrics"]
            s = lambda k: m[k]["successful"]
            out[int(b["config"]["strategy"]["streams"])] = {
                "output_tok_s": s("output_tokens_per_second")["mean"],
                "ttft_ms_p50": s("time_to_first_token_ms")["median"],
                "ttft_ms_p99": s("time_to_first_token_ms")["percentiles"]["p99"],
                "itl_ms_p50": s("inter_token_latency_ms")["median"],
                "itl_ms_p99": s("inter_token_latency_ms")["percentiles"]["p99"],
                "requests": m["request_totals"]["successful"], "errors": m["request_totals"].get("errored")}
        return out
    for n in concs:
        f = Path(outdir) / f"concurrency_{n}" / "profile_export_aiperf.json"
        if len(concs) == 1 and not f.exists():
            f = Path(outdir) / "profile_export_aiperf.json"
        if not f.exists():
            continue
        d = json.loads(f.read_text())
        out[n] = {"output_tok_s": d["output_token_throughput"]["avg"],
                  "ttft_ms_p50": d["time_to_first_token"]["p50"], "ttft_ms_p99": d["time_to_first_token"]["p99"],
                  "itl_ms_p50": d["inter_token_latency"]["p50"], "itl_ms_p99": d["inter_token_latency"]["p99"],
                  "requests": d["request_count"]["avg"]}
    return out


def run_peer(name, url, concs, duration, tokens, cpu, workdir) -> list[dict]:
    outdir = Path(workdir) / f"{name}-{time.monotonic_ns()}"
    outdir.mkdir(parents=True)
    try:
        tok = ensure_tokenizer(name)
    except (subprocess.SubprocessError, OSError) as exc:
        return [{"client": name, "concurrency": n, "error": f"could not make a local tokenizer: {exc}"} for n in concs]
    cmd = peer_cmd(name, url, concs, duration, tokens, outdir, tok)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TOKENIZERS_PARALLELISM"] = "false"
    if name == "guidellm":  # (aiperf 0.13 fails to load a local tokenizer directory with HF_HUB_OFFLINE=1)
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})

    def pin():
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})  # the peer and every process it starts share one core

    limit = len(concs) * (duration + 30) + 120
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, env=env, cwd=outdir, capture_output=True, text=True, timeout=limit,
                           preexec_fn=pin, start_new_session=True)
    except subprocess.TimeoutExpired:
        return [{"client": name, "concurrency": n, "error": f"timed out after {limit} s"} for n in concs]
    try:
        got = read_peer(name, outdir, concs)
    except (OSError, KeyError, IndexError, ValueError) as exc:
        got, why = {}, repr(exc)
    else:
        why = "no result for this concurrency"
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    wall = time.monotonic() - t0
    return [{"client": name, "concurrency": n, "wall_s_all": wall, **got[n]} if n in got else
            {"client": name, "concurrency": n, "error": f"rc={p.returncode}, {why}: {tail}"} for n in concs]


# -- tables ----------------------------------------------------------------------------------------

def fmt(v, nd=1):
    if v is None:
        return "—"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{nd}f}"
    return str(v)


def errors(r) -> str:
    if r.get("error"):
        return "failed (see below)"
    return ",".join(f"{k}:{v}" for k, v in (r.get("statuses") or {}).items() if k != "ok") or "0"


def p50_p99(key: str, nd: int = 2):
    """A table cell: ``<key>_p50/<key>_p99`` to ``nd`` decimals."""
    return lambda r: f"{fmt(r.get(key + '_p50'), nd)}/{fmt(r.get(key + '_p99'), nd)}"


def table(rows, cols, title, log):
    log("")
    log(title)
    heads = [c[0] for c in cols]
    cells = [[fmt(r.get(c[1]), c[2] if len(c) > 2 else 1) if not callable(c[1]) else c[1](r) for c in cols]
             for r in rows]
    w = [max(len(h), *(len(x[i]) for x in cells)) if cells else len(h) for i, h in enumerate(heads)]
    log("  " + "  ".join(h.rjust(w[i]) if i else h.ljust(w[i]) for i, h in enumerate(heads)))
    log("  " + "  ".join("-" * x for x in w))
    for x in cells:
        log("  " + "  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(x)))
    for r in rows:
        if r.get("error"):
            log(f"  ! {r.get('client')} c={r.get('concurrency', '')}: {str(r['error'])[:400]}")


def ensure_extras(install: bool, log) -> str | None:
    """uvloop for the 'tokenbench+uvloop' client: the project's environment if it has it, else
    .venv-peers/extras (pip --target), so the project's venv is left as it is."""
    try:
        import uvloop
        return uvloop.__version__
    except ImportError:
        pass
    probe = [sys.executable, "-c", f"import sys; sys.path.append({str(EXTRAS_DIR)!r}); import uvloop; print(uvloop.__version__)"]
    p = subprocess.run(probe, capture_output=True, text=True)
    if p.returncode != 0 and install:
        log(f"  installing {' '.join(EXTRAS)} into {EXTRAS_DIR} (pip --target; the project venv is not touched)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(EXTRAS_DIR), *EXTRAS],
                       capture_output=True, timeout=600)
        p = subprocess.run(probe, capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


def machine_info():
    info = {"cores": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "loadavg_start": os.getloadavg(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aiohttp
    info["aiohttp"] = aiohttp.__version__
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="about one minute: shorter runs, fewer rates")
    ap.add_argument("--out", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--peers", default=None,
                    help="comma list of guidellm, aiperf; or 'none' (default: both; none with --quick)")
    ap.add_argument("--no-peer-install", action="store_true", help="use peers only if already installed")
    ap.add_argument("--sections", default="parser,capacity,timing,open",
                    help="comma list of parser, capacity, timing, open, memory, processes, ttft, long")
    ap.add_argument("--mem-requests", default="10000,100000",
                    help="memory: closed-loop run lengths, requests (comma list)")
    ap.add_argument("--journal-records", type=int, default=1_000_000,
                    help="memory: synthetic records pushed through Journal.add (0: skip)")
    ap.add_argument("--section-s", type=float, default=None,
                    help="seconds per point in processes, ttft and long (default 4, 3, 3)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and client to separate CPUs")
    ap.add_argument("--no-journal", action="store_true",
                    help="run LoadTest without its per-request JSONL journal (the pipeline always writes one)")
    ap.add_argument("--clients", help="comma list of tokenbench, tokenbench+uvloop "
                    "(default: both; tokenbench with --quick); open loop runs tokenbench")
    ap.add_argument("--tokens", type=int, default=64, help="output tokens per request (capacity, timing)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(json.loads(a.worker))

    lines: list[str] = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    t_start = time.monotonic()
    q = a.quick
    sections = set(a.sections.split(","))
    if a.peers is None:
        a.peers = "none" if a.quick else "guidellm,aiperf"  # peers start slowly: not in a one-minute run
    peers = [] if a.peers == "none" else [p for p in a.peers.split(",") if p]
    concs = [1, 64, 512]
    cap_s = 2.5 if q else 4.0
    timing_s = 2.5 if q else 3.0
    peer_s = 4 if q else 5
    open_s = 2.0 if q else 3.0
    rates = [100, 1000] if q else [10, 100, 500, 1000]
    global NO_JOURNAL
    NO_JOURNAL = a.no_journal
    server_cpu, client_cpu = (None, None) if a.no_pin else cpus()
    info = machine_info()
    info["uvloop"] = ensure_extras(not a.no_peer_install, print)
    info.update({"server_cpu": server_cpu, "client_cpu": client_cpu, "quick": q, "tokens": a.tokens})
    wanted = (a.clients or ("tokenbench" if q else "tokenbench,tokenbench+uvloop")).split(",")
    uv = ["tokenbench+uvloop"] if info["uvloop"] and "tokenbench+uvloop" in wanted else []
    clients = [c for c in wanted if c != "tokenbench+uvloop" or uv]
    base = [c for c in ("tokenbench",) if c in clients]
    log(f"tokenbench client benchmark  ({time.strftime('%Y-%m-%d %H:%M:%S')})")
    log(f"machine: {info.get('cpu', '?')}, {info['cores']} cores, load average {', '.join(f'{x:.2f}' for x in info['loadavg_start'])}"
        f" (1/5/15 min); python {info['python']}, aiohttp {info['aiohttp']}, uvloop {info['uvloop'] or 'not installed'}")
    if server_cpu is None:
        log("note: fewer than 2 CPUs available: server and client are not pinned apart")
    else:
        log(f"pinning: fake server on CPU {server_cpu}, client under test (and each peer's processes) on CPU {client_cpu}")
    results: dict = {"machine": info, "capacity": [], "timing": [], "open_loop": [], "peers": {}, "notes": [],
                     "loadavg": {}}

    def loadavg(section, when):
        with open("/proc/loadavg") as f:
            v = f.read().strip()
        results["loadavg"].setdefault(section, {})[when] = v
        log(f"  /proc/loadavg {when} {section}: {v}")
    peer_err = {}
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"tokenbench-bench-{os.getpid()}"
    if peers and ({"capacity", "timing"} & sections):
        for p in peers:
            if p not in PEER_VERSIONS:
                peer_err[p] = "unknown peer"
                continue
            err = ensure_peer(p, not a.no_peer_install, log)
            if err:
                peer_err[p] = err
                log(f"peer {p}: not run: {err}")
        results["peers"] = {p: {"version": PEER_VERSIONS.get(p), "error": peer_err.get(p)} for p in peers}
    live_peers = [p for p in peers if p not in peer_err]

    # ---- parser --------------------------------------------------------------------------------
    if "parser" in sections:
        log("\n[parser] recorded 64-token chat stream fed straight into http_stream's protocol (no sockets)")
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        rows = parser_bench()
        if client_cpu is not None:
            os.sched_setaffinity(0, set(info["affinity"]))
        results["parser"] = rows
        table(rows, [("what", "what"), ("µs", "us_per_event", 2)],
              "cost in µs of one core (min of 3 runs; steady even on a busy machine): per SSE event, journal per request", log)

    # ---- capacity ------------------------------------------------------------------------------
    if "capacity" in sections:
        log(f"\n[capacity] closed loop, zero injected delays, {a.tokens} tokens/request, {cap_s:g} s per point "
            f"(first 1 s not counted); the fake server writes each token separately")
        with Server(server_cpu, a.tokens) as srv:
            rows = []
            for c in clients:
                for n in concs:
                    (r,) = run_worker(c, srv, [{"mode": "closed", "concurrency": n, "duration": cap_s, "warmup": 1.0}],
                                      client_cpu, a.tokens)
                    r.setdefault("concurrency", n)
                    rows.append(r)
                    log(f"  {c:14s} c={n:<4d} {fmt(r.get('output_tok_s'))} tok/s"
                        + (f"  ERROR {r['error']}" if "error" in r else ""))
            for p in live_peers:
                for r in run_peer(p, srv.url, concs, peer_s, a.tokens, client_cpu, workdir):
                    rows.append(r)
                    log(f"  {p:14s} c={r['concurrency']:<4d} {fmt(r.get('output_tok_s'))} tok/s"
                        + (f"  ERROR {r['error']}" if "error" in r else ""))
        for r in rows:
            r["server_bound"] = bool(r.get("server_cpu_util") and r["server_cpu_util"] > 0.9)
        results["capacity"] = rows
        best_peer = {n: max([r.get("output_tok_s") or 0 for r in rows if r["client"] in live_peers
                             and r["concurrency"] == n] or [0]) for n in concs}
        for r in rows:
            bp = best_peer.get(r["concurrency"])
            r["x_best_peer"] = (r["output_tok_s"] / bp) if bp and r.get("output_tok_s") else None
        table(rows, [("client", "client"), ("conc", "concurrency"), ("out tok/s", "output_tok_s"),
                     ("req/s", "requests_s"), ("× best peer", "x_best_peer", 2),
                     ("tok/client-CPU-s", "tok_per_client_cpu_s"),
                     ("client CPU", lambda r: fmt(r.get("client_cpu_util") and 100 * r["client_cpu_util"], 0) + "%"),
                     ("server CPU", lambda r: fmt(r.get("server_cpu_util") and 100 * r["server_cpu_util"], 0) + "%"),
                     ("loop lag p99 ms", "loop_lag_ms_p99", 1),
                     ("errors", errors)],
              "client capacity (output tokens/s on one core; server CPU > 90% would mean the server, not the client, "
              "was the limit)", log)

    # ---- timing --------------------------------------------------------------------------------
    if "timing" in sections:
        ttft, ttok = 20.0, 32
        # 512 streams at 5 ms would ask ~100 k timed tokens/s of a one-core Python server: an overload,
        # not a timing test. At 512 the ITL is 40 ms: the same ~13 k tokens/s as 64 streams at 5 ms.
        groups = [(5.0, [n for n in concs if n <= 64]), (40.0, [n for n in concs if n > 64])]
        log(f"\n[timing] injected TTFT {ttft:g} ms, ITL 5 ms (40 ms at concurrency > 64), {ttok} tokens/request, "
            f"{timing_s:g} s per point; server with precise timers, each chunk stamped with its send time")
        rows = []
        for itl, group in groups:
            if not group:
                continue
            with Server(server_cpu, ttok, ttft, itl, stamp=True, precise=True) as srv:
                for c in base + uv:
                    for n in group:
                        srv.stats(reset=True)
                        (r,) = run_worker(c, srv, [{"mode": "closed", "concurrency": n, "duration": timing_s,
                                                    "warmup": 0.5, "timing": [ttft, itl]}], client_cpu, ttok, stamps=True)
                        r.setdefault("concurrency", n)
                        r["server"], r["itl_injected_ms"] = srv.stats(), itl
                        rows.append(r)
                        log(f"  {c:14s} c={n:<4d} |err| p99 TTFT {fmt(r.get('abs_err_ttft_ms_p99'), 2)} ms, "
                            f"ITL {fmt(r.get('abs_err_itl_ms_p99'), 2)} ms; arrival−send p99 "
                            f"{fmt(r.get('stamp_err_ms_p99'), 2)} ms" + (f"  ERROR {r['error']}" if "error" in r else ""))
                for p in live_peers:
                    srv.stats(reset=True)
                    got = run_peer(p, srv.url, group, peer_s, ttok, client_cpu, workdir)
                    s_all = srv.stats()  # one sweep: the server's lateness over all its points
                    for r in got:
                        r["server"], r["itl_injected_ms"] = s_all, itl
                        rows.append(r)
                        log(f"  {p:14s} c={r['concurrency']:<4d} TTFT p50 {fmt(r.get('ttft_ms_p50'), 2)} ms, "
                            f"ITL p50 {fmt(r.get('itl_ms_p50'), 2)} ms" + (f"  ERROR {r['error']}" if "error" in r else ""))
        for r in rows:
            s = r.get("server") or {}
            r["server_late_ms_p99"] = max((s.get("ttft_late_us_p99") or 0), (s.get("itl_late_us_p99") or 0)) / 1e3
        results["timing"] = rows
        table(rows, [("client", "client"), ("conc", "concurrency"), ("ITL inj.", "itl_injected_ms", 0),
                     ("out tok/s", "output_tok_s"), ("TTFT p50", "ttft_ms_p50", 2), ("TTFT p99", "ttft_ms_p99", 2),
                     ("ITL p50", "itl_ms_p50", 2), ("ITL p99", "itl_ms_p99", 2),
                     ("|err TTFT| p50", "abs_err_ttft_ms_p50", 2), ("|err TTFT| p99", "abs_err_ttft_ms_p99", 2),
                     ("|err ITL| p50", "abs_err_itl_ms_p50", 2), ("|err ITL| p99", "abs_err_itl_ms_p99", 2),
                     ("arrival−send p50", "stamp_err_ms_p50", 3), ("arrival−send p99", "stamp_err_ms_p99", 3),
                     ("server late p99", "server_late_ms_p99", 2)],
              f"timing error, ms (injected TTFT {ttft:g} / ITL as shown; |err| = |measured − injected| per request / per gap; "
              "arrival−send = client read time − server send stamp, per chunk; peers report per-request ITL)", log)

    # ---- open loop -----------------------------------------------------------------------------
    if "open" in sections:
        log(f"\n[open loop] 4-token requests, zero delays, {open_s:g} s per point (at least 50 arrivals)")
        rows = []
        with Server(server_cpu, 4) as srv:
            for c in base:
                jobs = []
                for rate in rates:
                    d = max(open_s, 50 / rate)  # at least 50 arrivals
                    jobs.append({"mode": "open", "arrival": "poisson", "rate": rate, "duration": d, "scheduler": "loadgen"})
                    for arr in ("poisson", "constant"):
                        jobs.append({"mode": "open", "arrival": arr, "rate": rate, "duration": d, "scheduler": "precise"})
                for r in run_worker(c, srv, jobs, client_cpu, 4):
                    rows.append(r)
                    log(f"  {c:14s} {r.get('scheduler', ''):8s} {r.get('arrival', ''):8s} {fmt(r.get('target_rps'))} req/s: achieved "
                        f"{fmt(r.get('achieved_rps'))}, lag p99 {fmt(r.get('send_lag_ms_p99'), 2)} ms"
                        + (f"  ERROR {r['error']}" if "error" in r else ""))
        results["open_loop"] = rows
        table(rows, [("client", "client"), ("scheduler", "scheduler"), ("arrivals", "arrival"), ("target/s", "target_rps"),
                     ("scheduled/s", "scheduled_rps"), ("achieved/s", "achieved_rps"),
                     ("achieved/target", lambda r: fmt(r.get("achieved_vs_target") and 100 * r["achieved_vs_target"], 1) + "%"),
                     ("achieved/scheduled", lambda r: fmt(r.get("achieved_vs_scheduled") and 100 * r["achieved_vs_scheduled"], 1) + "%"),
                     ("lag p50 ms", "send_lag_ms_p50", 3), ("lag p99 ms", "send_lag_ms_p99", 3),
                     ("lag max ms", "send_lag_ms_max", 2),
                     ("errors", errors)],
              "open-loop accuracy (send lag = actual send − scheduled send; 'loadgen' = LoadTest's poisson phase as it "
              "is, 'precise' = sleep to 1.5 ms before, then yield until due)", log)


    # ---- memory --------------------------------------------------------------------------------
    if "memory" in sections:
        mem_n = [int(x) for x in a.mem_requests.split(",") if x]
        log("\n[memory] peak RSS of a fresh client process (ru_maxrss) minus its RSS before the run: closed loop, "
            "64 users, 256 tokens/request, zero delays, server in burst mode; plus Journal.add alone")
        loadavg("memory", "before")
        rows = []
        with Server(server_cpu, 256, burst=True) as srv:
            for n in mem_n:
                (r,) = run_worker("tokenbench", srv, [{"mode": "memory", "concurrency": 64, "requests": n,
                                                      "duration": n / 100}], client_cpu, 256)
                rows.append(r)
                log(f"  {n:>9,} requests: peak {fmt(r.get('peak_rss_mib'))} MiB, +{fmt(r.get('growth_mib'))} MiB, "
                    f"{fmt(r.get('kib_per_request'), 3)} KiB/request, {fmt(r.get('seconds'))} s"
                    + (f"  ERROR {r['error']}" if "error" in r else ""))
        if a.journal_records:
            (r,) = run_worker("tokenbench", None, [{"mode": "journal", "records": a.journal_records, "chunks": 256,
                                                    "duration": a.journal_records / 5000}], client_cpu, 256)
            rows.append(r)
            log(f"  journal {a.journal_records:,} records: peak {fmt(r.get('peak_rss_mib'))} MiB, "
                f"{fmt(r.get('seconds'))} s" + (f"  ERROR {r['error']}" if "error" in r else ""))
        loadavg("memory", "after")
        prev = None
        for r in rows:  # growth per extra request between consecutive run lengths: the per-request slope
            if prev is not None and r.get("growth_mib") is not None and not r["what"].startswith("journal"):
                r["marginal_kib_per_request"] = ((r["growth_mib"] - prev["growth_mib"]) * 1024
                                                 / max(1, r["requests"] - prev["requests"]))
            if not r["what"].startswith("journal") and r.get("growth_mib") is not None:
                prev = r
        results["memory"] = rows
        table(rows, [("run", "what"), ("requests", "requests"), ("RSS before MiB", "rss_before_mib"),
                     ("peak RSS MiB", "peak_rss_mib"), ("growth MiB", "growth_mib"),
                     ("KiB/request", "kib_per_request", 3), ("marginal KiB/req", "marginal_kib_per_request", 3),
                     ("seconds", "seconds"), ("req/s", "requests_s"),
                     ("journal MiB", "journal_mib"), ("errors", errors)],
              "client memory (growth = peak RSS − RSS before the run; marginal = growth difference / request difference "
              "from the previous run length; target: flat in run length, ≤ 2 KiB/request "
              "beyond a fixed base, 1M requests < 1 GB; before the journal: 231 MiB at 2,000 requests, ~505 MiB at "
              "10,000)", log)

    # ---- processes -----------------------------------------------------------------------------
    if "processes" in sections:
        d = a.section_s or 4.0
        log(f"\n[processes] tokenbench.load.shards.load_test, closed loop 256 users, {a.tokens} tokens/request, "
            f"zero delays, server in burst mode on CPU {server_cpu}; {d:g} s per point (first 1 s not counted); "
            f"1 process pinned to CPU {client_cpu}, 2 processes unpinned (workers share both cores with the server)")
        loadavg("processes", "before")
        rows = []
        with Server(server_cpu, a.tokens, burst=True) as srv:
            for n in (1, 2):
                (r,) = run_worker("tokenbench", srv, [{"mode": "shards", "processes": n, "concurrency": 256,
                                                      "duration": d, "warmup": 1.0}],
                                  client_cpu if n == 1 else None, a.tokens)
                r.setdefault("processes", n)
                r["pinning"] = f"CPU {client_cpu}" if n == 1 and client_cpu is not None else "unpinned"
                rows.append(r)
                log(f"  processes={n}: {fmt(r.get('requests_s'))} req/s, {fmt(r.get('output_tok_s'))} tok/s, "
                    f"{fmt(r.get('requests_per_client_cpu_s'))} req/client-CPU-s"
                    + (f"  ERROR {r['error']}" if "error" in r else ""))
        loadavg("processes", "after")
        results["processes"] = rows
        table(rows, [("processes", "processes"), ("client", "pinning"), ("req/s", "requests_s"),
                     ("out tok/s", "output_tok_s"), ("client CPU s", "client_cpu_s", 2),
                     ("of which workers", "client_cpu_s_workers", 2),
                     ("CPU ms/request", lambda r: fmt(r.get("client_cpu_s_per_request") and 1e3 * r["client_cpu_s_per_request"], 3)),
                     ("req/client-CPU-s", "requests_per_client_cpu_s"),
                     ("server CPU", lambda r: fmt(r.get("server_cpu_util") and 100 * r["server_cpu_util"], 0) + "%"),
                     ("errors", errors)],
              "client processes (req/client-CPU-s = requests sent / CPU seconds of the parent and its workers: the "
              "per-core figure; server CPU > 90% means the server was the limit)", log)

    # ---- ttft ----------------------------------------------------------------------------------
    if "ttft" in sections:
        d = a.section_s or 3.0
        ttft, ttok = 20.0, 16
        itl_of = lambda n: 5.0 if n <= 64 else 20.0
        log(f"\n[ttft] injected TTFT {ttft:g} ms, ITL 5 ms at 64 users / 20 ms at 128-256, {ttok} tokens/request, "
            f"{d:g} s per point, every request counted (first requests too); server with precise timers and kernel "
            f"receive stamps (rx_ns: SO_TIMESTAMPNS of the request's last byte; t_ns: each chunk's send time); "
            f"client with kernel receive stamps; error = client TTFT − server TTFT (t_ns of the first token − rx_ns)")
        loadavg("ttft", "before")
        rows = []
        for n in (64, 128, 256):
            itl = itl_of(n)
            with Server(server_cpu, ttok, ttft, itl, stamp=True, precise=True) as srv:
                for warm in (None, False):
                    srv.stats(reset=True)
                    (r,) = run_worker("tokenbench", srv, [{"mode": "closed", "concurrency": n, "duration": d,
                                                          "warmup": 0.0, "timing": [ttft, itl], "warm": warm,
                                                          "split": True}], client_cpu, ttok, stamps=True)
                    r.update({"concurrency": n, "warm": "on" if warm is None else "off", "itl_injected_ms": itl})
                    rows.append(r)
                    log(f"  users={n:<4d} warm={r['warm']:3s} TTFT err p99 from written: first "
                        f"{fmt(r.get('ttft_err_written_first_p99'), 3)} all {fmt(r.get('ttft_err_written_all_p99'), 3)} ms "
                        f"(|err| max {fmt(r.get('ttft_abs_err_written_all_max'), 3)}); from sent: first "
                        f"{fmt(r.get('ttft_err_sent_first_p99'), 2)} all {fmt(r.get('ttft_err_sent_all_p99'), 2)} ms; "
                        f"|ITL err| p99 {fmt(r.get('itl_abs_err_ms_p99'), 3)} ms; kernel rx stamps "
                        f"{r.get('kernel_rx_stamps')}/{r.get('timed')}" + (f"  ERROR {r['error']}" if "error" in r else ""))
        loadavg("ttft", "after")
        results["ttft"] = rows
        table(rows, [("users", "concurrency"), ("warm", "warm"), ("req", "n_all"), ("firsts", "n_first"),
                     ("conn first p50/p99", p50_p99("connect_first_ms")),
                     ("write first p50/p99", p50_p99("write_first_ms", 3)),
                     ("delivery all p50/p99", p50_p99("delivery_all_ms", 3)),
                     ("sent: first p50/p99", p50_p99("ttft_err_sent_first")),
                     ("written: first p50/p99", p50_p99("ttft_err_written_first", 3)),
                     ("written: all p50/p99", p50_p99("ttft_err_written_all", 3)),
                     ("|written| all max", "ttft_abs_err_written_all_max", 3),
                     ("server late p50/p99", p50_p99("server_late_all_ms")),
                     ("ITL inj.", "itl_injected_ms", 0), ("|ITL err| p50/p99", p50_p99("itl_abs_err_ms", 3)),
                     ("|ITL − inj.| p99", "itl_abs_dev_injected_ms_p99", 3), ("errors", errors)],
              f"TTFT error against the server's ground truth, ms: error = client TTFT − server TTFT, where server "
              "TTFT = its first-token send stamp − the kernel receive stamp of the request's last byte; client TTFT "
              "from written_ns [new] or sent_ns [old]; conn = written − sent; write = written − server rx (the "
              "written stamp's lag); delivery = client kernel rx − server send stamp; server late = server TTFT − "
              f"injected {ttft:g} ms (the server, not the client); |ITL err| = |client gap − server gap| per gap; "
              "goal: |TTFT err| p99 ≤ 1 ms at 64-256 users incl. first requests, |ITL err| p99 ≤ 0.1 ms at 256", log)

    # ---- long ----------------------------------------------------------------------------------
    if "long" in sections:
        d = a.section_s or 3.0
        ttft, itl = 20.0, 1.0
        log(f"\n[long] long contexts: one prompt of 200 KiB / 512 KiB of text (~50k / ~128k tokens at ~4 chars a "
            f"token; the fake server does not tokenize, it only receives the bytes), 1 and 8 users, 64 tokens; and "
            f"8192 output tokens at 1 user; injected TTFT {ttft:g} ms, ITL {itl:g} ms, {d:g} s per point (requests "
            f"in flight at the end run to completion)")
        loadavg("long", "before")
        rows = []
        cases = [(kb, n, 64) for kb in (200, 512) for n in (1, 8)] + [(None, 1, 8192)]
        with Server(server_cpu, 8192, ttft, itl, stamp=True, precise=True) as srv:
            for kb, n, mt in cases:
                (r,) = run_worker("tokenbench", srv, [{"mode": "closed", "concurrency": n, "duration": d, "warmup": 0.0,
                                                      "timing": [ttft, itl], "split": True, "prompt_kb": kb,
                                                      "max_tokens": mt}], client_cpu, mt, stamps=True,
                                  timeout=int(d + 120))
                r.update({"concurrency": n, "prompt": f"{kb} KiB" if kb else "builtin (short)", "max_tokens": mt})
                rows.append(r)
                log(f"  prompt {r['prompt']:15s} users={n} max_tokens={mt}: {fmt(r.get('requests_s'), 2)} req/s, "
                    f"TTFT err p99 (written) {fmt(r.get('ttft_err_written_all_p99'), 2)} ms"
                    + (f"  ERROR {r['error']}" if "error" in r else ""))
        loadavg("long", "after")
        results["long"] = rows
        table(rows, [("prompt", "prompt"), ("users", "concurrency"), ("max_tokens", "max_tokens"), ("req", "n_all"),
                     ("req/s", "requests_s", 2), ("out tok/s", "output_tok_s"),
                     ("conn p99", "connect_all_ms_p99", 2), ("write p50/p99", p50_p99("write_all_ms", 3)),
                     ("TTFT err sent p50/p99", p50_p99("ttft_err_sent_all")),
                     ("TTFT err written p50/p99", p50_p99("ttft_err_written_all", 3)),
                     ("server late p99", "server_late_all_ms_p99", 2),
                     ("|ITL err| p99", "itl_abs_err_ms_p99", 3), ("errors", errors)],
              f"long contexts, ms (TTFT error = client TTFT − server TTFT, as in [ttft]; sent counts the request "
              f"body's transfer; write = written − server kernel rx; injected TTFT {ttft:g} ms, ITL {itl:g} ms)", log)

    info["loadavg_end"] = os.getloadavg()
    info["runtime_s"] = time.monotonic() - t_start
    log(f"\nload average at the end: {', '.join(f'{x:.2f}' for x in info['loadavg_end'])}; runtime {info['runtime_s']:.0f} s")
    for p, e in peer_err.items():
        log(f"peer {p} not measured: {e}")
    shutil.rmtree(workdir, ignore_errors=True)
    if a.out:
        results["printed"] = lines
        a.out.write_text(json.dumps(results, indent=1, default=str))
        log(f"figures written to {a.out}")


if __name__ == "__main__":
    main()
