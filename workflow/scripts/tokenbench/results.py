"""Results as data: any run's records, metrics, run document and telemetry, and a study's summary,
as pandas DataFrames (``tokenbench results DIR`` prints and exports them).

    from tokenbench.results import load_results
    res = load_results("data")            # the pipeline's data/ tree (or the project root above it)
    res = load_results("out/")            # one run directory, as ``tokenbench run --out out/`` writes
    res.runs                              # one row per run: engine, model, load, rep, complete, ...
    res.records()                         # requests.parquet of every run, one row per request sent
    res.metrics()                         # metrics.json: one row per run x phase, the summary columns
    res.summary()                         # data/analysis/summary.parquet where the study has one

Where files are (the Snakefile's path scheme): a run's ``requests.parquet``, ``telemetry.parquet``,
``engine_metrics.parquet`` and ``run.json`` in ``runs/{engine}/{model}/{load}/{rep}/``, its
``metrics.json`` and ``windows.parquet`` in ``metrics/{engine}/{model}/{load}/{rep}/``, the study's
``analysis/summary.parquet``; a ``tokenbench run --out`` directory holds ``requests.parquet``,
``run.json`` and ``metrics.json`` side by side. Every frame that holds rows of several runs starts
with the run's ``engine``, ``model``, ``load`` and ``rep``.

Every file is read through ``tokenbench.records`` with ``READS``: any schema major version from the
first to this tokenbench's (each as it was written: an older file lacks the newer columns); a file
of a newer major is refused with an error naming it (see tokenbench.records on versions).

Not to be confused with ``tokenbench.report.results``, the report's in-memory view of the same files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tokenbench import SCHEMA_VERSION, records
from tokenbench.analysis.metrics import summarize_metrics

READS = frozenset(range(records.OLDEST_READABLE, SCHEMA_VERSION + 1))
CELL_KEYS = ("engine", "model", "load", "rep")
RUN_FILES = ("run.json", "requests.parquet")  # a directory holding either is a run


class ResultsError(ValueError):
    pass


@dataclass
class Run:
    """One load test's files (None: the file is not there)."""
    path: Path  # the run's own directory
    cell: dict[str, str]
    run_json: Path | None
    requests: Path | None
    metrics_json: Path | None
    telemetry: Path | None
    engine_metrics: Path | None
    windows: Path | None
    timeline: Path | None

    def key(self) -> tuple[str, ...]:
        return tuple(self.cell[k] for k in CELL_KEYS)


def _present(p: Path) -> Path | None:
    return p if p.is_file() else None


@dataclass
class Results:
    """The runs found under ``root`` and, for a pipeline tree, its study outputs (``analysis/``)."""
    root: Path
    layout: str  # "run" (one run directory) or "pipeline" (a data/ tree)
    run_list: list[Run]
    analysis: Path | None = None
    _docs: dict[tuple[str, ...], dict[str, Any]] = field(default_factory=dict, repr=False)

    # -- what is there ------------------------------------------------------------------------
    @property
    def runs(self) -> pd.DataFrame:
        """One row per run: its cell, whether it completed, its schema version and files."""
        rows = []
        for r in self.run_list:
            doc = self.run_document(r) if r.run_json else {}
            meta = records.read_meta(r.requests, READS) if r.requests else {}
            rows.append({**r.cell, "complete": doc.get("complete", meta.get("complete")),
                         "schema_version": doc.get("schema_version", meta.get("schema_version")),
                         "requests": _rows(r.requests), "phases": len(doc.get("phases") or []),
                         "metrics": r.metrics_json is not None, "telemetry": r.telemetry is not None,
                         "path": str(r.path)})
        return pd.DataFrame(rows, columns=[*CELL_KEYS, "complete", "schema_version", "requests", "phases",
                                           "metrics", "telemetry", "path"])

    @property
    def cells(self) -> list[tuple[str, str, str]]:
        """(engine, model, load) of the runs, each once, in order."""
        return list(dict.fromkeys(r.key()[:3] for r in self.run_list))

    # -- per run documents --------------------------------------------------------------------
    def run_document(self, run: Run) -> dict[str, Any]:
        if run.run_json is None:
            return {}
        if run.key() not in self._docs:
            self._docs[run.key()] = records.read_json(run.run_json, READS)
        return self._docs[run.key()]

    def run_documents(self) -> list[dict[str, Any]]:
        """run.json of each run (settings, phases, server command, hardware, client, provenance)."""
        return [self.run_document(r) for r in self.run_list if r.run_json]

    def metrics_documents(self) -> list[dict[str, Any]]:
        """metrics.json of each run that has one (every figure, with its intervals and validity)."""
        return [records.read_json(r.metrics_json, READS) for r in self.run_list if r.metrics_json]

    # -- frames ---------------------------------------------------------------------------------
    def records(self, columns: list[str] | None = None) -> pd.DataFrame:
        """Every run's requests.parquet: one row per request sent (``columns``: only these)."""
        return _stack([(r, records.read_table(r.requests, columns, reads=READS))
                       for r in self.run_list if r.requests])

    def phases(self) -> pd.DataFrame:
        """One row per run x phase from run.json: the phase's mode, label, target and time window."""
        rows = []
        for r in self.run_list:
            for m in self.run_document(r).get("phases") or []:
                rows.append({**r.cell, "phase": m["name"], "mode": m.get("mode"), "warmup": m.get("warmup"),
                             "label": m.get("label"), "open_loop": m.get("open_loop"),
                             "duration_s": (m["end_ns"] - m["start_ns"]) / 1e9,
                             "drain_s": (m["drained_ns"] - m["end_ns"]) / 1e9 if m.get("drained_ns") else None,
                             "target": json.dumps(m.get("target"), sort_keys=True),
                             "start_ns": m["start_ns"], "end_ns": m["end_ns"]})
        return pd.DataFrame(rows)

    def metrics(self) -> pd.DataFrame:
        """One row per run x phase from metrics.json: the summary columns (the registry's headline
        figures, units in their names), validity and the phase's load."""
        docs = self.metrics_documents()
        return summarize_metrics(docs) if docs else pd.DataFrame(columns=[*CELL_KEYS, "phase"])

    def summary(self) -> pd.DataFrame:
        """The study's summary (``analysis/summary.parquet``) where the pipeline wrote one, else the
        same rows made from the runs' metrics.json."""
        path = self.analysis / "summary.parquet" if self.analysis else None
        if path is not None and path.is_file():
            return records.read_table(path, reads=READS)
        return self.metrics()

    def windows(self) -> pd.DataFrame:
        """Per run, its phases' figures over short windows (metrics' windows.parquet)."""
        return _stack([(r, records.read_table(r.windows, reads=READS)) for r in self.run_list if r.windows])

    def telemetry(self) -> pd.DataFrame:
        """Per run, the raw telemetry samples (telemetry.parquet; a ``tokenbench run`` directory has none)."""
        return _stack([(r, records.read_table(r.telemetry, reads=READS)) for r in self.run_list if r.telemetry])

    def timeline(self) -> pd.DataFrame:
        """Per run, the merged telemetry timeline (merged/.../timeline.parquet)."""
        return _stack([(r, records.read_table(r.timeline, reads=READS)) for r in self.run_list if r.timeline])

    def engine_metrics(self) -> pd.DataFrame:
        """Per run, the engine's scraped /metrics samples (engine_metrics.parquet)."""
        return _stack([(r, records.read_table(r.engine_metrics, reads=READS))
                       for r in self.run_list if r.engine_metrics])


def _rows(path: Path | None) -> int | None:
    if path is None:
        return None
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def _stack(frames: list[tuple[Run, pd.DataFrame]]) -> pd.DataFrame:
    """The frames one under the other, each run's cell in front (a column the file already has keeps its own)."""
    out = []
    for run, df in frames:
        df = df.copy()
        for i, k in enumerate(CELL_KEYS):
            if k not in df.columns:
                df.insert(i, k, run.cell[k])
        out.append(df)
    if not out:
        return pd.DataFrame(columns=list(CELL_KEYS))
    return pd.concat(out, ignore_index=True) if len(out) > 1 else out[0]


def _cell(path: Path, rel: tuple[str, ...], doc: dict[str, Any] | None) -> dict[str, str]:
    """The run's (engine, model, load, rep): its run.json's, else its place in the tree, else '-'."""
    cell = dict((doc or {}).get("cell") or {})
    guess = dict(zip(CELL_KEYS, rel)) if len(rel) == 4 else {}
    return {k: str(cell.get(k) or guess.get(k) or ("r1" if k == "rep" else "-")) for k in CELL_KEYS}


def load_results(path: str | Path) -> Results:
    """The results under ``path``: a run directory (``tokenbench run --out``, or one
    ``data/runs/{engine}/{model}/{load}/{rep}``), a pipeline's ``data/`` tree, or the project
    directory holding ``data/``."""
    root = Path(path)
    if not root.exists():
        raise ResultsError(f"{root}: no such directory")
    if not root.is_dir():
        raise ResultsError(f"{root} is a file; give the run directory or the data/ directory that holds it")
    if (root / "data" / "runs").is_dir() and not (root / "runs").is_dir():
        root = root / "data"
    if any((root / f).is_file() for f in RUN_FILES):
        return Results(root, "run", [_run(root, root.resolve().parents[4] if _in_tree(root) else None)], None)
    if (root / "runs").is_dir():
        dirs = sorted({p.parent for f in RUN_FILES for p in (root / "runs").glob(f"*/*/*/*/{f}")})
        runs = [_run(d, root) for d in dirs]
        if not runs:
            raise ResultsError(f"{root}/runs holds no run (no {' or '.join(RUN_FILES)} in runs/<engine>/<model>/<load>/<rep>/)")
        analysis = root / "analysis"
        return Results(root, "pipeline", runs, analysis if analysis.is_dir() else None)
    raise ResultsError(f"{root} holds no results: expected a run directory ({' or '.join(RUN_FILES)}), a pipeline "
                       "data/ directory (runs/<engine>/<model>/<load>/<rep>/) or the project directory above data/")


def _in_tree(run_dir: Path) -> bool:
    """Is ``run_dir`` data/runs/{engine}/{model}/{load}/{rep}?"""
    parents = run_dir.resolve().parents
    return len(parents) > 4 and parents[3].name == "runs"


def _run(d: Path, data_root: Path | None) -> Run:
    """A run's files; for a run in a pipeline tree (``data_root``: its data/) also the files other
    stages wrote for it (metrics/, merged/)."""
    if data_root is not None:
        rel = d.resolve().relative_to((data_root / "runs").resolve()).parts
        metrics_dir, merged_dir = data_root.joinpath("metrics", *rel), data_root.joinpath("merged", *rel)
    else:
        rel, metrics_dir, merged_dir = (), d, d
    run_json = _present(d / "run.json")
    doc = records.read_json(run_json, READS) if run_json else None
    metrics_json = _present(d / "metrics.json") or _present(metrics_dir / "metrics.json")
    return Run(path=d, cell=_cell(d, rel, doc), run_json=run_json, requests=_present(d / "requests.parquet"),
               metrics_json=metrics_json, telemetry=_present(d / "telemetry.parquet"),
               engine_metrics=_present(d / "engine_metrics.parquet"),
               windows=_present(d / "windows.parquet") or _present(metrics_dir / "windows.parquet"),
               timeline=_present(merged_dir / "timeline.parquet"))


# -- what the CLI prints and exports ----------------------------------------------------------------
SUMMARY_COLUMNS = {"output_tok_s": "output tok/s", "request_rps": "req/s", "ttft_p50_ms": "TTFT p50 ms",
                   "ttft_p99_ms": "TTFT p99 ms", "e2e_p99_ms": "E2E p99 ms", "success_rate": "success"}


def summary_table(res: Results) -> pd.DataFrame:
    """Per cell and measured phase (not warm-up, not idle): replicates, how many valid, and the mean
    over replicates of a few headline figures."""
    m = res.metrics()
    if m.empty:
        return pd.DataFrame()
    m = m[(~m["warmup"].astype(bool)) & (m["mode"] != "idle")]
    if m.empty:
        return pd.DataFrame()
    keys = ["engine", "model", "load", "phase"]
    g = m.groupby(keys, sort=False)
    out = g.agg(reps=("rep", "nunique"), valid=("valid", lambda s: int(s.fillna(False).astype(bool).sum())))
    cols = [c for c in SUMMARY_COLUMNS if c in m.columns]
    out = out.join(g[cols].mean()).rename(columns=SUMMARY_COLUMNS).reset_index()
    return out


def describe(res: Results) -> list[str]:
    """What was found: where, how many runs and cells, their phases, and the summary table."""
    runs = res.runs
    versions = sorted({int(v) for v in runs["schema_version"].dropna()})
    lines = [f"{res.root}: {'one run directory' if res.layout == 'run' else 'pipeline data tree'}, "
             f"{len(runs)} run{'s' if len(runs) != 1 else ''} in {len(res.cells)} cell{'s' if len(res.cells) != 1 else ''}"
             f" (schema version {', '.join(map(str, versions)) or '?'}; this tokenbench reads "
             f"{min(READS)} to {max(READS)})"]
    incomplete = runs[runs["complete"] == False]  # noqa: E712 - None (unknown) is not incomplete
    if len(incomplete):
        lines.append("incomplete runs: " + ", ".join("/".join(r[k] for k in CELL_KEYS) for _, r in incomplete.iterrows()))
    lines += ["", "cells:"]
    for e, mo, lo in res.cells:
        reps = runs[(runs.engine == e) & (runs.model == mo) & (runs.load == lo)]
        lines.append(f"  {e} / {mo} / {lo}: {', '.join(reps.rep)}; {int(reps.requests.fillna(0).sum())} requests")
    ph = res.phases()
    if not ph.empty:
        lines += ["", "phases:"]
        for (e, mo, lo), g in ph.groupby(["engine", "model", "load"], sort=False):
            first = g[g.rep == g.rep.iloc[0]]
            parts = [f"{r.phase} ({r.label or r.mode}{', warm-up' if r.warmup else ''}"
                     f"{'' if r.mode == 'idle' else f', {r.duration_s:.0f} s'})"
                     for r in first.itertuples()]
            lines.append(f"  {e} / {mo} / {lo}: " + "; ".join(parts))
    table = summary_table(res)
    lines += [""]
    if table.empty:
        lines.append("no measured phase with metrics (metrics.json) yet")
    else:
        lines += ["summary (mean over replicates; measured phases):",
                  table.to_string(index=False, float_format=lambda x: f"{x:.4g}", na_rep="-")]
    if res.analysis is not None:
        extra = sorted(p.name for p in res.analysis.iterdir() if p.suffix in (".json", ".parquet"))
        if extra:
            lines += ["", f"study outputs in {res.analysis}: {', '.join(extra)}"]
    return lines


def export_csv(res: Results, out: str | Path) -> list[Path]:
    """CSV copies for spreadsheets: runs, phases, records (list columns left out: per-chunk
    timestamps stay in requests.parquet), per-phase metrics and the summary. Returns the files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def put(name: str, df: pd.DataFrame) -> None:
        if df is None or df.empty:
            return
        p = out / f"{name}.csv"
        df.to_csv(p, index=False)
        written.append(p)

    put("runs", res.runs)
    put("phases", res.phases())
    rec = res.records()
    lists = [c for c in rec.columns if rec[c].dtype == object
             and any(hasattr(v, "__len__") and not isinstance(v, (str, bytes)) for v in rec[c].dropna().head(1))]
    put("records", rec.drop(columns=lists))
    put("metrics", res.metrics())
    put("summary", res.summary())
    return written
