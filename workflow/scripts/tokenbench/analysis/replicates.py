"""A cell's replicate runs together: each figure across runs, with both kinds of uncertainty.

Every replicate is a fresh server launch with the same settings, so the spread of a figure across
replicates is run-to-run variation. For each summary figure of each phase this gives the replicate
values, their mean and a Student t interval with k - 1 degrees of freedom (k valid replicates),
each run's within-run block-bootstrap interval beside it, and which source of variation dominates.
Replicates whose phase failed a validity check are left out and listed with their reasons.
"""

from __future__ import annotations

from typing import Any

from tokenbench.analysis import registry, stats
from tokenbench.analysis.fit import invalid_reason


def within_interval(phase: dict[str, Any], column: str) -> dict[str, Any] | None:
    """The within-run interval of a summary column in one run's phase, where it was computed."""
    key, stat = registry.SUMMARY_COLUMNS[column]
    iv = (phase.get("intervals") or {}).get(key)
    if isinstance(iv, dict) and stat is not None:
        iv = iv.get(stat)
    return iv if isinstance(iv, dict) and "lo" in iv else None


def summary_value(phase: dict[str, Any], column: str) -> float | None:
    key, stat = registry.SUMMARY_COLUMNS[column]
    v = phase.get(key)
    if stat is not None:
        v = v.get(stat) if isinstance(v, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def combine_replicates(docs: list[dict[str, Any]], level: float = stats.LEVEL) -> dict[str, Any]:
    """cells/{engine}/{model}/{load}.json from the metrics.json of the cell's replicate runs."""
    docs = sorted(docs, key=lambda d: int(d["cell"].get("rep", "r1")[1:]))
    cell = {k: docs[0]["cell"][k] for k in ("engine", "model", "load")}
    out: dict[str, Any] = {"cell": cell, "replicates": [d["cell"].get("rep", "r1") for d in docs],
                           "level": level, "phases": []}
    for ph0 in docs[0]["phases"]:
        name = ph0["phase"]
        runs = [(d["cell"].get("rep", "r1"), d, next(p for p in d["phases"] if p["phase"] == name)) for d in docs]
        entry: dict[str, Any] = {"phase": name, "mode": ph0["mode"], "warmup": ph0["warmup"], "target": ph0["target"],
                                 "label": ph0.get("label")}
        if ph0["mode"] == "idle":
            out["phases"].append(entry)
            continue
        excluded, valid = [], []
        for rep, d, ph in runs:
            reason = invalid_reason(rep, d, ph)
            (excluded.append({"rep": rep, "reason": reason}) if reason else valid.append((rep, ph)))
        entry["valid_replicates"] = [rep for rep, _ in valid]
        entry["excluded"] = excluded
        entry["valid"] = bool(valid)
        figures = {}
        for col in registry.SUMMARY_COLUMNS:
            values = [summary_value(ph, col) for _, ph in valid]
            within = [within_interval(ph, col) for _, ph in valid]
            finite = [v for v in values if v is not None]
            if not finite:
                continue
            fig = {"values": values, "reps": [rep for rep, _ in valid],
                   "interval": stats.t_interval(finite, level).to_dict(), "within": within}
            if any(w is not None for w in within):
                fig["variation"] = stats.variation_sources([stats.se_from_interval(w, level) for w in within], finite)
            figures[col] = fig
        entry["figures"] = figures
        out["phases"].append(entry)
    return out
