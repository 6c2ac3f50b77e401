"""The results a report is made of, loaded once, and how a page reads them: a run's key and title,
its measured phases, a cell's across-replicate figure, a summary column's header and precision."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from markupsafe import Markup

from tokenbench.analysis.registry import METRICS, SUMMARY_COLUMNS


@dataclass
class Chart:
    name: str
    spec: dict[str, Any]
    data: dict[str, str] = field(default_factory=dict)  # "csv"/"json" -> source path of its full data
    href: dict[str, str] = field(default_factory=dict)  # "csv"/"json" -> link from the site root

    @property
    def title(self) -> str:
        t = self.spec.get("title")
        return (t.get("text") if isinstance(t, dict) else t) or self.name

    @cached_property
    def empty(self) -> str | None:
        """Why there is nothing to draw, when the chart's data has no rows; None when it has some.

        The reason is the spec's ``usermeta.empty`` (the plot function knows why its data can be
        empty), else a plain one. A chart without a data file is taken as drawable."""
        path = self.data.get("json")
        if not path:
            return None
        try:
            rows = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        if rows:
            return None
        return (self.spec.get("usermeta") or {}).get("empty") or "its data has no rows"

    def inline(self) -> Markup:
        """The spec as a script body (``</`` escaped so a title cannot end the script)."""
        return Markup(json.dumps(self.spec, separators=(",", ":")).replace("</", "<\\/"))


@dataclass
class Results:
    docs: list[dict[str, Any]]  # metrics.json per run
    runs: list[dict[str, Any]]  # run.json per run, same order
    fits: list[dict[str, Any]] = field(default_factory=list)
    cells: list[dict[str, Any]] = field(default_factory=list)
    comparisons: dict[str, Any] | None = None
    hypotheses: list[dict[str, Any]] = field(default_factory=list)
    charts: dict[str, Chart] = field(default_factory=dict)
    frontiers: dict[str, Any] | None = None
    requests: dict[str, str] = field(default_factory=dict)  # run key -> requests.parquet path

    @property
    def hardware(self) -> dict[str, Any]:
        return self.docs[0]["hardware"] if self.docs else {}


def run_key(cell: dict[str, Any]) -> str:
    return f"{cell['engine']}.{cell['model']}.{cell['load']}.{cell.get('rep', 'r1')}"


def run_title(cell: dict[str, Any]) -> str:
    return f"{cell['engine']} · {cell['model']} · {cell['load']} · {cell.get('rep', 'r1')}"


def measured(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The phases a figure is reported for: not warm-up, not idle."""
    return [p for p in phases if not p.get("warmup") and p.get("mode") != "idle"]


def col_header(col: str) -> str:
    key, stat = SUMMARY_COLUMNS[col]
    return METRICS[key].header((stat,) if stat else ())


def col_label(col: str) -> str:
    """A summary column's name without its unit, for sentences."""
    key, stat = SUMMARY_COLUMNS[col]
    return f"{METRICS[key].label} {stat}" if stat else METRICS[key].label


def col_format(col: str) -> tuple[int, bool]:
    m = METRICS[SUMMARY_COLUMNS[col][0]]
    return m.digits, m.percent


def cell_figure(ph: dict[str, Any], col: str) -> dict[str, Any] | None:
    """A cell phase's across-replicate interval of a summary column (combine_replicates)."""
    return ((ph.get("figures") or {}).get(col) or {}).get("interval")


def mean_concurrency(ph: dict[str, Any]) -> float | None:
    """Requests in flight on average (Little's law: finished req/s × mean E2E): how heavy a load
    level was, comparable across closed and open loops."""
    rps, e2e = cell_figure(ph, "request_rps"), cell_figure(ph, "e2e_mean_ms")
    if not rps or not e2e or rps.get("estimate") is None or e2e.get("estimate") is None:
        return None
    return rps["estimate"] * e2e["estimate"] / 1000


def phases_of(res: Results, cell: dict[str, Any], phase: str, reps: list[str]) -> list[dict[str, Any]]:
    """The run-level ``phase`` of each of ``cell``'s replicate runs ``reps`` (metrics.json phases)."""
    key = tuple(cell[k] for k in ("engine", "model", "load"))
    return [p for d in res.docs if tuple(d["cell"][k] for k in ("engine", "model", "load")) == key
            and d["cell"].get("rep", "r1") in reps for p in d["phases"] if p["phase"] == phase]


def weights_label(runs: list[dict[str, Any]], engine: str, model: str) -> str | None:
    """The format and precision a configuration ran its model at ("HF bfloat16 from GGUF Q4_1")."""
    return next(((r.get("weights") or {}).get("label") for r in runs
                 if (r["cell"]["engine"], r["cell"]["model"]) == (engine, model) and r.get("weights")), None)


def weights_differ(runs: list[dict[str, Any]]) -> bool:
    """The study ran its configurations on weights of more than one format or precision."""
    return len({(r.get("weights") or {}).get("label") for r in runs}) > 1
