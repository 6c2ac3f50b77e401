"""The Summary page's content: the best valid configuration per goal with its interval and its
margin over the others, key findings as sentences, the hypotheses."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from tokenbench.analysis.registry import METRICS, SUMMARY_COLUMNS, fmt
from tokenbench.report.results import (Results, cell_figure, col_format, col_header, col_label, mean_concurrency,
                                       measured, phases_of, weights_differ, weights_label)
from tokenbench.report.tables import Row, Table, interval_text, no_interval


@dataclass
class Goal:
    title: str
    winner: str | None = None  # the configuration
    figure: str = ""  # its figure with its interval
    where: str = ""  # the load level and phase, requests and runs behind it
    margin: str = ""  # against the runner-up, from the comparison at that level
    reason: str = ""  # why nothing qualifies


def candidates(res: Results) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(cell, phase) of every measured phase with at least one valid replicate."""
    return [(c, ph) for c in res.cells for ph in measured(c["phases"]) if ph.get("valid")]


def ratio_of(c: dict[str, Any], engine: str) -> dict[str, Any]:
    """A comparison's ratio interval as ``engine`` ÷ the other side (comparisons store a ÷ b)."""
    ratio = c.get("ratio") or {}
    if engine == c["a"] or not ratio.get("estimate"):
        return ratio
    inv = lambda v: 1 / v if v else None  # noqa: E731
    return {"estimate": inv(ratio["estimate"]), "lo": inv(ratio.get("hi")), "hi": inv(ratio.get("lo"))}


def _margin(res: Results, cell: dict[str, Any], phase: str, col: str) -> str:
    """The comparison of ``cell``'s configuration with the others at the same level and figure."""
    if not res.comparisons:
        return ""
    out = []
    for c in res.comparisons["comparisons"]:
        if (c["load"], c["phase"], c["metric"], c["model"]) != (cell["load"], phase, col, cell["model"]):
            continue
        if cell["engine"] not in (c["a"], c["b"]):
            continue
        other = c["b"] if c["a"] == cell["engine"] else c["a"]
        ratio = ratio_of(c, cell["engine"])
        outcome = ("resolved" if c.get("winner") == cell["engine"] else
                   f"{c['winner']} better" if c.get("winner") else "not resolvable at this sample size")
        out.append(f"{interval_text(ratio, 2)}× {other} ({outcome})")
    return "; ".join(out)


def _goal(res: Results, title: str, col: str, lower: bool, pool: list[tuple[dict, dict]], where_note: str = "") -> Goal:
    goal = Goal(title)
    scored = [(cell_figure(ph, col)["estimate"], c, ph) for c, ph in pool
              if (cell_figure(ph, col) or {}).get("estimate") is not None]
    if not scored:
        goal.reason = f"no valid phase has a {col_header(col)} figure"
        return goal
    value, c, ph = (min if lower else max)(scored, key=lambda t: t[0])
    reps = ph.get("valid_replicates") or []
    goal.winner = c["cell"]["engine"]
    if weights_differ(res.runs):  # which weights won matters when not all ran the same ones
        goal.winner += f" ({weights_label(res.runs, c['cell']['engine'], c['cell']['model']) or 'weights not recorded'})"
    iv = cell_figure(ph, col)
    digits, pct = col_format(col)
    unit = "" if pct else METRICS[SUMMARY_COLUMNS[col][0]].unit
    goal.figure = with_unit(iv, digits, unit, pct)
    goal.where = (f"{c['cell']['load']} · {ph['phase']} ({ph.get('label') or ''}){where_note}; "
                  f"{sum(p.get('requests_sent', 0) for p in phases_of(res, c['cell'], ph['phase'], reps)):,} requests over {len(reps)} "
                  f"run{'s' if len(reps) != 1 else ''}; interval: mean of the runs, Student t")
    goal.margin = _margin(res, c["cell"], ph["phase"], col)
    return goal


def with_unit(iv: dict[str, Any] | None, digits: int, unit: str, pct: bool = False) -> str:
    """'12.3 tok/s [11.0, 13.6]', or the estimate and why it has no interval."""
    if not iv or iv.get("estimate") is None:
        return "n/a"
    unit = f" {unit}" if unit else ""
    est = f"{fmt(iv['estimate'], digits, pct)}{unit}"
    if iv.get("lo") is None:
        return f"{est} ({no_interval(iv)})"
    return f"{est} [{fmt(iv['lo'], digits, pct)}, {fmt(iv['hi'], digits, pct)}]"


def slo_text(res: Results) -> str | None:
    slo = next((ph.get("slo") for d in res.docs for ph in measured(d["phases"]) if ph.get("slo")), None)
    return ", ".join(f"{k.removesuffix('_ms').upper()} ≤ {v:g} ms" for k, v in slo.items()) if slo else None


SLO_SHARE = 0.95  # a phase is "under the SLO" when 95 % of its requests met every bound


def verdict(res: Results) -> list[Goal]:
    pool = candidates(res)
    goals = [_goal(res, "Highest output throughput", "output_tok_s", False, pool)]
    slo = slo_text(res)
    title = "Lowest TTFT p95 under the SLO"
    if not slo:
        goals.append(Goal(title, reason="no SLO is configured (`slo:` in the config)"))
    else:
        ok = [(c, ph) for c, ph in pool if ((cell_figure(ph, "slo_attainment") or {}).get("estimate") or 0) >= SLO_SHARE]
        if not ok:
            goals.append(Goal(title, reason=f"no valid phase had {SLO_SHARE:.0%} of its requests within the SLO ({slo})"))
        else:
            # compare where it is hardest: the heaviest load level (most requests in flight) any configuration held
            heaviest = max(ok, key=lambda t: mean_concurrency(t[1]) or 0)
            level = (heaviest[0]["cell"]["load"], heaviest[1]["phase"])
            at = [(c, ph) for c, ph in ok if (c["cell"]["load"], ph["phase"]) == level]
            goals.append(_goal(res, title, "ttft_p95_ms", True, at,
                               f", the heaviest level at which {SLO_SHARE:.0%} of requests met {slo}"))
    for col, title, why in (("tok_per_j", "Most output tokens per joule", "no power sensor was readable on this host"),
                            ("usd_per_mtok", "Lowest cost per million output tokens",
                             "no hourly price is configured (`hardware.price_usd_per_hour`)")):
        has = [(c, ph) for c, ph in pool if (cell_figure(ph, col) or {}).get("estimate") is not None]
        goals.append(_goal(res, title, col, col == "usd_per_mtok", has) if has else Goal(title, reason=why))
    return goals


def findings(res: Results, limit: int = 6) -> list[str]:
    """Resolved comparisons as sentences, largest effects first, and what could not be resolved."""
    if not res.comparisons:
        return []
    rows = res.comparisons["comparisons"]
    won = [c for c in rows if c.get("winner") and (c.get("ratio") or {}).get("estimate")]
    won.sort(key=lambda c: -abs(math.log(c["ratio"]["estimate"])))
    out, seen = [], set()
    for c in won:
        if (c["metric"], c["load"]) in seen:
            continue
        seen.add((c["metric"], c["load"]))
        loser = c["b"] if c["winner"] == c["a"] else c["a"]
        ratio = ratio_of(c, c["winner"])
        test = "Welch across runs" if c.get("interval_source") == "replicates" else "Mann-Whitney within runs"
        p = c.get("welch_p_holm") if c.get("interval_source") == "replicates" else c.get("mann_whitney_p_holm")
        out.append(f"At **{c['load']} · {c['phase']}**, **{c['winner']}** has {interval_text(ratio, 2)}× the "
                   f"{col_label(c['metric'])} of {loser} ({test}, Holm-adjusted p {p_text(p)}).")
        if len(out) >= limit:
            break
    unresolved = sum(1 for c in rows if not c.get("winner") and not str(c.get("verdict", "")).startswith("excluded"))
    out.append(f"{sum(1 for c in rows if c.get('winner'))} of {len(rows)} comparisons name a winner; "
               f"{unresolved} are not resolvable at this sample size (see [Comparison](comparison.md)).")
    return out


def p_text(p: float | None) -> str:
    return "n/a" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def hypothesis_table(hypotheses: list[dict[str, Any]]) -> Table:
    rows = []
    for h in hypotheses:
        r = Row().text("hypothesis", h["name"]).text("statement", h.get("statement") or "")
        r.text("test", f"{h['a']} ÷ {h['b']}, {h['metric']}, {h['load']} · {h['phase']}: "
                       f"{'≥' if h['relation'] == 'at_least' else '≤'} {h['factor']:g}")
        r.interval("a ÷ b [CI]", "ratio", h.get("ratio"), 3, reason=True)
        r.text("result", Markup(f'<strong class="tb-status tb-{h["status"].replace(" ", "-")}">{html.escape(h["status"])}</strong>'),
               "status")
        r.text("why", h.get("reason") or "")
        rows.append(r)
    return Table("hypotheses", rows)


