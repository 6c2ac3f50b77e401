#!/usr/bin/env python3
"""What does tokenbench's telemetry sampler cost the host it measures?

    .venv/bin/python tests/perf/bench_sampler.py                      # 20 s at 20 Hz, about 1 minute
    .venv/bin/python tests/perf/bench_sampler.py --seconds 60 --children 6 --mb 800 --host-procs 500

On a 2-core machine every CPU-second the sampler takes is one the engine or the load generator
could have had, so its own cost is a figure of the benchmark. This script starts a stand-in server
tree (a parent leading its own session, ``--children`` processes under it, each holding ``--mb``
MiB of touched memory, the shape of an engine with worker processes: vLLM's API server and engine
core, a tokenizer pool) and ``--host-procs`` idle processes elsewhere on the host (a busy process
table: the walk that names foreign CPU reads all of them). Then it prints:

1. each part of one ``CpuSampler.sample()`` call, measured in this process at the configured rate:
   calls, CPU ms per call (``time.thread_time``), and its share of one core at that rate;
2. the real sampler process (``python -m tokenbench.telemetry.sampler``, following the stand-in
   server by pid, as the load test starts it) run for ``--seconds``: its CPU seconds from
   ``/proc/PID/stat`` over the run, as % of one core, with the sample count it wrote.

CPU time, not wall time, is what is measured, so neighbours disturb it less than a timing; still,
run it on a quiet machine (the load average and the host's busy share during the run are printed
with the figures). Not a test: it asserts nothing and pytest does not collect it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "workflow" / "scripts"
sys.path.insert(0, str(SCRIPTS))

from tokenbench.telemetry import sampler as S  # noqa: E402

# the stand-in server: touches its memory, starts its children (which do the same), then sleeps
SERVER = r"""
import subprocess, sys, time
n, mb = int(sys.argv[1]), int(sys.argv[2])
hold = bytearray(mb << 20)
for i in range(0, len(hold), 4096):
    hold[i] = 1
kids = [subprocess.Popen([sys.executable, "-c", sys.argv[3], "0", str(mb), sys.argv[3]]) for _ in range(n)]
print("up", flush=True)
time.sleep(3600)
"""


def start_server(children: int, mb: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", SERVER, str(children), str(mb), SERVER], stdout=subprocess.PIPE,
                         text=True, start_new_session=True)
    assert p.stdout.readline().strip() == "up"
    import psutil
    deadline = time.monotonic() + 60
    while len(psutil.Process(p.pid).children(recursive=True)) < children and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0 + mb / 500)  # the children touch their memory
    return p


def host_busy() -> tuple[float, float]:
    with open("/proc/stat") as f:
        v = [float(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def parts(server_pid: int, hz: float, seconds: float) -> tuple[dict, int]:
    """Each part of CpuSampler.sample(), timed in this thread over ``seconds`` at ``hz``."""
    cpu = S.CpuSampler(server_pid, client_pid=os.getpid())
    spent: dict[str, list[float]] = defaultdict(list)

    def timed(name, fn):
        def wrap(*a, **k):
            t0 = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                key = name if name != "_tree" else ("server tree + PSS" if (a and a[0]) or k.get("pss") else "server tree")
                spent[key].append(time.thread_time() - t0)
        return wrap

    for name in ("_busy", "_tree", "_client_cpu", "_walk", "_rapl_j"):
        setattr(cpu, name, timed(name, getattr(cpu, name)))
    interval = 1.0 / hz
    start = time.monotonic()
    k = 0
    while time.monotonic() - start < seconds:
        t0 = time.thread_time()
        cpu.sample(time.monotonic_ns())
        spent["sample() in all"].append(time.thread_time() - t0)
        k += 1
        delay = start + k * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return spent, k


def real_sampler(server_pid: int, hz: float, seconds: float) -> tuple[float, int]:
    """CPU seconds of the sampler's own process over ``seconds``, and the samples it wrote."""
    import pandas as pd
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "telemetry.parquet"
        env = {**os.environ, "PYTHONPATH": str(SCRIPTS)}
        p = subprocess.Popen([sys.executable, "-m", "tokenbench.telemetry.sampler", "--out", str(out),
                              "--interval", str(1.0 / hz), "--pid", str(server_pid)],
                             stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True, env=env)
        assert p.stdout.readline().strip() == "ready"
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu_s():
            f = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / ticks

        c0 = cpu_s()
        time.sleep(seconds)
        used = cpu_s() - c0
        p.send_signal(signal.SIGTERM)
        p.wait(60)
        return used, len(pd.read_parquet(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--hz", type=float, default=20.0, help="samples per second (telemetry.interval_s 0.05 = 20)")
    ap.add_argument("--children", type=int, default=3, help="processes under the stand-in server")
    ap.add_argument("--mb", type=int, default=300, help="MiB each server process touches")
    ap.add_argument("--host-procs", type=int, default=150, help="idle processes elsewhere on the host")
    a = ap.parse_args()
    others = [subprocess.Popen(["sleep", "3600"]) for _ in range(a.host_procs)]
    server = start_server(a.children, a.mb)
    try:
        import psutil
        nproc = len(psutil.pids())
        print(f"host: {os.cpu_count()} cores, {nproc} processes, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; stand-in server: 1 + {a.children} processes "
              f"× {a.mb} MiB; {a.hz:g} Hz for {a.seconds:g} s")
        b0 = host_busy()
        spent, k = parts(server.pid, a.hz, a.seconds)
        print(f"\n1. CpuSampler.sample() in this process, {k} samples")
        print(f"{'part':<22} {'calls':>6} {'CPU ms/call':>12} {'% of a core':>12}")
        for name, v in sorted(spent.items(), key=lambda kv: -sum(kv[1])):
            print(f"{name:<22} {len(v):>6} {1000 * sum(v) / len(v):>12.3f} {100 * sum(v) / a.seconds:>12.2f}")
        used, rows = real_sampler(server.pid, a.hz, a.seconds)
        b1 = host_busy()
        busy = 100 * (b1[0] - b0[0]) / max(b1[1] - b0[1], 1)
        print(f"\n2. the sampler process (python -m tokenbench.telemetry.sampler --pid SERVER)")
        print(f"CPU {used:.2f} s over {a.seconds:g} s = {100 * used / a.seconds:.1f} % of a core, {rows} samples "
              f"({1000 * used / max(rows, 1):.2f} ms each)")
        print(f"\nhost busy over both runs: {busy:.1f} % of all cores (this script and the sampler included); "
              f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        for p in others:
            p.kill()
        for p in others:
            p.wait()


if __name__ == "__main__":
    main()
