"""Render the report's markdown pages from results. No number on a page is typed by hand."""

from __future__ import annotations

import html
import json
import shlex
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tokenbench import provenance
from tokenbench.config import StudySpec
from tokenbench.analysis.registry import CONVENTIONS, ESTIMATED, METRICS, PHASE_FIELDS, SUMMARY_COLUMNS, Column, fmt

CHARTS_JS = """\
// Embed every tokenbench chart on the page (specs are inlined, so this works from file:// too).
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".tb-chart").forEach(function (el) {
    var spec = (window.TB_SPECS || {})[el.dataset.spec];
    if (!spec) { el.textContent = "chart spec missing: " + el.dataset.spec; return; }
    vegaEmbed(el, spec, {actions: {export: true, source: true, compiled: false, editor: false}, renderer: "svg"})
      .catch(function (err) { el.textContent = "chart failed to render: " + err; });
  });
});
"""

CSS = """\
.md-grid { max-width: 1500px; }
.tb-chart { overflow-x: auto; margin: 1em 0; }
.tb-est { color: var(--md-accent-fg-color, #c05); font-weight: bold; }
.md-typeset table:not([class]) { font-size: .7rem; }
"""


def chart_html(name: str, spec: dict[str, Any]) -> str:
    blob = json.dumps(spec, separators=(",", ":")).replace("</", "<\\/")
    return (f'<div class="tb-chart" data-spec="{html.escape(name)}"></div>\n'
            f'<script>window.TB_SPECS=window.TB_SPECS||{{}};window.TB_SPECS["{name}"]={blob};</script>\n')


def table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "_no rows_\n"
    cols = list(dict.fromkeys(k for r in rows for k in r))  # union of keys, first-seen order
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


EST = '<span class="tb-est" title="estimated: see Methodology">†</span>'

# the metrics each table shows; headers, units and precision come from the registry
RUN_COLUMNS = (Column("duration_s"), Column("requests_sent"), Column("success_rate"), Column("output_tok_s"),
               Column("ttft_ms", ("p50", "p95")), Column("e2e_ms", ("p50", "p99")), Column("tpot_ms", ("p50",)),
               Column("mfu_pct"), Column("goodput_rps"), Column("token_count_mismatch_rate"),
               Column("cpu_util_pct"), Column("power_w"))
STEADY_COLUMNS = (Column("output_tok_s"), Column("request_rps"), Column("ttft_ms", ("p50", "p95")),
                  Column("e2e_ms", ("p99",)), Column("success_rate"), Column("slo_attainment"), Column("mfu_pct"),
                  Column("tok_per_j"), Column("usd_per_mtok"))


def metric_cells(ph: dict[str, Any], columns: tuple[Column, ...], labels: list[dict[str, str]]) -> dict[str, str]:
    """A row's metric cells under the registry's headers, marked † where a run labelled the figure estimated."""
    return {c.header() + (f" {EST}" if any(lb.get(c.key) == ESTIMATED for lb in labels) else ""): c.cell(ph)
            for c in columns}


def phase_rows(doc: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for ph in doc["phases"]:
        rows.append({
            "phase": ph["phase"],
            "steady state": "no (warmup)" if ph["warmup"] else ("no (idle)" if ph["mode"] == "idle" else "yes"),
            "load": ph["label"],
            **metric_cells(ph, RUN_COLUMNS, [doc["labels"]]),
            "valid": _valid(ph),
        })
    return rows


def _valid(ph: dict[str, Any]) -> str:
    v = ph.get("validity")
    if v is None:
        return ""
    return "yes" if v["valid"] else "**no**: " + "; ".join(v["failed_checks"])


def fit_rows(fits: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for f in fits:
        fit = f["fit"]
        ci = lambda c: f"[{fmt(c[0])}, {fmt(c[1])}]" if c else "not estimable"  # noqa: E731
        # a parameter the points do not pin down is not shown as a number (its raw value is in the JSON)
        value = lambda name, digits=1: fmt(fit[name], digits) if fit[f"{name}_estimable"] else "not estimable"  # noqa: E731
        rows.append({
            "engine · model": f"{f['engine']} · {f['model']}",
            "valid points": str(fit["points"]), "excluded": str(len(fit["excluded"])), "dof": str(fit["dof"]),
            "Vmax (tok/s)": value("vmax"), "Vmax 95 % CI": ci(fit.get("vmax_ci95")),
            "K (users)": value("k", 2), "K 95 % CI": ci(fit.get("k_ci95")),
            "R²": fmt(fit.get("r2"), 4),
            "best model (AICc)": fit.get("best") or "none: " + ("not distinguishable" if fit.get("models") else "n/a"),
        })
    return rows


def published_rows() -> list[dict[str, str]]:
    """The seed reports' published figures: claims beside the measurements, never mixed with them."""
    from tokenbench.analysis.efficiency import published_runs

    return [{"report": r["report"].split("_")[0], "engine": r["engine"], "hardware": r["gpu"], "model": r["model"],
             "users": fmt(r["users"], 0), "phase": r["phase"], "output tok/s": fmt(r["output_tok_s"]),
             "TTFT p95 (ms)": fmt(r["ttft_p95_ms"], 0), "MFU (%)": fmt(r["mfu_pct"]),
             "claim": r["claim"]} for r in published_runs()]


def _steady(doc):
    return [p for p in doc["phases"] if not p["warmup"] and p["mode"] != "idle"]


def _interval(iv: dict[str, Any] | None, digits: int = 1, pct: bool = False, why: bool = True) -> str:
    """estimate [lo, hi], or the estimate with the reason there is no interval (``why``) or
    'no CI' where the row says the reason elsewhere."""
    if not iv or iv.get("estimate") is None:
        return "n/a"
    est = fmt(iv["estimate"], digits, pct)
    if iv.get("lo") is None:
        return f"{est} (no interval: {iv.get('note') or 'too few samples'})" if why else f"{est} (no CI)"
    return f"{est} [{fmt(iv['lo'], digits, pct)}, {fmt(iv['hi'], digits, pct)}]"


def _p(p: float | None) -> str:
    return "n/a" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def cell_rows(cells: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Per cell and measured phase: the replicates' mean with its t interval, and what was excluded."""
    rows = []
    for c in cells:
        for ph in c["phases"]:
            if ph["warmup"] or ph["mode"] == "idle":
                continue
            figs = ph.get("figures") or {}
            row = {"engine": c["cell"]["engine"], "load": c["cell"]["load"], "phase": ph["phase"],
                   "valid runs": f"{len(ph.get('valid_replicates') or [])} of {len(c['replicates'])}"}
            for col in ("output_tok_s", "ttft_p50_ms", "tpot_p50_ms", "failure_rate"):
                key, _ = SUMMARY_COLUMNS[col]
                m = METRICS[key]
                row[f"{col} (mean [{int(100 * c['level'])} % t interval])"] = _interval(
                    (figs.get(col) or {}).get("interval"), m.digits, m.percent)
            var = (figs.get("output_tok_s") or {}).get("variation") or {}
            row["tok/s variation dominated by"] = var.get("dominant") or "n/a"
            row["excluded"] = "; ".join(x["reason"] for x in ph.get("excluded") or []) or "none"
            rows.append(row)
    return rows


def comparison_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, str]], list[str]]:
    """One pair's comparisons, a row per load level, phase and figure, and the reasons behind the
    'not resolvable' verdicts as numbered notes (a table cell holds the number)."""
    out, notes = [], []
    for c in rows:
        diff, ratio = c.get("difference") or {}, c.get("ratio") or {}
        verdict = c.get("verdict", "")
        if c.get("winner"):
            shown = f"**{c['winner']}**"
        else:
            head, _, why = verdict.partition(": ")
            why = why or head
            if why not in notes:
                notes.append(why)
            shown = f"{'excluded' if head.startswith('excluded') else 'not resolvable'} [{notes.index(why) + 1}]"
        out.append({
            "load · phase": f"{c['load']} · {c['phase']}", "figure": c["metric"],
            "a": fmt(c.get("a_value")), "b": fmt(c.get("b_value")),
            "a − b [CI]": _interval(diff, why=False), "a ÷ b [CI]": _interval(ratio, 3, why=False),
            "CI from": {"replicates": "runs", "blocks": "blocks"}.get(c.get("interval_source"), "n/a"),
            "MW p (Holm)": _p(c.get("mann_whitney_p_holm")), "Welch p (Holm)": _p(c.get("welch_p_holm")),
            "Cliff's δ": fmt(c.get("cliffs_delta"), 2), "Cohen's d": fmt(c.get("cohens_d"), 2),
            "better": shown,
            "runs a side to resolve": fmt(c.get("replicates_needed"), 0) if c.get("replicates_needed") else "",
        })
    return out, notes


def hypothesis_rows(hypotheses: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"hypothesis": h["name"], "statement": h.get("statement") or "",
             "test": f"{h['a']} ÷ {h['b']}, {h['metric']}, {h['load']} {h['phase']}: "
                     f"{'≥' if h['relation'] == 'at_least' else '≤'} {h['factor']:g}",
             "a ÷ b [CI]": _interval(h.get("ratio"), 3), "result": f"**{h['status']}**",
             "why": h.get("reason") or ""} for h in hypotheses]


def render_index(study: StudySpec, docs: list[dict[str, Any]], fits: list[dict[str, Any]],
                 specs: dict[str, dict], cells: list[dict[str, Any]] = (), comparisons: dict[str, Any] | None = None,
                 hypotheses: list[dict[str, Any]] = ()) -> str:
    hw = docs[0]["hardware"] if docs else {}
    lines = [f"# {study.title}\n", study.description + "\n"]
    lines.append(
        f"Measured on **{(hw.get('detected') or 'unknown hardware').replace('cpu', 'CPU')}** "
        f"({(hw.get('cpu') or {}).get('name', '')}, {(hw.get('cpu') or {}).get('cores', '?')} cores). "
        f"Every figure below is computed from the recorded per-request and telemetry data of this run; "
        f"{EST} marks an estimate, *n/a* a figure the data cannot carry. Definitions: [Methodology](methodology.md).\n")
    crashed = [d["cell"] for d in docs if d.get("server_exited_during_run")]
    if crashed:
        lines.append('!!! danger "The server died during the load test"\n    ' + ", ".join(
            f"{c['engine']}/{c['model']}/{c['load']}/{c.get('rep', 'r1')}" for c in crashed) +
            ": every request sent is recorded with its status; see the server log tail on the Runs page.\n")
    incomplete = [d["cell"] for d in docs if not d["complete"]]
    if incomplete:
        lines.append('!!! warning "Incomplete runs"\n    ' + ", ".join(
            f"{c['engine']}/{c['model']}/{c['load']}/{c.get('rep', 'r1')}" for c in incomplete) + " did not finish; their figures cover what was recorded.\n")
    if hypotheses:
        lines.append("## Hypotheses\n")
        lines.append("Each hypothesis is tested on the ratio a ÷ b and its interval: *confirmed* when the whole "
                     "interval is on the claimed side, *rejected* when it is wholly on the other, otherwise *not "
                     "resolvable* at this sample size. Invalid runs are left out.\n")
        lines.append(table(hypothesis_rows(hypotheses)))
    if comparisons and comparisons["comparisons"]:
        lines.append("## Comparison\n")
        lines.append(f"{int(100 * comparisons['level'])} % intervals, across replicate runs (Welch) or within them "
                     f"(block bootstrap), whichever carries the dominant uncertainty; Holm's correction within each "
                     f"figure's family; a winner only when the interval excludes no difference and the matching "
                     f"test holds at α = {comparisons['alpha']:g}.\n")
        pairs = list(dict.fromkeys((c["model"], c["a"], c["b"]) for c in comparisons["comparisons"]))
        for model, a, b in pairs:
            lines.append(f"### {a} (a) against {b} (b), {model}\n")
            rows, notes = comparison_rows([c for c in comparisons["comparisons"]
                                           if (c["model"], c["a"], c["b"]) == (model, a, b)])
            lines.append(table(rows))
            lines.append("\n".join(f"{i}. {n}" for i, n in enumerate(notes, 1)) + "\n")
            needed = next((c["replicates_needed_for"] for c in comparisons["comparisons"]
                           if c.get("replicates_needed_for")), None)
            if needed:
                lines.append(f"*Runs a side to resolve*: replicates per configuration a Welch test would need "
                             f"to resolve {needed.split(' at ')[0]} at the observed replicate CV "
                             f"(α = {comparisons['alpha']:g}, power 0.8).\n")
    if cells:
        lines.append("## Across replicate runs\n")
        lines.append("Each cell ran on fresh server launches; the interval is Student t over its valid runs "
                     "(k − 1 degrees of freedom).\n")
        lines.append(table(cell_rows(cells)))
    lines.append("## Steady-state results per run\n")
    labels = [d["labels"] for d in docs]
    rows = []
    for d in docs:
        for ph in _steady(d):
            rows.append({
                "engine": d["cell"]["engine"], "model": d["cell"]["model"], "load": d["cell"]["load"],
                "rep": d["cell"].get("rep", "r1"), "phase": ph["phase"], "offered": ph["label"],
                **metric_cells(ph, STEADY_COLUMNS, labels),
                "valid": "yes" if (ph.get("validity") or {}).get("valid") else "no",
            })
    lines.append(table(rows))
    invalid = [(d["cell"], ph) for d in docs for ph in _steady(d) if not (ph.get("validity") or {}).get("valid", True)]
    if invalid:
        lines.append('\n!!! warning "Figures that failed a validity check"\n' + "\n".join(
            f"    - {c['engine']}/{c['model']}/{c['load']}/{c.get('rep', 'r1')} {ph['phase']}: " + "; ".join(ph["validity"]["failed_checks"])
            for c, ph in invalid) + "\n")
    slo = next((ph.get("slo") for d in docs for ph in _steady(d) if ph.get("slo") is not None), None)
    if slo:
        lines.append("SLO met: share of every request sent (any status) that finished ok and met " +
                     ", ".join(f"{k.removesuffix('_ms').upper()} ≤ {v:g} ms" for k, v in slo.items()) + ".\n")
    if docs:
        first = labels[0]
        lines.append(f"\nMFU peak: {hw.get('peak_note') or 'unknown'}. Power: {first['power_w']}. "
                     f"Cost per million tokens: {first['usd_per_mtok']} (from the configured hourly price).\n")
    if "throughput" in specs:
        lines.append("## Throughput and saturation\n")
        lines.append(chart_html("throughput", specs["throughput"]))
        lines.append(table(fit_rows(fits)))
        for f in fits:
            for note in f["fit"]["notes"] + [f"excluded {x['reason']}" for x in f["fit"]["excluded"]]:
                lines.append(f"- **{f['engine']} · {f['model']}**: {note}")
        lines.append("")
    if "latency" in specs:
        lines.append("## Latency vs users\n")
        lines.append(chart_html("latency", specs["latency"]))
    lines.append("## Published figures (seed reports)\n")
    lines.append("What the reports tokenbench grew from published, as data: *published*, not measured here, on "
                 "other hardware and models; shown for reference and never mixed into the figures above. Some "
                 "the reports themselves call estimates.\n")
    lines.append(table(published_rows()))
    lines.append("\nPer-run detail and telemetry timelines: [Runs](runs.md). What produced these numbers: [Provenance](provenance.md).\n")
    return "\n".join(lines)


def render_runs(docs: list[dict[str, Any]], runs: list[dict[str, Any]], specs: dict[str, dict]) -> str:
    lines = ["# Runs\n", "One section per load test: every phase, then the telemetry timeline with phases shaded.\n"]
    for d, r in zip(docs, runs):
        c = d["cell"]
        key = f"{c['engine']}.{c['model']}.{c['load']}.{c.get('rep', 'r1')}"
        lines.append(f"## {c['engine']} · {c['model']} · {c['load']} · {c.get('rep', 'r1')}\n")
        client = d.get("client") or {}
        status = ", ".join(f"{k}: {v}" for k, v in sorted((client.get("status_counts") or {}).items())) or "none"
        lines.append(f"Server ready after {fmt(d.get('server_ready_s'), 2)} s. Requests sent: "
                     f"{client.get('requests_sent', 0)} ({status}). Client event-loop lag p99: "
                     f"{fmt(client.get('event_loop_lag_p99_ms'), 2)} ms. "
                     f"Run complete: {'yes' if d['complete'] else '**no**'}.\n")
        lines.append(table(phase_rows(d)))
        if f"timeline.{key}" in specs:
            lines.append(chart_html(f"timeline.{key}", specs[f"timeline.{key}"]))
        lines.append("Server command:\n\n```\n" + " ".join(r["server_command"]) + "\n```\n")
    return "\n".join(lines)


def metric_definitions() -> str:
    """The registry as the Methodology page shows it: conventions, then one row per metric (per phase,
    then per cell)."""
    from tokenbench.analysis.registry import CELL_METRICS

    rows = [{"metric": f"`{m.key}` ({m.label})", "unit": m.unit + (" (shown as %)" if m.percent else ""),
             "measured or estimated": m.basis.value, "aggregation": m.aggregation.value,
             "across replicates": m.replicates.value, "formula": m.formula}
            for m in [*METRICS.values(), *CELL_METRICS.values()]]
    fields = "\n".join(f"- `{name}`: {text}" for name, text in PHASE_FIELDS.items())
    return ("These are the definitions the code applies, from its metric registry "
            "(`tokenbench/analysis/registry.py`).\n\n" + "\n".join(f"- {c}" for c in CONVENTIONS) + "\n\n"
            + table(rows) + "\nA phase also records:\n\n" + fields + "\n")


def statistics_methods() -> str:
    """How intervals, comparisons, validity and fits are made: the analysis modules' own docstrings."""
    from tokenbench.analysis import compare, fit, intervals, replicates, scaling, validity

    parts = [("Within-run intervals", intervals), ("Across replicate runs", replicates),
             ("Between configurations and hypotheses", compare), ("Validity: contention and stability", validity),
             ("Saturation fits", fit), ("Scaling between load levels", scaling)]
    return "\n".join(f"### {title}\n\n{(mod.__doc__ or '').strip()}\n" for title, mod in parts)


def render_methodology(docs: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    lines = ["# Methodology\n", "## Metric definitions\n", metric_definitions(),
             "## Statistics\n", statistics_methods(),
             "## Labels\n",
             f"- *measured*: computed from recorded request timestamps, server usage counts or telemetry samples.\n"
             f"- {EST} *estimated*: depends on a figure that was not measured in this run (a datasheet or "
             "ISA-derived peak FLOP/s, a configured price).\n"
             "- *n/a*: the data cannot carry this figure (no power sensor readable, no configured price, too few points).\n",
             "## Loads\n"]
    seen = set()
    for r in runs:
        load = r["settings"]["load"]
        if load["name"] in seen:
            continue
        seen.add(load["name"])
        lines.append(f"### {load['name']}\n")
        lines.append(table([{k: ("" if v is None else str(v)) for k, v in p.items()} for p in load["phases"]]))
        req = r["settings"]["request"]
        lines.append("Request: " + ", ".join(f"`{k}={v}`" for k, v in req.items()) + "\n")
    lines.append("## Hardware peaks\n")
    for d in docs[:1]:
        lines.append(f"- {d['hardware'].get('peak_note')}\n")
    lines.append("## Server commands\n")
    lines.append("Each cell's engine command exactly as launched (shell-quoted), with the environment "
                 "variables tokenbench added; secrets are never recorded.\n")
    for r in runs:
        c = r["cell"]
        kind = r["settings"]["engine"].get("kind", "")
        ep = r.get("endpoint") or {}
        if ep.get("external"):
            key = f", API key from `${ep['api_key_env']}` (not recorded)" if ep.get("api_key_env") else ""
            lines.append(f"- **{c['engine']}** (external endpoint; {c['model']}, {c['load']}): "
                         f"`{provenance.scrub(ep.get('base_url', ''))}`{key}")
            continue
        cmd = provenance.scrub(shlex.join(r["server_command"]))
        env = " ".join(f"{k}={shlex.quote(provenance.scrub(v))}" for k, v in sorted((r.get("server_env") or {}).items()))
        lines.append(f"- **{c['engine']}** ({kind}; {c['model']}, {c['load']}): `{(env + ' ') if env else ''}{cmd}`")
    return "\n".join(lines) + "\n"


def render_provenance(runs: list[dict[str, Any]], config_hash: str) -> str:
    lines = ["# Provenance\n", f"Whole-config sha256: `{config_hash}`\n"]
    for r in runs:
        c = r["cell"]
        lines.append(f"## {c['engine']} · {c['model']} · {c['load']} · {c.get('rep', 'r1')}\n")
        lines.append("```yaml\n" + yaml.safe_dump(r["provenance"], sort_keys=False) + "```\n")
    return "\n".join(lines)


def mkdocs_config(study: StudySpec) -> dict[str, Any]:
    return {
        "site_name": study.title,
        "docs_dir": "docs",
        "site_dir": "public",
        "use_directory_urls": False,  # pages open straight from disk (file://)
        "theme": {"name": "material", "font": False, "features": ["content.code.copy"]},  # no web fonts
        "plugins": ["search"],
        "markdown_extensions": ["tables", "admonition", "attr_list", "md_in_html", "toc"],
        "extra_javascript": ["assets/vega-bundle.js", "assets/charts.js"],
        "extra_css": ["assets/tokenbench.css"],
        "nav": [{"Results": "index.md"}, {"Runs": "runs.md"}, {"Methodology": "methodology.md"},
                {"Provenance": "provenance.md"}],
    }


def render_pages(study: StudySpec, config_hash: str, metric_paths: list[str], run_paths: list[str],
                 fit_paths: list[str], chart_paths: dict[str, str], out_dir: str, cell_paths: list[str] = (),
                 comparisons_path: str | None = None, hypotheses_path: str | None = None) -> list[str]:
    from tokenbench.records import read_json

    docs = [read_json(p) for p in metric_paths]
    runs = [read_json(p) for p in run_paths]
    fits = [read_json(p) for p in fit_paths]
    cells = [read_json(p) for p in cell_paths]
    comparisons = read_json(comparisons_path) if comparisons_path else None
    hypotheses = read_json(hypotheses_path)["hypotheses"] if hypotheses_path else []
    specs = {name: json.loads(Path(p).read_text()) for name, p in chart_paths.items()}
    out = Path(out_dir)
    (out / "docs" / "assets").mkdir(parents=True, exist_ok=True)
    pages = {
        "index.md": render_index(study, docs, fits, specs, cells, comparisons, hypotheses),
        "runs.md": render_runs(docs, runs, specs),
        "methodology.md": render_methodology(docs, runs),
        "provenance.md": render_provenance(runs, config_hash),
    }
    written = []
    for name, text in pages.items():
        (out / "docs" / name).write_text(text)
        written.append(str(out / "docs" / name))
    (out / "docs" / "assets" / "charts.js").write_text(CHARTS_JS)
    (out / "docs" / "assets" / "tokenbench.css").write_text(CSS)
    (out / "mkdocs.yml").write_text(yaml.safe_dump(mkdocs_config(study), sort_keys=False))
    return written


def write_vega_bundle(path: str | Path) -> None:
    """vega + vega-lite + vega-embed in one file, from vl-convert (no CDN: the site works offline)."""
    import vl_convert as vlc

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(vlc.javascript_bundle())
