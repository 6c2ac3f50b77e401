"""Scaling between consecutive load levels of a users sweep (seed 002 §1's "scaling efficiency").

Per step from level u1 to u2 (valid points only; a level's throughput is the mean of its valid
replicates): the throughput gain in %, the tok/s gained per user added, (T2 - T1) / (u2 - u1), and
that marginal gain as a share of the first level's tok/s per user, T1 / u1 (100 %: every added
user brings as much as the first ones did; 0 %: the server is saturated). Seed 002 reports the
gain and a per-user figure without saying how it is computed; these are the formulas used here.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def scaling_steps(users, throughput, invalid: list[str | None] | None = None) -> list[dict[str, Any]]:
    x = np.asarray(users, dtype=float)
    y = np.asarray(throughput, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & np.array([r is None for r in (invalid or [None] * x.size)], dtype=bool)
    levels = sorted(set(x[ok].tolist()))
    means = {u: float(y[ok & (x == u)].mean()) for u in levels}
    steps = []
    for u1, u2 in zip(levels, levels[1:]):
        t1, t2 = means[u1], means[u2]
        per_user = (t2 - t1) / (u2 - u1)
        steps.append({"from_users": u1, "to_users": u2, "from_tok_s": t1, "to_tok_s": t2,
                      "gain_pct": 100 * (t2 - t1) / t1 if t1 else None,
                      "tok_s_per_added_user": per_user,
                      "marginal_efficiency": per_user / (means[levels[0]] / levels[0]) if means[levels[0]] else None})
    return steps
