import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from tokenbench.analysis.validity import contention, foreign_top, stability, validity
from tokenbench.config import ValiditySpec
from tokenbench.telemetry.merge import merge_telemetry

S = 1_000_000_000
MARK = {"name": "steady", "start_ns": 0, "end_ns": 10 * S}


def base_phase(**kw):
    return {"duration_s": 30, "requests_sent": 100, "success_rate": 1.0, **kw}


def test_quiet_phase_passes_every_check():
    assert validity(base_phase(foreign_cpu_pct=2.0, stability={"tok_s_change": 0.03, "tok_s_halves": [10, 10.3]}),
                    ValiditySpec(), None) == {"valid": True, "failed_checks": [], "event_loop_lag_p99_ms": None}


def test_contention_names_the_heaviest_foreign_processes_and_steal():
    walks = pd.Series([json.dumps([["make", 40, 30.0], ["kswapd0", 7, 2.0]]),
                       json.dumps([["make", 40, 10.0], ["gcc", 41, 0.5]]),
                       json.dumps([])])
    top = foreign_top(walks)
    # mean share over every walk of the window, a walk without the process counting as 0
    assert top == [{"name": "make", "pid": 40, "cpu_pct": pytest.approx(40 / 3)}]  # kswapd0 0.67 %, gcc 0.17 %: < 1 %
    v = validity(base_phase(foreign_cpu_pct=16.0, foreign_cpu_top=top, steal_cpu_pct=2.4),
                 ValiditySpec(max_foreign_cpu_pct=10), None)
    assert v["failed_checks"][0].endswith(": make (pid 40) 13 %, hypervisor steal 2 %"), v
    nobody = validity(base_phase(foreign_cpu_pct=16.0, foreign_cpu_top=[], steal_cpu_pct=0.0),
                      ValiditySpec(max_foreign_cpu_pct=10), None)
    assert "no one process stood out" in nobody["failed_checks"][0]
    old_run = validity(base_phase(foreign_cpu_pct=16.0), ValiditySpec(max_foreign_cpu_pct=10), None)
    assert old_run["failed_checks"][0].endswith("(> max_foreign_cpu_pct 10 %)")  # recorded before the walks: nothing named
    assert foreign_top(pd.Series([], dtype=object)) is None


def test_contended_cpu_fails_naming_the_share_and_the_bound():
    v = validity(base_phase(foreign_cpu_pct=48.0), ValiditySpec(max_foreign_cpu_pct=10), None)
    assert not v["valid"] and "other processes used 48 % of all CPU cores" in v["failed_checks"][0]
    assert "max_foreign_cpu_pct 10" in v["failed_checks"][0]


def test_gpu_contention_share_fails():
    v = validity(base_phase(gpu_contended_share=0.3), ValiditySpec(), None)
    assert not v["valid"] and "foreign process on the GPU" in v["failed_checks"][0]


def test_unsteady_tpot_fails_and_open_loop_throughput_is_not_judged():
    st = {"tok_s_change": 0.6, "tok_s_halves": [10, 16], "tpot_change": 2.6, "tpot_p50_halves_ms": [65, 234]}
    closed = validity(base_phase(stability=st), ValiditySpec(), None)
    assert [c.split(":")[0] for c in closed["failed_checks"]] == ["not steady", "not steady"]
    assert "65.0 to 234.0 ms" in closed["failed_checks"][1]
    opened = validity(base_phase(stability=st, open_loop=True), ValiditySpec(), None)
    assert len(opened["failed_checks"]) == 1 and "TPOT" in opened["failed_checks"][0]


def test_stability_halves_from_tokens_and_tpot():
    from tokenbench.chunks import Tokens

    first, second = np.linspace(0, 5 * S - 1, 100).astype(np.int64), np.linspace(5 * S, 10 * S - 1, 50).astype(np.int64)
    tokens = Tokens.of_requests(pd.DataFrame({"status": ["ok", "ok"], "output_tokens": [100, 50],
                                              "chunk_ns": [first, second]}))
    ok = pd.DataFrame({"end_ns": [1 * S, 2 * S, 3 * S, 4 * S, 4.5 * S, 6 * S, 7 * S, 8 * S, 9 * S, 9.5 * S],
                       "tpot_ms": [10.0] * 5 + [30.0] * 5})
    st = stability(tokens, ok, MARK)
    assert st["tok_s_halves"] == pytest.approx([20.0, 10.0]) and st["tok_s_change"] == pytest.approx(-0.5)
    assert st["tpot_p50_halves_ms"] == [10.0, 30.0] and st["tpot_change"] == pytest.approx(2.0)
    few = stability(tokens, ok.iloc[3:], MARK)  # 2 requests in the first half: no TPOT verdict
    assert few["tpot_change"] is None


def test_contention_from_gpu_samples_forward_fills_process_checks():
    tl = pd.DataFrame({"phase": "steady", "device": "gpu0", "t_ns": range(10),
                       "throttled": [False] * 10, "foreign_processes": [0, None, None, None, None, 1, None, None, None, None]})
    assert contention(tl, "steady")["gpu_contended_share"] == pytest.approx(0.5)


def _sample(tmp_path, server_pid, seconds=2.0):
    out = tmp_path / f"tel{server_pid}.parquet"
    p = subprocess.Popen([sys.executable, "-m", "tokenbench.telemetry.sampler", "--out", str(out), "--interval", "0.05",
                          "--pid", str(server_pid)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.stdout.readline().strip() == "ready"
    t0 = time.monotonic_ns()
    time.sleep(seconds)
    t1 = time.monotonic_ns()
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
    raw = pd.read_parquet(out)
    run = {"phases": [{"name": "steady", "start_ns": t0, "end_ns": t1, "drained_ns": t1}],
           "provenance": {"host": {"cpu_cores": len(os.sched_getaffinity(0))}}}
    no_requests = pd.DataFrame({"status": pd.Series([], dtype=str), "sent_ns": pd.Series([], dtype="int64"),
                                "end_ns": pd.Series([], dtype="Int64"), "chunk_ns": [], "output_tokens": []})
    return contention(merge_telemetry(no_requests, raw, run), "steady")


def test_a_cpu_hog_beside_the_benchmark_makes_the_phase_invalid_and_is_named(tmp_path):
    """A busy process that is neither the server nor the client is foreign CPU, and the failed
    check names it with its pid; the same process as the server is not foreign."""
    cores = len(os.sched_getaffinity(0))
    one_core = 100 / cores
    idle_server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        contended = _sample(tmp_path, idle_server.pid, seconds=3.0)
        as_server = _sample(tmp_path, hog.pid)["foreign_cpu_pct"]
    finally:
        hog.kill()
        idle_server.kill()
    assert contended["foreign_cpu_pct"] >= 0.4 * one_core  # the hog gets less than a core when other work shares the host
    assert as_server <= contended["foreign_cpu_pct"] - 0.3 * one_core
    top = contended["foreign_cpu_top"]
    assert top and top[0]["pid"] == hog.pid and top[0]["name"].startswith("python"), top
    assert top[0]["cpu_pct"] >= 0.4 * one_core
    assert contended["steal_cpu_pct"] is not None
    bounds = ValiditySpec(max_foreign_cpu_pct=0.3 * one_core)
    v = validity(base_phase(**contended), bounds, None)
    assert not v["valid"]
    assert f"(pid {hog.pid})" in " ".join(v["failed_checks"]), v["failed_checks"]
    # (whether as_server passes depends on what else runs on the host: other jobs are foreign too)
