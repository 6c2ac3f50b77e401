from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tokenbench.analysis.fit import curve, fit_saturation, invalid_reason, michaelis_menten

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
    pts = curve(fit)
    assert pts[0]["users"] == 0 and pts[-1]["users"] == 4


def test_invalid_reason_names_the_load_and_every_failure():
    ok = {"validity": {"valid": True, "failed_checks": []}}
    assert invalid_reason("users-1", {"complete": True}, ok) is None
    bad = {"validity": {"valid": False, "failed_checks": ["sent 4 requests < min_requests 20"]}}
    reason = invalid_reason("users-4", {"complete": False, "server_exited_during_run": True}, bad)
    assert reason.startswith("users-4: sent 4 requests") and "did not complete" in reason and "server died" in reason
