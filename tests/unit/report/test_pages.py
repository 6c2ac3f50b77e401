"""The report's pages: rendered from templates on small synthetic results, then built with mkdocs."""
import csv
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tokenbench.analysis.metrics import compute_metrics
from tokenbench.analysis.replicates import combine_replicates
from tokenbench.config import HardwareSpec, StudySpec
from tokenbench.records import write_json
from tokenbench.report import pages, verdict
from tokenbench.report.results import Results, run_key
from tokenbench.report.history import archive_results
from tokenbench.report.tables import Row, Table, write_downloads

from ..analysis.test_metrics import MARK, S, frame, req

ENGINES = {"fast": 5, "slow": 10}  # inter-token gap (ms)
LOADS = {"users-1": 1, "users-4": 4}
REPS = ("r1", "r2")


def make_run(engine, load, rep):
    users, itl = LOADS[load], ENGINES[engine]
    mark = {**MARK, "label": f"{users} users", "target": {"users": users, "duration_s": 10}}
    jitter = 1 if rep == "r1" else 2  # replicates differ a little, so intervals have a spread
    df = frame([req(i, "steady", i * S // (3 * users), 40 + jitter, 10, itl + 0.1 * jitter) for i in range(30 * users)])
    cpu = pd.DataFrame({"t_ns": np.arange(0, 11 * S, S // 4), "device": "cpu"})
    cpu["cpu_util_pct"], cpu["server_cpu_util_pct"], cpu["server_rss_bytes"] = 50.0, 40.0, 2**28
    cpu["t_s"] = cpu["t_ns"] / S
    cpu["phase"] = np.where(cpu["t_ns"] < 10 * S, "steady", "teardown")
    cpu["inflight"], cpu["output_tok_s"] = users, 10.0 * users
    cell = {"engine": engine, "model": "smol", "load": load, "rep": rep}
    run = {"phases": [mark], "cell": cell, "complete": True, "clock": {"anchor": {"wall_ns": 1_700_000_000 * S, "monotonic_ns": 0}},
           "hardware": {"accelerator": "cpu", "peak_flops": 2e11, "peak_note": "estimated: test",
                        "cpu": {"name": "X", "cores": 2}},
           "server_command": ["llama-server", "--port", "1"],
           "settings": {"engine": {"kind": "llamacpp"}, "load": {"name": load, "phases": [mark]},
                        "request": {"max_tokens": 10}, "hardware": {"price_usd_per_hour": 0.1}},
           "provenance": {"config_hash": "abc", "git_sha": "0123456789abcdef", "created_unix_ns": 1_700_000_000 * S,
                          "host": {"cpu_cores": 2}}}
    doc, _ = compute_metrics(df, cpu, run, {"name": "smol", "figures": {"parameters": 1e8}},
                             HardwareSpec(price_usd_per_hour=0.1))
    doc["cell"] = cell
    return doc, run, df


def comparison(load, a_value, b_value, winner):
    ratio = a_value / b_value
    return {"model": "smol", "a": "fast", "b": "slow", "load": load, "phase": "steady", "metric": "output_tok_s",
            "a_value": a_value, "b_value": b_value, "difference": {"estimate": a_value - b_value, "lo": 1.0, "hi": 2.0},
            "ratio": {"estimate": ratio, "lo": ratio * 0.9, "hi": ratio * 1.1}, "interval_source": "replicates",
            "welch_p_holm": 0.01, "mann_whitney_p_holm": 0.02, "cliffs_delta": 0.9, "cohens_d": 3.0,
            "winner": winner, "verdict": "resolved" if winner else "not resolvable: the difference's interval includes 0",
            "replicates_needed": None if winner else 7}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Results files of 2 engines × 2 loads × 2 replicates, and the pages rendered from them."""
    root = tmp_path_factory.mktemp("results")
    metric_paths, run_paths, request_paths, cell_paths, docs = [], [], {}, [], {}
    for engine in ENGINES:
        for load in LOADS:
            cell_docs = []
            for rep in REPS:
                doc, run, df = make_run(engine, load, rep)
                d = root / engine / load / rep
                d.mkdir(parents=True)
                write_json(doc, d / "metrics.json", "metrics", None)
                write_json(run, d / "run.json", "run", run["provenance"])
                df.drop(columns=["chunk_ns"]).to_parquet(d / "requests.parquet")
                metric_paths.append(str(d / "metrics.json"))
                run_paths.append(str(d / "run.json"))
                request_paths[run_key(doc["cell"])] = str(d / "requests.parquet")
                cell_docs.append(doc)
            cell = combine_replicates(cell_docs)
            write_json(cell, root / f"cell-{engine}-{load}.json", "cell", None)
            cell_paths.append(str(root / f"cell-{engine}-{load}.json"))
            docs[(engine, load)] = cell
    tok = {load: {e: next(p for p in docs[(e, load)]["phases"] if p["phase"] == "steady")["figures"]["output_tok_s"]
                  ["interval"]["estimate"] for e in ENGINES} for load in LOADS}
    comps = {"level": 0.95, "alpha": 0.05, "comparisons": [
        comparison("users-4", tok["users-4"]["fast"], tok["users-4"]["slow"], "fast"),
        comparison("users-1", tok["users-1"]["fast"], tok["users-1"]["slow"], None)]}
    write_json(comps, root / "comparisons.json", "comparisons", None)
    write_json({"hypotheses": []}, root / "hypotheses.json", "hypotheses", None)
    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "title": "t </script>",
            "data": {"values": [{"x": 1, "y": 2}]}, "mark": "point",
            "encoding": {"x": {"field": "x", "type": "quantitative"}, "y": {"field": "y", "type": "quantitative"}}}
    (root / "throughput.vl.json").write_text(json.dumps(spec))
    (root / "throughput.csv").write_text("x,y\n1,2\n")
    (root / "throughput.json").write_text('[{"x": 1, "y": 2}]')
    out = tmp_path_factory.mktemp("site")
    (out / "docs" / "assets").mkdir(parents=True)
    (out / "docs" / "assets" / "vega-bundle.js").write_text("// the bundle, built by its own rule\n")
    archive_results(cell_paths, run_paths, "cfg-hash", "snakemake --cores 1", str(root / "archive_entry.json"),
                    str(root / "history"))
    written = pages.render_pages(StudySpec(title="T", description="D"), "cfg-hash", metric_paths, run_paths, [],
                                 {"throughput": str(root / "throughput.vl.json")}, str(out), cell_paths,
                                 str(root / "comparisons.json"), str(root / "hypotheses.json"),
                                 request_paths=request_paths, archive_path=str(root / "archive_entry.json"),
                                 history_dir=str(root / "history"))
    res = Results(docs=[json.loads(open(p).read()) for p in metric_paths],
                        runs=[json.loads(open(p).read()) for p in run_paths],
                        cells=list(docs.values()), comparisons=comps)
    return {"out": out, "written": written, "res": res, "tok": tok}


def test_every_page_and_run_page_is_written_from_its_template(site):
    names = {p.split("/docs/")[1] for p in site["written"]}
    assert {f"{stem}.md" for stem, _ in pages.PAGES} <= names
    assert len([n for n in names if n.startswith("runs/")]) == len(ENGINES) * len(LOADS) * len(REPS)
    for p in site["written"]:
        text = open(p).read()
        assert "{{" not in text and "{%" not in text and "nan" not in text.lower().split()


def test_verdict_names_the_best_valid_configuration_with_its_interval(site):
    res, tok = site["res"], site["tok"]
    goals = {g.title: g for g in verdict.verdict(res)}
    best = goals["Highest output throughput"]
    assert best.winner == "fast" and "users-4" in best.where
    assert pages.fmt(tok["users-4"]["fast"]) in best.figure and "[" in best.figure  # two runs: an interval
    assert "resolved" in best.margin and "slow" in best.margin
    assert "no SLO is configured" in goals["Lowest TTFT p95 under the SLO"].reason
    assert "power sensor" in goals["Most output tokens per joule"].reason


def test_verdict_leaves_invalid_phases_out(site):
    res = site["res"]
    cells = json.loads(json.dumps(res.cells))
    for c in cells:
        if c["cell"]["engine"] == "fast":
            for ph in c["phases"]:
                ph["valid"] = False
    alt = Results(docs=res.docs, runs=res.runs, cells=cells, comparisons=res.comparisons)
    best = {g.title: g for g in verdict.verdict(alt)}["Highest output throughput"]
    assert best.winner == "slow"
    for c in cells:
        for ph in c["phases"]:
            ph["valid"] = False
    none = {g.title: g for g in verdict.verdict(Results(docs=res.docs, runs=res.runs, cells=cells))}
    assert none["Highest output throughput"].winner is None and none["Highest output throughput"].reason


def test_tables_download_the_rows_they_show(site, tmp_path):
    t = Table("t", [Row().text("name", "a").number("x (ms)", "x_ms", 1.25, 1),
                    Row(invalid="too short").text("name", "b").interval("y", "y", {"estimate": 2.0, "lo": 1.0, "hi": 3.0})])
    write_downloads(t, tmp_path, "page.t", "data")
    rows = list(csv.DictReader(open(tmp_path / "page.t.csv")))
    assert [r["name"] for r in rows] == ["a", "b"] and rows[0]["x_ms"] == "1.25" and rows[1]["y_hi"] == "3.0"
    assert rows[1]["invalid_reason"] == "too short"
    assert json.loads((tmp_path / "page.t.json").read_text())[1]["y_lo"] == 1.0
    assert t.href == {"csv": "data/page.t.csv", "json": "data/page.t.json"}
    # every download link on the rendered pages points at a file that exists
    docs = site["out"] / "docs"
    for md in docs.rglob("*.md"):
        for href in __import__("re").findall(r'class="tb-download" href="([^"]+)"', md.read_text()):
            assert (md.parent / href).resolve().is_file(), (md, href)


def test_health_downloads_keep_their_columns_when_nothing_failed(site, tmp_path):
    """A run with no invalid phase and no excluded fit point has the same download columns as one with
    them: the SLURM run and the local run of one config differ only in which phases were disturbed."""
    res = site["res"]
    docs = json.loads(json.dumps(res.docs))
    ph = next(p for p in docs[0]["phases"] if p["phase"] == "steady")
    ph["validity"] = {"valid": False, "failed_checks": ["contended: other processes used 16 %"]}
    fits = [{"engine": "fast", "model": "smol", "fit": {"excluded": [{"reason": "users-4 r1: contended"}]}}]
    clean = pages.health_tables(Results(docs=res.docs, runs=res.runs, cells=res.cells))
    failed = pages.health_tables(Results(docs=docs, runs=res.runs, cells=res.cells, fits=fits))
    for key in ("invalid", "excluded"):
        assert clean[key].rows == [] and failed[key].rows
        write_downloads(clean[key], tmp_path / "clean", key, "data")
        write_downloads(failed[key], tmp_path / "failed", key, "data")
        header = (tmp_path / "failed" / f"{key}.csv").read_text().splitlines()[0]
        assert (tmp_path / "clean" / f"{key}.csv").read_text().splitlines() == [header]
        assert "invalid_reason" in header and len(header.split(",")) >= 3


def test_chart_library_loads_only_on_pages_with_charts_and_specs_cannot_end_their_script(site):
    docs = site["out"] / "docs"
    index = (docs / "index.md").read_text()
    assert "vega-bundle.js" in index and 'data-spec="throughput"' in index
    assert "t <\\/script>" in index and "t </script>" not in index
    for stem in ("methodology", "provenance", "health", "published"):
        assert "vega-bundle.js" not in (docs / f"{stem}.md").read_text()


def test_results_table_greys_invalid_rows_with_the_reason(site):
    res = site["res"]
    cells = json.loads(json.dumps(res.cells))
    ph = next(p for p in cells[0]["phases"] if p["phase"] == "steady")
    ph["valid"], ph["excluded"] = False, [{"rep": "r1", "reason": "r1: sent 3 requests < min_requests 10"}]
    tables = pages.results_tables(Results(docs=res.docs, runs=res.runs, cells=cells))
    t = tables[0]["table"]
    assert t.rows[0].invalid and "min_requests" in t.notes[0] and t.rows[0].cells["valid runs"].endswith("[1]")


def test_site_builds_strict(site):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(site["out"] / "mkdocs.yml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    public = site["out"] / "public"
    assert (public / "comparison.html").is_file() and list((public / "runs").glob("*.html"))
    assert (public / "data" / "runs").is_dir()


def test_methodology_lists_resolved_commands_per_engine_and_no_secrets(monkeypatch):
    from tokenbench.engines import catalog as engines

    secret = "hf_secret_value_1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)
    spec = {"name": "mlc", "binary": "mlc_llm", "host": "127.0.0.1", "served_name": "m", "max_batch": 64,
            "max_context": 4096}
    cmd = engines.engine("mlc-llm").build_command(spec, "/models/Llama-3-8B-q0f16-MLC", 8000)
    load = {"name": "l", "phases": [{"name": "s", "mode": "closed", "users": 1, "duration_s": 1}]}
    run_mlc = {"cell": {"engine": "mlc", "model": "m", "load": "l"}, "server_command": cmd,
               "server_env": {"HF_TOKEN": secret, "CUDA_VISIBLE_DEVICES": "0"},
               "settings": {"engine": {"kind": "mlc-llm"}, "load": load, "request": {"max_tokens": 8}}}
    run_ext = {"cell": {"engine": "theirs", "model": "m", "load": "l"}, "server_command": ["(external endpoint)"],
               "endpoint": {"external": True, "base_url": "http://127.0.0.1:9000", "api_key_env": "THEIR_KEY"},
               "settings": {"engine": {"kind": "external"}, "load": load, "request": {"max_tokens": 8}}}
    text = "\n".join(pages.server_commands([run_mlc, run_ext]))
    # copy-pastable: the ;-separated overrides are quoted as one argument
    assert ("`CUDA_VISIBLE_DEVICES=0 HF_TOKEN='<HF_TOKEN>' mlc_llm serve /models/Llama-3-8B-q0f16-MLC --mode server "
            "--host 127.0.0.1 --port 8000 --overrides 'max_num_sequence=64;context_window_size=4096'`") in text
    assert "**mlc** (mlc-llm; m, l, r1)" in text
    # a Python engine's distribution and version, from the probe's metadata
    run_mlc["provenance"] = {"engine": {"kind": "mlc-llm", "package": "mlc-llm-nightly", "version": "0.20.1"}}
    assert "**mlc** (mlc-llm mlc-llm-nightly 0.20.1; m, l, r1)" in "\n".join(pages.server_commands([run_mlc]))
    assert "**theirs** (external endpoint; m, l): `http://127.0.0.1:9000`, API key from `$THEIR_KEY` (not recorded)" in text
    assert secret not in text


def test_rerun_command_names_the_commit_and_config():
    runs = [{"provenance": {"git_sha": "0123456789abcdef"}}]
    assert pages.rerun_command(runs, "snakemake --cores 1 --configfile config/my.yaml") == \
        "git checkout 0123456789ab && snakemake --cores 1 --configfile config/my.yaml"
    assert pages.rerun_command([{"provenance": {}}]) == "snakemake --cores 1"


def test_history_page_shows_this_run_and_its_download(site):
    text = (site["out"] / "docs" / "history.md").read_text()
    assert "Only one run is archived so far" in text or "A/B" in text
    assert 'class="tb-download" href="data/history/archive.json"' in text
    archive = json.loads((site["out"] / "docs" / "data" / "history" / "archive.json").read_text())
    assert [e["run_id"] for e in archive] and "history.js" not in text  # one run: no A/B script


def test_iso_tables_show_each_configuration_at_each_target_and_percent_only_against_a_baseline():
    y = {"output": {"label": "output throughput (tok/s)"}, "input": {"label": "input throughput (tok/s)"}}
    iso = [{"x_variant": "median", "target": t, "engine": e, "model": "m", "config": f"{e} · m",
            "y": {"output": v, "input": 2 * v if v else None},
            "pct_vs_baseline": {"output": p, "input": p} if e == "a" else None}
           for t, e, v, p in [(10.0, "a", 100.0, 25.0), (10.0, "b", 80.0, None), (20.0, "a", 90.0, None),
                              (20.0, "b", None, None)]]
    fr = {"x_variants": {"median": {"label": "tok/s/user (median)"}}, "y_variants": y, "iso": iso, "baseline": "b"}
    (t,) = pages.iso_tables(fr)
    rows = t["table"].rows
    assert [r.cells["tok/s/user"] for r in rows] == ["10.0", "20.0"]
    assert rows[0].cells["a: output throughput (tok/s)"] == "100.0" and rows[1].cells["b: output throughput (tok/s)"] == "n/a"
    assert rows[0].cells["a: output throughput vs b (%)"] == "25.0"
    assert not any("input" in c for c in t["table"].columns)  # shown in the download only
    (t,) = pages.iso_tables({**fr, "baseline": None})
    assert not any("vs" in c for c in t["table"].columns)


def test_run_page_shows_each_phases_figures_under_the_other_tools_definitions(site):
    run_page = next(p for p in site["written"] if "/runs/" in p)
    text = open(run_page).read()
    section = text.split("## Other tools' definitions", 1)[1]
    assert "### steady" in section
    for name in ("tokenbench", "vLLM bench serve", "GuideLLM", "AIPerf", "inference-perf"):
        assert f">{name}<" in section
    # these records hold no re-tokenized counts: AIPerf's output tokens are n/a with the note saying why
    table = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    aiperf = next(r for r in table.split("<tr") if ">AIPerf<" in r)
    assert 'data-label="output tokens total" class="tb-num">n/a<' in aiperf
    assert "<code>client_output_tokens</code> not recorded for 30 of 30 requests" in section
    # vLLM stops at the first event (the role chunk), 1 ms after the send in these records, not at the token
    vllm = next(r for r in table.split("<tr") if ">vLLM bench serve<" in r)
    assert 'data-label="TTFT p50 (ms)" class="tb-num">1.0<' in vllm
    methodology = (site["out"] / "docs" / "methodology.md").read_text()
    assert "## Other tools' definitions" in methodology
    assert "https://github.com/vllm-project/vllm/blob/02cfb534df5674737558730b10f23d1b7aef9b7c/" \
           "vllm/benchmarks/lib/endpoint_request_func.py" in methodology
    assert "<code>time_per_output_token_ms</code>" in methodology


def test_config_reference_page_lists_every_key_and_offers_the_schema(site):
    from tokenbench import config_reference

    text = (site["out"] / "docs" / "config.md").read_text()
    keys = [r["key"] for sec in config_reference.sections() for r in sec.rows]
    assert all(f"`{k}`" in text for k in keys)
    assert "| `validity.min_requests` | integer (≥ 0) | `20` | A phase must complete at least this many requests. |" in text
    schema = site["out"] / "docs" / pages.CONFIG_SCHEMA
    assert f'class="tb-download" href="{pages.CONFIG_SCHEMA}"' in text
    assert json.loads(schema.read_text()) == config_reference.json_schema()
    assert {"Config reference": "config.md"} in pages.mkdocs_config(StudySpec(title="T"))["nav"]


def test_a_compared_pair_names_the_weights_each_side_ran():
    def run(engine, label):
        return {"cell": {"engine": engine, "model": "m"}, **({"weights": {"label": label}} if label else {})}

    runs = [run("vllm", "HF bfloat16 from GGUF Q4_1"), run("llamacpp", "GGUF Q4_1")]
    assert pages.pair_title(runs, "m", "vllm", "llamacpp") == (
        "vllm (a, HF bfloat16 from GGUF Q4_1) against llamacpp (b, GGUF Q4_1), m")
    same = [run("a", "GGUF Q4_1"), run("b", "GGUF Q4_1")]
    assert pages.pair_title(same, "m", "a", "b") == "a (a) against b (b), m (GGUF Q4_1)"
    assert pages.pair_title([run("a", None), run("b", None)], "m", "a", "b") == "a (a) against b (b), m"
    assert "weights not recorded" in pages.pair_title([run("a", "GGUF Q4_1"), run("b", None)], "m", "a", "b")


def test_verdict_names_the_winners_weights_only_when_configurations_ran_different_ones(site):
    res = site["res"]
    runs = json.loads(json.dumps(res.runs))
    for r in runs:
        r["weights"] = {"label": "GGUF Q4_1" if r["cell"]["engine"] == "slow" else "HF bfloat16 from GGUF Q4_1"}
    mixed = Results(docs=res.docs, runs=runs, cells=res.cells, comparisons=res.comparisons)
    assert {g.title: g for g in verdict.verdict(mixed)}["Highest output throughput"].winner == (
        "fast (HF bfloat16 from GGUF Q4_1)")
    for r in runs:
        r["weights"] = {"label": "GGUF Q4_1"}
    same = Results(docs=res.docs, runs=runs, cells=res.cells, comparisons=res.comparisons)
    assert {g.title: g for g in verdict.verdict(same)}["Highest output throughput"].winner == "fast"
