import json

import numpy as np
import pandas as pd
import pytest

from tokenbench.analysis.fit import fit_saturation
from tokenbench.analysis.frontier import trace_frontiers
from tokenbench.report import charts

from ..analysis.test_frontier import PHASES, sweep

S = 1_000_000_000


def walk(spec):
    """Every dict inside a spec."""
    if isinstance(spec, dict):
        yield spec
        for v in spec.values():
            yield from walk(v)
    elif isinstance(spec, list):
        for v in spec:
            yield from walk(v)


def marks_of(spec):
    return [(d["mark"] if isinstance(d["mark"], dict) else {"type": d["mark"]}) | {"_view": d}
            for d in walk(spec) if "mark" in d]


def x_domains(spec):
    return [d["scale"]["domain"] for d in walk(spec)
            if isinstance(d.get("scale"), dict) and "domain" in d["scale"] and d.get("field") in ("t", "t_s", "start_s")]


# ------------------------------------------------------------------------------------------------ fixtures

MARKS = [
    {"name": "ramp", "mode": "closed", "warmup": True, "start_ns": 100 * S, "end_ns": 102 * S, "drained_ns": int(102.5 * S),
     "target": {"users": 4, "ramp_s": 0.0}, "label": "4 users"},
    {"name": "steady", "mode": "closed", "warmup": False, "start_ns": int(102.5 * S), "end_ns": int(112.5 * S),
     "drained_ns": 113 * S, "target": {"users": 4, "ramp_s": 1.0}, "label": "4 users, ramp 1 s"},
]


def telemetry(seconds=14.0, hz=20, start=99.0):
    t_ns = (np.arange(start, start + seconds, 1 / hz) * S).astype(np.int64)
    tl = pd.DataFrame({"t_ns": t_ns, "device": "cpu"})
    tl["t_s"] = (tl["t_ns"] - MARKS[0]["start_ns"]) / 1e9
    tl["phase"] = np.where(tl["t_s"] < 2.5, "ramp", "steady")
    tl["cpu_util_pct"] = 50 + 10 * np.sin(tl["t_s"])
    tl["server_cpu_util_pct"] = 40.0
    tl["server_rss_bytes"] = 2**28
    tl["inflight"] = 4
    tl["output_tok_s"] = 100.0
    return tl


@pytest.fixture
def frontiers():
    fast_c, fast_r = sweep("fast", {1: (10.0, 100.0), 2: (12.5, 160.0), 4: (20.0, 240.0), 8: (40.0, 300.0)},
                           invalid=(8,), usd=1.5, prompt_tok_s=50.0)
    base_c, base_r = sweep("base", {1: (10.0, 100.0), 2: (20.0, 100.0), 4: (40.0, 100.0), 8: (80.0, 100.0)},
                           usd=2.0, prompt_tok_s=50.0)
    return trace_frontiers(fast_c + base_c, fast_r + base_r, PHASES, baseline="base")


# ------------------------------------------------------------------------------------------------ saving

def test_save_writes_the_spec_and_its_full_data_beside_it(tmp_path, frontiers):
    chart, data = charts.plot_frontier(frontiers)
    charts.save(chart, data, tmp_path / "frontier.vl.json")
    spec = json.loads((tmp_path / "frontier.vl.json").read_text())
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
    back = pd.read_csv(tmp_path / "frontier.csv")
    assert len(back) == len(data) and set(back.columns) == set(data.columns)
    assert len(json.loads((tmp_path / "frontier.json").read_text())) == len(data)
    with pytest.raises(ValueError, match="vl.json"):
        charts.save(chart, data, tmp_path / "frontier.json")
    charts.save_table(charts.plot_iso_table(frontiers), tmp_path / "iso.csv")
    iso = pd.read_csv(tmp_path / "iso.csv")
    assert {"target_tok_s_per_user", "config", "y", "value", "pct_vs_baseline"} <= set(iso.columns)
    assert (tmp_path / "iso.json").exists()


# ------------------------------------------------------------------------------------------------ frontier

def test_frontier_chart_has_the_toggle_and_selector_bound_to_inputs_with_only_measured_y_variants(frontiers):
    chart, data = charts.plot_frontier(frontiers)
    spec = chart.to_dict()
    params = {p["name"]: p for p in spec["params"]}
    assert params["x_stat"]["bind"]["input"] == "radio" and params["x_stat"]["bind"]["options"] == ["median", "p99"]
    assert params["y_metric"]["bind"]["input"] == "select"
    # the fixture has no energy figure: J/token is not offered; cost is, labelled estimated
    assert params["y_metric"]["bind"]["options"] == ["output", "input", "total", "usd_per_mtok"]
    assert any("estimated" in label for label in params["y_metric"]["bind"]["labels"])
    filters = [d["filter"] for d in walk(spec) if isinstance(d.get("filter"), str)]
    assert "datum.xv == x_stat && datum.yv == y_metric" in filters
    assert "j_per_tok" not in set(data["yv"])


def test_frontier_chart_draws_frontier_line_ci_bars_on_both_axes_hollow_invalid_points_and_labels(frontiers):
    spec = charts.plot_frontier(frontiers)[0].to_dict()
    marks = marks_of(spec)
    types = [m["type"] for m in marks]
    assert "line" in types and "text" in types
    rules = [m["_view"]["encoding"] for m in marks if m["type"] == "rule"]
    assert any("x2" in e for e in rules) and any("y2" in e for e in rules)  # CI bars on x and on y
    points = [m for m in marks if m["type"] == "point"]
    assert {m.get("filled") for m in points} == {True, False}  # valid filled, invalid hollow
    hollow = next(m["_view"] for m in points if m.get("filled") is False)
    assert any(t.get("filter") == "!datum.valid" for t in hollow.get("transform", []))
    assert any(m["type"] == "text" and m["_view"]["encoding"]["text"]["field"] == "label" for m in marks)
    # the companion views: output tok/s vs median E2E, input tok/s vs p99 TTFT
    titles = json.dumps([d.get("title") for d in walk(spec) if "title" in d])
    assert "E2E" in titles and "TTFT" in titles


def test_frontier_data_flags_match_the_frontier_and_keep_invalid_points(frontiers):
    _, data = charts.plot_frontier(frontiers)
    med = data[(data["xv"] == "median") & (data["yv"] == "output")]
    fast = med[med["config"].str.startswith("fast")].set_index("users")
    assert not fast.loc[8, "valid"] and not fast.loc[8, "frontier"] and "stability" in fast.loc[8, "reason"]
    assert fast.loc[[1, 2, 4], "frontier"].all()
    base = med[med["config"].str.startswith("base")].set_index("users")
    assert base["frontier"].tolist() == [True, False, False, False]  # same tok/s, slower per user
    assert (fast.loc[[1, 2, 4], "x_lo"] < fast.loc[[1, 2, 4], "x"]).all()


# ------------------------------------------------------------------------------------------------ throughput

def fits_for(doc):
    """A Michaelis-Menten-shaped sweep (Vmax 400, K 2) with two noisy replicates per level, per configuration."""
    users = [1, 1, 2, 2, 4, 4, 8, 8, 16, 16]
    noise = [3, -3, -4, 4, 5, -5, -2, 2, 4, -4]
    tput = [400 * u / (2 + u) + e for u, e in zip(users, noise)]
    return [{"engine": e, "model": "m", "fit": fit_saturation(users, tput)} for e in ("fast", "base")]


def test_throughput_chart_has_the_fit_band_intervals_hollow_invalid_points_and_log2_users(frontiers):
    chart, data = charts.plot_throughput(frontiers, fits_for(frontiers))
    spec = chart.to_dict()
    marks = marks_of(spec)
    area = next(m for m in marks if m["type"] == "area")
    assert area["_view"]["encoding"]["y2"]["field"] == "hi"
    assert data.loc[data["kind"] != "measured", "lo"].notna().any()  # the band has values
    assert {m.get("filled") for m in marks if m["type"] == "point"} == {True, False}
    scales = [d["scale"] for d in walk(spec) if isinstance(d.get("scale"), dict) and d.get("field") == "users"]
    assert scales and all(s.get("type") == "log" and s.get("base") == 2 for s in scales)
    rule = next(m for m in marks if m["type"] == "rule")
    assert rule["_view"]["encoding"]["y"]["field"] == "lo" and rule["_view"]["encoding"]["y2"]["field"] == "hi"


def test_log2_axis_only_when_levels_double():
    assert charts.doubling([1, 2, 4, 8, 8]) and not charts.doubling([1, 2, 3]) and not charts.doubling([2, 4])


def test_latency_chart_reads_valid_replicates_only():
    summary = pd.DataFrame({"engine": "e", "model": "m", "load": ["users-1", "users-2"], "rep": "r1", "users": [1, 2],
                            "valid": [True, False], "ttft_p50_ms": [10.0, 20.0], "e2e_p50_ms": [100.0, 200.0]})
    chart, data = charts.plot_latency(summary)
    assert set(data["users"]) == {1} and chart.to_dict()["facet"]["column"]["field"] == "metric"


# ------------------------------------------------------------------------------------------------ per run

def test_timeline_shares_one_time_axis_from_the_first_phase_and_marks_window_ramp_and_drain():
    chart, data = charts.plot_timeline(telemetry(), MARKS, "t")
    spec = chart.to_dict()
    assert spec["resolve"]["scale"]["x"] == "shared"
    domains = x_domains(spec)
    assert domains and all(d == [0, 13.0] for d in domains)  # first start .. last drain, every panel
    shown = [r for ds in spec["datasets"].values() for r in ds if "t" in r]
    assert min(r["t"] for r in shown) >= 0  # nothing before the first phase is drawn
    titles = json.dumps(spec)
    assert "host CPU busy (%)" in titles and "requests in flight" in titles
    assert "GPU utilisation" not in titles and "power (W)" not in titles  # no such data: no panel
    seg = charts.phase_segments(MARKS).set_index(["phase", "part"])
    assert seg.loc[("ramp", "warm-up window (not measured)"), "start_s"] == 0
    # the measured window 2.5 .. 12.5 s: its first second (users starting 1 s apart) shaded apart
    assert seg.loc[("steady", "measured window, users ramping up"), ["start_s", "end_s"]].tolist() == [2.5, 3.5]
    assert seg.loc[("steady", "measured window"), ["start_s", "end_s"]].tolist() == [3.5, 12.5]
    assert seg.loc[("steady", "drain (not measured)"), ["start_s", "end_s"]].tolist() == [12.5, 13.0]
    edges = {r["t_s"] for ds in spec["datasets"].values() for r in ds if set(r) == {"t_s"}}
    assert edges == {2.5, 12.5}  # the measured window's edges, drawn on every panel
    color = next(d["color"] for d in walk(spec) if isinstance(d.get("color"), dict) and d["color"].get("field") == "phase")
    assert color["scale"]["domain"] == ["ramp", "steady"] and color["scale"]["scheme"]["name"] == "viridis"
    assert len(data) == len(telemetry())  # the download: every sample, the startup ones too


def test_timeline_downsamples_real_samples_keeping_spikes_and_stays_small():
    tl = telemetry(seconds=3600, hz=20, start=100.0)
    tl.loc[40_000, "cpu_util_pct"] = 99.5  # one sample's spike
    marks = [{**MARKS[1], "start_ns": 100 * S, "end_ns": 3690 * S, "drained_ns": 3700 * S}]
    chart, data = charts.plot_timeline(tl, marks, "t")
    text = json.dumps(chart.to_dict())
    assert len(text) < 300_000
    cpu = [r for ds in chart.to_dict()["datasets"].values() for r in ds if r.get("s") == "cpu_util_pct"]
    assert 300 <= len(cpu) <= 1000 and max(r["v"] for r in cpu) == 99.5
    real = set(np.round(tl["cpu_util_pct"], 1))
    assert all(round(r["v"], 1) in real for r in cpu[:50])  # drawn values are samples, not averages
    assert len(data) == len(tl)


def test_downsample_keeps_first_min_max_per_bucket():
    t = np.arange(10_000, dtype=float)
    v = np.zeros_like(t)
    v[1234], v[8765] = 5.0, -5.0
    idx = charts.downsample(t, v, buckets=100)
    assert 1234 in idx and 8765 in idx and 0 in idx and 9999 in idx and len(idx) <= 301
    assert np.all(np.diff(idx) > 0)
    assert charts.downsample(t[:50], v[:50], buckets=100).tolist() == list(range(50))


def test_engine_metrics_counters_as_rates_gauges_as_values_on_the_timeline_axis():
    t = (np.arange(100, 114) * S).astype(np.int64)
    rows = []
    for i, ts in enumerate(t):
        rows += [{"t_ns": ts, "path": "/metrics", "metric": "x:tokens_total", "labels": "{}", "type": "counter",
                  "value": 30.0 * (i if i < 7 else i - 7)},  # restarts from 0 at i = 7: no rate there
                 {"t_ns": ts, "path": "/metrics", "metric": "x:running", "labels": "{}", "type": "gauge", "value": i % 3},
                 {"t_ns": ts, "path": "/metrics", "metric": "x:never", "labels": "{}", "type": "counter", "value": 0.0}]
    em = pd.DataFrame(rows)
    chart, data = charts.plot_engine_metrics(em, MARKS, "e")
    rate = data[data["series"] == "x:tokens_total"]
    assert rate["kind"].unique().tolist() == ["rate (/s)"] and set(rate["value"]) == {30.0}
    assert len(rate) == 12  # 13 differences, the drop left out
    assert "x:never" not in set(data["series"])
    assert data.loc[data["series"] == "x:running", "value"].tolist() == [i % 3 for i in range(14)]
    domains = x_domains(chart.to_dict())
    assert domains and all(d == [0, 13.0] for d in domains)


def test_engine_metrics_without_samples_say_so():
    chart, data = charts.plot_engine_metrics(pd.DataFrame(), MARKS, "e")
    assert "no engine /metrics" in json.dumps(chart.to_dict()) and not len(data)


def test_latency_breakdown_splits_each_request_in_order_with_p50_and_p99():
    MS = 1_000_000
    rows = []
    for i in range(101):
        sched = int(103 * S + i * 10 * MS)
        rows.append({"phase": "steady", "status": "ok", "scheduled_ns": sched, "sent_ns": sched + i * MS // 10,
                     "first_byte_ns": sched + i * MS // 10 + 5 * MS, "first_token_ns": sched + i * MS // 10 + 25 * MS,
                     "end_ns": sched + i * MS // 10 + 325 * MS})
    rows.append({**rows[0], "status": "http_error", "end_ns": rows[0]["sent_ns"] + 10_000 * MS})
    rows.append({**rows[0], "phase": "ramp"})  # warm-up: left out
    req = pd.DataFrame(rows)
    chart, data = charts.plot_latency_breakdown(req, MARKS, "b")
    assert set(data["phase"]) == {"steady"}
    p50 = data[data["stat"] == "p50"].set_index("component")["ms"]
    assert p50.to_dict() == pytest.approx({"scheduled-send lag": 5.0, "first byte": 5.0, "first token": 20.0, "decode": 300.0})
    p99 = data[data["stat"] == "p99"].set_index("component")["ms"]
    assert p99["scheduled-send lag"] == pytest.approx(9.9) and (data["n"] == 101).all()
    color = next(d["color"] for d in walk(chart.to_dict()) if isinstance(d.get("color"), dict))
    assert color["scale"]["domain"] == ["scheduled-send lag", "first byte", "first token", "decode"]


def test_latency_chart_with_no_valid_replicate_says_why_instead_of_drawing_an_empty_frame(tmp_path):
    from tokenbench.report.pages import environment
    from tokenbench.report.results import Chart

    summary = pd.DataFrame({"engine": "e", "model": "m", "load": ["users-1", "users-2"], "rep": "r1", "users": [1, 2],
                            "valid": [False, False], "ttft_p50_ms": [10.0, 20.0], "e2e_p50_ms": [100.0, 200.0]})
    chart, data = charts.plot_latency(summary)
    assert data.empty
    charts.save(chart, data, tmp_path / "latency.vl.json")
    stem = tmp_path / "latency"
    drawn = Chart("latency", chart.to_dict(), {"csv": f"{stem}.csv", "json": f"{stem}.json"})
    assert "validity checks" in drawn.empty
    macro = environment().from_string('{% from "macros.j2" import chart %}{{ chart(c) }}')
    html = macro.render(c=drawn, root="")
    assert "nothing to draw" in html and "Run health" in html and "tb-chart" not in html.replace("tb-chart-empty", "")
    # with one valid replicate the chart is drawn as before
    summary.loc[0, "valid"] = True
    chart, data = charts.plot_latency(summary)
    charts.save(chart, data, tmp_path / "latency.vl.json")
    drawn = Chart("latency", chart.to_dict(), {"csv": f"{stem}.csv", "json": f"{stem}.json"})
    assert drawn.empty is None and 'data-spec="latency"' in macro.render(c=drawn, root="")
