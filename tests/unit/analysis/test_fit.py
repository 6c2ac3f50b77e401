import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tokenbench.analysis.fit import (MODELS, compare, curve, fit_model, fit_saturation, information_criteria,
                                     invalid_reason, knee, michaelis_menten, predict, usl)

DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.mark.parametrize("engine", ["sglang", "lmdeploy"])
def test_reproduces_seed_002_fit_within_0_2_percent(engine):
    runs = pd.read_csv(DATA / "published_runs.csv")
    fits = pd.read_csv(DATA / "published_fits.csv").set_index("engine")
    pts = runs[(runs.source.str.startswith("002")) & (runs.engine == engine)].sort_values("users")
    fit = fit_saturation(pts.users, pts.output_tok_s)
    assert fit["points"] == 3 and fit["dof"] == 1
    assert fit["vmax"] == pytest.approx(fits.loc[engine, "vmax_tok_s"], rel=2e-3)
    # the exact OLS optimum for SGLang is K = 410.92, 0.21 % under the published 411.8
    assert fit["k"] == pytest.approx(fits.loc[engine, "k_users"], rel=3e-3)
    assert any("1 degree of freedom" in n for n in fit["notes"])
    if engine == "lmdeploy":
        # one degree of freedom: the 95 % interval uses Student t(1) = 12.71, not 1.96
        half = (fit["vmax_ci95"][1] - fit["vmax_ci95"][0]) / 2
        assert half == pytest.approx(12.706 * fit["vmax_se"], rel=1e-3) and fit["vmax_estimable"]
    else:  # SGLang's three points leave Vmax's interval ([-25k, 42k]) wider than Vmax itself
        assert fit["vmax_ci95"] is None and not fit["vmax_estimable"]
        assert any(n.startswith("Vmax not estimable") for n in fit["notes"])
    assert any("extrapolation" in n for n in fit["notes"])  # K (~400 users) > 100 tested


def test_sglang_vmax_se_is_about_a_third_of_vmax():
    runs = pd.read_csv(DATA / "published_runs.csv")
    pts = runs[(runs.source.str.startswith("002")) & (runs.engine == "sglang")]
    fit = fit_saturation(pts.users, pts.output_tok_s)
    assert 0.25 < fit["vmax_se"] / fit["vmax"] < 0.45


def test_recovers_known_parameters_from_many_points():
    u = np.array([1, 2, 4, 8, 16, 32, 64, 128])
    y = michaelis_menten(u, 1000, 20) * (1 + 0.01 * np.sin(u))
    fit = fit_saturation(u, y)
    assert fit["vmax"] == pytest.approx(1000, rel=0.03)
    assert fit["k"] == pytest.approx(20, rel=0.05)
    assert fit["dof"] == 6 and fit["r2"] > 0.99
    assert not any("extrapolation" in n for n in fit["notes"])


def test_two_points_fit_exactly_with_no_uncertainty():
    fit = fit_saturation([1, 4], [10, 30])
    assert fit["dof"] == 0 and fit["vmax_se"] is None and fit["r2"] is None
    assert michaelis_menten(4, fit["vmax"], fit["k"]) == pytest.approx(30, rel=1e-4)


def test_one_point_is_not_fitted():
    fit = fit_saturation([4], [30])
    assert fit["vmax"] is None and curve(fit) == []


def test_a_sweep_that_never_bends_gives_no_vmax_and_no_absurd_interval():
    # throughput still rising linearly at the largest load: Vmax and K are not identified
    fit = fit_saturation([1, 4, 16], [10.0, 40.5, 159.0])
    assert fit["vmax"] > 10 * 159  # the least-squares value runs away...
    assert fit["vmax_ci95"] is None and fit["k_ci95"] is None  # ...so no interval is reported
    assert not fit["vmax_estimable"] and not fit["k_estimable"]
    assert sum(n.endswith("do not pin it down)") for n in fit["notes"]) == 2


def test_invalid_points_are_excluded_and_listed():
    u, y = [1, 2, 4, 8, 16], list(michaelis_menten([1, 2, 4, 8, 16], 200, 3))
    y[3] = 5.0  # a contended run
    invalid = [None, None, None, "users-8: host CPU taken by another process", None]
    fit = fit_saturation(u, y, invalid)
    assert fit["points"] == 4 and fit["x"] == [1, 2, 4, 16]
    assert fit["excluded"] == [{"users": 8.0, "output_tok_s": 5.0, "reason": invalid[3]}]
    assert fit["vmax"] == pytest.approx(200, rel=1e-3) and fit["k"] == pytest.approx(3, rel=1e-3)
    assert fit_saturation(u, y)["vmax"] != pytest.approx(200, rel=0.05)  # with it, the fit is off


def test_curve_stays_inside_the_fitted_range():
    fit = fit_saturation([1, 2, 4, 8], list(michaelis_menten([1, 2, 4, 8], 100, 2)), [None, None, None, "x"])
    for model in MODELS:
        pts = curve(fit, model)
        assert pts[0]["users"] == 1 and pts[-1]["users"] == 4  # smallest to largest valid load, nothing beyond


def test_invalid_reason_names_the_load_and_every_failure():
    ok = {"validity": {"valid": True, "failed_checks": []}}
    assert invalid_reason("users-1", {"complete": True}, ok) is None
    bad = {"validity": {"valid": False, "failed_checks": ["sent 4 requests < min_requests 20"]}}
    reason = invalid_reason("users-4", {"complete": False, "server_exited_during_run": True}, bad)
    assert reason.startswith("users-4: sent 4 requests") and "did not complete" in reason and "server died" in reason


def _seed_002(engine):
    runs = pd.read_csv(DATA / "published_runs.csv")
    pts = runs[(runs.source.str.startswith("002")) & (runs.engine == engine)].sort_values("users")
    return fit_saturation(pts.users, pts.output_tok_s)


def _covers(model_fit, truth):
    """Every parameter estimable and its 95 % interval holding the true value."""
    for name, value in truth.items():
        par = model_fit["params"][name]
        assert par["estimable"], (name, par)
        assert par["ci95"][0] <= value <= par["ci95"][1], (name, par)


def _no_absurd_intervals(fit):
    json.dumps(fit, allow_nan=False)  # what records.write_json demands
    for m in fit["models"].values():
        for par in m["params"].values():
            if par["ci95"] is not None:
                assert par["estimable"] and par["ci95"][1] - par["ci95"][0] <= abs(par["value"])
            else:
                assert not par["estimable"]


@pytest.mark.parametrize("engine", ["sglang", "lmdeploy"])
def test_seed_002_three_points_compare_no_models(engine):
    fit = _seed_002(engine)
    _no_absurd_intervals(fit)
    mm = fit["models"]["michaelis_menten"]
    assert fit["vmax"] == mm["params"]["vmax"]["value"] and fit["vmax_ci95"] == mm["params"]["vmax"]["ci95"]
    assert fit["models"]["usl"]["dof"] == 0 and not any(p["estimable"] for p in fit["models"]["usl"]["params"].values())
    assert fit["models"]["knee"]["dof"] == 1
    # AICc needs n > p + 2: three points score no model, so none is named best
    assert fit["best"] is None and fit["delta_aic"] == {"michaelis_menten": None, "usl": None, "knee": None}
    assert not any(m["comparable"] for m in fit["models"].values())
    assert any(n.startswith("models not comparable") for n in fit["notes"])


def test_usl_data_usl_wins_by_aicc_and_recovers_its_parameters():
    # additive noise (the fits assume constant noise), sd 5 tok/s against a peak of 740; one fixed draw,
    # test_intervals_cover_the_truth_about_95_percent_of_the_time checks the intervals over many
    rng = np.random.default_rng(7)
    n_users = np.arange(1, 65)
    y = usl(n_users, 100, 0.05, 0.002) + 5 * rng.standard_normal(n_users.size)
    fit = fit_saturation(n_users, y)
    _no_absurd_intervals(fit)
    assert fit["criterion"] == "AICc" and fit["best"] == "usl"
    assert fit["delta_aic"]["usl"] == 0 and min(fit["delta_aic"]["michaelis_menten"], fit["delta_aic"]["knee"]) >= 10
    u = fit["models"]["usl"]
    assert u["dof"] == 61 and u["r2"] > 0.99
    _covers(u, {"lambda": 100, "sigma": 0.05, "kappa": 0.002})
    assert u["derived"]["peak_users"] == pytest.approx((0.95 / 0.002) ** 0.5, rel=0.05)
    assert u["derived"]["peak_inside_measured_range"]
    assert any(n.startswith("usl fits best by AICc") for n in fit["notes"])


def test_intervals_cover_the_truth_about_95_percent_of_the_time():
    n_users, u = np.arange(1, 65), np.array([1, 2, 4, 8, 16, 32, 64, 128])
    hits, draws = {"lambda": 0, "sigma": 0, "kappa": 0, "vmax": 0, "k": 0}, 60
    for seed in range(draws):
        rng = np.random.default_rng(1000 + seed)
        fits = [(fit_model("usl", n_users, usl(n_users, 100, 0.05, 0.002) + 5 * rng.standard_normal(64)),
                 {"lambda": 100, "sigma": 0.05, "kappa": 0.002}),
                (fit_model("michaelis_menten", u, michaelis_menten(u, 1000, 20) + 5 * rng.standard_normal(8)),
                 {"vmax": 1000, "k": 20})]
        for m, truth in fits:
            for name, value in truth.items():
                ci = m["params"][name]["ci95"]
                hits[name] += ci is not None and ci[0] <= value <= ci[1]
    # t intervals from the linearised covariance: close to 95 %, a little under on 8 points
    assert all(0.85 <= h / draws for h in hits.values()), hits


def test_replicates_give_pure_error_and_a_lack_of_fit_test():
    rng = np.random.default_rng(11)
    levels = [1, 2, 4, 8, 16, 32, 48, 64]
    n_users = np.repeat(levels, 3)  # three runs per load level
    y = usl(n_users, 100, 0.05, 0.002) + 10 * rng.standard_normal(n_users.size)
    fit = fit_saturation(n_users, y)
    _no_absurd_intervals(fit)
    assert fit["points"] == 24 and fit["best"] == "usl"
    _covers(fit["models"]["usl"], {"lambda": 100, "sigma": 0.05, "kappa": 0.002})
    lof = fit["models"]["usl"]["lack_of_fit"]
    assert lof["pure_error_dof"] == 16 and lof["lack_of_fit_dof"] == 8 - 3 and lof["p_value"] > 0.05
    # Michaelis-Menten cannot turn down after the peak: the replicates show it misses
    assert fit["models"]["michaelis_menten"]["lack_of_fit"]["p_value"] < 1e-6
    assert any(n.startswith("lack of fit") for n in fit["notes"])


def test_mm_data_mm_recovers_its_parameters_and_is_not_beaten():
    rng = np.random.default_rng(3)
    u = np.array([1, 2, 4, 8, 16, 32, 64, 128])
    y = michaelis_menten(u, 1000, 20) + 5 * rng.standard_normal(u.size)
    fit = fit_saturation(u, y)
    _no_absurd_intervals(fit)
    _covers(fit["models"]["michaelis_menten"], {"vmax": 1000, "k": 20})
    assert fit["vmax_estimable"] and fit["vmax_ci95"][0] <= 1000 <= fit["vmax_ci95"][1]
    # the USL nests Michaelis-Menten (kappa = 0), so it fits as well and pays for its extra parameter
    assert fit["best"] == "michaelis_menten" and fit["delta_aic"]["usl"] >= 2


def test_knee_data_knee_recovers_the_breakpoint():
    rng = np.random.default_rng(5)
    u = np.repeat([1, 2, 4, 8, 12, 16, 24, 32, 48, 64], 2)
    y = knee(u, 50, 20) + 5 * rng.standard_normal(u.size)
    fit = fit_saturation(u, y)
    _no_absurd_intervals(fit)
    k = fit["models"]["knee"]
    assert fit["best"] == "knee"
    _covers(k, {"slope": 50, "knee_users": 20})
    assert k["params"]["knee_users"]["value"] == pytest.approx(20, rel=0.02)
    assert k["derived"]["plateau"]["ci95"][0] <= 1000 <= k["derived"]["plateau"]["ci95"][1]
    corner = k["params"]["knee_users"]["value"]
    assert any(p["users"] == corner for p in curve(fit, "knee"))  # the corner is drawn where it is


def test_a_linear_sweep_leaves_every_ceiling_not_estimable():
    u = np.array([1, 2, 4, 8, 16, 32])
    y = 10 * u * (1 + 0.01 * np.cos(u))
    fit = fit_saturation(u, y)
    _no_absurd_intervals(fit)
    assert not fit["vmax_estimable"] and fit["vmax_ci95"] is None
    k = fit["models"]["knee"]
    assert not k["params"]["knee_users"]["estimable"] and any("never levels off" in n for n in k["notes"])
    usl_fit = fit["models"]["usl"]
    assert usl_fit["params"]["lambda"]["estimable"]  # the slope is pinned down...
    assert not usl_fit["params"]["kappa"]["estimable"] and usl_fit["derived"] == {}  # ...the bend is not: no peak
    assert fit["best"] != "usl"


def test_two_points_estimate_nothing_and_compare_nothing():
    fit = fit_saturation([1, 4], [10, 30])
    _no_absurd_intervals(fit)
    assert fit["best"] is None
    assert not fit["models"]["usl"]["fitted"] and "needs at least 3" in fit["models"]["usl"]["notes"][0]
    for m in fit["models"].values():
        assert not any(p["estimable"] or p["se"] is not None for p in m["params"].values())
    assert all("lo" not in p for p in curve(fit))  # no band without intervals
    assert curve(fit, "usl") == [] and predict(fit, "usl", 2) is None


def test_information_criteria_are_gaussian_least_squares_aic_and_aicc():
    rss, n, p = 12.5, 10, 2
    k = p + 1  # the residual variance counts
    aic = n * np.log(rss / n) + 2 * k
    assert information_criteria(rss, n, p) == pytest.approx((aic, aic + 2 * k * (k + 1) / (n - k - 1)))
    assert information_criteria(rss, 4, 2)[1] is None  # n <= p + 2: AICc undefined
    assert information_criteria(rss, 5, 2)[1] is not None
    assert information_criteria(0.0, 10, 2) == (None, None)  # an exact fit has no likelihood to compare


def test_best_needs_two_comparable_models_and_a_lead_of_two():
    m = lambda aicc: {"comparable": aicc is not None, "aicc": aicc}  # noqa: E731
    best, delta, notes = compare({"a": m(10.0), "b": m(12.5), "c": m(None)})
    assert best == "a" and delta == {"a": 0.0, "b": 2.5, "c": None}
    best, delta, notes = compare({"a": m(10.0), "b": m(11.5), "c": m(30.0)})
    assert best is None and delta["c"] == 20 and notes[0].startswith("models not distinguishable at these points")
    best, _, notes = compare({"a": m(10.0), "b": m(None)})
    assert best is None and notes[0].startswith("models not distinguishable at these points")


def test_predict_only_inside_the_measured_range():
    u = np.array([2, 4, 8, 16, 32])
    fit = fit_saturation(u, michaelis_menten(u, 500, 10) * (1 + 0.01 * np.sin(u)))
    assert predict(fit, "michaelis_menten", 1) is None and predict(fit, "michaelis_menten", 33) is None
    vals = predict(fit, "usl", [1, 2, 10, 32, 64])
    assert vals[0] is None and vals[-1] is None
    assert vals[2] == pytest.approx(usl(10, *(fit["models"]["usl"]["params"][q]["value"] for q in ("lambda", "sigma", "kappa"))))
    assert predict(fit, "michaelis_menten", 10) == pytest.approx(michaelis_menten(10, fit["vmax"], fit["k"]))
    with pytest.raises(KeyError):
        predict(fit, "logistic", 10)


def test_curve_band_only_when_parameters_are_estimable():
    u = np.array([1, 2, 4, 8, 16, 32, 64, 128])
    fit = fit_saturation(u, michaelis_menten(u, 1000, 20) * (1 + 0.01 * np.sin(u)))
    pts = curve(fit, n=30)
    assert len(pts) == 30 and all(p["lo"] < p["output_tok_s"] < p["hi"] for p in pts)
    # the band is a few percent wide where the points are, not the parameters' whole uncertainty
    assert all(p["hi"] - p["lo"] < 0.1 * p["output_tok_s"] for p in pts)
    sglang = _seed_002("sglang")  # Vmax not estimable there: the curve is drawn, without a band
    assert curve(sglang) and all("lo" not in p for p in curve(sglang))
