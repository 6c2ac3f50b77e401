"""Altair charts, saved as Vega-Lite JSON specs (the site embeds them with vega-embed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd

from tokenbench.analysis.fit import curve
from tokenbench.analysis.registry import METRICS, SUMMARY_COLUMNS

alt.data_transformers.disable_max_rows()

PHASE_COLORS = {"warmup": "#f2c14e", "cooldown": "#9ecae1", "stress": "#f4a582"}

# telemetry column -> axis title; shown when the column has data. Per-sample series of a registered
# metric take its header; the rest exist only per sample (a phase reports their peak or mean).
TIMELINE_METRICS = [
    *((key, METRICS[key].header()) for key in ("gpu_util_pct", "power_w", "cpu_util_pct", "server_cpu_util_pct")),
    ("server_rss_mb", "server RSS (MiB)"),
    ("temp_c", "GPU temperature (°C)"),
    ("sm_clock_mhz", "SM clock (MHz)"),
    ("inflight", "requests in flight"),
    ("output_tok_s", "output tok/s (1 s window)"),
]


def save(chart: alt.TopLevelMixin, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(chart.to_dict(), indent=None, separators=(",", ":")))


def plot_timeline(tl: pd.DataFrame, marks: list[dict[str, Any]], title: str, max_points: int = 4000) -> alt.VConcatChart:
    """Telemetry and request timeline, phases shaded. Downsampled for the browser, never averaged away:
    each plotted point is a real sample."""
    df = tl.copy()
    if "server_rss_bytes" in df:
        df["server_rss_mb"] = df["server_rss_bytes"] / 2**20
    t0 = marks[0]["start_ns"] if marks else int(df["t_ns"].min())
    phases = pd.DataFrame([{"phase": m["name"], "start_s": (m["start_ns"] - t0) / 1e9,
                            "end_s": ((marks[i + 1]["start_ns"] if i + 1 < len(marks) else m["drained_ns"]) - t0) / 1e9}
                           for i, m in enumerate(marks)])
    cpu = df[df["device"] == "cpu"]
    per_device = df[df["device"] != "cpu"]
    panels = []
    for col, label in TIMELINE_METRICS:
        src = per_device if col in ("gpu_util_pct", "temp_c", "sm_clock_mhz") or (col == "power_w" and len(per_device)) else cpu
        if col not in src or not src[col].notna().any():
            continue
        d = src[["t_s", "device", "phase", col]].dropna(subset=[col])
        if len(d) > max_points:
            d = d.iloc[:: -(-len(d) // max_points)]
        base = alt.Chart(phases).mark_rect(opacity=0.18).encode(
            x=alt.X("start_s:Q", title="time since first phase (s)"), x2="end_s:Q",
            color=alt.Color("phase:N", title="phase", legend=alt.Legend(orient="top") if not panels else None),
        )
        line = alt.Chart(d).mark_line(strokeWidth=1.2, interpolate="step-after").encode(
            x="t_s:Q", y=alt.Y(f"{col}:Q", title=label),
            detail="device:N",
            tooltip=[alt.Tooltip("t_s:Q", format=".2f"), "phase:N", "device:N", alt.Tooltip(f"{col}:Q", format=".1f")],
        )
        panels.append((base + line).properties(width=680, height=110))
    if not panels:
        raise ValueError("no telemetry columns with data to plot")
    return alt.vconcat(*panels).properties(title=title).resolve_scale(color="shared")


def plot_throughput(summary: pd.DataFrame, fits: list[dict[str, Any]]) -> alt.LayerChart:
    pts = summary.dropna(subset=["users", "output_tok_s"]).copy()
    pts["series"] = pts["engine"] + " · " + pts["model"]
    curves = []
    for f in fits:
        for p in curve(f["fit"]):
            curves.append({**p, "series": f"{f['engine']} · {f['model']}"})
    points = alt.Chart(pts).mark_point(filled=True, size=70).encode(
        x=alt.X("users:Q", title="concurrent users (closed loop)"),
        y=alt.Y("output_tok_s:Q", title=f"{METRICS['output_tok_s'].header()}, measured"),
        color=alt.Color("series:N", title="engine · model"),
        tooltip=["engine", "model", "load", "users", alt.Tooltip("output_tok_s:Q", format=".1f"),
                 alt.Tooltip("success_rate:Q", format=".1%")],
    )
    layers = [points]
    if curves:
        layers.append(alt.Chart(pd.DataFrame(curves)).mark_line(strokeDash=[5, 3]).encode(
            x="users:Q", y="output_tok_s:Q", color="series:N"))
    return alt.layer(*layers).properties(width=600, height=320,
                                         title="Throughput vs users (points measured; dashed: Michaelis–Menten fit over the valid points' range)")


LATENCY_COLUMNS = ("ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "tpot_p50_ms")


def plot_latency(summary: pd.DataFrame) -> alt.FacetChart:
    d = summary.dropna(subset=["users"]).melt(id_vars=["engine", "model", "load", "users"],
                                              value_vars=[c for c in LATENCY_COLUMNS if c in summary],
                                              var_name="stat", value_name="ms").dropna(subset=["ms"])
    d["metric"] = d["stat"].map(lambda col: METRICS[SUMMARY_COLUMNS[col][0]].label)
    d["percentile"] = d["stat"].map(lambda col: SUMMARY_COLUMNS[col][1])
    d["series"] = d["engine"] + " · " + d["model"] + " · " + d["percentile"]
    return alt.Chart(d).mark_line(point=True).encode(
        x=alt.X("users:Q", title="concurrent users"),
        y=alt.Y("ms:Q", title="milliseconds (measured)"),
        color=alt.Color("series:N", title="engine · model · percentile"),
        tooltip=["engine", "model", "load", "users", "stat", alt.Tooltip("ms:Q", format=".1f")],
    ).properties(width=300, height=220).facet(column=alt.Column("metric:N", title=None)).resolve_scale(y="independent").properties(
        title="Latency percentiles vs users")
