"""Altair charts, saved as Vega-Lite JSON specs (the site embeds them with vega-embed).

Every chart function returns the chart and the full data behind it; ``save`` writes the spec
(``{stem}.vl.json``) and that data as ``{stem}.csv`` and ``{stem}.json`` beside it, for the page's
download links. A spec may hold less than its data: telemetry series are downsampled for display
by keeping, in each of a few hundred time buckets, the real samples with the bucket's lowest and
highest value (never an average), so a spike stays visible and the page stays light.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from tokenbench.analysis.fit import curve
from tokenbench.analysis.frontier import COMPANIONS, X_VARIANTS, Y_VARIANTS
from tokenbench.analysis.registry import ENGINE_STAT_NAMES, METRICS, SUMMARY_COLUMNS

alt.data_transformers.disable_max_rows()

SPEC_SUFFIX = ".vl.json"
MEASURED = "measured"
# phases in chronological colours: an ordered sequential scheme (its palest end left out)
PHASE_SCHEME = {"name": "viridis", "extent": [0.0, 0.85]}
# how each part of a phase is shaded on a timeline, strongest first
SEGMENT_OPACITY = {
    "measured window": 0.30,
    "measured window, users ramping up": 0.16,
    "warm-up window (not measured)": 0.12,
    "idle window": 0.20,
    "drain (not measured)": 0.05,
}

TIME_TITLE = "time since the first phase started (s)"
# telemetry column -> axis title; shown when the column has data. Per-sample series of a registered
# metric take its header; the rest exist only per sample (a phase reports their peak or mean).
TIMELINE_METRICS = [
    *((key, METRICS[key].header()) for key in ("gpu_util_pct", "power_w", "cpu_util_pct", "server_cpu_util_pct")),
    ("server_rss_mb", "server RSS (MiB)"),
    ("temp_c", "GPU temperature (°C)"),
    ("sm_clock_mhz", "SM clock (MHz)"),
]
PER_DEVICE = ("gpu_util_pct", "temp_c", "sm_clock_mhz")
# the request side of a timeline, drawn together in the top panel
THROUGHPUT_SERIES = ("output_tok_s", "output tok/s (1 s window)")
CONCURRENCY_SERIES = ("inflight", "requests in flight")


# ------------------------------------------------------------------------------------------------ saving

def data_paths(spec_path: str | Path) -> tuple[Path, Path]:
    """The CSV and JSON data files beside a spec: {stem}.csv, {stem}.json."""
    p = str(spec_path)
    if not p.endswith(SPEC_SUFFIX):
        raise ValueError(f"a chart spec is named *{SPEC_SUFFIX}: {p}")
    stem = p[: -len(SPEC_SUFFIX)]
    return Path(stem + ".csv"), Path(stem + ".json")


def save(chart: alt.TopLevelMixin, data: pd.DataFrame, path: str | Path) -> None:
    """The spec at ``path`` ({stem}.vl.json) and its full data as {stem}.csv and {stem}.json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(chart.to_dict(), indent=None, separators=(",", ":")))
    csv, js = data_paths(path)
    data.to_csv(csv, index=False)
    js.write_text(data.to_json(orient="records", double_precision=10))


def save_table(data: pd.DataFrame, csv_path: str | Path) -> None:
    """A table's data as {stem}.csv and {stem}.json (no chart)."""
    csv = Path(csv_path)
    if csv.suffix != ".csv":
        raise ValueError(f"a table's data is named *.csv: {csv}")
    csv.parent.mkdir(parents=True, exist_ok=True)
    data.to_csv(csv, index=False)
    csv.with_suffix(".json").write_text(data.to_json(orient="records", double_precision=10))


def _sig(values: pd.Series, digits: int = 4) -> pd.Series:
    """Rounded to ``digits`` significant digits, for the display copy inside a spec."""
    v = pd.to_numeric(values, errors="coerce").astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where((v != 0) & np.isfinite(v), np.floor(np.log10(np.abs(v))), 0)
    scale = 10.0 ** (digits - 1 - mag)
    return pd.Series(np.round(v * scale) / scale, index=values.index)


def downsample(t: np.ndarray, v: np.ndarray, buckets: int = 300) -> np.ndarray:
    """Indices of the samples to draw: in each of ``buckets`` equal time buckets, the first, the
    lowest and the highest real sample (in time order). All of them where there are few."""
    n = len(t)
    if n <= 3 * buckets:
        return np.arange(n)
    edges = np.linspace(t.min(), t.max(), buckets + 1)
    b = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, buckets - 1)
    frame = pd.DataFrame({"b": b, "v": v, "i": np.arange(n)})
    valid = frame.dropna(subset=["v"])
    keep = np.concatenate([frame.groupby("b")["i"].first().to_numpy(),
                           valid.loc[valid.groupby("b")["v"].idxmin(), "i"].to_numpy(),
                           valid.loc[valid.groupby("b")["v"].idxmax(), "i"].to_numpy(), [n - 1]])
    return np.unique(keep)


# ------------------------------------------------------------------------------------------------ time axis

def time_axis(marks: list[dict[str, Any]]) -> tuple[int, float]:
    """(t0 in ns, end in s): t = 0 at the first phase's start, the axis ends where the last phase drained.
    Every panel of a run's timeline and engine chart uses this domain."""
    t0 = int(marks[0]["start_ns"])
    return t0, (int(marks[-1]["drained_ns"]) - t0) / 1e9


def phase_segments(marks: list[dict[str, Any]]) -> pd.DataFrame:
    """Each phase split into its parts on the time axis: the issuing window (measured, warm-up or
    idle), the users' ramp inside it (closed loop with ramp_s), and its drain."""
    t0, _ = time_axis(marks)
    s = lambda ns: (int(ns) - t0) / 1e9  # noqa: E731
    rows = []
    for i, m in enumerate(marks):
        base = {"phase": m["name"], "order": i, "label": m.get("label") or m["name"]}
        kind = ("idle window" if m["mode"] == "idle" else
                "warm-up window (not measured)" if m["warmup"] else "measured window")
        start, end = s(m["start_ns"]), s(m["end_ns"])
        ramp = float((m.get("target") or {}).get("ramp_s") or 0.0) if kind == "measured window" else 0.0
        if ramp > 0:  # the users' staggered start: inside the measured window, shaded apart
            rows.append({**base, "part": "measured window, users ramping up", "start_s": start,
                         "end_s": min(start + ramp, end)})
            start = min(start + ramp, end)
        rows.append({**base, "part": kind, "start_s": start, "end_s": end})
        if m["drained_ns"] > m["end_ns"]:
            rows.append({**base, "part": "drain (not measured)", "start_s": s(m["end_ns"]), "end_s": s(m["drained_ns"])})
    return pd.DataFrame(rows)


def _phase_layers(segments: pd.DataFrame, scale: alt.Scale, legend: bool, x_title: str | None = None) -> list[alt.Chart]:
    """A panel's phase shading (colour: phase, in order; opacity: which part of it) and the measured
    windows' edges, on the run's time axis ``scale``."""
    x = alt.X("start_s:Q", title=x_title, scale=scale)
    names = list(dict.fromkeys(segments.sort_values("order")["phase"]))
    parts = [p for p in SEGMENT_OPACITY if p in set(segments["part"])]
    rect = alt.Chart(segments).mark_rect().encode(
        x=x, x2="end_s:Q",
        color=alt.Color("phase:N", title="phase (in order)", sort=names,
                        scale=alt.Scale(domain=names, scheme=PHASE_SCHEME),
                        legend=alt.Legend(orient="top", labelLimit=300) if legend else None),
        opacity=alt.Opacity("part:N", title="part of the phase", sort=parts,
                            scale=alt.Scale(domain=parts, range=[SEGMENT_OPACITY[p] for p in parts]),
                            legend=alt.Legend(orient="top", labelLimit=300, columns=3) if legend else None),
        tooltip=["phase:N", "label:N", "part:N", alt.Tooltip("start_s:Q", format=".2f"),
                 alt.Tooltip("end_s:Q", format=".2f")],
    )
    measured = segments[segments["part"].str.startswith("measured window")].groupby("phase")
    edges = pd.DataFrame({"t_s": np.concatenate([measured["start_s"].min(), measured["end_s"].max()])})
    rule = alt.Chart(edges).mark_rule(strokeDash=[4, 3], color="#333", opacity=0.6).encode(
        x=alt.X("t_s:Q", scale=scale, title=x_title))
    return [rect, rule] if len(edges) else [rect]


# ------------------------------------------------------------------------------------------------ per run

def plot_timeline(tl: pd.DataFrame, marks: list[dict[str, Any]], title: str,
                  buckets: int = 300) -> tuple[alt.VConcatChart, pd.DataFrame]:
    """A run's telemetry on one time axis (t = 0 at the first phase's start, to the last drain):
    output tok/s with requests in flight overlaid, then each measured telemetry column, every panel
    shaded by phase (measured window, ramp, warm-up, drain). The data: every sample."""
    df = tl.copy()
    if "server_rss_bytes" in df:
        df["server_rss_mb"] = df["server_rss_bytes"] / 2**20
    t0, t_end = time_axis(marks)
    df["t_s"] = (df["t_ns"] - t0) / 1e9
    scale = alt.Scale(domain=[0, t_end], nice=False, zero=False)
    segments = phase_segments(marks)
    cpu = df[df["device"] == "cpu"]
    per_device = df[df["device"] != "cpu"]

    series, panels = [], []  # display copies of each (column, device) series; the chart's panels
    for col, label in [THROUGHPUT_SERIES, CONCURRENCY_SERIES, *TIMELINE_METRICS]:
        src = per_device if col in PER_DEVICE or (col == "power_w" and len(per_device)) else cpu
        src = src[(src["t_s"] >= 0) & (src["t_s"] <= t_end)]
        if col not in src or not src[col].notna().any():
            continue
        for dev, d in src.dropna(subset=[col]).groupby("device", sort=True):
            d = d.sort_values("t_s")
            idx = downsample(d["t_s"].to_numpy(), d[col].to_numpy(dtype=float), buckets)
            series.append(pd.DataFrame({"t": d["t_s"].to_numpy()[idx].round(3), "v": _sig(d[col].iloc[idx]).to_numpy(),
                                        "s": col, "device": dev}))
    if not series:
        raise ValueError("no telemetry columns with data to plot")
    shown_long = pd.concat(series, ignore_index=True)
    present = set(shown_long["s"])
    line = alt.Chart(shown_long).mark_line(strokeWidth=1.2, interpolate="step-after")

    top = THROUGHPUT_SERIES if THROUGHPUT_SERIES[0] in present else CONCURRENCY_SERIES
    rows = [top] * (top[0] in present) + [(c, lbl) for c, lbl in TIMELINE_METRICS if c in present]
    for i, (col, label) in enumerate(rows):
        last = i == len(rows) - 1  # the time axis is titled once, under the last panel
        layer = line.transform_filter(alt.datum.s == col).encode(
            x=alt.X("t:Q", scale=scale, title=TIME_TITLE if last else None),
            y=alt.Y("v:Q", title=label), detail="device:N",
            tooltip=[alt.Tooltip("t:Q", title="t (s)", format=".2f"), "device:N",
                     alt.Tooltip("v:Q", title=label, format=".4~g")])
        layers = [*_phase_layers(segments, scale, i == 0, TIME_TITLE if last else None), layer]
        if col == THROUGHPUT_SERIES[0] and CONCURRENCY_SERIES[0] in present:  # concurrency overlaid
            layers.append(line.transform_filter(alt.datum.s == CONCURRENCY_SERIES[0]).mark_line(
                strokeWidth=1.4, interpolate="step-after", color="#d62728", strokeDash=[2, 2]).encode(
                x=alt.X("t:Q", scale=scale, title=TIME_TITLE if last else None),
                y=alt.Y("v:Q", title="requests in flight (dotted red)",
                                                    axis=alt.Axis(orient="right", titleColor="#d62728")),
                tooltip=[alt.Tooltip("t:Q", title="t (s)", format=".2f"),
                         alt.Tooltip("v:Q", title="requests in flight")]))
            panels.append(alt.layer(*layers).resolve_scale(y="independent").properties(width=680, height=120))
        else:
            panels.append(alt.layer(*layers).properties(width=680, height=90))
    # one colour scale for every panel; the legend drawn once (independent legends, so the panels
    # without one do not conflict with it)
    chart = alt.vconcat(*panels).properties(title=title).resolve_scale(x="shared", color="shared",
                                                                       opacity="shared").resolve_legend(
        color="independent", opacity="independent")
    cols = ["t_ns", "t_s", "device", "phase", *[c for c in [THROUGHPUT_SERIES[0], CONCURRENCY_SERIES[0],
                                                             *(k for k, _ in TIMELINE_METRICS)] if c in df]]
    return chart, df[cols].sort_values(["device", "t_ns"]).reset_index(drop=True)


def engine_series(em: pd.DataFrame, t0: int) -> pd.DataFrame:
    """The engine's /metrics samples as series over time: counters as per-second rates between
    consecutive scrapes (a drop, a restart, gives no rate), gauges as their values. Series that
    never move from 0 are left out."""
    if em is None or not len(em):
        return pd.DataFrame(columns=["t_s", "series", "kind", "value"])
    rows = []
    for (metric, labels, kind), g in em.groupby(["metric", "labels", "type"], sort=True):
        g = g.sort_values("t_ns")
        t = g["t_ns"].to_numpy(dtype=np.int64)
        v = g["value"].to_numpy(dtype=float)
        name = metric if labels in ("{}", "", None) else f"{metric}{labels}"
        if kind == "counter":
            dt, dv = np.diff(t) / 1e9, np.diff(v)
            ok = (dt > 0) & (dv >= 0)
            t, v, what = t[1:][ok], dv[ok] / dt[ok], "rate (/s)"
        else:
            what = "value"
        if not len(v) or not np.any(v != 0):
            continue
        rows.append(pd.DataFrame({"t_s": (t - t0) / 1e9, "series": name, "kind": what, "value": v}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["t_s", "series", "kind", "value"])


def plot_engine_metrics(em: pd.DataFrame, marks: list[dict[str, Any]], title: str) -> tuple[alt.TopLevelMixin, pd.DataFrame]:
    """The engine's own /metrics over the run, one panel per series, on the timeline's time axis."""
    t0, t_end = time_axis(marks)
    data = engine_series(em, t0)
    shown = data[(data["t_s"] >= 0) & (data["t_s"] <= t_end)]
    if not len(shown):
        note = pd.DataFrame({"text": ["no engine /metrics series that moved during the run (none scraped, or all 0)"]})
        return alt.Chart(note).mark_text(align="left").encode(text="text:N").properties(
            width=680, height=40, title=title), data
    scale = alt.Scale(domain=[0, t_end], nice=False, zero=False)
    segments = phase_segments(marks)
    disp = shown.assign(t_s=shown["t_s"].round(3), value=_sig(shown["value"]))
    base = alt.Chart(disp).mark_line(point=alt.OverlayMarkDef(size=12), interpolate="linear")
    panels = []
    known = {n for fam in ENGINE_STAT_NAMES.values() for names in fam.values() for n in names}
    listed = disp[["series", "kind"]].drop_duplicates()
    listed = listed.assign(known=~listed["series"].isin(known)).sort_values(["known", "series"], kind="stable")
    for i, (name, kind) in enumerate(listed[["series", "kind"]].itertuples(index=False)):
        last = i == len(listed) - 1
        line = base.transform_filter(alt.datum.series == name).encode(
            x=alt.X("t_s:Q", scale=scale, title=TIME_TITLE if last else None),
            y=alt.Y("value:Q", title=kind),
            tooltip=[alt.Tooltip("t_s:Q", title="t (s)", format=".2f"), alt.Tooltip("value:Q", format=".4~g")])
        panels.append(alt.layer(*_phase_layers(segments, scale, not panels, TIME_TITLE if last else None), line).properties(
            width=680, height=60, title=alt.TitleParams(name, fontSize=11, anchor="start")))
    chart = alt.vconcat(*panels).properties(title=title).resolve_scale(
        x="shared", color="shared", opacity="shared").resolve_legend(color="independent", opacity="independent")
    return chart, data


# request timeline components, in the order a request lives them: (name, from column, to column)
BREAKDOWN = (
    ("scheduled-send lag", "scheduled_ns", "sent_ns"),
    ("first byte", "sent_ns", "first_byte_ns"),
    ("first token", "first_byte_ns", "first_token_ns"),
    ("decode", "first_token_ns", "end_ns"),
)

# what plot_latency_breakdown reads of requests.parquet
BREAKDOWN_COLUMNS = ["phase", "status", *dict.fromkeys(c for _, a, b in BREAKDOWN for c in (a, b))]


def latency_breakdown(req: pd.DataFrame, marks: list[dict[str, Any]]) -> pd.DataFrame:
    """Per measured phase (not warm-up, not idle), each component's p50 and p99 (ms) over its ok requests."""
    rows = []
    for m in marks:
        if m["warmup"] or m["mode"] == "idle":
            continue
        ok = req[(req["phase"] == m["name"]) & (req["status"] == "ok")]
        for i, (name, a, b) in enumerate(BREAKDOWN):
            ms = ((ok[b].astype("Float64") - ok[a].astype("Float64")) / 1e6).dropna().to_numpy(dtype=float)
            for stat, q in (("p50", 50), ("p99", 99)):
                rows.append({"phase": m["name"], "stat": stat, "component": name, "order": i,
                             "ms": float(np.percentile(ms, q)) if ms.size else None, "n": int(ms.size)})
    return pd.DataFrame(rows, columns=["phase", "stat", "component", "order", "ms", "n"])


def plot_latency_breakdown(req: pd.DataFrame, marks: list[dict[str, Any]], title: str) -> tuple[alt.TopLevelMixin, pd.DataFrame]:
    """Where a request's time goes, per measured phase: each component's p50 and its p99, side by side
    (the p99s are each component's own: their sum is not the p99 request)."""
    data = latency_breakdown(req, marks)
    shown = data.dropna(subset=["ms"]).assign(row=lambda d: d["phase"] + " · " + d["stat"])
    names = [n for n, _, _ in BREAKDOWN]
    chart = alt.Chart(shown).mark_bar().encode(
        y=alt.Y("row:N", title=None, sort=list(dict.fromkeys(shown["row"]))),
        x=alt.X("ms:Q", title="milliseconds (measured; each bar: the components' own percentiles)", stack="zero"),
        color=alt.Color("component:N", sort=names, scale=alt.Scale(domain=names, scheme="tableau10"),
                        title="component (request order)", legend=alt.Legend(orient="top")),
        order=alt.Order("order:Q"),
        tooltip=["phase:N", "stat:N", "component:N", alt.Tooltip("ms:Q", format=".2f"), "n:Q"],
    ).properties(width=600, height=alt.Step(22), title=alt.TitleParams(title, subtitle=(
        "scheduled → sent → first byte → first token → end, per ok request; a p99 stack is each part's "
        "own p99, not the slowest request's split")))
    return chart, data


# ------------------------------------------------------------------------------------------------ sweep

def frontier_rows(doc: dict[str, Any]) -> pd.DataFrame:
    """frontiers.json's points in long form: one row per (point, x variant, y variant) the point has,
    the interactivity pairs and the companion views' pairs."""
    pairs = [(xk, yk) for xk in X_VARIANTS for yk in Y_VARIANTS] + [(xk, yk) for xk, (_, yk) in COMPANIONS.items()]
    labels = {**{k: a.label for k, a in X_VARIANTS.items()}, **{k: a.label for k, (a, _) in COMPANIONS.items()}}
    rows = []
    for p in doc["points"]:
        for xk, yk in pairs:
            fx, fy = p["x"].get(xk), p["y"].get(yk)
            if not fx or not fy:
                continue
            rows.append({"config": p["config"], "engine": p["engine"], "model": p["model"], "load": p["load"],
                         "users": p["users"], "label": f"{p['users']}", "xv": xk, "yv": yk,
                         "x": fx["value"], "x_lo": fx["lo"], "x_hi": fx["hi"],
                         "y": fy["value"], "y_lo": fy["lo"], "y_hi": fy["hi"],
                         "valid": p["valid"], "frontier": bool(p["frontier"].get(xk, {}).get(yk)),
                         "reason": p["reason"] or p.get("note") or "", "replicates": p["replicates"],
                         "x_label": labels[xk], "y_label": Y_VARIANTS[yk].label, "y_basis": Y_VARIANTS[yk].basis})
    return pd.DataFrame(rows)


def _xy_view(data: pd.DataFrame, filt: str, x_title: str | dict, y_title: str, width: int, height: int,
             configs: list[str]) -> alt.LayerChart:
    """Points with CI bars on both axes (where the interval exists), the frontier as a line, each
    point labelled with its concurrency; invalid points hollow."""
    color = alt.Color("config:N", title="engine · model", scale=alt.Scale(domain=configs),
                      legend=alt.Legend(orient="top"))
    base = alt.Chart(data).transform_filter(filt)
    # latencies and rates are positive: a t interval's lower bound below 0 is clipped on screen (the data keep it)
    x = alt.X("x:Q", title=x_title, scale=alt.Scale(zero=False, domainMin=0))
    y = alt.Y("y:Q", title=y_title, scale=alt.Scale(zero=False, domainMin=0))
    tip = ["config:N", "load:N", alt.Tooltip("users:Q", title="users (concurrency)"), alt.Tooltip("x:Q", format=".4~g"),
           alt.Tooltip("x_lo:Q", format=".4~g"), alt.Tooltip("x_hi:Q", format=".4~g"), alt.Tooltip("y:Q", format=".4~g"),
           alt.Tooltip("y_lo:Q", format=".4~g"), alt.Tooltip("y_hi:Q", format=".4~g"), "valid:N", "frontier:N",
           "replicates:Q", "reason:N"]
    return alt.layer(
        base.transform_filter("datum.frontier").mark_line(strokeWidth=2).encode(x=x, y=y, color=color,
                                                                                 order="x:Q"),
        base.transform_filter("isValid(datum.x_lo) && isValid(datum.x_hi)").mark_rule(opacity=0.7, clip=True).encode(
            x="x_lo:Q", x2="x_hi:Q", y="y:Q", color=color),
        base.transform_filter("isValid(datum.y_lo) && isValid(datum.y_hi)").mark_rule(opacity=0.7, clip=True).encode(
            x="x:Q", y="y_lo:Q", y2="y_hi:Q", color=color),
        base.transform_filter("datum.valid").mark_point(filled=True, size=70, opacity=1).encode(
            x=x, y=y, color=color, shape=alt.value("circle"), tooltip=tip),
        base.transform_filter("!datum.valid").mark_point(filled=False, size=70, strokeWidth=1.5, opacity=1).encode(
            x=x, y=y, color=color, shape=alt.value("circle"), tooltip=tip),
        base.mark_text(dx=8, dy=-8, fontSize=10).encode(x=x, y=y, text="label:N", color=color),
    ).properties(width=width, height=height)


def plot_frontier(doc: dict[str, Any]) -> tuple[alt.VConcatChart, pd.DataFrame]:
    """Throughput against interactivity per configuration with its Pareto frontier (a median/p99
    toggle and a y selector, both Vega-Lite params), and the companion views: output tok/s against
    median E2E, input tok/s against p99 TTFT."""
    data = frontier_rows(doc)
    if not len(data):
        raise ValueError("no sweep point has both axes: nothing to plot")
    configs = sorted(data["config"].unique())
    inter = data[data["xv"].isin(list(X_VARIANTS))]
    ys = [k for k in Y_VARIANTS if k in set(inter["yv"])]
    x_param = alt.param(name="x_stat", value="median",
                        bind=alt.binding_radio(options=list(X_VARIANTS), name="interactivity from TPOT: "))
    shown = {k: Y_VARIANTS[k].label + ("" if Y_VARIANTS[k].basis == MEASURED else f", {Y_VARIANTS[k].basis}")
             for k in ys}
    y_param = alt.param(name="y_metric", value="output",
                        bind=alt.binding_select(options=ys, labels=[shown[k] for k in ys], name="y: "))
    ylabels = json.dumps(shown)
    xlabels = json.dumps({k: a.label for k, a in X_VARIANTS.items()})
    main = _xy_view(inter, "datum.xv == x_stat && datum.yv == y_metric", "interactivity (tok/s/user = 1000 / TPOT)",
                    "the y metric chosen below (see title)", 640, 360, configs).properties(
        title=alt.TitleParams(text=alt.expr(f"{ylabels}[y_metric] + ' vs ' + {xlabels}[x_stat]"),
                              subtitle="points measured; line: Pareto frontier of each configuration's valid points; "
                                       "bars: 95 % intervals; hollow: invalid (excluded); labels: users"))
    views = [main]
    for xk, (axis, yk) in COMPANIONS.items():
        sub = data[(data["xv"] == xk) & (data["yv"] == yk)]
        if len(sub):
            views.append(_xy_view(sub, "true", axis.label, Y_VARIANTS[yk].label, 300, 240, configs).properties(
                title=f"{Y_VARIANTS[yk].label} vs {axis.label}"))
    companions = alt.hconcat(*views[1:]) if len(views) > 2 else (views[1] if len(views) == 2 else None)
    chart = alt.vconcat(main, companions) if companions is not None else alt.vconcat(main)
    return chart.add_params(x_param, y_param).resolve_scale(color="shared"), data


def plot_iso_table(doc: dict[str, Any]) -> pd.DataFrame:
    """frontiers.json's iso-interactivity table, flat: one row per (x variant, target, configuration, y)."""
    rows = []
    for r in doc["iso"]:
        for yk, v in r["y"].items():
            pct = (r["pct_vs_baseline"] or {}).get(yk)
            rows.append({"x_variant": r["x_variant"], "target_tok_s_per_user": r["target"], "config": r["config"],
                         "engine": r["engine"], "model": r["model"], "y": yk, "y_label": Y_VARIANTS[yk].label,
                         "value": v, "pct_vs_baseline": pct, "baseline": doc["baseline"]})
    return pd.DataFrame(rows)


def doubling(levels) -> bool:
    """Whether sweep levels double each step (1, 2, 4, 8 ...): then a log2 axis spaces them evenly."""
    u = sorted({float(v) for v in levels if v is not None and v > 0})
    return len(u) >= 3 and all(math.isclose(b / a, 2.0) for a, b in itertools.pairwise(u))


def plot_throughput(doc: dict[str, Any], fits: list[dict[str, Any]]) -> tuple[alt.LayerChart, pd.DataFrame]:
    """Output tok/s against users: each load level's mean with its 95 % interval across replicates,
    invalid levels hollow, and each configuration's saturation fit (its best model by AICc, else
    Michaelis–Menten) with the fit's 95 % confidence band, over the measured range only."""
    pts = [{"config": p["config"], "load": p["load"], "users": p["users"], "output_tok_s": p["y"]["output"]["value"],
            "lo": p["y"]["output"]["lo"], "hi": p["y"]["output"]["hi"], "valid": p["valid"],
            "replicates": p["replicates"], "reason": p["reason"] or p.get("note") or "", "kind": "measured"}
           for p in doc["points"] if p["y"].get("output")]
    curves = []
    for f in fits:
        model = f["fit"].get("best") or "michaelis_menten"
        for c in curve(f["fit"], model):
            curves.append({"config": f"{f['engine']} · {f['model']}", "users": c["users"], "output_tok_s": c["output_tok_s"],
                           "lo": c.get("lo"), "hi": c.get("hi"), "kind": f"fit: {model}"})
    data = pd.DataFrame(pts + curves)
    if not len(data):
        raise ValueError("no sweep point to plot")
    configs = sorted(data["config"].unique())
    color = alt.Color("config:N", title="engine · model", scale=alt.Scale(domain=configs), legend=alt.Legend(orient="top"))
    log2 = doubling(data.loc[data["kind"] == "measured", "users"])
    x = alt.X("users:Q", title="concurrent users (closed loop)" + (", log2 scale" if log2 else ""),
              scale=alt.Scale(type="log", base=2) if log2 else alt.Scale(zero=False),
              axis=alt.Axis(values=sorted(set(data.loc[data["kind"] == "measured", "users"]))) if log2 else alt.Axis())
    y = alt.Y("output_tok_s:Q", title=f"{METRICS['output_tok_s'].header()}, measured")
    measured = alt.Chart(data).transform_filter("datum.kind == 'measured'")
    fit = alt.Chart(data).transform_filter("datum.kind != 'measured'")
    tip = ["config:N", "load:N", "users:Q", alt.Tooltip("output_tok_s:Q", format=".1f"), alt.Tooltip("lo:Q", format=".1f"),
           alt.Tooltip("hi:Q", format=".1f"), "replicates:Q", "valid:N", "reason:N"]
    layers = [
        fit.transform_filter("isValid(datum.lo) && isValid(datum.hi)").mark_area(opacity=0.18).encode(
            x=x, y="lo:Q", y2="hi:Q", color=color),
        fit.mark_line(strokeDash=[5, 3]).encode(x=x, y=y, color=color, detail="kind:N"),
        measured.transform_filter("isValid(datum.lo) && isValid(datum.hi)").mark_rule().encode(
            x=x, y="lo:Q", y2="hi:Q", color=color),
        measured.transform_filter("datum.valid").mark_point(filled=True, size=70, opacity=1).encode(
            x=x, y=y, color=color, tooltip=tip),
        measured.transform_filter("!datum.valid").mark_point(filled=False, size=70, strokeWidth=1.5, opacity=1).encode(
            x=x, y=y, color=color, tooltip=tip),
    ]
    return alt.layer(*layers).properties(width=600, height=320, title=alt.TitleParams(
        "Throughput vs users", subtitle="points: mean of valid replicates, bars 95 % t interval, hollow: invalid; "
                                        "dashed: saturation fit with its 95 % band, over the valid points' range")), data


LATENCY_COLUMNS = ("ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "tpot_p50_ms")


def plot_latency(summary: pd.DataFrame) -> tuple[alt.FacetChart, pd.DataFrame]:
    d = summary.dropna(subset=["users"]).melt(id_vars=["engine", "model", "load", "rep", "users", "valid"],
                                              value_vars=[c for c in LATENCY_COLUMNS if c in summary],
                                              var_name="stat", value_name="ms").dropna(subset=["ms"])
    d["metric"] = d["stat"].map(lambda col: METRICS[SUMMARY_COLUMNS[col][0]].label)
    d["percentile"] = d["stat"].map(lambda col: SUMMARY_COLUMNS[col][1])
    d["config"] = d["engine"] + " · " + d["model"]
    d["series"] = d["config"] + " · " + d["percentile"]
    d = d[d["valid"].fillna(False).astype(bool)]  # invalid replicates are on the run health page, not here
    chart = alt.Chart(d).mark_line(point=True).encode(
        x=alt.X("users:Q", title="concurrent users"),
        y=alt.Y("mean(ms):Q", title="milliseconds (measured; mean over replicates)"),
        color=alt.Color("config:N", title="engine · model", legend=alt.Legend(orient="top", labelLimit=400)),
        strokeDash=alt.StrokeDash("percentile:N", title="percentile", legend=alt.Legend(orient="top")),
        detail="series:N",
        tooltip=["engine", "model", "load", "users", "stat", alt.Tooltip("mean(ms):Q", format=".1f"),
                 alt.Tooltip("count(ms):Q", title="replicates")],
    ).properties(width=260, height=220).facet(column=alt.Column("metric:N", title=None)).resolve_scale(
        y="independent").properties(
        title="Latency percentiles vs users (valid replicates)",
        usermeta={"empty": "No replicate at any load passed the validity checks, and only valid replicates "
                           "are drawn here. The Run health page says why each failed."})
    return chart, d
