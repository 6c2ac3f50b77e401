"""The real Snakefile against the real llama-server, on config/smoke.yaml (about 4 minutes): two
configurations (4 slots, 1 slot), two replicates each.
The run itself is the session fixture `run_dir` in conftest.py, shared with the browser check of its site."""
import json
import math
import sys

import pytest
import yaml

from tests.snakemake_util import ROOT, planned_jobs, snakemake
from tokenbench.load.journal import frame
from tokenbench.records import read_json, read_meta, read_table

pytestmark = pytest.mark.e2e
SMOKE = ROOT / "config" / "smoke.yaml"
CELLS = ["three_phase", "users-1", "users-4"]
ENGINES = ["llamacpp", "llamacpp-1slot"]
REPS = ["r1", "r2"]


def cell(wd, load, engine="llamacpp", rep="r1"):
    return wd / "data" / "runs" / engine / "smollm2-135m" / load / rep


def metrics_of(wd, load, engine="llamacpp", rep="r1"):
    return read_json(wd / "data" / "metrics" / engine / "smollm2-135m" / load / rep / "metrics.json")


def finite(x):
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("load", CELLS)
def test_every_request_recorded_with_timestamps_in_order(run_dir, load, engine):
    req = read_table(cell(run_dir, load, engine) / "requests.parquet")
    run = read_json(cell(run_dir, load, engine) / "run.json")
    metrics = metrics_of(run_dir, load, engine)
    assert run["cell"] == {"engine": engine, "model": "smollm2-135m", "load": load, "rep": "r1"}
    assert run["complete"] and len(req) == run["client"]["requests_sent"] > 0
    assert len(req) == sum(p.get("requests_sent", 0) for p in metrics["phases"])
    assert req["request_id"].is_unique
    assert (req["status"] == "ok").all(), req.loc[req.status != "ok", ["status", "error"]]
    # ignore_eos: every request decodes exactly max_tokens, counted by the server's usage
    assert (req["output_tokens"] == 16).all() and (req["output_tokens_source"] == "usage").all()
    for _, r in req.iterrows():
        ch = list(r["chunk_ns"])
        assert r["sent_ns"] <= r["first_byte_ns"] <= r["first_token_ns"] == ch[0] <= ch[-1] <= r["end_ns"]
        assert ch == sorted(ch)
    meta = read_meta(cell(run_dir, load, engine) / "requests.parquet")
    manifest = read_json(run_dir / "data" / "models" / "smollm2-135m" / "manifest.json")
    assert meta["provenance"]["model"]["sha256"] == manifest["sha256"]
    assert meta["provenance"]["engine"]["binary_sha256"] and meta["provenance"]["config_hash"]


def test_three_phase_shape(run_dir):
    run = read_json(cell(run_dir, "three_phase") / "run.json")
    assert [p["name"] for p in run["phases"]] == ["warmup", "cooldown", "stress"]
    req = read_table(cell(run_dir, "three_phase") / "requests.parquet")
    assert set(req["phase"]) == {"warmup", "stress"}  # nothing sent in the idle cooldown
    tl = read_table(run_dir / "data" / "merged" / "llamacpp" / "smollm2-135m" / "three_phase" / "r1" / "timeline.parquet")
    cpu = tl[tl.device == "cpu"]
    for p in run["phases"]:
        rate = (cpu.phase == p["name"]).sum() / ((p["end_ns"] - p["start_ns"]) / 1e9)
        assert rate > 10, (p["name"], rate)  # ~20 Hz telemetry through every phase
    # the server works during load and idles during the cooldown
    busy = cpu.groupby("phase")["server_cpu_util_pct"].mean()
    assert busy["stress"] > 3 * busy["cooldown"]
    assert (cpu.loc[cpu.phase == "cooldown", "inflight"] == 0).all()
    # the client's own CPU is accounted, so what is left is foreign (other processes)
    assert cpu["client_cpu_util_pct"].notna().any() and (cpu["foreign_cpu_pct"].dropna() >= 0).all()


def test_replicates_are_separate_server_launches(run_dir):
    runs = [read_json(cell(run_dir, "users-1", "llamacpp", r) / "run.json") for r in REPS]
    assert [r["cell"]["rep"] for r in runs] == REPS
    assert runs[0]["server_pid"] != runs[1]["server_pid"]
    assert runs[0]["settings"]["replicate"] == 1 and runs[1]["settings"]["replicate"] == 2


def test_cells_carry_intervals_across_replicates_and_within_runs(run_dir):
    doc = read_json(run_dir / "data" / "analysis" / "cells" / "llamacpp" / "smollm2-135m" / "users-4.json")
    assert doc["replicates"] == REPS
    steady = next(p for p in doc["phases"] if p["phase"] == "steady")
    fig = steady["figures"]["output_tok_s"]
    assert len(fig["values"]) == len(steady["valid_replicates"]) == 2 - len(steady["excluded"])
    if len(fig["values"]) == 2:  # t interval with 1 dof around the replicates' mean
        iv = fig["interval"]
        assert iv["lo"] < iv["estimate"] < iv["hi"] and "1 dof" in iv["method"]
    m = metrics_of(run_dir, "users-4")
    within = next(p for p in m["phases"] if p["phase"] == "steady")["intervals"]
    assert within["blocks"] >= 1 and within["block_s"] >= 1.0 and "rule" in within


def test_configurations_are_compared_and_hypotheses_evaluated(run_dir):
    comp = read_json(run_dir / "data" / "analysis" / "comparisons.json")
    rows = comp["comparisons"]
    assert {(c["a"], c["b"]) for c in rows} == {("llamacpp", "llamacpp-1slot")}
    assert {(c["load"], c["phase"]) for c in rows} == {("three_phase", "stress"), ("users-1", "steady"),
                                                       ("users-4", "steady")}
    for c in rows:
        assert c["verdict"] and (c["winner"] in (None, "llamacpp", "llamacpp-1slot"))
        if c["winner"]:  # a winner only when the primary interval excludes 0 and its matching test holds
            assert c["difference"]["lo"] > 0 or c["difference"]["hi"] < 0
            across_runs = c["interval_source"] == "replicates"
            assert c["test"] == ("Welch" if across_runs else "Mann-Whitney")
            assert c["welch_p_holm" if across_runs else "mann_whitney_p_holm"] < comp["alpha"]
    hyp = read_json(run_dir / "data" / "analysis" / "hypotheses.json")["hypotheses"]
    assert [h["name"] for h in hyp] == ["slots-raise-throughput"]
    assert hyp[0]["status"] in ("confirmed", "rejected", "not resolvable", "not evaluable") and hyp[0]["reason"]


def test_metrics_are_finite_and_labelled(run_dir):
    for load in CELLS:
        doc = metrics_of(run_dir, load)
        for ph in doc["phases"]:
            if ph["mode"] == "idle":
                continue
            for key in ("output_tok_s", "request_rps", "success_rate", "mfu_pct"):
                assert finite(ph[key]), (load, ph["phase"], key, ph[key])
            for key in ("ttft_ms", "e2e_ms", "tpot_ms", "itl_ms"):
                assert finite(ph[key]["p50"]) and ph[key]["p50"] <= ph[key]["p99"]
            # a cost per token needs tokens: on a badly contended host (an invalid phase) a short
            # window can close before any token of its requests arrived, and then it has none
            if ph["output_tok_s"] > 0:
                assert finite(ph["usd_per_mtok"]), (load, ph["phase"], ph["usd_per_mtok"])
            else:
                assert ph["usd_per_mtok"] is None and not ph["validity"]["valid"], (load, ph["phase"])
            assert ph["success_rate"] == 1.0
            # llama.cpp can tokenize: every ok response was re-counted with the model's tokenizer
            assert ph["token_count_checked"] == ph["status_counts"]["ok"]
            assert 0 <= ph["token_count_mismatch_rate"] <= 1
        assert doc["labels"]["mfu_pct"] == "estimated" and doc["labels"]["output_tok_s"] == "measured"


def test_saturation_fit_reports_its_degrees_of_freedom(run_dir):
    doc = read_json(run_dir / "data" / "analysis" / "saturation" / "llamacpp" / "smollm2-135m.json")
    fit = doc["fit"]
    # two levels x two replicates; a point that failed its validity checks (a contended machine) is excluded
    assert fit["points"] + len(fit["excluded"]) == 4 and fit["dof"] == fit["points"] - 2
    assert set(fit["models"]) >= {"michaelis_menten", "usl", "knee"} and fit["criterion"] == "AICc"
    # two levels cannot pick a model: no AICc winner is claimed
    assert fit["best"] is None


def test_site_pages_contain_the_charts_and_no_nan(run_dir):
    from tokenbench.analysis.registry import fmt

    public = run_dir / "site" / "public"
    index = (public / "index.html").read_text()
    results = (public / "results.html").read_text()
    comparison = (public / "comparison.html").read_text()
    assert 'data-spec="throughput"' in index and 'window.TB_SPECS["throughput"]=' in index
    for name in ("throughput", "latency"):
        assert f'window.TB_SPECS["{name}"]=' in results
    assert 'window.TB_SPECS["frontier"]=' in comparison
    for load in CELLS:
        for engine in ENGINES:
            for rep in REPS:
                key = f"{engine}.smollm2-135m.{load}.{rep}"
                run = (public / "runs" / f"{key}.html").read_text()
                for kind in ("timeline", "engine", "latency_breakdown"):
                    assert f'window.TB_SPECS["{kind}.{key}"]=' in run, (key, kind)
                assert f"../data/runs/{key}.requests.parquet" in run
    assert "assets/vega-bundle.js" in index and (public / "assets" / "vega-bundle.js").stat().st_size > 100_000
    for page in public.rglob("*.html"):
        text = page.read_text()
        assert ">nan<" not in text.lower() and "NaN" not in text.split("<script")[0], page
    # the Results page shows the computed across-replicate means
    shown = 0
    for cell in (run_dir / "data" / "analysis" / "cells").rglob("*.json"):
        for ph in read_json(cell)["phases"]:
            if ph["warmup"] or ph["mode"] == "idle":  # the page reports measured phases
                continue
            iv = ((ph.get("figures") or {}).get("output_tok_s") or {}).get("interval")
            if iv:
                assert fmt(iv["estimate"]) in results, (cell, ph["phase"])
                shown += 1
    assert shown
    spec = json.loads(comparison.split('window.TB_SPECS["frontier"]=')[1].split(";</script>")[0].replace("<\\/", "</"))
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")


def test_no_change_reruns_nothing(run_dir):
    out = snakemake(run_dir, "-n", configfile=SMOKE)
    assert out.returncode == 0, out.stderr
    assert "Nothing to be done" in out.stdout + out.stderr, out.stdout[-2000:]


def test_changed_load_reruns_only_its_cell_and_downstream(run_dir, tmp_path):
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["loads"]["users-4"]["phases"][0]["duration_s"] = 5
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = snakemake(run_dir, "-n", configfile=changed)
    assert out.returncode == 0, out.stderr
    jobs = planned_jobs(out.stdout)
    per_run = {(r, w.get("engine"), w.get("load"), w.get("rep")) for r, w in jobs if "rep" in w}
    assert per_run == {(r, e, "users-4", rep) for r in ("run_load_test", "merge_telemetry", "compute_metrics",
                                                        "plot_timeline", "plot_engine_metrics",
                                                        "plot_latency_breakdown") for e in ENGINES for rep in REPS}
    per_cell = {(r, w.get("engine"), w.get("load")) for r, w in jobs if "load" in w and "rep" not in w}
    assert per_cell == {("combine_replicates", e, "users-4") for e in ENGINES}
    rules = {r for r, _ in jobs}
    assert rules == {"run_load_test", "merge_telemetry", "compute_metrics", "plot_timeline", "plot_engine_metrics",
                     "plot_latency_breakdown", "summarize_metrics",
                     "combine_replicates", "compare_configurations", "evaluate_hypotheses",
                     "fit_saturation", "trace_frontiers", "plot_frontier", "plot_throughput", "plot_latency",
                     "archive_results", "render_pages", "build_site", "all"}


def test_sigterm_mid_run_keeps_every_sent_request_and_leaves_no_server(run_dir, tmp_path):
    import signal
    import subprocess
    import time

    import psutil

    from tests.snakemake_util import env

    code = f"""
import sys
sys.path.insert(0, {str(ROOT / "workflow" / "scripts")!r})
from tokenbench.config import cell_settings, load_config
from tokenbench.load.run import run_load_test
s = cell_settings(load_config({str(SMOKE)!r}), "llamacpp", "smollm2-135m", "users-4")
s.load.phases = [s.load.phases[0].model_copy(update={{"duration_s": 300}})]
run_load_test(s, {str(run_dir / "data/models/smollm2-135m/manifest.json")!r},
              {str(run_dir / "data/engines/llamacpp/probe.json")!r},
              {str(tmp_path / "out/requests.parquet")!r}, {str(tmp_path / "out/telemetry.parquet")!r},
              {str(tmp_path / "out/run.json")!r}, {str(tmp_path / "cell.server.log")!r},
              {str(tmp_path / "cell.requests.arrows")!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", code], env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    journal = tmp_path / "cell.requests.arrows"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not journal.exists() or len(frame(journal)) < 4):
        time.sleep(0.2)
    assert journal.exists(), proc.stdout.read() if proc.poll() is not None else "no journal"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "load test interrupted" in out
    assert not (tmp_path / "out" / "requests.parquet").exists()
    partial = tmp_path / "cell.interrupted"
    req = read_table(partial / "requests.parquet")
    run = read_json(partial / "run.json")
    assert run["complete"] is False and read_meta(partial / "requests.parquet")["complete"] is False
    assert sorted(frame(journal)["request_id"]) == sorted(req["request_id"]) == list(range(len(req)))
    assert set(req["status"]) <= {"ok", "cancelled"} and "cancelled" in set(req["status"])
    time.sleep(0.5)
    pid = run["server_pid"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert run["server_stop"]["port_released"]


def test_engine_tokenizer_builds_exact_length_synthetic_prompts(run_dir, tmp_path):
    import requests as http

    from tokenbench.load.prompts import synthetic_prompts
    from tokenbench.engines.server import Server, free_port
    from tokenbench.load.tokenizer import EngineTokenizer

    manifest = read_json(run_dir / "data/models/smollm2-135m/manifest.json")
    probe = read_json(run_dir / "data/engines/llamacpp/probe.json")
    port = free_port()
    with Server([probe["binary"], "--model", manifest["path"], "--port", str(port), "--threads", "2",
                 "--ctx-size", "512"], tmp_path / "s.log", "127.0.0.1", port) as srv:
        srv.wait_ready(60)
        tok = EngineTokenizer(srv.base_url)
        items = synthetic_prompts(tok, 37, 4, seed=1)
        assert all(len(tok.encode(i["text"])) == 37 for i in items) and len({i["text"] for i in items}) == 4
        # the server agrees: a completions request for each prompt counts 37 prompt tokens (+ BOS if it adds one)
        for it in items[:2]:
            r = http.post(srv.base_url + "/v1/completions", json={"prompt": it["text"], "max_tokens": 1}).json()
            assert r["usage"]["prompt_tokens"] in (37, 38)
