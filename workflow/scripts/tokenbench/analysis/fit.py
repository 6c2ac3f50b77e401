"""Saturation fits across a users sweep, three candidate curves, compared by AICc.

Models (unweighted least squares, that is constant noise across loads, parameters bounded >= 0):

* ``michaelis_menten``: throughput(u) = Vmax * u / (K + u); what seed 002 fitted to three points,
  quoting R^2 > 0.999 without uncertainty.
* ``usl``: Gunther's Universal Scalability Law, X(N) = lambda * N / (1 + sigma * (N - 1) +
  kappa * N * (N - 1)): lambda the one-user throughput, sigma contention, kappa coherency. kappa > 0
  makes throughput peak at N* = sqrt((1 - sigma) / kappa) and then fall (N* is reported only when
  kappa is estimable, and flagged when it lies outside the tested loads); with kappa = 0 the USL is
  Michaelis-Menten again (Vmax = lambda / sigma, K = (1 - sigma) / sigma), so it nests it and can
  beat it only by fitting better than its extra parameter costs.
* ``knee``: linear rise then flat, throughput(u) = s * min(u, u_k); the plateau is s * u_k. It is
  fitted exactly: for a fixed breakpoint s is linear, and between two load levels the best
  breakpoint has a closed form, so every interval is searched.

Each model with p parameters on n valid points has n - p degrees of freedom. Standard errors come
from the Jacobian at the optimum (covariance s^2 (J'J)^-1, s^2 = RSS / (n - p)), 95 % intervals from
Student t with n - p dof. For the knee the model is not differentiable at the breakpoint and its
interval is the usual linearisation of segmented regression: approximate. We refuse to report
uncertainty we cannot estimate. A parameter is *not estimable* when there is no residual degree of
freedom (fewer than p + 1 points: a two-parameter curve needs 3), the covariance is singular (the
Jacobian, columns scaled to unit length, has a singular value below 1e-10 of the largest) or not
finite, the parameter sits on its bound 0, the knee's breakpoint sits at the edge of the measured
range (then neither s nor u_k is), or its 95 % interval is wider than the estimate itself (the
points do not pin it down: a sweep that never bends sends Vmax off towards infinity, with an
interval as wide as +-10^18 or a singular covariance). Its least-squares
value is kept in the JSON, but pages show "not estimable". Repeated runs at the same load are
welcome: they give pure-error degrees of freedom, and with them a lack-of-fit F test per model.

Models are ranked by AICc, not AIC: sweeps have a handful of points, where AIC under-penalises the
extra parameter (Burnham and Anderson 2002). For Gaussian least squares AIC = n ln(RSS / n) + 2k
and AICc = AIC + 2k(k + 1) / (n - k - 1), where k = p + 1 counts the residual variance too (as
Burnham and Anderson and R's AIC for nls do). AICc is undefined when n <= k + 1, i.e. n <= p + 2,
and on an exact fit (RSS = 0): such a model is *not comparable*. A best model is named only when at
least two models are comparable and the first leads the second by Delta AICc >= 2; otherwise there
is none ("models not distinguishable at these points"). Seed 002's three points compare nothing.

``fit_saturation`` returns every model under "models", the ranking under "best" and "delta_aic",
and keeps Michaelis-Menten's values (vmax, k, their SEs, intervals, estimable flags, r2) at the top
level for the pages. Predictions and curves are given only over the measured range [min users,
max users] of the valid points, where a curve interpolates whatever its parameters; the curve
carries a 95 % delta-method confidence band for the mean when all its parameters are estimable.
Nothing here extrapolates.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats


def michaelis_menten(u, vmax, k):
    u = np.asarray(u, dtype=float)
    return vmax * u / (k + u)


def usl(n, lam, sigma, kappa):
    n = np.asarray(n, dtype=float)
    return lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


def knee(u, slope, knee_users):
    return slope * np.minimum(np.asarray(u, dtype=float), knee_users)


def _mm_jac(u, vmax, k):
    return np.column_stack([u / (k + u), -vmax * u / (k + u) ** 2])


def _usl_jac(n, lam, sigma, kappa):
    d = 1 + sigma * (n - 1) + kappa * n * (n - 1)
    return np.column_stack([n / d, -lam * n * (n - 1) / d ** 2, -lam * n ** 2 * (n - 1) / d ** 2])


def _knee_jac(u, slope, knee_users):
    return np.column_stack([np.minimum(u, knee_users), slope * (u > knee_users)])


def _ls(f, jac, x, y, starts):
    """Bounded (>= 0) least squares from several starts; the lowest cost wins."""
    best = None
    for x0 in starts:
        x0 = np.maximum(np.asarray(x0, dtype=float), 1e-12)
        if not np.all(np.isfinite(x0)):
            continue
        try:
            r = optimize.least_squares(lambda t: f(x, *t) - y, x0, jac=lambda t: jac(x, *t), bounds=(0, np.inf),
                                       method="trf", x_scale="jac", max_nfev=20000)
        except (ValueError, FloatingPointError):
            continue
        if np.all(np.isfinite(r.x)) and (best is None or r.cost < best.cost):
            best = r
    if best is None:
        raise RuntimeError("least squares failed from every starting point")
    return best.x


def _solve_mm(x, y):
    ymax, xpos = float(y.max()), x[x > 0]
    return _ls(michaelis_menten, _mm_jac, x, y,
               [(2 * ymax, float(np.median(x))), (ymax, float(xpos.min()) if xpos.size else 1.0), (1.2 * ymax, float(x.max()))])


def _solve_usl(x, y):
    starts = []
    ok = (x > 0) & (y > 0)
    if ok.sum() >= 3:  # N / X = (1 + sigma (N - 1) + kappa N (N - 1)) / lambda is linear in 1/lambda, sigma/lambda, kappa/lambda
        n = x[ok]
        coef, _ = optimize.nnls(np.column_stack([np.ones_like(n), n - 1, n * (n - 1)]), n / y[ok])
        if coef[0] > 0:
            starts.append((1 / coef[0], coef[1] / coef[0], coef[2] / coef[0]))
    vmax, k = _solve_mm(x, y)
    sigma = 1 / (1 + k)
    starts += [(vmax * sigma, sigma, 1e-6), (float(y[np.argmin(x)] / max(x.min(), 1.0)), 0.05, 1e-3)]
    return _ls(usl, _usl_jac, x, y, starts)


def _solve_knee(x, y):
    """Exact: for each interval [a, b] between consecutive load levels, with m_i = min(x_i, u_k),
    RSS(u_k) = sum y^2 - (A + B u_k)^2 / (C + D u_k^2), A = sum_{x<=a} x y, B = sum_{x>a} y,
    C = sum_{x<=a} x^2, D = #{x > a}; its stationary point is u_k = B C / (A D)."""
    levels = np.unique(x)

    def rss_slope(uk):
        m = np.minimum(x, uk)
        mm = float(m @ m)
        s = float(m @ y) / mm if mm > 0 else 0.0
        s = max(s, 0.0)
        return float(((y - s * m) ** 2).sum()), s

    candidates = list(levels)
    for a, b in itertools.pairwise(levels):
        lo, hi = x <= a, x > a
        A, B, C, D = float(x[lo] @ y[lo]), float(y[hi].sum()), float(x[lo] @ x[lo]), float(hi.sum())
        if A > 0 and D > 0:
            u = B * C / (A * D)
            if a < u < b:
                candidates.append(u)
    scored = [(rss_slope(u)[0], u) for u in candidates]
    uk = min(scored)[1]
    return np.array([rss_slope(uk)[1], uk])


def _knee_edge(theta, x):
    uk = theta[1]
    if uk >= x.max() * (1 - 1e-9):
        return ("the breakpoint lies at the largest load: throughput never levels off inside the sweep, "
                "so u_k (and with it s) is not identified")
    if uk <= x.min() * (1 + 1e-9):
        return ("the breakpoint lies at the smallest load: throughput is already flat there, "
                "so only the plateau s * u_k is identified")
    return None


@dataclass(frozen=True)
class Model:
    name: str
    formula: str
    params: tuple[str, ...]
    labels: tuple[str, ...]
    f: Callable[..., Any]
    jac: Callable[..., Any]
    solve: Callable[..., Any]
    unidentified: Callable[..., str | None] = lambda theta, x: None


MODELS: dict[str, Model] = {m.name: m for m in (
    Model("michaelis_menten", "throughput(u) = Vmax * u / (K + u)", ("vmax", "k"), ("Vmax", "K"),
          michaelis_menten, _mm_jac, _solve_mm),
    Model("usl", "X(N) = lambda * N / (1 + sigma * (N - 1) + kappa * N * (N - 1))", ("lambda", "sigma", "kappa"),
          ("lambda", "sigma", "kappa"), usl, _usl_jac, _solve_usl),
    Model("knee", "throughput(u) = s * min(u, u_k)", ("slope", "knee_users"), ("s", "u_k"),
          knee, _knee_jac, _solve_knee, _knee_edge),
)}
PARAMETERS = MODELS["michaelis_menten"].params
CRITERION = "AICc"
DELTA_BEST = 2.0
_RANK_TOL = 1e-10


def information_criteria(rss: float, n: int, p: int) -> tuple[float | None, float | None]:
    """(AIC, AICc) for Gaussian least squares with p curve parameters; k = p + 1 counts the variance.
    None where undefined: an exact fit (RSS = 0), n <= p (AIC) or n <= k + 1 (AICc)."""
    k = p + 1
    if not (rss > 0 and math.isfinite(rss)) or n <= p:
        return None, None
    aic = n * math.log(rss / n) + 2 * k
    return aic, (aic + 2 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else None)


def _covariance(J: np.ndarray, s2: float) -> np.ndarray | None:
    """s^2 (J'J)^-1, or None when J is numerically rank-deficient (columns scaled to unit length)."""
    if not np.all(np.isfinite(J)):
        return None
    norms = np.sqrt((J ** 2).sum(axis=0))
    if np.any(norms == 0):
        return None
    _, sv, vt = np.linalg.svd(J / norms, full_matrices=False)
    if sv[-1] <= _RANK_TOL * sv[0]:
        return None
    inv = (vt.T / sv ** 2) @ vt
    cov = s2 * inv / np.outer(norms, norms)
    return cov if np.all(np.isfinite(cov)) else None


def _lack_of_fit(x, y, rss, p):
    levels, idx = np.unique(x, return_inverse=True)
    dof_pe, dof_lof = x.size - levels.size, levels.size - p
    if dof_pe < 1 or dof_lof < 1:
        return None
    means = np.bincount(idx, weights=y) / np.bincount(idx)
    ss_pe = float(((y - means[idx]) ** 2).sum())
    if ss_pe <= 0:
        return None
    f = max(rss - ss_pe, 0.0) / dof_lof / (ss_pe / dof_pe)
    return {"pure_error_dof": int(dof_pe), "lack_of_fit_dof": int(dof_lof), "f": float(f),
            "p_value": float(stats.f.sf(f, dof_lof, dof_pe))}


def fit_model(name: str, x, y) -> dict[str, Any]:
    """Fit one model (a key of MODELS) to valid points x, y (repeated x welcome)."""
    model = MODELS[name]
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n, p, distinct = int(x.size), len(model.params), int(np.unique(x).size)
    out: dict[str, Any] = {
        "name": name, "formula": model.formula, "parameters": list(model.params), "points": n, "dof": n - p,
        "fitted": False, "params": {q: {"value": None, "se": None, "ci95": None, "estimable": False} for q in model.params},
        "rss": None, "r2": None, "residuals": None, "aic": None, "aicc": None, "comparable": False,
        "covariance": None, "lack_of_fit": None, "derived": {}, "notes": [],
    }
    if distinct < p:
        out["notes"].append(f"{distinct} distinct load level(s): a {p}-parameter fit needs at least {p}; not fitted")
        return out
    try:
        with np.errstate(all="ignore"):
            theta = np.asarray(model.solve(x, y), dtype=float)
    except (RuntimeError, ValueError, np.linalg.LinAlgError) as exc:
        out["notes"].append(f"fit did not converge: {exc}")
        return out
    pred = model.f(x, *theta)
    resid = y - pred
    rss = float(resid @ resid)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    dof = n - p
    out.update(fitted=True, rss=rss, residuals=resid.tolist(),
               r2=1 - rss / ss_tot if ss_tot > 0 and dof >= 1 else None)
    for q, v in zip(model.params, theta):
        out["params"][q]["value"] = float(v)
    labels = dict(zip(model.params, model.labels))
    if dof < 1:
        out["notes"].append(f"{n} points, {p} parameters: the curve passes through {'both' if n == 2 else 'all'} points "
                            "exactly; no uncertainty and no R^2 can be estimated")
    else:
        edge = model.unidentified(theta, x)
        with np.errstate(all="ignore"):
            cov = None if edge else _covariance(model.jac(x, *theta), rss / dof)
        if edge:
            out["notes"].append(edge + "; not estimable")
        elif cov is None:
            out["notes"].append("covariance not estimable: parameters are not identified by these points")
        else:
            out["covariance"] = cov.tolist()
            t = float(stats.t.ppf(0.975, dof))
            for i, q in enumerate(model.params):
                est, se = float(theta[i]), float(math.sqrt(max(cov[i, i], 0.0)))
                out["params"][q]["se"] = se
                lo, hi = est - t * se, est + t * se
                if est == 0.0:
                    out["notes"].append(f"{labels[q]} not estimable: it sits on its bound 0 (the points give no "
                                        "evidence for this term)")
                elif hi - lo > abs(est):
                    out["notes"].append(f"{labels[q]} not estimable: its 95 % interval is wider than the estimate "
                                        f"itself ({n} points do not pin it down)")
                else:
                    out["params"][q].update(ci95=[lo, hi], estimable=True)
        if dof == 1:
            out["notes"].append(f"{n} points, {p} parameters: 1 degree of freedom. R^2 on one residual degree of "
                                f"freedom says little; treat {' and '.join(model.labels)} as rough")
    out["aic"], out["aicc"] = information_criteria(rss, n, p)
    out["comparable"] = out["aicc"] is not None
    if not out["comparable"]:
        out["notes"].append("not comparable: AICc needs more than p + 2 points and a non-zero RSS "
                            f"({n} points, {p} parameters{', exact fit' if rss <= 0 else ''})")
    lof = _lack_of_fit(x, y, rss, p)
    out["lack_of_fit"] = lof
    if lof and lof["p_value"] < 0.05:
        out["notes"].append(f"lack of fit: the curve misses the replicate means by more than their scatter "
                            f"(F = {lof['f']:.2f}, p = {lof['p_value']:.2g})")
    _derived(name, out, theta, x)
    return out


def _derived(name, out, theta, x):
    if name == "michaelis_menten":
        vmax, k = theta
        if k > x.max():
            out["notes"].append(f"K = {k:.3g} users lies beyond the largest tested load ({x.max():g} users): "
                                "Vmax is an extrapolation, not an observed ceiling")
        se = out["params"]["vmax"]["se"]
        if se is not None and vmax > 0 and se > 0.25 * vmax:
            out["notes"].append(f"Vmax's standard error is {100 * se / vmax:.0f} % of Vmax")
    elif name == "usl":
        _, sigma, kappa = theta
        if out["params"]["kappa"]["estimable"] and sigma < 1:  # a peak from an unpinned kappa means nothing
            peak = math.sqrt((1 - sigma) / kappa)
            inside = bool(x.min() <= peak <= x.max())
            out["derived"] = {"peak_users": float(peak), "peak_throughput": float(usl(peak, *theta)),
                              "peak_inside_measured_range": inside}
            if not inside:
                out["notes"].append(f"the USL peak N* = {peak:.3g} users lies outside the tested loads "
                                    f"({x.min():g}-{x.max():g}): an extrapolation, not an observed maximum")
    elif name == "knee":
        slope, uk = theta
        plateau: dict[str, Any] = {"value": float(slope * uk), "se": None, "ci95": None}
        if out["covariance"] is not None:
            g = np.array([uk, slope])
            se = float(math.sqrt(max(g @ np.asarray(out["covariance"]) @ g, 0.0)))
            t = float(stats.t.ppf(0.975, out["dof"]))
            plateau.update(se=se, ci95=[float(slope * uk - t * se), float(slope * uk + t * se)])
        out["derived"] = {"plateau": plateau}


def compare(models: dict[str, dict[str, Any]]) -> tuple[str | None, dict[str, float | None], list[str]]:
    """(best, Delta AICc per model (None: not comparable), notes): best only when >= 2 models are
    comparable and the first leads the second by Delta AICc >= 2."""
    scores = {name: m["aicc"] for name, m in models.items() if m["comparable"]}
    if not scores:
        return None, {name: None for name in models}, [
            ("models not comparable at these points: AICc needs more than p + 2 valid points for a "
             "p-parameter model, and a non-zero residual; no best model")]
    low = min(scores.values())
    delta = {name: (models[name]["aicc"] - low if name in scores else None) for name in models}
    if len(scores) == 1:
        (only,) = scores
        return None, delta, [f"models not distinguishable at these points: only {only} has enough points for AICc"]
    (first, a), (second, b) = sorted(scores.items(), key=lambda kv: kv[1])[:2]
    if b - a >= DELTA_BEST:
        return first, delta, [f"{first} fits best by AICc, {b - a:.1f} ahead of {second}"]
    return None, delta, [(f"models not distinguishable at these points: Delta AICc {b - a:.1f} < {DELTA_BEST:g} "
                          f"between {first} and {second}")]


def fit_saturation(users, throughput, invalid: list[str | None] | None = None) -> dict[str, Any]:
    """Fit every model to the valid points; ``invalid[i]`` is the reason point i failed its validity
    checks (None: valid). Michaelis-Menten's keys stay at the top level for existing readers."""
    x = np.asarray(users, dtype=float)
    y = np.asarray(throughput, dtype=float)
    reasons = list(invalid) if invalid is not None else [None] * x.size
    excluded = [{"users": float(u), "output_tok_s": float(t) if np.isfinite(t) else None, "reason": r}
                for u, t, r in zip(x, y, reasons) if r is not None]
    keep = np.isfinite(x) & np.isfinite(y) & np.array([r is None for r in reasons], dtype=bool)
    x, y = x[keep], y[keep]
    n = int(x.size)
    models = {name: fit_model(name, x, y) for name in MODELS}
    best, delta, comparison_notes = compare(models)
    mm = models["michaelis_menten"]
    out: dict[str, Any] = {
        "model": "michaelis_menten", "formula": mm["formula"],
        "points": n, "dof": n - 2, "x": x.tolist(), "y": y.tolist(), "excluded": excluded,
        "r2": mm["r2"],
        "notes": ([f"{len(excluded)} point(s) failed validity checks and are not fitted"] if excluded else [])
        + [note for note in mm["notes"] if not note.startswith("not comparable")] + comparison_notes,
        "models": models, "criterion": CRITERION, "best": best, "delta_aic": delta,
    }
    for q in PARAMETERS:
        par = mm["params"][q]
        out.update({q: par["value"], f"{q}_se": par["se"], f"{q}_ci95": par["ci95"], f"{q}_estimable": par["estimable"]})
    if mm["fitted"]:
        out["residuals"] = mm["residuals"]
    return out


def _entry(fit: dict[str, Any], model: str) -> tuple[Model, np.ndarray | None, dict[str, Any] | None]:
    spec = MODELS[model]
    m = (fit.get("models") or {}).get(model)
    if m is None and model == "michaelis_menten" and fit.get("vmax") is not None:  # a fit written before "models"
        return spec, np.array([fit["vmax"], fit["k"]]), None
    if not m or not m["fitted"]:
        return spec, None, None
    return spec, np.array([m["params"][q]["value"] for q in spec.params]), m


def predict(fit: dict[str, Any], model: str, users):
    """The fitted ``model``'s throughput at ``users`` (a number or a sequence): None for a load
    outside the measured range [min, max] of the valid points, or when the model was not fitted."""
    spec, theta, _ = _entry(fit, model)
    scalar = np.ndim(users) == 0
    u = np.atleast_1d(np.asarray(users, dtype=float))
    out: list[float | None] = [None] * u.size
    if theta is not None and fit["x"]:
        lo, hi = min(fit["x"]), max(fit["x"])
        with np.errstate(all="ignore"):
            vals = spec.f(u, *theta)
        out = [float(v) if lo <= ui <= hi and np.isfinite(v) else None for ui, v in zip(u, vals)]
    return out[0] if scalar else out


def curve(fit: dict[str, Any], model: str = "michaelis_menten", n: int = 60) -> list[dict[str, float]]:
    """The fitted curve over the measured range only (smallest to largest valid load): no
    extrapolation. Points carry ``lo``/``hi``, a 95 % delta-method confidence band for the mean
    (t with n - p dof), when every parameter of the model is estimable."""
    spec, theta, m = _entry(fit, model)
    if theta is None or not fit["x"]:
        return []
    grid = np.linspace(min(fit["x"]), max(fit["x"]), n)
    if model == "knee" and grid[0] < theta[1] < grid[-1]:
        grid = np.sort(np.append(grid, theta[1]))  # draw the corner where it is
    with np.errstate(all="ignore"):
        vals = spec.f(grid, *theta)
    band = m is not None and m["covariance"] is not None and all(p["estimable"] for p in m["params"].values())
    if band:
        cov = np.asarray(m["covariance"])
        with np.errstate(all="ignore"):
            g = spec.jac(grid, *theta)
        half = float(stats.t.ppf(0.975, m["dof"])) * np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", g, cov, g), 0.0))
    pts = []
    for i, (u, v) in enumerate(zip(grid, vals)):
        if not np.isfinite(v):
            continue
        p = {"users": float(u), "output_tok_s": float(v)}
        if band and np.isfinite(half[i]):
            p.update(lo=float(v - half[i]), hi=float(v + half[i]))
        pts.append(p)
    return pts


def invalid_reason(load: str, doc: dict[str, Any], phase: dict[str, Any]) -> str | None:
    """Why a sweep point must not be fitted (its phase's failed checks, an incomplete run, a server
    that died), or None when it is valid."""
    reasons = list((phase.get("validity") or {}).get("failed_checks") or [])
    if not doc["complete"]:
        reasons.append("the run did not complete")
    if doc.get("server_exited_during_run"):
        reasons.append("the server died during the run")
    return f"{load}: " + "; ".join(reasons) if reasons else None
