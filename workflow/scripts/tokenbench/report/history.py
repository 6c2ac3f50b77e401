"""History: an archive of runs keyed by run id, and A/B ratios between any two archived runs.

After a run's analysis, :func:`archive_results` writes the run's entry (:func:`archive_entry`) to
``data/analysis/archive_entry.json`` and copies it into the archive folder (``data/history/``) as
``{run_id}.json``. The archive outlives ``make clean``, so runs of the same configuration made
over weeks sit side by side.

* **Run id**: the UTC time of the earliest load-test start (from the runs' ``run.json`` wall-clock
  anchors), ``YYYYMMDDTHHMMSSZ``, then ``-`` and the first 8 hex digits of a sha256 over the
  entry's figures. The same results give the same id, hence the same file: archiving again is a
  no-op, and a rerun (new start time, new figures) gets a new entry.
* **Entry**: the date, the config hash, the command to rerun, the git commit the runs were made
  at, the host, and for every cell (engine, model, load) and measured phase (not warm-up, not
  idle) the key figures of the cell's replicates (``data/analysis/cells/...``): each figure's
  mean across valid replicates with its Student t interval and the number of replicates it rests
  on, and the phase's validity (valid replicates, excluded ones with their failed checks). A phase
  none of whose replicates is valid has no figures.
* **A/B ratios** (:func:`ab_ratios`): a ÷ b of each figure present in both runs, with an interval
  on the log scale by the delta method (see the function).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tokenbench import SCHEMA_VERSION, __version__, records
from tokenbench.analysis import registry
from tokenbench.analysis.stats import LEVEL, sps

log = logging.getLogger("tokenbench")

KIND = "archive_entry"
ENTRY_VERSION = 1  # the layout of an entry; bumped on a change load_archive would notice
# The figures an entry keeps (summary columns of the cells JSON), in display order; the last two
# only where the run had a power sensor or a configured price.
FIGURES = ("output_tok_s", "request_rps", "ttft_p50_ms", "ttft_p95_ms", "e2e_p99_ms", "tpot_p50_ms",
           "failure_rate", "usd_per_mtok", "tok_per_j")
HEADLINE = "output_tok_s"  # the runs table's one figure per run: its best valid cell
ESTIMATED_BASES = (registry.Basis.PEAK, registry.Basis.PRICE, registry.Basis.SENSOR_PRICE)


# ------------------------------------------------------------------------------------------- the entry

def run_start(runs: list[dict[str, Any]]) -> datetime:
    """UTC wall-clock time of the earliest load-test phase start across ``run.json`` documents
    (monotonic phase starts placed on the wall clock by each run's anchor)."""
    starts = []
    for r in runs:
        anchor = r["clock"]["anchor"]
        for ph in r.get("phases") or []:
            if ph.get("start_ns") is not None:
                starts.append(anchor["wall_ns"] + (ph["start_ns"] - anchor["monotonic_ns"]))
    if not starts:
        raise ValueError("no run has a phase start: nothing to date the archive entry by")
    return datetime.fromtimestamp(min(starts) / 1e9, tz=timezone.utc)


def figures_hash(phases: list[dict[str, Any]]) -> str:
    """sha256 over the entry's figures (its ``phases``), as canonical JSON."""
    text = json.dumps(phases, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _figure(fig: dict[str, Any]) -> dict[str, Any]:
    iv = fig.get("interval") or {}
    return {"mean": iv.get("estimate"), "lo": iv.get("lo"), "hi": iv.get("hi"), "level": iv.get("level"),
            "n": iv.get("n"), "method": iv.get("method"), "note": iv.get("note")}


def _phases(cell: dict[str, Any]) -> list[dict[str, Any]]:
    """The measured phases of one cells JSON document, with their key figures."""
    out = []
    for ph in cell["phases"]:
        if ph.get("warmup") or ph.get("mode") == "idle":
            continue
        figures = ph.get("figures") or {}
        out.append({**{k: cell["cell"][k] for k in ("engine", "model", "load")},
                    "phase": ph["phase"], "label": ph.get("label"), "mode": ph.get("mode"),
                    "valid": bool(ph.get("valid")), "replicates": list(cell.get("replicates") or []),
                    "valid_replicates": list(ph.get("valid_replicates") or []),
                    "excluded": list(ph.get("excluded") or []),
                    "figures": {k: _figure(figures[k]) for k in FIGURES if k in figures}})
    return out


def _host(runs: list[dict[str, Any]]) -> dict[str, Any]:
    r = runs[0]
    hw, host = r.get("hardware") or {}, (r.get("provenance") or {}).get("host") or {}
    cpu = hw.get("cpu") or {}
    gpus = [g.get("name") if isinstance(g, dict) else g for g in (hw.get("gpus") or host.get("gpus") or [])]
    return {"accelerator": hw.get("accelerator"), "cpu": cpu.get("name", host.get("cpu")),
            "cpu_cores": cpu.get("cores", host.get("cpu_cores")), "cpu_ghz": cpu.get("ghz"), "gpus": gpus,
            "os": host.get("os"), "hostname_hash": host.get("hostname_hash"),
            "hosts": len({(x.get("provenance") or {}).get("host", {}).get("hostname_hash") for x in runs})}


def _software(runs: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    commits = sorted({s for r in runs if (s := (r.get("provenance") or {}).get("git_sha"))})
    engines: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for r in sorted(runs, key=lambda r: tuple(r["cell"].values())):
        p = r.get("provenance") or {}
        e, m = p.get("engine") or {}, p.get("model") or {}
        engines.setdefault(r["cell"]["engine"], {k: e.get(k) for k in ("kind", "version", "binary_sha256")})
        models.setdefault(r["cell"]["model"], {k: m.get(k) for k in ("sha256", "source")})
    return commits, engines, models


def archive_entry(cells: list[dict[str, Any]], runs: list[dict[str, Any]], config_hash: str,
                  command: str) -> dict[str, Any]:
    """A run's archive entry from its cells JSON documents (combine_replicates) and its runs'
    ``run.json`` documents. ``config_hash``: the whole config's canonical hash; ``command``: the
    command that reruns it."""
    phases = sorted((p for c in cells for p in _phases(c)),
                    key=lambda p: (p["engine"], p["model"], p["load"], p["phase"]))
    start = run_start(runs)
    run_id = f"{start:%Y%m%dT%H%M%SZ}-{figures_hash(phases)[:8]}"
    commits, engines, models = _software(runs)
    levels = {c.get("level") for c in cells}
    return {"entry_version": ENTRY_VERSION, "run_id": run_id, "date": f"{start:%Y-%m-%dT%H:%M:%SZ}",
            "config_hash": config_hash, "command": command,
            "git_commit": commits[0] if len(commits) == 1 else None, "git_commits": commits,
            "tool_version": __version__, "host": _host(runs), "engines": engines, "models": models,
            "level": levels.pop() if len(levels) == 1 else None, "phases": phases}


def archive_results(cell_paths: list[str], run_paths: list[str], config_hash: str, command: str,
                    entry_path: str, folder: str) -> dict[str, Any]:
    """Write this run's entry to ``entry_path`` and copy it into the archive ``folder`` as
    ``{run_id}.json`` (the same results: the same id and the same file; other entries untouched)."""
    entry = archive_entry([records.read_json(p) for p in cell_paths], [records.read_json(p) for p in run_paths],
                          config_hash, command)
    prov = {"tool": "tokenbench", "tool_version": __version__, "git_sha": entry["git_commit"],
            "schema_version": SCHEMA_VERSION, "config_hash": config_hash}  # no clock: same results, same bytes
    for path in (Path(entry_path), Path(folder) / f"{entry['run_id']}.json"):
        records.write_json(entry, path, KIND, prov)
    log.info("archived run %s (%d phases) in %s", entry["run_id"], len(entry["phases"]), folder)
    return entry


def load_archive(folder: str | Path, problems: list[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Every entry in the archive ``folder``, sorted by date (then run id). A file that cannot be
    read as an entry is left out and reported: logged, and appended to ``problems`` (when given)
    as ``{"file", "error"}``."""
    entries = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict) or doc.get("kind") != KIND:
                raise ValueError("not an archive entry (no kind: archive_entry)")
            if doc.get("entry_version") != ENTRY_VERSION:
                raise ValueError(f"entry version {doc.get('entry_version')}, this tokenbench reads {ENTRY_VERSION}")
            missing = [k for k in ("run_id", "date", "config_hash", "phases") if k not in doc]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
        except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            log.warning("archive: %s left out: %s", path, exc)
            if problems is not None:
                problems.append({"file": path.name, "error": str(exc)})
            continue
        entries.append(doc)
    return sorted(entries, key=lambda e: (e["date"], e["run_id"]))


# ---------------------------------------------------------------------------------------- A/B ratios

def _se(fig: dict[str, Any]) -> float | None:
    """The standard error of a replicate mean read back from its Student t interval:
    half-width ÷ t quantile with n - 1 dof. None without an interval."""
    lo, hi, n = fig.get("lo"), fig.get("hi"), fig.get("n") or 0
    if lo is None or hi is None or n < 2:
        return None
    return (hi - lo) / (2 * float(sps.t.ppf(0.5 + (fig.get("level") or LEVEL) / 2, n - 1)))


def ratio_interval(a: dict[str, Any], b: dict[str, Any], level: float = LEVEL) -> dict[str, Any]:
    """a ÷ b of two figures (each ``{"mean", "lo", "hi", "level", "n"}``, a replicate mean with its
    t interval), with an interval on the log scale: see :func:`ab_ratios`."""
    ma, mb = a.get("mean"), b.get("mean")
    out: dict[str, Any] = {"ratio": None, "lo": None, "hi": None, "level": level, "dof": None, "note": None}
    if ma is None or mb is None:
        return {**out, "note": "a side has no value"}
    if mb == 0:
        return {**out, "note": "b is 0: no ratio"}
    out["ratio"] = ma / mb
    if not (ma > 0 and mb > 0):
        return {**out, "note": "a value is not positive: no log-ratio interval"}
    se_a, se_b = _se(a), _se(b)
    if se_a is None or se_b is None:
        side = " and ".join(s for s, se in (("a", se_a), ("b", se_b)) if se is None)
        return {**out, "note": f"no interval: {side} has none (fewer than 2 valid replicates)"}
    va, vb = (se_a / ma) ** 2, (se_b / mb) ** 2
    se2 = va + vb
    if se2 == 0:
        return {**out, "note": "no spread between replicates on either side: no interval"}
    dof = se2**2 / ((va**2 / (a["n"] - 1) if va else 0.0) + (vb**2 / (b["n"] - 1) if vb else 0.0))
    half = float(sps.t.ppf(0.5 + level / 2, dof)) * math.sqrt(se2)
    log_r = math.log(out["ratio"])
    return {**out, "lo": math.exp(log_r - half), "hi": math.exp(log_r + half), "dof": dof}


def ab_ratios(a: dict[str, Any], b: dict[str, Any], level: float | None = None) -> list[dict[str, Any]]:
    """a ÷ b for every (engine, model, load, phase, figure) present in both entries.

    Each row: the keys, both sides' figures (mean, t interval, n valid replicates) and whether
    each side's phase is valid, ``ratio`` = mean_a ÷ mean_b, and its interval ``lo``/``hi`` at
    ``level`` (default: the entries' level) computed as follows. Each side's standard error is
    read back from its Student t interval (half-width ÷ t quantile, n - 1 dof); by the delta
    method, var(log mean) ≈ se² ÷ mean², so log(ratio) has standard error
    sqrt(se_a²/mean_a² + se_b²/mean_b²) with Welch-Satterthwaite degrees of freedom
    (v_a + v_b)² ÷ (v_a²/(n_a - 1) + v_b²/(n_b - 1)), v = se²/mean²; the interval is
    exp(log ratio ± t(dof) × that standard error). It is None, with a ``note``, where either side
    lacks an interval (fewer than 2 valid replicates), neither side's replicates spread at all, a
    value is not positive, or a and b are the same run (a run is not independent of itself). The runs are treated as independent
    samples of their configurations: a run-to-run difference inside the interval is not resolved.
    """
    level = level or (a.get("level") if a.get("level") == b.get("level") else None) or LEVEL
    same = a.get("run_id") == b.get("run_id")
    by_key = {(p["engine"], p["model"], p["load"], p["phase"]): p for p in b.get("phases") or []}
    rows = []
    for pa in a.get("phases") or []:
        key = (pa["engine"], pa["model"], pa["load"], pa["phase"])
        pb = by_key.get(key)
        if pb is None:
            continue
        for fig in FIGURES:
            fa, fb = (pa.get("figures") or {}).get(fig), (pb.get("figures") or {}).get(fig)
            if fa is None or fb is None:
                continue
            r = ratio_interval(fa, fb, level)
            if same and r["ratio"] is not None:
                r = {**r, "lo": None, "hi": None, "dof": None, "note": "the same run on both sides: no interval"}
            rows.append({"engine": key[0], "model": key[1], "load": key[2], "phase": key[3],
                         "label": pa.get("label"), "figure": fig, "a": fa, "b": fb,
                         "a_valid": pa.get("valid"), "b_valid": pb.get("valid"), **r})
    return rows


# ------------------------------------------------------------------------------------------ the page

def figure_meta(column: str) -> dict[str, Any]:
    """Label, unit, digits and measured/estimated of a summary column, from the metric registry."""
    key, stat = registry.SUMMARY_COLUMNS[column]
    m = registry.METRICS[key]
    return {"key": column, "header": m.header((stat,) if stat else ()), "digits": m.digits, "percent": m.percent,
            "basis": "estimated" if m.basis in ESTIMATED_BASES else "measured"}


def _fmt(value: float | None, meta: dict[str, Any]) -> str:
    return registry.fmt(value, meta["digits"], meta["percent"])


def format_figure(fig: dict[str, Any] | None, meta: dict[str, Any]) -> str:
    """'mean ± half-width' (a t interval is symmetric), or the mean alone where there is no interval."""
    if not fig or fig.get("mean") is None:
        return "n/a"
    text = _fmt(fig["mean"], meta)
    if fig.get("lo") is not None and fig.get("hi") is not None:
        text += f" ± {_fmt((fig['hi'] - fig['lo']) / 2, meta)}"
    return text


def format_ratio(row: dict[str, Any]) -> tuple[str, str]:
    """('1.234', '[1.100, 1.380]') for a ratio row; the reason in place of a missing interval."""
    if row.get("ratio") is None:
        return "n/a", row.get("note") or ""
    if row.get("lo") is None or row.get("hi") is None:
        return f"{row['ratio']:.3f}", row.get("note") or ""
    return f"{row['ratio']:.3f}", f"[{row['lo']:.3f}, {row['hi']:.3f}]"


def _headline(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The entry's best valid cell on the headline figure (highest mean)."""
    best = None
    for p in entry.get("phases") or []:
        f = (p.get("figures") or {}).get(HEADLINE)
        if p.get("valid") and f and f.get("mean") is not None and (best is None or f["mean"] > best[1]["mean"]):
            best = (p, f)
    if best is None:
        return None
    p, f = best
    return {"text": format_figure(f, figure_meta(HEADLINE)), "n": f.get("n"),
            "where": f"{p['engine']} · {p['model']} · {p['load']} · {p['phase']}"}


def _run_row(entry: dict[str, Any], current: str | None) -> dict[str, Any]:
    commit = entry.get("git_commit") or ""
    return {"run_id": entry["run_id"], "date": entry["date"], "config_hash": entry["config_hash"],
            "config_hash_short": (entry["config_hash"] or "")[:12], "command": entry.get("command"),
            "git_commit": commit, "git_commit_short": commit[:12],
            "git_commits": entry.get("git_commits") or [],
            "engines": sorted({p["engine"] for p in entry.get("phases") or []}),
            "models": sorted({p["model"] for p in entry.get("phases") or []}),
            "host": entry.get("host") or {}, "host_text": _host_text(entry.get("host") or {}),
            "headline": _headline(entry), "current": entry["run_id"] == current}


def _host_text(host: dict[str, Any]) -> str:
    cpu = host.get("cpu") or "unknown CPU"
    cores = f", {host['cpu_cores']} cores" if host.get("cpu_cores") else ""
    gpus = f", {len(host['gpus'])} × {host['gpus'][0]}" if host.get("gpus") else ""
    return cpu + cores + gpus


def _default_pair(entries: list[dict[str, Any]], current: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """B for the default A/B: the latest earlier run of the same config hash; else the latest
    other run (a different config, said so); else the current run itself."""
    others = [e for e in entries if e["run_id"] != current["run_id"]]
    earlier = [e for e in others if (e["date"], e["run_id"]) < (current["date"], current["run_id"])]
    same = [e for e in earlier if e["config_hash"] == current["config_hash"]]
    if same:
        return same[-1], None
    if others:
        b = (earlier or others)[-1]
        return b, "no earlier run of the same config hash: B is the latest other run, with a different config"
    return current, "only one run is archived"


def pair_note(a: dict[str, Any], b: dict[str, Any]) -> str:
    """What the A/B pair is: the same run, the same config, or different configs."""
    if a["run_id"] == b["run_id"]:
        return "A and B are the same run"
    if a["config_hash"] != b["config_hash"]:
        return "different config hashes: the ratios include the config change"
    return "same config hash"


def _slim(entry: dict[str, Any]) -> dict[str, Any]:
    """What the page's script needs of an entry to compute any A/B table."""
    keep = ("mean", "lo", "hi", "level", "n")
    return {"run_id": entry["run_id"], "date": entry["date"], "config_hash": entry["config_hash"],
            "level": entry.get("level"),
            "phases": [{**{k: p.get(k) for k in ("engine", "model", "load", "phase", "label", "valid")},
                        "figures": {f: {k: v.get(k) for k in keep} for f, v in (p.get("figures") or {}).items()}}
                       for p in entry.get("phases") or []]}


def ratio_groups(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """ab_ratios(a, b) as display text, one group per cell and phase, figure labels from the registry."""
    groups: list[dict[str, Any]] = []
    for r in ab_ratios(a, b):
        title = f"{r['engine']} · {r['model']} · {r['load']} · {r['phase']}"
        if not groups or groups[-1]["title"] != title:
            groups.append({"title": title, "rows": []})
        meta = figure_meta(r["figure"])
        ratio, iv = format_ratio(r)
        groups[-1]["rows"].append({"figure": meta["header"], "basis": meta["basis"], "a": format_figure(r["a"], meta),
                                   "b": format_figure(r["b"], meta), "ratio": ratio, "interval": iv})
    return groups


def history_context(entries: list[dict[str, Any]], current_run_id: str | None,
                    problems: list[dict[str, str]] = ()) -> dict[str, Any]:
    """Plain data for the History page (its template renders it): the archived runs, the default
    A/B pair (the current run against the previous run of its config hash) and its ratio table
    rendered here (the page is useful without scripts), the entries the page's script needs for
    any other pair, figure labels, and the archive files that could not be read."""
    entries = sorted(entries, key=lambda e: (e["date"], e["run_id"]))
    current = next((e for e in entries if e["run_id"] == current_run_id), None)
    note = None
    if current is None and entries:
        current = entries[-1]
        note = f"the current run ({current_run_id}) is not in the archive: A is the latest archived run"
    ctx: dict[str, Any] = {"count": len(entries), "runs": [_run_row(e, current_run_id) for e in entries],
                           "current_run_id": current_run_id, "problems": list(problems),
                           "figures": [figure_meta(f) for f in FIGURES], "default_a": None, "default_b": None,
                           "default_note": note, "default_groups": [],
                           "level": (current or {}).get("level") or LEVEL,
                           "data": {"figures": [figure_meta(f) for f in FIGURES],
                                    "runs": [_slim(e) for e in entries]}}
    if current is not None:
        b, why = _default_pair(entries, current)
        ctx.update(default_a=current["run_id"], default_b=b["run_id"],
                   default_note="; ".join(x for x in (pair_note(current, b), note, why) if x),
                   default_groups=ratio_groups(current, b))
    ctx["data"]["default_a"], ctx["data"]["default_b"] = ctx["default_a"], ctx["default_b"]
    return ctx
