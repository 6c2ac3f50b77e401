import numpy as np
import pytest

from tokenbench.analysis import frontier
from tokenbench.analysis.frontier import interpolate, pareto_mask, trace_frontiers
from tokenbench.analysis.replicates import combine_replicates


def phase_doc(users, tpot, tok_s, valid=True, tok_per_j=None, usd=None, prompt_tok_s=None):
    figures = {"tpot_ms": {"p50": tpot, "p99": tpot * 1.5}, "output_tok_s": tok_s,
               "e2e_ms": {"p50": tpot * 32}, "ttft_ms": {"p99": 2 * tpot},
               "tok_per_j": tok_per_j, "usd_per_mtok": usd,
               "input_tok_s": prompt_tok_s, "total_tok_s": None if prompt_tok_s is None else prompt_tok_s + tok_s}
    return {"phase": "steady", "mode": "closed", "warmup": False, "target": {"users": users}, "label": None,
            "validity": {"valid": valid, "failed_checks": [] if valid else ["stability: halves differ by 40 %"]},
            **figures}


def metrics_doc(engine, users, rep, **kw):
    return {"cell": {"engine": engine, "model": "m", "load": f"users-{users}", "rep": rep}, "complete": True,
            "phases": [phase_doc(users, **kw)]}


def sweep(engine, table, reps=2, spread=0.02, invalid=(), **kw):
    """cells and runs of one configuration: {users: (tpot ms, tok/s)}, each replicate a little apart."""
    cells, runs = [], []
    for users, (tpot, tok_s) in table.items():
        docs = [metrics_doc(engine, users, f"r{r + 1}", tpot=tpot * (1 + spread * r), tok_s=tok_s * (1 - spread * r),
                            valid=users not in invalid, **kw) for r in range(reps)]
        runs += docs
        cells.append(combine_replicates(docs))
    return cells, runs


PHASES = {f"users-{u}": "steady" for u in (1, 2, 4, 8, 16)}


def test_dominance_keeps_only_points_nothing_beats_on_both_axes():
    x = [10, 20, 30, 15, 25]
    y = [100, 80, 50, 70, 90]  # (15, 70) is beaten by (20, 80); (20, 80) by (25, 90)
    assert pareto_mask(x, y).tolist() == [True, False, True, False, True]


def test_lower_is_better_on_either_axis_flips_dominance():
    x = [10, 20, 30]
    cost = [5.0, 3.0, 4.0]  # lower is better: 20 tok/s/user at $3 beats 10 at $5; 30 at $4 is not beaten
    assert pareto_mask(x, cost, y_higher_better=False).tolist() == [False, True, True]
    assert pareto_mask(x, cost, x_higher_better=False, y_higher_better=False).tolist() == [True, True, False]


def test_ties_stay_on_the_frontier_and_a_tie_on_one_axis_is_decided_by_the_other():
    assert pareto_mask([10, 10, 20], [50, 50, 40]).tolist() == [True, True, True]
    assert pareto_mask([10, 10], [50, 40]).tolist() == [True, False]


def test_invalid_and_missing_points_are_never_on_the_frontier_and_do_not_dominate():
    x, y = [10, 20, 30], [100, 200, np.nan]
    assert pareto_mask(x, y, eligible=[True, False, True]).tolist() == [True, False, False]


def test_pchip_is_monotone_between_points_and_none_outside_the_measured_range():
    x = np.array([5.0, 10.0, 20.0, 40.0])
    y = np.array([400.0, 390.0, 150.0, 100.0])  # monotone decreasing, with a steep step
    grid = np.linspace(5, 40, 200)
    vals = np.array(interpolate(x, y, grid))
    assert np.all(np.diff(vals) <= 1e-9) and vals.min() >= 100 - 1e-9 and vals.max() <= 400 + 1e-9
    from scipy.interpolate import CubicSpline

    assert CubicSpline(x, y)(grid).max() > 400  # the data make a plain cubic spline overshoot; PCHIP does not
    assert interpolate(x, y, [4.99, 40.01, 10.0]) == [None, None, pytest.approx(390.0)]
    assert interpolate(np.array([7.0]), np.array([3.0]), [7.0, 8.0]) == [3.0, None]


def test_points_carry_inverted_intervals_and_the_invalid_level_with_its_reason():
    cells, runs = sweep("a", {1: (10.0, 100.0), 2: (12.0, 160.0), 4: (20.0, 200.0)}, invalid=(4,))
    doc = trace_frontiers(cells, runs, PHASES)
    pts = {p["users"]: p for p in doc["points"]}
    x = pts[1]["x"]["median"]
    # TPOT 10 and 10.2 ms: mean 10.1, x = 1000 / 10.1; the bounds swap under 1/x
    assert x["value"] == pytest.approx(1000 / 10.1)
    cell_iv = cells[0]["phases"][0]["figures"]["tpot_p50_ms"]["interval"]
    assert x["lo"] == pytest.approx(1000 / cell_iv["hi"]) and x["hi"] == pytest.approx(1000 / cell_iv["lo"])
    assert x["lo"] < x["value"] < x["hi"]
    assert not pts[4]["valid"] and "stability" in pts[4]["reason"]
    assert pts[4]["y"]["output"]["value"] == pytest.approx(198.0) and pts[4]["y"]["output"]["lo"] is None
    assert pts[4]["frontier"]["median"]["output"] is False
    assert pts[1]["y"]["j_per_tok"] is None and pts[1]["y"]["input"] is None  # not measured: absent, not zero


def test_frontier_per_configuration_and_for_cost_where_lower_is_better():
    cells, runs = sweep("a", {1: (10.0, 100.0), 2: (12.0, 160.0), 4: (30.0, 150.0)}, usd=None, tok_per_j=2.0)
    doc = trace_frontiers(cells, runs, PHASES)
    on = {p["users"]: p["frontier"]["median"] for p in doc["points"]}
    # 4 users: slower per user *and* less throughput than 2 users: dominated
    assert [on[u]["output"] for u in (1, 2, 4)] == [True, True, False]
    # J/token is the same at every level (2 tok/J): only the most interactive point is not beaten
    assert [on[u]["j_per_tok"] for u in (1, 2, 4)] == [True, False, False]
    assert doc["points"][0]["y"]["j_per_tok"]["value"] == pytest.approx(0.5)


def test_iso_table_reads_each_frontier_at_shared_targets_with_percent_against_the_baseline():
    a_cells, a_runs = sweep("fast", {1: (10.0, 100.0), 2: (12.5, 160.0), 4: (20.0, 240.0), 8: (40.0, 300.0)})
    b_cells, b_runs = sweep("base", {1: (10.0, 100.0), 2: (20.0, 100.0), 4: (40.0, 100.0)})
    doc = trace_frontiers(a_cells + b_cells, a_runs + b_runs, PHASES, baseline="base")
    assert doc["baseline"] == "base"
    t = doc["targets"]["median"]
    # base's frontier: only its 1-user point (the others are slower at the same tok/s); fast's spans
    # 1000/40.x .. 1000/10.1: the shared range is the single x of base's frontier
    base_x = next(p for p in doc["points"] if p["engine"] == "base" and p["users"] == 1)["x"]["median"]["value"]
    assert t == [pytest.approx(base_x)]
    rows = [r for r in doc["iso"] if r["x_variant"] == "median"]
    fast = next(r for r in rows if r["engine"] == "fast")
    base = next(r for r in rows if r["engine"] == "base")
    assert base["pct_vs_baseline"] is None and base["y"]["output"] == pytest.approx(99.0)
    assert fast["pct_vs_baseline"]["output"] == pytest.approx(100 * (fast["y"]["output"] - 99.0) / 99.0)


def test_iso_targets_given_are_used_and_values_outside_a_frontier_are_none():
    cells, runs = sweep("a", {1: (10.0, 100.0), 2: (12.5, 160.0), 4: (20.0, 240.0)}, reps=1)
    doc = trace_frontiers(cells, runs, PHASES, targets={"median": [50.0, 70.0, 100.0, 150.0]})
    vals = [r["y"]["output"] for r in doc["iso"]]
    assert vals[0] == pytest.approx(240.0) and vals[2] == pytest.approx(100.0)
    assert 160.0 < vals[1] < 240.0 and vals[3] is None
    # one replicate: no t interval, the run's within-run interval is not there either: no bars
    assert doc["points"][0]["y"]["output"]["lo"] is None


def test_default_targets_span_the_overlap_of_the_frontiers():
    points = [{"config": c, "x": {"median": {"value": v}}, "y": {"output": {"value": 1.0}},
               "frontier": {"median": {"output": True}}} for c, v in [("a", 10), ("a", 40), ("b", 20), ("b", 60)]]
    assert frontier.default_targets(points, "median") == [20.0, 25.0, 30.0, 35.0, 40.0]


def test_one_valid_replicate_takes_its_within_run_interval():
    doc = metrics_doc("a", 2, "r1", tpot=20.0, tok_s=150.0)
    doc["phases"][0]["intervals"] = {
        "tpot_ms": {"p50": {"estimate": 20.0, "lo": 16.0, "hi": 25.0, "level": 0.95, "method": "block bootstrap", "n": 12}},
        "output_tok_s": {"estimate": 150.0, "lo": 140.0, "hi": 160.0, "level": 0.95, "method": "block bootstrap", "n": 12}}
    out = trace_frontiers([combine_replicates([doc])], [doc], PHASES)
    p = out["points"][0]
    assert (p["x"]["median"]["lo"], p["x"]["median"]["hi"]) == (pytest.approx(40.0), pytest.approx(62.5))
    assert p["x"]["median"]["method"] == "block bootstrap"
    assert (p["y"]["output"]["lo"], p["y"]["output"]["hi"]) == (140.0, 160.0)
