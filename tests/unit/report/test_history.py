import html.parser
import json
import math
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import markdown
import pytest
from scipy import stats as sps

from tokenbench import records
from tokenbench.analysis import stats
from tokenbench.analysis.replicates import combine_replicates
from tokenbench.report import history
from tokenbench.report.pages import mkdocs_config
from tokenbench.config import StudySpec

ROOT = Path(__file__).resolve().parents[3]
REPORT = ROOT / "workflow" / "scripts" / "tokenbench" / "report"
S = 1_000_000_000
WALL0 = 1_795_326_514_873_896_582  # a wall-clock anchor (ns since the epoch)


def metrics_doc(engine, load, rep, tok_s, ttft_p50=50.0, failed=(), warmup_tok_s=5.0):
    """A minimal metrics.json: a warm-up, an idle and a steady phase, figures as compute_metrics names them."""
    def phase(name, mode, warmup, v):
        return {"phase": name, "mode": mode, "warmup": warmup, "target": {}, "label": name,
                "validity": {"failed_checks": list(failed) if name == "steady" else []},
                "output_tok_s": v, "request_rps": v / 32, "failure_rate": 0.0,
                "ttft_ms": {"p50": ttft_p50, "p95": 2 * ttft_p50}, "e2e_ms": {"p99": 900.0}, "tpot_ms": {"p50": 20.0}}
    return {"cell": {"engine": engine, "model": "smol", "load": load, "rep": rep}, "complete": True,
            "phases": [phase("warm", "poisson", True, warmup_tok_s), {"phase": "cool", "mode": "idle", "warmup": False,
                                                                      "target": {}, "label": "idle"},
                       phase("steady", "closed", False, tok_s)]}


def cell(engine, load, tok_s_values, **kw):
    return combine_replicates([metrics_doc(engine, load, f"r{i + 1}", v, **kw) for i, v in enumerate(tok_s_values)])


def run_doc(engine, load, rep, start_s, git="abc123"):
    mono0 = 1000 * S
    return {"cell": {"engine": engine, "model": "smol", "load": load, "rep": rep},
            "clock": {"anchor": {"wall_ns": WALL0, "monotonic_ns": mono0}},
            "phases": [{"name": "warm", "start_ns": mono0 + int(start_s * S)},
                       {"name": "steady", "start_ns": mono0 + int((start_s + 5) * S)}],
            "hardware": {"accelerator": "cpu", "cpu": {"name": "Test CPU", "cores": 2, "ghz": 2.3}, "gpus": []},
            "provenance": {"git_sha": git, "host": {"hostname_hash": "h1", "os": "Linux", "cpu": "Test CPU"},
                           "engine": {"kind": "llama.cpp", "version": "1"}, "model": {"sha256": "m"}}}


def study(tok_s=(100.0, 110.0), serial=(50.0, 52.0), start_s=30.0, config_hash="c" * 64, git="abc123"):
    cells = [cell("batched", "users-8", tok_s), cell("serial", "users-8", serial)]
    runs = [run_doc(e, "users-8", f"r{i + 1}", start_s + 40 * i + (0 if e == "batched" else 7), git)
            for e in ("batched", "serial") for i in range(2)]
    return cells, runs, config_hash


def entry(**kw):
    cells, runs, h = study(**kw)
    return history.archive_entry(cells, runs, h, "snakemake --cores 1")


# ------------------------------------------------------------------------------------------------ archive

def test_run_id_is_the_earliest_start_and_a_hash_of_the_figures():
    a, again = entry(), entry()
    assert a == again  # deterministic: same results, same entry, same id
    start = datetime.fromtimestamp((WALL0 + 30 * S) / 1e9, tz=timezone.utc)  # batched r1's warm-up
    assert a["run_id"] == f"{start:%Y%m%dT%H%M%SZ}-{history.figures_hash(a['phases'])[:8]}"
    assert a["date"] == f"{start:%Y-%m-%dT%H:%M:%SZ}"
    changed = entry(tok_s=(100.0, 111.0))
    assert changed["run_id"].split("-")[0] == a["run_id"].split("-")[0]
    assert changed["run_id"] != a["run_id"]
    later = entry(start_s=3600.0)
    assert later["run_id"].split("-")[1] == a["run_id"].split("-")[1] and later["run_id"] != a["run_id"]


def test_entry_keeps_measured_phases_with_replicate_means_intervals_and_validity():
    cells, runs, h = study()
    cells.append(cell("serial", "users-1", [40.0, 41.0], failed=["not steady"]))  # no valid replicate
    e = history.archive_entry(cells, runs, h, "snakemake --cores 1 --configfile config/smoke.yaml")
    assert e["config_hash"] == h and e["command"].endswith("config/smoke.yaml")
    assert e["git_commit"] == "abc123" and e["host"]["cpu"] == "Test CPU" and e["level"] == 0.95
    assert [(p["engine"], p["load"], p["phase"]) for p in e["phases"]] == [
        ("batched", "users-8", "steady"), ("serial", "users-1", "steady"), ("serial", "users-8", "steady")]
    fig = e["phases"][0]["figures"]["output_tok_s"]
    t = stats.t_interval([100.0, 110.0])
    assert (fig["mean"], fig["lo"], fig["hi"], fig["n"]) == (105.0, t.lo, t.hi, 2)
    assert set(e["phases"][0]["figures"]) == {"output_tok_s", "request_rps", "ttft_p50_ms", "ttft_p95_ms",
                                               "e2e_p99_ms", "tpot_p50_ms", "failure_rate"}  # no price, no sensor
    bad = e["phases"][1]
    assert not bad["valid"] and bad["figures"] == {} and "not steady" in bad["excluded"][0]["reason"]


def test_archive_results_writes_the_entry_and_accumulates_in_the_archive(tmp_path):
    folder = tmp_path / "data" / "history"
    folder.mkdir(parents=True)
    (folder / "older.json").write_text("{}")  # anything already there is left alone

    def archive(name, **kw):
        cells, runs, h = study(**kw)
        paths = {"cells": [], "runs": []}
        for kind, docs in (("cells", cells), ("runs", runs)):
            for i, d in enumerate(docs):
                p = tmp_path / name / kind / f"{i}.json"
                records.write_json(d, p, kind, None)
                paths[kind].append(str(p))
        out = tmp_path / name / "archive_entry.json"
        e = history.archive_results(paths["cells"], paths["runs"], h, "snakemake --cores 1", str(out), str(folder))
        return e, out

    first, out = archive("one")
    stored = folder / f"{first['run_id']}.json"
    assert json.loads(stored.read_text())["run_id"] == first["run_id"]
    assert stored.read_bytes() == out.read_bytes()
    again, _ = archive("again")  # the same results archived again: the same id, the same bytes
    assert again["run_id"] == first["run_id"] and stored.read_bytes() == out.read_bytes()
    second, _ = archive("two", tok_s=(90.0, 95.0), start_s=7200.0)
    assert sorted(p.name for p in folder.iterdir()) == sorted(["older.json", stored.name, f"{second['run_id']}.json"])
    assert [e["run_id"] for e in history.load_archive(folder)] == [first["run_id"], second["run_id"]]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make to run the Makefile's clean target")
def test_make_clean_keeps_the_archive(tmp_path):
    for p in ("data/history/x.json", "data/README.md", "data/analysis/cells/a.json", "data/runs/r.json",
              "site/public/index.html", "logs/a.log"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_text("x")
    out = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "clean"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["data/README.md", "data/history/x.json"]


def test_load_archive_reports_unreadable_files_and_sorts_by_date(tmp_path, caplog):
    late, early = entry(start_s=7200.0), entry(tok_s=(1.0, 2.0))
    for e in (late, early):
        records.write_json(e, tmp_path / f"{e['run_id']}.json", history.KIND, None)
    (tmp_path / "truncated.json").write_text('{"kind": "archive_entry", "run_')
    (tmp_path / "other.json").write_text(json.dumps({"kind": "cell", "phases": []}))
    (tmp_path / "future.json").write_text(json.dumps({**early, "kind": history.KIND, "entry_version": 99}))
    problems = []
    with caplog.at_level("WARNING", logger="tokenbench"):
        got = history.load_archive(tmp_path, problems)
    assert [e["run_id"] for e in got] == [early["run_id"], late["run_id"]]
    assert sorted(p["file"] for p in problems) == ["future.json", "other.json", "truncated.json"]
    assert "entry version 99" in next(p["error"] for p in problems if p["file"] == "future.json")
    assert "truncated.json" in caplog.text
    assert history.load_archive(tmp_path / "missing") == []


# ---------------------------------------------------------------------------------------------- A/B ratios

def test_ab_ratio_interval_is_the_log_scale_delta_method_with_welch_dof():
    a_vals, b_vals = [10.0, 12.0, 14.0], [5.0, 6.0]
    a = history.archive_entry([cell("x", "l", a_vals)], [run_doc("x", "l", "r1", 0)], "h", "c")
    b = history.archive_entry([cell("x", "l", b_vals)], [run_doc("x", "l", "r1", 99)], "h", "c")
    row = next(r for r in history.ab_ratios(a, b) if r["figure"] == "output_tok_s")
    # by hand, from the replicate values: se = sd / sqrt(k), v = se^2 / mean^2
    va = (2.0 / math.sqrt(3)) ** 2 / 12.0**2
    vb = (math.sqrt(0.5) / math.sqrt(2)) ** 2 / 5.5**2
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 1)
    half = sps.t.ppf(0.975, dof) * math.sqrt(va + vb)
    assert row["ratio"] == pytest.approx(12 / 5.5)
    assert row["dof"] == pytest.approx(dof)
    assert (row["lo"], row["hi"]) == (pytest.approx(12 / 5.5 * math.exp(-half)), pytest.approx(12 / 5.5 * math.exp(half)))
    # the same as Welch on the replicate values (what compare_configurations uses)
    w = stats.welch_difference(a_vals, b_vals)["ratio"]
    assert (row["lo"], row["hi"]) == (pytest.approx(w.lo), pytest.approx(w.hi))
    assert row["a"]["n"] == 3 and row["b"]["n"] == 2 and row["a_valid"] and row["b_valid"]


def test_ab_ratio_has_no_interval_where_a_side_lacks_one():
    a = history.archive_entry([cell("x", "l", [10.0, 12.0])], [run_doc("x", "l", "r1", 0)], "h", "c")
    one = history.archive_entry([cell("x", "l", [8.0])], [run_doc("x", "l", "r1", 99)], "h", "c")
    rows = {r["figure"]: r for r in history.ab_ratios(a, one)}
    r = rows["output_tok_s"]
    assert r["ratio"] == pytest.approx(11 / 8) and r["lo"] is None and r["hi"] is None
    assert "b has none" in r["note"]
    zero = rows["failure_rate"]  # 0 / 0: no ratio at all
    assert zero["ratio"] is None and zero["lo"] is None and "b is 0" in zero["note"]
    two = {r["figure"]: r for r in history.ab_ratios(a, history.archive_entry(
        [cell("x", "l", [20.0, 22.0])], [run_doc("x", "l", "r1", 99)], "h", "c"))}
    flat = two["ttft_p50_ms"]  # every replicate 50 ms on both sides: a zero-width "interval" would claim certainty
    assert flat["ratio"] == 1 and flat["lo"] is None and "no spread" in flat["note"]
    assert two["output_tok_s"]["lo"] < 11 / 21 < two["output_tok_s"]["hi"]
    same = history.ab_ratios(a, a)
    assert all(r["lo"] is None for r in same) and next(r for r in same if r["figure"] == "output_tok_s")["ratio"] == 1
    # only what both runs have: a cell missing from one side gives no row
    other = history.archive_entry([cell("y", "l", [1.0, 2.0])], [run_doc("y", "l", "r1", 0)], "h", "c")
    assert history.ab_ratios(a, other) == []


# -------------------------------------------------------------------------------------------------- page

def env(autoescape):
    return jinja2.Environment(loader=jinja2.FileSystemLoader(REPORT / "templates"), autoescape=autoescape,
                              undefined=jinja2.StrictUndefined)


def markdown_html(text):
    return markdown.markdown(text, extensions=mkdocs_config(StudySpec(title="t"))["markdown_extensions"])


class Tables(html.parser.HTMLParser):
    """Rows (lists of cell texts) under each element with an id, and the JSON script's text."""

    def __init__(self):
        super().__init__()
        self.rows, self.scripts, self.selects = {}, {}, {}
        self._in, self._row, self._cell, self._script, self._select = None, None, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tbody":
            self._in = a.get("id", "tbody")
            self.rows.setdefault(self._in, [])
        elif tag == "tr" and self._in:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = ""
        elif tag == "script" and a.get("type") == "application/json":
            self._script = a["id"]
            self.scripts[self._script] = ""
        elif tag == "select":
            self._select = a["id"]
            self.selects[self._select] = []
        elif tag == "option" and self._select:
            self.selects[self._select].append((a["value"], "selected" in a))

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in = None
        elif tag == "tr" and self._row is not None:
            self.rows[self._in].append(self._row)
            self._row = None
        elif tag == "td" and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "script":
            self._script = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._script:
            self.scripts[self._script] += data


def parse(text):
    p = Tables()
    p.feed(text)
    return p


def three_runs():
    """Two runs of config X around one of config Y; the latest (X) is the current run."""
    first = entry(start_s=0.0, tok_s=(100.0, 104.0), config_hash="x" * 64)
    other = entry(start_s=3600.0, tok_s=(120.0, 130.0), config_hash="y" * 64)
    current = entry(start_s=7200.0, tok_s=(110.0, 112.0), config_hash="x" * 64)
    return [current, other, first]


@pytest.mark.parametrize("autoescape", [True, False])
def test_page_with_one_run_says_an_ab_table_needs_two(autoescape):
    e = entry()
    text = env(autoescape).get_template("history.md.j2").render(history=history.history_context([e], e["run_id"]))
    page = markdown_html(text)
    assert e["run_id"] in page and "<strong>this run</strong>" in page
    assert "Only one run is archived" in page and "<select" not in page and "history.js" not in page
    runs = parse(page).rows["tbody"]
    assert len(runs) == 1 and runs[0][-1].startswith("105.0 ± 63.5, n = 2")  # batched: 100 and 110, t(1 dof) x 5


@pytest.mark.parametrize("autoescape", [True, False])
def test_page_with_three_runs_defaults_to_the_previous_run_of_the_same_config(autoescape):
    current, other, first = three_runs()
    bad = [{"file": "broken.json", "error": "Expecting value: <line 1>"}]
    ctx = history.history_context([current, other, first], current["run_id"], bad)
    assert (ctx["default_a"], ctx["default_b"]) == (current["run_id"], first["run_id"])
    page = markdown_html(env(autoescape).get_template("history.md.j2").render(history=ctx))
    p = parse(page)
    assert len(p.rows["tbody"]) == 3
    for sel, want in (("tb-history-a", current), ("tb-history-b", first)):
        assert [v for v, _ in p.selects[sel]] == [current["run_id"], other["run_id"], first["run_id"]]
        assert [v for v, s in p.selects[sel] if s] == [want["run_id"]]
    # the default A/B table is rendered server-side: the page is useful without its script
    rows = p.rows["tb-history-rows"]
    assert [r[0] for r in rows if len(r) == 1] == ["batched · smol · users-8 · steady", "serial · smol · users-8 · steady"]
    assert len(rows) == len(history.ab_ratios(current, first)) + 2
    tok = rows[1]
    assert tok[0] == "output throughput (tok/s)" and tok[1] == "111.0 ± 12.7"  # t(1 dof) x sd 1.41 / sqrt 2
    assert tok[3] == f"{111 / 102:.3f}" and tok[4].startswith("[")
    # the entries travel in the page as JSON, intact through markdown
    assert json.loads(p.scripts["tb-history"]) == json.loads(json.dumps(ctx["data"]))
    assert "broken.json" in page and "&lt;line 1&gt;" in page and '<script src="assets/history.js">' in page


def test_page_escapes_text_from_the_archive():
    current, other, first = three_runs()
    for e in (current, first):
        for p in e["phases"]:
            p["engine"] = "<img src=x onerror=alert(1)>"
    ctx = history.history_context([current, other, first], current["run_id"])
    page = markdown_html(env(False).get_template("history.md.j2").render(history=ctx))
    assert "<img" not in page and "&lt;img src=x" in page
    assert json.loads(parse(page).scripts["tb-history"])["runs"][0]["phases"][0]["engine"].startswith("<img")


NODE_HARNESS = r"""
const fs = require("fs"), vm = require("vm");
const [js, json, a, b] = process.argv.slice(2);
const el = (props) => Object.assign({handlers: {}, addEventListener(t, f) { this.handlers[t] = f; }}, props);
const els = {"tb-history": el({textContent: fs.readFileSync(json, "utf8")}), "tb-history-a": el({value: a, disabled: true}),
             "tb-history-b": el({value: b, disabled: true}), "tb-history-rows": el({innerHTML: ""}),
             "tb-history-pair": el({innerHTML: ""})};
const errors = [];
const document = {readyState: "complete", getElementById: (id) => els[id] || null};
vm.runInNewContext(fs.readFileSync(js, "utf8"), {document, console: {error: (m) => errors.push(String(m))}});
els["tb-history-a"].handlers.change();
process.stdout.write(JSON.stringify({rows: els["tb-history-rows"].innerHTML, pair: els["tb-history-pair"].innerHTML,
  enabled: !els["tb-history-a"].disabled && !els["tb-history-b"].disabled, errors}));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script outside a browser")
@pytest.mark.parametrize("pair", ["default", "other"])
def test_page_script_computes_the_same_table_as_the_server(tmp_path, pair):
    current, other, first = three_runs()
    one = history.archive_entry([cell("batched", "users-8", [100.0])], [run_doc("batched", "users-8", "r1", 9e4)],
                                "x" * 64, "c")  # one replicate: no interval
    entries = [current, other, first, one]
    ctx = history.history_context(entries, current["run_id"])
    a, b = (current, first) if pair == "default" else (one, other)
    (tmp_path / "data.json").write_text(json.dumps(ctx["data"]))
    (tmp_path / "harness.js").write_text(NODE_HARNESS)
    out = subprocess.run(["node", str(tmp_path / "harness.js"), str(REPORT / "assets" / "history.js"),
                          str(tmp_path / "data.json"), a["run_id"], b["run_id"]],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["enabled"] and not got["errors"]
    js_rows = parse(f'<table><tbody id="t">{got["rows"]}</tbody></table>').rows["t"]
    server = []
    for g in history.ratio_groups(a, b):
        server.append([g["title"]])
        server += [[r["figure"] + (" estimated" if r["basis"] == "estimated" else ""), r["a"], r["b"], r["ratio"],
                    r["interval"]] for r in g["rows"]]
    assert js_rows == server and len(server) > 1
    if pair == "other":
        assert any("no interval: a has none" in r[-1] for r in js_rows)
        assert "different config hashes" in got["pair"]
