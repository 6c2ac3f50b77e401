"""Throughput against interactivity across a users sweep: points, Pareto frontiers, iso-interactivity.

InferenceX's view of an engine: each load level of a configuration (engine x model) is a point
whose x is *interactivity*, the tokens per second one user sees, 1000 / TPOT (ms), and whose y is
what the server delivers (output, input or total tok/s) or what it costs (J per output token, $ per
million output tokens). A configuration's *Pareto frontier* is the set of its valid points that no
other valid point of the same configuration beats on both axes: moving along it trades per-user
speed against throughput. An *iso-interactivity table* reads each configuration's frontier at the
same target tok/s/user, so configurations are compared at equal user experience.

Every figure of a point is the cell's mean over its valid replicates with the cell's Student t
interval (``combine_replicates``); with a single valid replicate, that run's within-run bootstrap
interval. x's interval is TPOT's with its bounds inverted (1000 / hi, 1000 / lo), J/token's is
tok/J's inverted the same way. A load level whose replicates all failed a validity check stays on
the chart, flagged with the reason, at the mean of its replicates' values (no interval), and is
never on a frontier or in the iso table. Interpolation along a frontier is monotone (scipy's
PchipInterpolator: the Fritsch-Carlson piecewise cubic, which keeps monotone data monotone and never
overshoots between points), and only inside the frontier's measured x range: never extrapolated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenbench.analysis import registry
from tokenbench.analysis.fit import invalid_reason
from tokenbench.analysis.replicates import summary_value


@dataclass(frozen=True)
class Axis:
    """One variant of an axis: the summary column it reads, how it is transformed, and which way is better."""
    key: str
    column: str
    label: str
    higher_is_better: bool
    invert: float | None = None  # plot invert / value (x = 1000 / TPOT, J/token = 1 / tok/J)
    basis: str = registry.MEASURED


def _basis(metric: str) -> str:
    """measured or estimated, as the registry declares the metric's basis (a price makes a figure estimated)."""
    b = registry.METRICS[metric].basis
    return registry.ESTIMATED if b in (registry.Basis.PRICE, registry.Basis.SENSOR_PRICE) else registry.MEASURED


# interactivity: the median/p99 toggle
X_VARIANTS: dict[str, Axis] = {
    "median": Axis("median", "tpot_p50_ms", "interactivity (tok/s/user = 1000 / median TPOT)", True, 1000.0),
    "p99": Axis("p99", "tpot_p99_ms", "interactivity (tok/s/user = 1000 / p99 TPOT)", True, 1000.0),
}
# what the y selector offers, where a point has it
Y_VARIANTS: dict[str, Axis] = {
    "output": Axis("output", "output_tok_s", registry.METRICS["output_tok_s"].header(), True),
    "input": Axis("input", "input_tok_s", registry.METRICS["input_tok_s"].header(), True),
    "total": Axis("total", "total_tok_s", registry.METRICS["total_tok_s"].header(), True),
    "j_per_tok": Axis("j_per_tok", "tok_per_j", "energy per output token (J/tok = 1 / tok/J)", False, 1.0,
                      _basis("tok_per_j")),
    "usd_per_mtok": Axis("usd_per_mtok", "usd_per_mtok", registry.METRICS["usd_per_mtok"].header(), False,
                         basis=_basis("usd_per_mtok")),
}
# companion views: (x, y), x a latency where lower is better
COMPANIONS: dict[str, tuple[Axis, str]] = {
    "e2e_p50_ms": (Axis("e2e_p50_ms", "e2e_p50_ms", registry.METRICS["e2e_ms"].header(("p50",)), False), "output"),
    "ttft_p99_ms": (Axis("ttft_p99_ms", "ttft_p99_ms", registry.METRICS["ttft_ms"].header(("p99",)), False), "input"),
}


def config_name(engine: str, model: str) -> str:
    return f"{engine} · {model}"


def _figure(value: float | None, lo: float | None = None, hi: float | None = None, method: str | None = None,
            axis: Axis | None = None) -> dict[str, Any] | None:
    """A figure with its interval, transformed for the axis (an inverted interval swaps its bounds)."""
    if value is None or not np.isfinite(value):
        return None
    if axis is not None and axis.invert is not None:
        if value <= 0:
            return None
        inv = lambda v: axis.invert / v if v is not None and v > 0 else None  # noqa: E731
        value, lo, hi = inv(value), inv(hi), inv(lo)
    out = {"value": float(value), "lo": lo, "hi": hi, "method": method}
    if lo is None or hi is None:
        out["lo"] = out["hi"] = None
    return out


def _from_cell(phase: dict[str, Any], axis: Axis) -> dict[str, Any] | None:
    """A cell figure: the mean over valid replicates with its t interval, else (one replicate) the
    run's within-run interval."""
    fig = (phase.get("figures") or {}).get(axis.column)
    if not fig:
        return None
    iv = fig["interval"]
    lo, hi, method = iv.get("lo"), iv.get("hi"), iv.get("method")
    within = [w for w in fig.get("within") or [] if w]
    if (lo is None or hi is None) and len(fig.get("values") or []) == 1 and within:
        lo, hi, method = within[0].get("lo"), within[0].get("hi"), within[0].get("method")
    return _figure(iv.get("estimate"), lo, hi, method, axis)


def _from_runs(phases: list[dict[str, Any]], axis: Axis) -> dict[str, Any] | None:
    """An invalid point's figure: the mean of its replicates' values, no interval."""
    vals = [v for v in (summary_value(p, axis.column) for p in phases) if v is not None]
    return _figure(float(np.mean(vals)), axis=axis) if vals else None


def sweep_points(cells: list[dict[str, Any]], runs: list[dict[str, Any]], phase_of: dict[str, str]) -> list[dict[str, Any]]:
    """One point per (configuration, sweep load) from the cells JSON (``combine_replicates``) and the
    runs' metrics.json (for load levels without a valid replicate). ``phase_of``: load -> the phase
    the sweep reads."""
    points = []
    for cell in cells:
        c = cell["cell"]
        if c["load"] not in phase_of:
            continue
        name = phase_of[c["load"]]
        phase = next(p for p in cell["phases"] if p["phase"] == name)
        reps = [(d, next(p for p in d["phases"] if p["phase"] == name)) for d in runs
                if all(d["cell"][k] == c[k] for k in ("engine", "model", "load"))]
        valid = bool(phase.get("valid"))
        axes = {**X_VARIANTS, **Y_VARIANTS, **{k: a for k, (a, _) in COMPANIONS.items()}}
        if valid:
            figs = {k: _from_cell(phase, a) for k, a in axes.items()}
            reason = None
        else:
            figs = {k: _from_runs([p for _, p in reps], a) for k, a in axes.items()}
            reasons = [e["reason"] for e in phase.get("excluded") or []]
            reasons = reasons or [invalid_reason(f"{c['load']} {d['cell'].get('rep', 'r1')}", d, p) for d, p in reps]
            reason = "; ".join(r for r in reasons if r) or "no valid replicate"
        points.append({
            "engine": c["engine"], "model": c["model"], "config": config_name(c["engine"], c["model"]),
            "load": c["load"], "phase": name, "users": phase["target"].get("users"),
            "valid": valid, "reason": reason, "replicates": len(phase.get("valid_replicates") or []),
            "excluded": [e["rep"] for e in phase.get("excluded") or []],
            "note": "; ".join(e["reason"] for e in phase.get("excluded") or []) if valid else None,
            "x": {k: figs[k] for k in [*X_VARIANTS, *COMPANIONS]},
            "y": {k: figs[k] for k in Y_VARIANTS},
        })
    return sorted(points, key=lambda p: (p["config"], p["users"] if p["users"] is not None else -1))


def pareto_mask(x, y, x_higher_better: bool = True, y_higher_better: bool = True,
                eligible=None) -> np.ndarray:
    """True for each eligible point that no other eligible point is at least as good as on both axes
    and better on one. Points equal on both axes do not dominate each other: both stay."""
    xs = np.asarray(x, dtype=float) * (1 if x_higher_better else -1)
    ys = np.asarray(y, dtype=float) * (1 if y_higher_better else -1)
    ok = np.isfinite(xs) & np.isfinite(ys)
    if eligible is not None:
        ok &= np.asarray(eligible, dtype=bool)
    out = np.zeros(xs.size, dtype=bool)
    for i in np.flatnonzero(ok):
        ge = ok & (xs >= xs[i]) & (ys >= ys[i])
        gt = (xs > xs[i]) | (ys > ys[i])
        out[i] = not np.any(ge & gt)
    return out


def _value(fig: dict[str, Any] | None) -> float:
    return fig["value"] if fig else np.nan


def mark_frontiers(points: list[dict[str, Any]]) -> None:
    """Each point's ``frontier``: {x variant: {y variant: on the frontier}} within its configuration,
    for every interactivity/y pair and each companion view's pair."""
    pairs = [(xk, X_VARIANTS[xk], yk) for xk in X_VARIANTS for yk in Y_VARIANTS]
    pairs += [(xk, axis, yk) for xk, (axis, yk) in COMPANIONS.items()]
    for p in points:
        p["frontier"] = {}
    for config in sorted({p["config"] for p in points}):
        mine = [p for p in points if p["config"] == config]
        for xk, xaxis, yk in pairs:
            mask = pareto_mask([_value(p["x"][xk]) for p in mine], [_value(p["y"][yk]) for p in mine],
                               xaxis.higher_is_better, Y_VARIANTS[yk].higher_is_better, [p["valid"] for p in mine])
            for p, on in zip(mine, mask):
                p["frontier"].setdefault(xk, {})[yk] = bool(on)


def frontier_curve(points: list[dict[str, Any]], x_variant: str, y_variant: str) -> tuple[np.ndarray, np.ndarray]:
    """A configuration's frontier for one pair as increasing x with its y (points equal in x are averaged)."""
    on = [p for p in points if p["frontier"].get(x_variant, {}).get(y_variant)]
    x = np.array([p["x"][x_variant]["value"] for p in on], dtype=float)
    y = np.array([p["y"][y_variant]["value"] for p in on], dtype=float)
    ux = np.unique(x)
    return ux, np.array([y[x == u].mean() for u in ux])


def interpolate(x: np.ndarray, y: np.ndarray, targets) -> list[float | None]:
    """y at each target by monotone piecewise-cubic (PCHIP) interpolation through (x, y); None
    outside [min x, max x] (never extrapolated). One point: its value at its own x only."""
    from scipy.interpolate import PchipInterpolator

    t = np.asarray(targets, dtype=float)
    if x.size == 0:
        return [None] * t.size
    inside = (t >= x.min()) & (t <= x.max())
    if x.size == 1:
        vals = np.where(inside, y[0], np.nan)
    else:
        vals = PchipInterpolator(x, y, extrapolate=False)(t)
    return [float(v) if ok and np.isfinite(v) else None for v, ok in zip(vals, inside)]


def default_targets(points: list[dict[str, Any]], x_variant: str, n: int = 5) -> list[float]:
    """n targets evenly over the x range the configurations' output frontiers share (their overlap);
    where they share none, over the union of their ranges (then each configuration has values only
    where it was measured). Rounded to 3 significant digits."""
    ranges = []
    for config in sorted({p["config"] for p in points}):
        x, _ = frontier_curve([p for p in points if p["config"] == config], x_variant, "output")
        if x.size:
            ranges.append((x.min(), x.max()))
    if not ranges:
        return []
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if lo > hi:
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if lo == hi:
        return [float(lo)]
    grid = np.linspace(lo, hi, n)
    grid[1:-1] = [float(f"{v:.3g}") for v in grid[1:-1]]  # the ends stay exact: rounding may leave the range
    return [float(v) for v in grid]


def iso_table(points: list[dict[str, Any]], targets: dict[str, list[float]],
              baseline: str | None) -> list[dict[str, Any]]:
    """One row per (x variant, target, configuration): each y variant read off the configuration's
    frontier for that pair, and its % against the baseline engine's configuration of the same model
    (None where either side has no value there)."""
    rows = []
    configs = sorted({(p["engine"], p["model"]) for p in points})
    for xk, ts in targets.items():
        values = {}
        for engine, model in configs:
            mine = [p for p in points if p["engine"] == engine and p["model"] == model]
            values[(engine, model)] = {yk: interpolate(*frontier_curve(mine, xk, yk), ts) for yk in Y_VARIANTS}
        for i, t in enumerate(ts):
            for engine, model in configs:
                y = {yk: values[(engine, model)][yk][i] for yk in Y_VARIANTS}
                base = values.get((baseline, model)) if baseline and engine != baseline else None
                pct = {}
                for yk, v in y.items():
                    b = base[yk][i] if base else None
                    pct[yk] = 100 * (v - b) / b if v is not None and b else None
                rows.append({"x_variant": xk, "target": t, "engine": engine, "model": model,
                             "config": config_name(engine, model), "y": y,
                             "pct_vs_baseline": pct if base else None})
    return rows


def trace_frontiers(cells: list[dict[str, Any]], runs: list[dict[str, Any]], phase_of: dict[str, str],
                    baseline: str | None = None, targets: dict[str, list[float]] | None = None,
                    level: float = 0.95) -> dict[str, Any]:
    """frontiers.json: the sweep's points with their frontier flags, the iso-interactivity table at
    ``targets`` (per x variant; default: ``default_targets``), the baseline and the axes' meaning."""
    points = sweep_points(cells, runs, phase_of)
    mark_frontiers(points)
    targets = targets or {xk: default_targets(points, xk) for xk in X_VARIANTS}
    engines = {p["engine"] for p in points}
    base = baseline if baseline in engines else None
    axes = lambda d: {k: {"label": a.label, "column": a.column, "higher_is_better": a.higher_is_better,  # noqa: E731
                          "basis": a.basis} for k, a in d.items()}
    return {
        "level": level,
        "baseline": base,
        "x_variants": axes(X_VARIANTS),
        "y_variants": axes(Y_VARIANTS),
        "companions": {k: {**axes({k: a})[k], "y": yk} for k, (a, yk) in COMPANIONS.items()},
        "targets": targets,
        "points": points,
        "iso": iso_table(points, targets, base),
    }
