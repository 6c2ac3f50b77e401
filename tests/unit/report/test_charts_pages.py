import json

import numpy as np
import pandas as pd
import pytest

from tokenbench.config import StudySpec

from tokenbench.config import HardwareSpec
from tokenbench.report import pages
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


def test_pages_show_computed_numbers_labels_and_fit_caveats(results, tmp_path):
    docs, runs = results
    summary = summarize_metrics(docs)
    fit = fit_saturation(summary.users, summary.output_tok_s)
    fits = [{"engine": "llamacpp", "model": "smol", "fit": fit}]
    text = pages.render_index(StudySpec(title="T", description="D"), docs, fits, {"throughput": {"a": 1}})
    tok = docs[1]["phases"][0]["output_tok_s"]
    assert pages.fmt(tok) in text
    assert "estimated: test" in text and pages.EST in text
    assert "| 3 | 0 | 1 |" in text  # valid points, excluded, dof of the fit table
    assert "1 degree of freedom" in text
    assert 'window.TB_SPECS["throughput"]={"a":1}' in text
    runs_md = pages.render_runs(docs, [r for r, _ in runs], {})
    assert "llama-server --port 1" in runs_md
    import re

    assert not re.search(r"\bnan\b", text.lower())


def test_chart_html_escapes_script_end():
    html = pages.chart_html("x", {"title": "</script><b>"})
    assert "</script><b>" not in html.split("<script>", 1)[1].rsplit("</script>", 1)[0]


def test_fmt():
    assert pages.fmt(None) == "n/a" and pages.fmt(float("nan")) == "n/a"
    assert pages.fmt(1234.5) == "1,234" and pages.fmt(0.5, 1, pct=True) == "50.0 %"


def test_methodology_lists_resolved_commands_per_engine_and_no_secrets(monkeypatch):
    from tokenbench import provenance
    from tokenbench.engines import catalog as engines

    secret = "hf_secret_value_1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)
    spec = {"name": "mlc", "binary": "mlc_llm", "host": "127.0.0.1", "served_name": "m", "max_batch": 64,
            "max_context": 4096}
    cmd = engines.engine("mlc-llm").build_command(spec, "/models/Llama-3-8B-q0f16-MLC", 8000)
    load = {"name": "l", "phases": [{"name": "s", "mode": "closed", "users": 1, "duration_s": 1}]}
    run_mlc = {"cell": {"engine": "mlc", "model": "m", "load": "l"}, "server_command": cmd,
               "server_env": {"HF_TOKEN": secret, "CUDA_VISIBLE_DEVICES": "0"},
               "settings": {"engine": {"kind": "mlc-llm"}, "load": load, "request": {"max_tokens": 8}}}
    run_ext = {"cell": {"engine": "theirs", "model": "m", "load": "l"}, "server_command": ["(external endpoint)"],
               "endpoint": {"external": True, "base_url": "http://127.0.0.1:9000", "api_key_env": "THEIR_KEY"},
               "settings": {"engine": {"kind": "external"}, "load": load, "request": {"max_tokens": 8}}}
    text = pages.render_methodology([{"hardware": {"peak_note": "x"}}], [run_mlc, run_ext])
    # copy-pastable: the ;-separated overrides are quoted as one argument
    assert ("`CUDA_VISIBLE_DEVICES=0 HF_TOKEN='<HF_TOKEN>' mlc_llm serve /models/Llama-3-8B-q0f16-MLC --mode server "
            "--host 127.0.0.1 --port 8000 --overrides 'max_num_sequence=64;context_window_size=4096'`") in text
    assert "**mlc** (mlc-llm; m, l)" in text
    assert "**theirs** (external endpoint; m, l): `http://127.0.0.1:9000`, API key from `$THEIR_KEY` (not recorded)" in text
    assert secret not in text
