"""The metric registry is the one place a metric is declared: these tests fail when a figure is
computed but not declared, declared but never computed, or shown under a header typed elsewhere."""

import dataclasses

import numpy as np
import pandas as pd
import pytest


from tokenbench.analysis import registry
from tokenbench.analysis.metrics import compute_metrics, summarize_metrics
from tokenbench.config import HardwareSpec, SloSpec, ValiditySpec
from tokenbench.load.endpoint import summary_lines
from tokenbench.report import pages
from tokenbench.telemetry.merge import merge_telemetry

from .test_metrics import MARK, S, frame, req

# summary.parquet's columns before the registry existed: charts and pages read these names
SUMMARY_COLUMNS_BEFORE_REGISTRY = [
    "engine", "model", "load", "phase", "mode", "warmup", "users", "rate_rps", "duration_s", "complete", "valid",
    "output_tok_s", "request_rps", "success_rate", "requests_sent", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms",
    "ttft_mean_ms", "e2e_p50_ms", "e2e_p99_ms", "e2e_mean_ms", "tpot_p50_ms", "tpot_p99_ms", "itl_p50_ms",
    "itl_p99_ms", "window_tok_s_std", "windows", "mfu_pct", "power_w", "tok_per_j", "usd_per_mtok", "cpu_util_pct",
    "server_cpu_util_pct", "gpu_util_pct", "goodput_rps", "slo_attainment",
]


@pytest.fixture(scope="module")
def every_kind_of_phase():
    """A closed, an open-loop and an idle phase with GPU energy, CPU telemetry and both prices configured:
    between them they carry every metric compute_metrics writes."""
    closed = MARK
    open_loop = {**MARK, "name": "open", "label": "constant, 2 req/s", "open_loop": True, "mode": "constant",
                 "start_ns": 11 * S, "end_ns": 21 * S, "drained_ns": 22 * S, "target": {"rate_rps": 2.0, "duration_s": 10}}
    idle = {**MARK, "name": "rest", "label": "idle, 3 s", "mode": "idle", "start_ns": 22 * S, "end_ns": 25 * S,
            "drained_ns": 25 * S, "target": {"duration_s": 3}}
    rows = [req(i, "steady", i * S, 50, 10, 10) for i in range(10)]
    rows += [req(10 + i, "open", 11 * S + i * S // 2 + 3_000_000, 50, 10, 10, scheduled=11 * S + i * S // 2)
             for i in range(20)]
    for r in rows[10:]:  # the open-loop phase serves a reasoning model: 3 thinking chunks, then content
        r.update(reasoning_chunks=3, reasoning_tokens=3, first_output_token_ns=r["chunk_ns"][3])
    df = frame(rows)
    t = np.arange(0, 25 * S + 1, S // 2)
    gpu = pd.DataFrame({"t_ns": t, "device": "gpu0", "energy_j": t / S * 200.0, "power_w": 200.0,
                        "gpu_util_pct": 80.0, "gpu_mem_used_bytes": 2**30, "temp_c": 60.0, "sm_clock_mhz": 1400.0})
    cpu = pd.DataFrame({"t_ns": t, "device": "cpu", "cpu_busy_s": t / S, "server_cpu_s": t / S / 2,
                        "server_rss_bytes": 2**28, "server_pss_bytes": 2**27, "mem_used_bytes": 2**30, "energy_j": None})
    run = {"phases": [closed, open_loop, idle], "provenance": {"host": {"cpu_cores": 2}},
           "cell": {"engine": "e", "model": "m", "load": "l"}, "complete": True,
           "hardware": {"accelerator": "A40", "peak_flops": 149.7e12, "peak_note": "datasheet", "cpu": {}}}
    tl = merge_telemetry(df, pd.concat([gpu, cpu]), run)
    hardware = HardwareSpec(price_usd_per_hour=2.0, electricity_usd_per_kwh=0.2)
    doc, _ = compute_metrics(df, tl, run, {"name": "m", "figures": {"parameters": 1e9}}, hardware,
                             SloSpec(ttft_ms=500), ValiditySpec())
    return doc


def test_every_phase_key_is_declared_and_every_metric_is_computed(every_kind_of_phase):
    written = set().union(*(ph.keys() for ph in every_kind_of_phase["phases"]))
    undeclared = written - set(registry.METRICS) - set(registry.PHASE_FIELDS)
    assert not undeclared, f"computed but not in the registry: {sorted(undeclared)}"
    never_computed = set(registry.METRICS) - written
    assert not never_computed, f"in the registry but never computed: {sorted(never_computed)}"
    assert not set(registry.METRICS) & set(registry.PHASE_FIELDS)


def test_cost_and_energy_figures_are_computed_and_labelled(every_kind_of_phase):
    doc = every_kind_of_phase
    steady = doc["phases"][0]
    for key in ("tok_per_j", "energy_kwh_per_mtok", "energy_usd_per_mtok", "usd_per_mtok", "mfu_pct", "power_w"):
        assert steady[key] is not None, key
    assert steady["energy_usd_per_mtok"] == pytest.approx(steady["energy_kwh_per_mtok"] * 0.2)
    assert doc["labels"]["usd_per_mtok"] == doc["labels"]["energy_usd_per_mtok"] == "estimated"
    assert doc["labels"]["power_w"] == doc["labels"]["tok_per_j"] == "measured"


def test_every_metric_is_fully_declared():
    allowed = {registry.MEASURED, registry.ESTIMATED, registry.NOT_AVAILABLE}
    for key, m in registry.METRICS.items():
        assert m.key == key and m.label and m.unit and m.formula.strip(), key
        assert m.digits >= 0
        assert (m.price is not None) == (m.basis in (registry.Basis.PRICE, registry.Basis.SENSOR_PRICE)), key
        for power in (False, True):
            for peak in (False, True):
                for hw in (HardwareSpec(), HardwareSpec(price_usd_per_hour=1, electricity_usd_per_kwh=0.1)):
                    assert m.label_in(registry.RunEvidence(power, peak, hw)) in allowed, key


def test_labels_say_what_each_figure_rested_on():
    bare = registry.labels(registry.RunEvidence(power_measured=False, peak_measured=False, hardware=HardwareSpec()))
    assert bare["ttft_ms"] == bare["cpu_util_pct"] == "measured"
    assert bare["mfu_pct"] == "estimated"
    assert bare["power_w"] == bare["tok_per_j"] == bare["energy_j"] == "not available"
    assert bare["usd_per_mtok"] == bare["energy_usd_per_mtok"] == "not available"
    priced = registry.labels(registry.RunEvidence(False, True, HardwareSpec(price_usd_per_hour=1, electricity_usd_per_kwh=0.1)))
    assert priced["mfu_pct"] == "measured" and priced["usd_per_mtok"] == "estimated"
    assert priced["energy_usd_per_mtok"] == "not available"  # a price, but no energy to price


def test_metrics_json_carries_every_definition(every_kind_of_phase):
    defs = every_kind_of_phase["definitions"]["metrics"]
    assert set(defs) == set(registry.METRICS)
    assert defs["tok_per_j"]["formula"] == registry.METRICS["tok_per_j"].formula
    assert set(every_kind_of_phase["labels"]) == set(registry.METRICS)


ADDED_SINCE = ["failure_rate", "decode_rate_cv", "decode_rate_range", "ttft_jitter_ms", "foreign_cpu_pct",
               "input_tok_s", "total_tok_s", "j_per_output_token", "net_j_per_output_token", "mbu_pct",
               "prefill_compute_pct", "output_tok_s_per_gpu", "steal_cpu_pct"]


def test_summary_columns_keep_their_names_and_add_replicates_and_new_figures(every_kind_of_phase):
    cols = list(summarize_metrics([every_kind_of_phase]).columns)
    before = SUMMARY_COLUMNS_BEFORE_REGISTRY
    expected = before[:3] + ["rep"] + before[3:] + ADDED_SINCE
    assert cols == expected


def test_methodology_lists_every_metric_with_its_formula():
    t = pages.metric_table()
    keys = [r.data["key"] for r in t.rows]
    formulas = [r.cells["formula"] for r in t.rows]
    for key, m in registry.METRICS.items():
        assert key in keys and m.formula in formulas, key
    text = (pages.TEMPLATES / "methodology.md.j2").read_text()
    assert "conventions" in text  # the page lists registry.CONVENTIONS, as page_contexts hands them over


def test_table_headers_come_from_the_registry(every_kind_of_phase, monkeypatch):
    doc = every_kind_of_phase
    renamed = dataclasses.replace(registry.METRICS["output_tok_s"], label="delivered tokens", unit="tokens per second")
    monkeypatch.setitem(registry.METRICS, "output_tok_s", renamed)
    runs_header = " | ".join(pages.phase_table(doc).columns)
    results_header = pages.col_header("output_tok_s")
    cli_header = summary_lines(doc)[0]
    for text in (runs_header, results_header, cli_header):
        assert "delivered tokens (tokens per second)" in text
        assert "output throughput" not in text


def test_estimated_marker_follows_the_labels(every_kind_of_phase):
    doc = every_kind_of_phase
    mfu = registry.METRICS["mfu_pct"].header()
    assert doc["labels"]["mfu_pct"] == "estimated"
    assert f"{mfu} †" in pages.phase_table(doc).columns
    measured = {**doc, "labels": {**doc["labels"], "mfu_pct": "measured"}}
    cols = pages.phase_table(measured).columns
    assert mfu in cols and f"{mfu} †" not in cols


def test_pages_show_the_phase_label_from_the_run(every_kind_of_phase):
    rows = pages.phase_table(every_kind_of_phase).rows
    assert [r.cells["offered"] for r in rows] == ["closed loop, 2 users", "constant, 2 req/s", "idle, 3 s"]


def test_values_use_the_registry_precision(every_kind_of_phase):
    steady = every_kind_of_phase["phases"][0]
    row = pages.phase_table(every_kind_of_phase).rows[0]
    assert row.cells[registry.METRICS["tpot_ms"].header(("p50",))] == f"{steady['tpot_ms']['p50']:.2f}"
    assert row.cells[registry.METRICS["success_rate"].header()] == "100.0 %"


def test_fmt():
    from tokenbench.analysis.registry import fmt

    assert fmt(None) == "n/a" and fmt(float("nan")) == "n/a"
    assert fmt(1234.5) == "1,234" and fmt(0.5, 1, pct=True) == "50.0 %"


def test_column_value_reads_the_figure_or_its_statistic():
    phase = {"ttft_ms": {"p50": 12.5}, "output_tok_s": 3.0, "e2e_ms": None}
    assert registry.Column("ttft_ms", ("p50",)).value(phase) == 12.5
    assert registry.Column("output_tok_s").value(phase) == 3.0
    assert registry.Column("e2e_ms", ("p99",)).value(phase) is None and registry.Column("tpot_ms").value(phase) is None
