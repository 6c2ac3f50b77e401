from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tokenbench.analysis.fit import curve, fit_saturation, michaelis_menten

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
    # one degree of freedom: the 95 % interval uses Student t(1) = 12.71, not 1.96
    half = (fit["vmax_ci95"][1] - fit["vmax_ci95"][0]) / 2
    assert half == pytest.approx(12.706 * fit["vmax_se"], rel=1e-3)
    assert any("1 degree of freedom" in n for n in fit["notes"])
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
    assert fit["vmax"] is None and curve(fit, 10) == []
