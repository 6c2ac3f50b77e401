import json

import numpy as np
import pandas as pd
import pytest

from tokenbench.config import HardwareSpec
from tokenbench.report import charts
from tokenbench.analysis.fit import fit_saturation
from tokenbench.analysis.metrics import compute_metrics, summarize_metrics

from ..analysis.test_metrics import MARK, S, frame, req


@pytest.fixture
def results():
    docs, runs = [], []
    for users, load in [(1, "users-1"), (4, "users-4"), (8, "users-8")]:
        mark = {**MARK, "label": f"closed loop, {users} users", "target": {"users": users, "duration_s": 10}}
        df = frame([req(i, "steady", i * S // users, 50, 10, 5 * users) for i in range(10 * users)])
        cpu = pd.DataFrame({"t_ns": np.arange(0, 11 * S, S // 4), "device": "cpu"})
        cpu["cpu_util_pct"], cpu["server_cpu_util_pct"], cpu["server_rss_bytes"] = 50.0, 40.0, 2**28
        cpu["t_s"] = cpu["t_ns"] / S
        cpu["phase"] = np.where(cpu["t_ns"] < 10 * S, "steady", "teardown")
        cpu["inflight"], cpu["output_tok_s"] = users, 10.0 * users
        run = {"phases": [mark], "cell": {"engine": "llamacpp", "model": "smol", "load": load}, "complete": True,
               "hardware": {"accelerator": "cpu", "peak_flops": 2e11, "peak_note": "estimated: test", "cpu": {"name": "X", "cores": 2}},
               "server_command": ["llama-server", "--port", "1"], "settings": {"load": {"name": load, "phases": [mark]}, "request": {"max_tokens": 10}},
               "provenance": {"config_hash": "abc", "host": {"cpu_cores": 2}}}
        doc, _ = compute_metrics(df, cpu, run, {"name": "smol", "figures": {"parameters": 1e8}}, HardwareSpec(price_usd_per_hour=0.1))
        docs.append(doc)
        runs.append((run, cpu))
    return docs, runs


def test_timeline_chart_has_phase_shading_and_only_measured_columns(results):
    _, runs = results
    run, tl = runs[0]
    spec = charts.plot_timeline(tl, run["phases"], "t").to_dict()
    titles = json.dumps(spec)
    assert "host CPU busy (%)" in titles and "requests in flight" in titles
    assert "GPU utilisation" not in titles and "power (W)" not in titles  # no such data: no panel
    layer = spec["vconcat"][0]["layer"]
    assert layer[0]["mark"]["type"] == "rect"


def test_throughput_chart_has_points_and_fit_curve(results):
    docs, _ = results
    summary = summarize_metrics(docs)
    fit = fit_saturation(summary.users, summary.output_tok_s)
    spec = charts.plot_throughput(summary, [{"engine": "llamacpp", "model": "smol", "fit": fit}]).to_dict()
    marks = [l["mark"]["type"] if isinstance(l["mark"], dict) else l["mark"] for l in spec["layer"]]
    assert marks == ["point", "line"]
    assert charts.plot_latency(summary).to_dict()["facet"]["column"]["field"] == "metric"


