"""Configurations against each other at each load level, and hypotheses evaluated from the data.

For each compared pair (a, b) serving the same model, each load they share and each of its
measured (non-warmup, non-idle) phases, and each compared figure:

- the figure on each side (all valid replicate runs pooled) and the difference a - b and ratio
  a / b with block-bootstrap intervals (each side's time blocks resampled independently; blocks
  of different replicate runs are pooled);
- Welch's t on the replicate values (where both sides have at least two valid replicates) and
  Mann-Whitney U on the per-unit values (per request for latencies, per time block for rates);
- Cohen's d (pooled SD) and Cliff's delta on the per-unit values;
- Holm's correction within each figure's family (that figure compared across every pair, load
  and phase), separately for the Mann-Whitney and the Welch p-values.

Each comparison has a primary interval, the one that carries the dominant uncertainty: across
replicate runs (Welch intervals on the replicate means; the ratio on the log scale) when both
sides have at least two valid runs and either the within-run bootstrap has too few blocks or
run-to-run variation dominates the within-run noise; otherwise the within-run block bootstrap.
A winner is named only when the primary interval excludes no difference and the test that
matches it (Welch for replicates, Mann-Whitney for the bootstrap) has a Holm-adjusted p below
alpha. Otherwise the verdict is "not resolvable at this sample size", with the replicates per
side a Welch test would need to resolve a difference of ``comparison.resolve_difference`` at the
replicates' observed coefficient of variation.
Replicates whose phase failed validity are left out; a side with none left is not compared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tokenbench.analysis import stats
from tokenbench.analysis.fit import invalid_reason
from tokenbench.analysis.metrics import request_latencies, slo_bounds, slo_mask
from tokenbench.analysis.replicates import summary_value, within_interval
from tokenbench.chunks import Tokens
from tokenbench.config import COMPARED_FIGURES, ComparisonSpec, SloSpec

HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class Compared:
    """A figure compared between configurations: a summary column, which way is better, and its units."""
    column: str
    better: str
    unit: str  # "rate": per time block; otherwise the per-request latency column
    stat: str | None = None  # the latency statistic (mean, p50, ...)


COMPARED = {c.column: c for c in (
    Compared("output_tok_s", HIGHER, "rate"),
    Compared("goodput_rps", HIGHER, "rate"),
    Compared("ttft_p50_ms", LOWER, "ttft_ms", "p50"),
    Compared("ttft_p95_ms", LOWER, "ttft_ms", "p95"),
    Compared("tpot_p50_ms", LOWER, "tpot_ms", "p50"),
    Compared("e2e_p50_ms", LOWER, "e2e_ms", "p50"),
    Compared("e2e_p99_ms", LOWER, "e2e_ms", "p99"),
)}
assert tuple(COMPARED) == COMPARED_FIGURES, "config.COMPARED_FIGURES names the figures declared here"


@dataclass
class RunPhase:
    """One replicate run's phase: what the comparison resamples."""
    rep: str
    metrics: dict[str, Any]
    ok: pd.DataFrame
    tokens: Tokens
    met_end_ns: np.ndarray | None
    start_ns: int
    end_ns: int


def run_phase(rep: str, doc: dict[str, Any], requests: pd.DataFrame, phase: dict[str, Any], slo: SloSpec) -> RunPhase:
    pr = requests[requests["phase"] == phase["phase"]]
    ok = request_latencies(pr)
    met = ok.loc[slo_mask(ok, slo), "end_ns"].to_numpy(dtype=np.int64) if slo_bounds(slo) else None
    return RunPhase(rep, phase, ok, Tokens.of_requests(pr), met, int(phase["start_ns"]), int(phase["end_ns"]))


class Side:
    """One configuration's valid replicate runs of a phase, cut into time blocks of one length."""

    def __init__(self, runs: list[RunPhase]):
        self.runs = runs
        e2e = np.concatenate([r.ok["e2e_ms"].to_numpy(dtype=float, na_value=np.nan) for r in runs]) if runs else np.array([])
        med = float(np.nanmedian(e2e) * 1e6) if np.isfinite(e2e).any() else None
        self.block_ns = stats.block_length_ns(med, min(r.end_ns - r.start_ns for r in runs))
        self.block_s = self.block_ns / 1e9

    def _blocks(self, r: RunPhase) -> int:
        return int((r.end_ns - r.start_ns) // self.block_ns)

    def amounts(self, column: str) -> np.ndarray:
        """Per time block: output tokens (output_tok_s) or SLO-meeting requests (goodput_rps)."""
        parts = []
        for r in self.runs:
            n = self._blocks(r)
            if n == 0:
                continue
            if column == "output_tok_s":
                parts.append(r.tokens.per_window(r.start_ns, self.block_ns, n))
                continue
            if r.met_end_ns is None:
                return np.array([])
            idx = stats.block_index(r.met_end_ns, r.start_ns, r.start_ns + n * self.block_ns, self.block_ns)
            parts.append(np.bincount(idx[idx >= 0], minlength=n))
        return np.concatenate(parts).astype(float) if parts else np.array([])

    def values(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """Per request: the latency values and their block ids (unique across replicate runs)."""
        vals, blocks, offset = [], [], 0
        for r in self.runs:
            n = self._blocks(r)
            v = r.ok[column].to_numpy(dtype=float, na_value=np.nan)
            b = stats.block_index(r.ok["sent_ns"].to_numpy(dtype=np.int64), r.start_ns,
                                  r.start_ns + n * self.block_ns, self.block_ns)
            keep = (b >= 0) & np.isfinite(v)
            vals.append(v[keep])
            blocks.append(b[keep] + offset)
            offset += n
        if not vals:
            return np.array([]), np.array([], dtype=np.int64)
        return np.concatenate(vals), np.concatenate(blocks)

    def replicate_values(self, column: str) -> list[float]:
        return [v for v in (summary_value(r.metrics, column) for r in self.runs) if v is not None]


def compare_pair(a: Side, b: Side, spec: Compared, cfg: ComparisonSpec, seed: int = 0) -> dict[str, Any]:
    """Every statistic of one figure between two sides (before Holm and the verdict)."""
    out: dict[str, Any] = {"metric": spec.column, "better": spec.better,
                           "a_replicates": [r.rep for r in a.runs], "b_replicates": [r.rep for r in b.runs],
                           "block_s": [a.block_s, b.block_s]}
    if spec.unit == "rate":
        amount_a, amount_b = a.amounts(spec.column), b.amounts(spec.column)
        ua, ub = amount_a / a.block_s, amount_b / b.block_s  # per-block rates: the per-unit values
        if ua.size and ub.size:
            res = stats.compare_rates(amount_a, a.block_s, amount_b, b.block_s,
                                      B=cfg.bootstrap_resamples, level=cfg.level, seed=seed)
        else:
            res = None
        out["units"] = "time blocks"
    else:
        (va, ba), (vb, bb) = a.values(spec.unit), b.values(spec.unit)
        ua, ub = va, vb
        res = (stats.compare_bootstrap(va, ba, vb, bb, stat=spec.stat, B=cfg.bootstrap_resamples, level=cfg.level,
                                       seed=seed) if va.size and vb.size else None)
        out["units"] = "requests"
    out["n_units"] = [int(ua.size), int(ub.size)]
    if res is None:
        out.update(a_value=None, b_value=None, difference=None, ratio=None, mann_whitney=None, cohens_d=None,
                   cliffs_delta=None, welch=None, note="no data on one side")
        return out
    ra, rb = a.replicate_values(spec.column), b.replicate_values(spec.column)
    out["a_value"] = float(np.mean(ra)) if ra else None
    out["b_value"] = float(np.mean(rb)) if rb else None
    out["a_replicate_values"], out["b_replicate_values"] = ra, rb
    out["block_bootstrap"] = {k: v.to_dict() for k, v in res.items()}
    out["replicate_welch"] = {k: v.to_dict() for k, v in stats.welch_difference(ra, rb, cfg.level).items()}
    out["mann_whitney"] = stats.mann_whitney(ua, ub)
    out["cohens_d"] = stats.cohens_d(ua, ub)
    out["cliffs_delta"] = stats.cliffs_delta(ua, ub)
    out["welch"] = stats.welch(ra, rb) if len(ra) >= 2 and len(rb) >= 2 else None
    cvs = [float(np.std(v, ddof=1) / np.mean(v)) for v in (ra, rb) if len(v) >= 2 and np.mean(v)]
    out["replicate_cv"] = max(cvs) if cvs else None
    # does run-to-run variation dominate on either side? (within: the side's bootstrap SE per run)
    out["between_runs_dominate"] = any(
        (stats.variation_sources([_within_se(r, spec, cfg.level) for r in side.runs], vals) or {}).get("dominant")
        == "between runs" for side, vals in ((a, ra), (b, rb)) if len(vals) >= 2)
    # the interval that carries the dominant uncertainty: across runs where there are replicates and the
    # within-run bootstrap has no interval or run-to-run variation dominates; else the block bootstrap
    boot_ok = out["block_bootstrap"]["difference"].get("lo") is not None
    use_reps = len(ra) >= 2 and len(rb) >= 2 and (not boot_ok or out["between_runs_dominate"])
    out["interval_source"] = "replicates" if use_reps else "blocks"
    primary = out["replicate_welch"] if use_reps else out["block_bootstrap"]
    out["difference"], out["ratio"] = primary["difference"], primary["ratio"]
    return out


def _within_se(r: RunPhase, spec: Compared, level: float) -> float | None:
    return stats.se_from_interval(within_interval(r.metrics, spec.column), level)


def verdict(c: dict[str, Any], a: str, b: str, cfg: ComparisonSpec) -> dict[str, Any]:
    """Winner or 'not resolvable', from the primary interval and the Holm-adjusted p of the test
    that matches it (Welch across replicate runs, Mann-Whitney within them)."""
    diff = c.get("difference")
    reps = c.get("interval_source") == "replicates"
    test, p = ("Welch", c.get("welch_p_holm")) if reps else ("Mann-Whitney", c.get("mann_whitney_p_holm"))
    out: dict[str, Any] = {"test": test}
    excludes = bool(diff) and diff.get("lo") is not None and (diff["lo"] > 0 or diff["hi"] < 0)
    if excludes and p is not None and p < cfg.alpha:
        a_higher = diff["lo"] > 0
        winner = a if (a_higher == (c["better"] == HIGHER)) else b
        return {**out, "winner": winner, "verdict": f"{winner} ({c['better']} is better)"}
    if not diff or diff.get("lo") is None:
        why = (diff or {}).get("note") or c.get("note") or "no interval"
    elif not excludes:
        why = "the difference's interval includes 0"
        ratio = c.get("ratio") or {}
        if ratio.get("lo") is not None and (ratio["lo"] > 1 or ratio["hi"] < 1):
            # with few runs a side, Welch on the values and on their logs can disagree: no verdict until both agree
            why += " (the ratio's, on the log scale, excludes 1: the two disagree at this sample size)"
    else:
        why = f"{test} p (Holm) {p:.3g} ≥ {cfg.alpha:g}" if p is not None else f"no {test} p-value"
    out.update(winner=None, verdict="not resolvable at this sample size: " + why)
    cv = c.get("replicate_cv")
    if cv:
        out["replicates_needed"] = stats.replicates_needed(cfg.resolve_difference, cv, alpha=cfg.alpha)
        out["replicates_needed_for"] = (f"a {cfg.resolve_difference:.0%} difference at the observed replicate "
                                        f"CV {cv:.1%}")
    return out


def compare_configurations(runs: dict[tuple[str, str, str, str], tuple[dict[str, Any], Callable[[], pd.DataFrame]]],
                           compared: list[tuple[str, str, str]], cfg: ComparisonSpec,
                           slo: SloSpec | None = None) -> dict[str, Any]:
    """comparisons.json. runs: (engine, model, load, rep) -> (metrics.json, a loader of its requests)."""
    slo = slo or SloSpec()
    cache: dict[tuple, pd.DataFrame] = {}

    def requests(key):
        if key not in cache:
            cache[key] = runs[key][1]()
        return cache[key]

    def side(engine, model, load, phase) -> tuple[list[RunPhase], list[dict[str, Any]]]:
        keep, excluded = [], []
        for key in sorted(k for k in runs if k[:3] == (engine, model, load)):
            doc = runs[key][0]
            ph = next((p for p in doc["phases"] if p["phase"] == phase), None)
            if ph is None:
                continue
            reason = invalid_reason(key[3], doc, ph)
            if reason:
                excluded.append({"rep": key[3], "reason": reason})
            else:
                keep.append(run_phase(key[3], doc, requests(key), ph, slo))
        return keep, excluded

    loads = sorted({k[2] for k in runs})
    out: list[dict[str, Any]] = []
    for model, a, b in compared:
        for load in loads:
            doc_a = next((runs[k][0] for k in sorted(runs) if k[:3] == (a, model, load)), None)
            if doc_a is None or not any(k[:3] == (b, model, load) for k in runs):
                continue
            for ph in doc_a["phases"]:
                if ph["warmup"] or ph["mode"] == "idle":
                    continue
                ra, ea = side(a, model, load, ph["phase"])
                rb, eb = side(b, model, load, ph["phase"])
                base = {"model": model, "a": a, "b": b, "load": load, "phase": ph["phase"], "target": ph["target"],
                        "label": ph.get("label"), "excluded": {"a": ea, "b": eb}}
                for spec in COMPARED.values():
                    if spec.column == "goodput_rps" and not slo_bounds(slo):
                        continue
                    if not ra or not rb:
                        out.append({**base, "metric": spec.column, "better": spec.better, "winner": None,
                                    "verdict": "excluded: no valid replicate on "
                                               + " and ".join(n for n, r in ((a, ra), (b, rb)) if not r)})
                        continue
                    out.append({**base, **compare_pair(Side(ra), Side(rb), spec, cfg, seed=len(out))})
    # Holm per figure: a family is one figure compared across every pair, load and phase
    families: dict[str, int] = {}
    for metric in COMPARED:
        rows = [c for c in out if c["metric"] == metric]
        mw = [(c.get("mann_whitney") or {}).get("p") for c in rows]
        wt = [(c.get("welch") or {}).get("p") for c in rows]
        for c, p_mw, p_w in zip(rows, stats.holm(mw), stats.holm(wt)):
            c["mann_whitney_p_holm"], c["welch_p_holm"] = p_mw, p_w
            if "verdict" not in c:
                c.update(verdict(c, c["a"], c["b"], cfg))
        if rows:
            families[metric] = sum(p is not None for p in mw)
    return {"level": cfg.level, "alpha": cfg.alpha, "families": families,
            "method": __doc__.strip(), "comparisons": out}


def evaluate_hypotheses(hypotheses: list[dict[str, Any]], comparisons: dict[str, Any]) -> list[dict[str, Any]]:
    """Each hypothesis (a/b against factor) from the ratio interval of its comparison."""
    out = []
    for h in hypotheses:
        res = {**h, "status": "not resolvable", "ratio": None, "reason": None}
        match = None
        for c in comparisons["comparisons"]:
            if c["metric"] == h["metric"] and c["load"] == h["load"] and c["phase"] == h["phase"]:
                if (c["a"], c["b"]) == (h["a"], h["b"]):
                    match, flip = c, False
                elif (c["a"], c["b"]) == (h["b"], h["a"]):
                    match, flip = c, True
            if match:
                break
        if match is None:
            res.update(status="not evaluable", reason="no comparison of these configurations at this load and phase")
            out.append(res)
            continue
        ratio = match.get("ratio")
        if not ratio or ratio.get("lo") is None:
            res.update(status="not evaluable" if match.get("verdict", "").startswith("excluded") else "not resolvable",
                       reason=match.get("verdict") if not ratio else (ratio.get("note") or "no interval"))
            out.append(res)
            continue
        est, lo, hi = ratio["estimate"], ratio["lo"], ratio["hi"]
        if flip:  # the comparison is b/a: invert
            est, lo, hi = 1 / est, 1 / hi, 1 / lo
        res["ratio"] = {"estimate": est, "lo": lo, "hi": hi, "level": ratio.get("level"), "method": ratio.get("method")}
        f = h["factor"]
        if h["relation"] == "at_least":
            status = "confirmed" if lo >= f else "rejected" if hi < f else "not resolvable"
        else:
            status = "confirmed" if hi <= f else "rejected" if lo > f else "not resolvable"
        res["status"] = status
        res["reason"] = (f"a/b = {est:.3g}, {100 * (ratio.get('level') or 0.95):.0f} % interval [{lo:.3g}, {hi:.3g}] "
                         f"against {'≥' if h['relation'] == 'at_least' else '≤'} {f:g}")
        out.append(res)
    return out
