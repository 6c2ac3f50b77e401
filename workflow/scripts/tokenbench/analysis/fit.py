"""Saturation fit across a users sweep: Michaelis-Menten, throughput(u) = Vmax * u / (K + u).

Seed 002 fits this to three points and quotes R^2 > 0.999 without uncertainty. Two parameters on
n points leave n - 2 degrees of freedom; we report them, the standard errors and 95 % intervals
(Student t with n - 2 dof), and refuse to report uncertainty we cannot estimate. Only points whose
phase passed its validity checks are fitted; the others are listed with their reasons. A parameter
is *not estimable* when there is no residual degree of freedom, its covariance is not finite, or
its 95 % interval is wider than the estimate itself (the points do not pin it down: a sweep that
never bends gives Vmax in the billions with an interval of +-10^18). Its least-squares value is
kept in the JSON, but pages show "not estimable", and the curve is drawn only over the measured
range, where it interpolates whatever the parameters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import optimize, stats


def michaelis_menten(u, vmax, k):
    u = np.asarray(u, dtype=float)
    return vmax * u / (k + u)


PARAMETERS = ("vmax", "k")


def fit_saturation(users, throughput, invalid: list[str | None] | None = None) -> dict[str, Any]:
    """Fit the points; ``invalid[i]`` is the reason point i failed its validity checks (None: valid)."""
    x = np.asarray(users, dtype=float)
    y = np.asarray(throughput, dtype=float)
    reasons = list(invalid) if invalid is not None else [None] * x.size
    excluded = [{"users": float(u), "output_tok_s": float(t) if np.isfinite(t) else None, "reason": r}
                for u, t, r in zip(x, y, reasons) if r is not None]
    keep = np.isfinite(x) & np.isfinite(y) & np.array([r is None for r in reasons], dtype=bool)
    x, y = x[keep], y[keep]
    n = int(x.size)
    out: dict[str, Any] = {
        "model": "michaelis_menten", "formula": "throughput(u) = Vmax * u / (K + u)",
        "points": n, "dof": n - 2, "x": x.tolist(), "y": y.tolist(), "excluded": excluded,
        "vmax": None, "k": None, "vmax_se": None, "k_se": None,
        "vmax_ci95": None, "k_ci95": None, "vmax_estimable": False, "k_estimable": False,
        "r2": None, "notes": [f"{len(excluded)} point(s) failed validity checks and are not fitted"] if excluded else [],
    }
    if n < 2 or np.unique(x).size < 2:
        out["notes"].append(f"{n} distinct load level(s): a two-parameter fit needs at least 2; not fitted")
        return out
    p0 = (float(y.max()) * 2, float(np.median(x)))
    try:
        popt, pcov = optimize.curve_fit(michaelis_menten, x, y, p0=p0, bounds=([0, 0], [np.inf, np.inf]),
                                        maxfev=20000)
    except (RuntimeError, optimize.OptimizeWarning, ValueError) as exc:
        out["notes"].append(f"fit did not converge: {exc}")
        return out
    vmax, k = (float(v) for v in popt)
    pred = michaelis_menten(x, vmax, k)
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    out.update(vmax=vmax, k=k, residuals=(y - pred).tolist(),
               r2=1 - ss_res / ss_tot if ss_tot > 0 else None)
    dof = n - 2
    if dof < 1:
        out["notes"].append("2 points, 2 parameters: the curve passes through both points exactly; "
                            "no uncertainty and no R^2 can be estimated")
        out["r2"] = None
    else:
        se = np.sqrt(np.diag(pcov))
        if np.all(np.isfinite(se)):
            t = float(stats.t.ppf(0.975, dof))
            out.update(vmax_se=float(se[0]), k_se=float(se[1]))
            for name, est, s_e in zip(PARAMETERS, (vmax, k), se):
                lo, hi = est - t * s_e, est + t * s_e
                if hi - lo > abs(est):
                    out["notes"].append(f"{'Vmax' if name == 'vmax' else 'K'} not estimable: its 95 % interval is "
                                        f"wider than the estimate itself ({n} points do not pin it down)")
                else:
                    out.update({f"{name}_ci95": [lo, hi], f"{name}_estimable": True})
        else:
            out["notes"].append("covariance not estimable: parameters are not identified by these points")
        if dof == 1:
            out["notes"].append(f"{n} points, 2 parameters: 1 degree of freedom. R^2 on one residual "
                                "degree of freedom says little; treat Vmax and K as rough")
    if k > x.max():
        out["notes"].append(f"K = {k:.3g} users lies beyond the largest tested load ({x.max():g} users): "
                            "Vmax is an extrapolation, not an observed ceiling")
    if out["vmax_se"] is not None and out["vmax_se"] > 0.25 * vmax:
        out["notes"].append(f"Vmax's standard error is {100 * out['vmax_se'] / vmax:.0f} % of Vmax")
    return out


def curve(fit: dict[str, Any], n: int = 60) -> list[dict[str, float]]:
    """The fitted curve over the measured range only (0 to the largest fitted load): no extrapolation."""
    if fit.get("vmax") is None or not fit["x"]:
        return []
    grid = np.linspace(0, max(fit["x"]), n)
    return [{"users": float(u), "output_tok_s": float(v)} for u, v in zip(grid, michaelis_menten(grid, fit["vmax"], fit["k"]))]


def invalid_reason(load: str, doc: dict[str, Any], phase: dict[str, Any]) -> str | None:
    """Why a sweep point must not be fitted (its phase's failed checks, an incomplete run, a server
    that died), or None when it is valid."""
    reasons = list((phase.get("validity") or {}).get("failed_checks") or [])
    if not doc["complete"]:
        reasons.append("the run did not complete")
    if doc.get("server_exited_during_run"):
        reasons.append("the server died during the run")
    return f"{load}: " + "; ".join(reasons) if reasons else None
