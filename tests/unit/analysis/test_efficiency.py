"""Cell-level figures (analysis/efficiency.py) on inputs with known answers: seed 000's MFU and
cooldown-valley arithmetic, a power/utilisation line with a known r², engine counters with a known
rate, yearly cost arithmetic, and the published figures kept apart from measured ones."""

import filecmp
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from tokenbench.analysis import efficiency as eff
from tokenbench.analysis import registry
from tokenbench.analysis.metrics import compute_metrics
from tokenbench.config import HardwareSpec, SloSpec, ValiditySpec
from tokenbench.engines.promscrape import frame as em_frame
from tokenbench.telemetry.merge import merge_telemetry

from .test_metrics import MARK, S, frame, req

A40 = {"peak_flops": 149.7e12}
LLAMA_8B = {"name": "llama-8b", "figures": {"parameters": 8.03e9}}
NO_ENGINE = em_frame([])
TESTS_DATA = Path(__file__).resolve().parents[2] / "data"


def phase(name, mode="closed", warmup=False, **figures):
    return {"phase": name, "mode": mode, "warmup": warmup, **figures}


def seed_000_phases():
    """Seed 000 §3.1's LMDeploy phases as phase_metrics would report them (tokens = tok/s x seconds)."""
    return [
        phase("warmup", "poisson", True, duration_s=20.0, output_tokens_in_window=972.0 * 20.0,
              output_tokens_total=972.0 * 20.0, output_tok_s=972.0, power_w=280.1, energy_j=280.1 * 20.0,
              power_source="nvml power samples"),
        phase("cooldown", "idle", duration_s=10.0, output_tokens_in_window=0.0, output_tokens_total=0, power_w=118.5,
              energy_j=1185.0, power_source="nvml power samples"),  # seed 000: 0 tok/s
        phase("stress", duration_s=220.6, output_tokens_in_window=1515.6 * 220.6, output_tokens_total=1515.6 * 220.6,
              output_tok_s=1515.6, power_w=298.9, energy_j=298.9 * 220.6, power_source="nvml power samples"),
    ]


def cell(phases, timeline=None, engine=NO_ENGINE, run=None, hardware=None, manifest=LLAMA_8B, peak=A40):
    timeline = timeline if timeline is not None else pd.DataFrame({"t_ns": [], "device": [], "phase": []})
    run = run or {"phases": [], "hardware": {"peak_measured": False}}
    return eff.cell_figures(phases, timeline, engine, run, manifest, hardware or HardwareSpec(), peak)


# ----------------------------------------------------------------------------- MFU
def test_overall_mfu_of_one_phase_is_seed_000s_worked_example():
    # 1515.6 tok/s x 2 x 8.03e9 / 149.7e12 = 16.26 %
    doc = cell([seed_000_phases()[2]])
    assert doc["overall_mfu_pct"] == pytest.approx(16.2595, abs=1e-3)


def test_overall_mfu_pools_the_non_idle_phases_issuing_windows():
    # (972 x 20 + 1515.6 x 220.6) tokens / 240.6 s = 1470.4 tok/s -> 15.77 % (seed 000 prints 15.72 %);
    # the idle cooldown's 10 s are not in the denominator (with them: 15.12 %)
    doc = cell(seed_000_phases())
    assert doc["overall_output_tok_s"] == pytest.approx((972 * 20 + 1515.6 * 220.6) / 240.6)
    assert doc["overall_mfu_pct"] == pytest.approx(15.7748, abs=1e-3)
    assert doc["phases_pooled"] == ["warmup", "stress"]
    by_phase = {r["phase"]: r for r in doc["phase_table"]}
    assert by_phase["cooldown"]["output_tok_s"] is None  # the per-phase table keeps the idle phase


def test_mfu_needs_a_parameter_count_and_a_peak():
    assert cell(seed_000_phases(), manifest={"name": "m", "figures": {}})["overall_mfu_pct"] is None
    assert cell(seed_000_phases(), peak={"peak_flops": None})["overall_mfu_pct"] is None
    labels = cell(seed_000_phases())["labels"]
    assert labels["overall_mfu_pct"] == "estimated"  # a datasheet peak
    measured_peak = {"phases": [], "hardware": {"peak_measured": True}}
    assert cell(seed_000_phases(), run=measured_peak)["labels"]["overall_mfu_pct"] == "measured"


# ----------------------------------------------------------------------------- idle and active power
def test_cooldown_valley_of_seed_000():
    # idle 118.5 W, active (the stress phase; the warm-up is left out) 298.9 W, delta 180.4 W
    doc = cell(seed_000_phases())
    assert doc["idle_power_w"] == pytest.approx(118.5)
    assert doc["active_power_w"] == pytest.approx(298.9)
    assert doc["active_idle_delta_w"] == pytest.approx(180.4)
    assert doc["idle_power_from"] == "idle phases" and doc["active_phases"] == ["stress"]
    assert doc["labels"]["idle_power_w"] == doc["labels"]["active_idle_delta_w"] == "measured"


def test_idle_power_weights_each_idle_phase_by_its_span():
    # 100 W for 10 s and 200 W for 30 s: 7000 J / 40 s = 175 W (a plain mean of the two would say 150 W)
    phases = [phase("rest1", "idle", power_w=100.0, energy_j=1000.0), phase("load", power_w=300.0, energy_j=3000.0),
              phase("rest2", "idle", power_w=200.0, energy_j=6000.0)]
    assert cell(phases)["idle_power_w"] == pytest.approx(175.0)


def gpu_samples(t_ns, phase_names, watts, util=0.0, device="gpu0"):
    """GPU telemetry rows whose energy counter rises at the given power."""
    t = np.asarray(t_ns, dtype=np.int64)
    w = np.broadcast_to(np.asarray(watts, dtype=float), t.shape)
    energy = np.concatenate([[0.0], np.cumsum(w[1:] * np.diff(t) / 1e9)])
    return pd.DataFrame({"t_ns": t, "device": device, "phase": phase_names, "power_w": w, "energy_j": energy,
                         "gpu_util_pct": np.broadcast_to(np.asarray(util, dtype=float), t.shape),
                         "gpu_mem_used_bytes": 2.0**30, "temp_c": 50.0, "sm_clock_mhz": 210.0})


def test_without_an_idle_phase_idle_power_comes_from_the_samples_before_the_first_phase():
    # loading the model (before the server is ready) draws 500 W; ready and waiting, 50 W
    t = np.arange(0, 10 * S + 1, S // 10)
    watts = np.where(t <= 4 * S, 500.0, 50.0)
    tl = gpu_samples(t, "startup", watts)
    first = {"name": "load", "start_ns": 10 * S, "end_ns": 20 * S, "drained_ns": 20 * S}
    run = {"phases": [first], "hardware": {}, "server_ready_ns": 4 * S}
    doc = cell([phase("load", power_w=300.0, energy_j=3000.0, power_source="nvml energy counter")], tl, run=run)
    assert doc["idle_power_from"] == "before the first phase"
    assert doc["idle_power_w"] == pytest.approx(50.0)
    assert doc["active_idle_delta_w"] == pytest.approx(250.0)


def test_no_power_no_power_figures():
    phases = [phase("load", duration_s=10.0, output_tokens_in_window=100.0, output_tokens_total=100.0),
              phase("rest", "idle")]
    doc = cell(phases, hardware=HardwareSpec(electricity_usd_per_kwh=0.12, daily_output_tokens=1e6))
    for key in ("idle_power_w", "active_power_w", "active_idle_delta_w", "overall_tok_per_j",
                "overall_energy_kwh_per_mtok", "overall_energy_usd_per_mtok", "yearly_electricity_usd",
                "power_util_slope_w_per_pct", "power_util_r2"):
        assert doc[key] is None, key
        assert doc["labels"][key] == "not available", key


# ----------------------------------------------------------------------------- power against utilisation
def test_power_vs_gpu_utilisation_recovers_slope_intercept_and_r2():
    # power = 118.5 W + 1.804 W per % (seed 000 §6.2), each utilisation twice, once +d once -d:
    # the residuals are orthogonal to utilisation, so OLS returns the line exactly and
    # r² = b² Sxx / (b² Sxx + n d²) is known in closed form
    u = np.repeat(np.arange(0.0, 101.0, 10.0), 2)
    d = 8.0
    e = np.tile([d, -d], len(u) // 2)
    p = 118.5 + 1.804 * u + e
    n = len(u)
    sxx = float(((u - u.mean()) ** 2).sum())
    r2 = 1.804**2 * sxx / (1.804**2 * sxx + n * d**2)
    t = np.arange(n) * (S // 20)
    tl = gpu_samples(t, "stress", p, u)
    # samples outside the phases (model loading) must not enter the fit
    tl = pd.concat([gpu_samples(t - 10 * S, "startup", 400.0, 0.0), tl], ignore_index=True)
    doc = cell([phase("stress", power_w=200.0, energy_j=100.0, power_source="nvml power samples")], tl)
    assert doc["power_util_x"] == "gpu_util_pct"
    assert doc["power_util_slope_w_per_pct"] == pytest.approx(1.804)
    assert doc["power_util_intercept_w"] == pytest.approx(118.5)
    assert doc["power_util_r2"] == pytest.approx(r2) and 0.9 < r2 < 0.99
    assert doc["power_util_n"] == n


def test_power_fit_sums_power_over_gpus_per_sample_time():
    # each GPU: 60 W + 0.9 W per % of its own utilisation -> summed: 120 W + 1.8 W per % of the mean
    t = np.arange(11) * (S // 20)
    u0, u1 = np.arange(11) * 10.0, np.arange(11) * 5.0
    tl = pd.concat([gpu_samples(t, "load", 60 + 0.9 * u0, u0, "gpu0"),
                    gpu_samples(t, "load", 60 + 0.9 * u1, u1, "gpu1")], ignore_index=True)
    doc = cell([phase("load")], tl)
    assert doc["power_util_slope_w_per_pct"] == pytest.approx(1.8)
    assert doc["power_util_intercept_w"] == pytest.approx(120.0)
    assert doc["power_util_r2"] == pytest.approx(1.0) and doc["power_util_n"] == 11


def test_power_fit_falls_back_to_rapl_against_host_cpu():
    u = np.linspace(5, 95, 19)
    tl = pd.DataFrame({"t_ns": np.arange(19) * (S // 4), "device": "cpu", "phase": "load",
                       "cpu_util_pct": u, "power_w": 20 + 0.5 * u})
    doc = cell([phase("load")], tl)
    assert doc["power_util_x"] == "cpu_util_pct"
    assert doc["power_util_slope_w_per_pct"] == pytest.approx(0.5)
    assert doc["power_util_intercept_w"] == pytest.approx(20.0)


def test_power_fit_needs_more_than_one_utilisation_value():
    tl = gpu_samples(np.arange(10) * S, "load", 250.0, 100.0)
    doc = cell([phase("load")], tl)
    assert doc["power_util_slope_w_per_pct"] is None and doc["power_util_r2"] is None
    assert doc["power_util_n"] == 10  # the samples were there; the line is not defined


# ----------------------------------------------------------------------------- energy and yearly cost
def test_energy_per_token_and_yearly_cost_arithmetic():
    # seed 000's stress phase: 298.9 W at 1515.6 tok/s, $0.12/kWh, 100 M tokens a day, a $2/h machine
    stress = seed_000_phases()[2]
    hw = HardwareSpec(price_usd_per_hour=2.0, electricity_usd_per_kwh=0.12, daily_output_tokens=1e8)
    doc = cell([stress], hardware=hw)
    kwh_per_mtok = 298.9 / 1515.6 * 1e6 / 3.6e6  # 0.0548 kWh per million tokens
    assert doc["overall_energy_kwh_per_mtok"] == pytest.approx(kwh_per_mtok)
    assert doc["overall_tok_per_j"] == pytest.approx(1515.6 / 298.9)
    assert doc["overall_energy_usd_per_mtok"] == pytest.approx(kwh_per_mtok * 0.12)
    hours = 1e8 / (1515.6 * 3600)  # 18.33 machine-hours a day
    assert doc["serving_hours_per_day"] == pytest.approx(hours)
    assert doc["yearly_hardware_usd"] == pytest.approx(2.0 * hours * 365)  # $13,379
    assert doc["yearly_electricity_usd"] == pytest.approx(kwh_per_mtok * 100 * 365 * 0.12)  # $240
    assert doc["yearly_electricity_usd"] == pytest.approx(239.95, abs=0.01)
    # seed 000 §5.3 says 196.85 kWh per million tokens ($862k a year): 1e6 / 5.08 read as tokens per
    # watt-hour; per joule it is 3600 times less
    assert 196.85 / doc["overall_energy_kwh_per_mtok"] == pytest.approx(3600, rel=0.01)
    labels = doc["labels"]
    assert labels["yearly_hardware_usd"] == labels["yearly_electricity_usd"] == "estimated"
    assert labels["serving_hours_per_day"] == "estimated"  # a projection to a planned volume


def test_energy_pools_joules_and_tokens_over_the_non_idle_phases():
    # the idle phase's joules are not charged to the tokens; the warm-up's are
    doc = cell(seed_000_phases(), hardware=HardwareSpec(electricity_usd_per_kwh=0.12))
    joules = 280.1 * 20 + 298.9 * 220.6
    tokens = 972 * 20 + 1515.6 * 220.6
    assert doc["overall_energy_kwh_per_mtok"] == pytest.approx(joules / 3.6e6 / (tokens / 1e6))


def test_yearly_cost_needs_a_volume_and_its_prices():
    stress = seed_000_phases()[2]
    no_volume = cell([stress], hardware=HardwareSpec(price_usd_per_hour=2.0, electricity_usd_per_kwh=0.12))
    assert no_volume["serving_hours_per_day"] is None and no_volume["yearly_hardware_usd"] is None
    assert no_volume["yearly_electricity_usd"] is None
    assert no_volume["labels"]["yearly_hardware_usd"] == "not available"
    assert no_volume["labels"]["serving_hours_per_day"] == "not available"
    no_price = cell([stress], hardware=HardwareSpec(daily_output_tokens=1e8))
    assert no_price["serving_hours_per_day"] is not None
    assert no_price["yearly_hardware_usd"] is None and no_price["yearly_electricity_usd"] is None
    assert no_price["labels"]["yearly_hardware_usd"] == "not available"


def test_daily_output_tokens_is_a_positive_volume():
    assert HardwareSpec().daily_output_tokens is None
    assert HardwareSpec(daily_output_tokens=1e8).daily_output_tokens == 1e8
    with pytest.raises(ValidationError):
        HardwareSpec(daily_output_tokens=0)


# ----------------------------------------------------------------------------- the engine's own figures
MARKS = [{"name": "load", "mode": "closed", "start_ns": 0, "end_ns": 10 * S, "drained_ns": 10 * S},
         {"name": "rest", "mode": "idle", "start_ns": 10 * S, "end_ns": 20 * S, "drained_ns": 20 * S}]


def scrapes(samples, path="/metrics"):
    """promscrape rows from (t_s, metric, labels, value)."""
    return em_frame([{"t_ns": int(t * S), "path": path, "metric": m, "labels": json.dumps(lab, sort_keys=True),
                      "type": "counter" if m.endswith("_total") else "gauge", "value": float(v)}
                     for t, m, lab, v in samples])


def engine_cell(em, marks=MARKS):
    run = {"phases": marks, "hardware": {}}
    return cell([phase("load"), phase("rest", "idle")], engine=em, run=run)


def test_vllm_counters_give_rates_per_phase_and_gauges_mean_and_max():
    rows = []
    for t in range(20):
        gen = 120 * min(t, 9)  # 120 tok/s while loaded (scrapes at 0..9 s), flat at rest
        rows += [(t, "vllm:generation_tokens_total", {"engine": "0"}, gen),
                 (t, "vllm:prompt_tokens_total", {"engine": "0"}, 30 * min(t, 9)),
                 (t, "vllm:kv_cache_usage_perc", {"engine": "0"}, 0.2 + 0.02 * t if t < 10 else 0.0),
                 (t, "vllm:num_requests_running", {"engine": "0"}, 3 if t < 10 else 0),
                 (t, "vllm:num_requests_running", {"engine": "1"}, 2 if t < 10 else 0),  # two engines: summed
                 (t, "vllm:num_requests_waiting", {"engine": "0"}, t % 2 if t < 10 else 0)]
    doc = engine_cell(scrapes(rows))
    load, rest = doc["phase_table"]
    assert doc["engine_family"] == "vllm"
    assert load["engine_generation_tok_s"] == pytest.approx(120.0)
    assert load["engine_prompt_tok_s"] == pytest.approx(30.0)
    assert rest["engine_generation_tok_s"] == pytest.approx(0.0)
    assert load["engine_kv_cache_usage_mean"] == pytest.approx(0.29) and load["engine_kv_cache_usage_max"] == pytest.approx(0.38)
    assert load["engine_requests_running_mean"] == pytest.approx(5.0) and load["engine_requests_running_max"] == 5
    assert load["engine_requests_waiting_mean"] == pytest.approx(0.5) and load["engine_requests_waiting_max"] == 1
    assert load["engine_scrapes"] == 10 and rest["engine_scrapes"] == 10


def test_a_counter_reset_counts_as_a_restart_from_zero():
    # 100 tok/s; the engine restarts at 5 s and counts from 0 again: still 100 tok/s
    values = [100 * t if t <= 4 else 100 * (t - 5) + 100 for t in range(10)]  # 0..400, then 100, 200, ...
    doc = engine_cell(scrapes([(t, "llamacpp:tokens_predicted_total", {}, v) for t, v in enumerate(values)]))
    assert doc["engine_family"] == "llama.cpp"
    assert doc["phase_table"][0]["engine_generation_tok_s"] == pytest.approx(100.0)


def test_llamacpp_and_sglang_names_map_to_the_same_figures():
    llama = [(t, "llamacpp:prompt_tokens_total", {}, 50 * t) for t in range(10)]
    llama += [(t, "llamacpp:requests_processing", {}, 4) for t in range(10)]
    llama += [(t, "llamacpp:requests_deferred", {}, 2) for t in range(10)]
    llama += [(t, "llamacpp:kv_cache_usage_ratio", {}, 0.5) for t in range(10)]
    row = engine_cell(scrapes(llama))["phase_table"][0]
    assert (row["engine_prompt_tok_s"], row["engine_requests_running_mean"], row["engine_requests_waiting_max"],
            row["engine_kv_cache_usage_mean"]) == pytest.approx((50.0, 4.0, 2.0, 0.5))
    sglang = [(t, "sglang:generation_tokens_total", {"model_name": "m"}, 70 * t) for t in range(10)]
    sglang += [(t, "sglang:token_usage", {"model_name": "m"}, 0.25) for t in range(10)]
    sglang += [(t, "sglang:num_queue_reqs", {"model_name": "m"}, 3) for t in range(10)]
    doc = engine_cell(scrapes(sglang))
    row = doc["phase_table"][0]
    assert doc["engine_family"] == "sglang"
    assert (row["engine_generation_tok_s"], row["engine_kv_cache_usage_max"], row["engine_requests_waiting_mean"]) \
        == pytest.approx((70.0, 0.25, 3.0))
    assert row["engine_prompt_tok_s"] is None  # not scraped: not invented


def test_a_metric_on_two_paths_is_read_from_one():
    # bentoml-vllm scrapes two paths: one metric on both (here the second a shorter series from another
    # process with its own count) must be read from one path, not merged into a sawtooth or summed twice
    main = [(t, "vllm:generation_tokens_total", {}, 80 * t) for t in range(10)]
    main += [(t, "vllm:num_requests_running", {}, 4) for t in range(10)]
    other = [(t, "vllm:generation_tokens_total", {}, 5000 + 10 * t) for t in range(6)]
    other += [(t, "vllm:num_requests_running", {}, 4) for t in range(6)]
    em = pd.concat([scrapes(main, "/metrics"), scrapes(other, "/v1/engine/metrics")], ignore_index=True)
    row = engine_cell(em)["phase_table"][0]
    assert row["engine_generation_tok_s"] == pytest.approx(80.0)
    assert row["engine_requests_running_max"] == 4 and row["engine_scrapes"] == 10


def test_unknown_engine_metrics_give_no_engine_figures():
    doc = engine_cell(scrapes([(t, "tgi_something_else", {}, t) for t in range(10)]))
    assert doc["engine_family"] is None
    assert all(doc["phase_table"][0][k] is None for k in eff.ENGINE_KEYS if k != "engine_scrapes")
    assert engine_cell(NO_ENGINE)["phase_table"][0]["engine_generation_tok_s"] is None


# ----------------------------------------------------------------------------- from phase_metrics' own output
@pytest.fixture(scope="module")
def measured_cell():
    """A closed phase then an idle one, with NVML power rising with GPU utilisation, through
    merge_telemetry and compute_metrics as the pipeline runs them."""
    idle = {**MARK, "name": "rest", "label": "idle, 5 s", "mode": "idle", "start_ns": 11 * S, "end_ns": 16 * S,
            "drained_ns": 16 * S, "target": {"duration_s": 5}}
    df = frame([req(i, "steady", i * S, 50, 10, 10) for i in range(10)])
    t = np.arange(0, 16 * S + 1, S // 10)
    util = np.where(t < 11 * S, 90.0, 0.0)
    watts = 100.0 + 2.0 * util  # 280 W loaded, 100 W idle
    gpu = gpu_samples(t, None, watts, util).drop(columns="phase").assign(temp_c=np.where(t < 11 * S, 70.0, 40.0),
                                                                       sm_clock_mhz=np.where(t < 11 * S, 1400.0, 210.0))
    cpu = pd.DataFrame({"t_ns": t, "device": "cpu", "cpu_busy_s": t / S, "server_cpu_s": t / S / 2,
                        "server_rss_bytes": 2**28, "mem_used_bytes": 2**30, "energy_j": None})
    run = {"phases": [MARK, idle], "provenance": {"host": {"cpu_cores": 2}}, "cell": {"engine": "e", "model": "m", "load": "l"},
           "complete": True, "hardware": {"accelerator": "A40", "peak_flops": 149.7e12, "peak_note": "datasheet", "cpu": {}}}
    tl = merge_telemetry(df, pd.concat([gpu, cpu]), run)
    hw = HardwareSpec(price_usd_per_hour=2.0, electricity_usd_per_kwh=0.2, daily_output_tokens=1e6)
    manifest = {"name": "m", "figures": {"parameters": 1e9}}
    doc, _ = compute_metrics(df, tl, run, manifest, hw, SloSpec(), ValiditySpec())
    em = scrapes([(s, "vllm:generation_tokens_total", {}, 9 * min(s, 10)) for s in range(17)])
    return doc, eff.cell_figures(doc["phases"], tl, em, run, manifest, hw, doc["hardware"])


def test_cell_figures_agree_with_the_phase_figures(measured_cell):
    doc, c = measured_cell
    steady, rest = doc["phases"]
    assert c["overall_output_tok_s"] == pytest.approx(steady["output_tok_s"])
    assert c["overall_mfu_pct"] == pytest.approx(steady["mfu_pct"])
    assert c["idle_power_w"] == pytest.approx(rest["power_w"]) and c["idle_power_w"] == pytest.approx(100.0, abs=2)
    assert c["active_power_w"] == pytest.approx(steady["power_w"]) and c["active_power_w"] == pytest.approx(280.0, abs=2)
    # the timeline's GPU power is the energy counter's rate over >= 250 ms: the step from load to idle is
    # smeared over a few samples, so the line is close to, not exactly, the one the samples were made from
    assert c["power_util_slope_w_per_pct"] == pytest.approx(2.0, rel=0.03)
    assert c["power_util_intercept_w"] == pytest.approx(100.0, abs=2)
    assert c["overall_temp_max_c"] == 70.0 and c["overall_sm_clock_mean_mhz"] == pytest.approx(1400.0)
    assert c["overall_gpu_mem_used_peak_mb"] == pytest.approx(1024.0)
    assert c["phase_table"][0]["engine_generation_tok_s"] == pytest.approx(9.0)
    assert [r["phase"] for r in c["phase_table"]] == ["steady", "rest"]
    assert c["phase_table"][1]["gpu_util_pct"] == pytest.approx(0.0)  # the idle phase's utilisation, measured


def test_every_cell_key_is_declared_and_every_cell_figure_is_computed(measured_cell):
    _, c = measured_cell
    written = set(c)
    assert not written - set(registry.CELL_METRICS) - set(registry.CELL_FIELDS)
    row_keys = set().union(*(r.keys() for r in c["phase_table"]))
    assert not row_keys - set(registry.METRICS) - set(registry.CELL_METRICS) - set(registry.PHASE_FIELDS)
    never = set(registry.CELL_METRICS) - written - row_keys
    assert not never, f"declared but never computed: {sorted(never)}"
    assert set(c["labels"]) == set(registry.CELL_METRICS)
    assert not set(registry.CELL_METRICS) & set(registry.METRICS)
    json.dumps(c, allow_nan=False)  # plain JSON: no numpy scalars, no NaN


def test_cell_figures_are_fully_declared_and_in_the_definitions():
    allowed = {registry.MEASURED, registry.ESTIMATED, registry.NOT_AVAILABLE}
    defs = registry.definitions()
    for key, m in registry.CELL_METRICS.items():
        assert m.key == key and m.label and m.unit and m.formula.strip(), key
        assert (m.price is not None) == (m.basis in (registry.Basis.PRICE, registry.Basis.SENSOR_PRICE)), key
        for power in (False, True):
            for hw in (HardwareSpec(), HardwareSpec(price_usd_per_hour=1, electricity_usd_per_kwh=0.1, daily_output_tokens=1)):
                assert m.label_in(registry.RunEvidence(power, False, hw)) in allowed, key
        assert defs["cell_metrics"][key]["formula"] == m.formula
    assert registry.CELL_METRICS["overall_mfu_pct"].aggregation is registry.Aggregation.PER_CELL
    assert "daily_output_tokens" in defs["cell_metrics"]["yearly_hardware_usd"]["basis"]
    assert set(defs["metrics"]) == set(registry.METRICS)  # the per-phase list is unchanged


# ----------------------------------------------------------------------------- published figures
def test_published_runs_are_published_records_with_their_report():
    rows = eff.published_runs()
    assert len(rows) == 10
    assert all(r["source"] == "published" and eff.is_published(r) for r in rows)
    assert {r["report"] for r in rows} == {"000_d21b703c0264db26.txt", "002_57f8c57d09678284.txt"}
    stress = next(r for r in rows if r["engine"] == "lmdeploy-pytorch" and r["phase"] == "stress")
    assert stress["output_tok_s"] == 1515.6 and stress["mfu_pct"] == 16.2 and stress["users"] == 50
    assert stress["ttft_avg_ms"] is None  # not reported: not zero
    # and what the seed published is what our formula gives from its own throughput
    assert eff.mfu_pct(stress["output_tok_s"], 2 * 8.03e9, 149.7e12) == pytest.approx(stress["mfu_pct"], abs=0.1)


def test_the_reports_own_estimates_stay_labelled():
    rows = eff.published_runs()
    estimated = [r for r in rows if not r["measured"]]
    assert [(r["report"], r["engine"]) for r in estimated] == [("000_d21b703c0264db26.txt", "bentoml-vllm")]
    assert estimated[0]["claim"] == "estimated by the report" and estimated[0]["source"] == "published"
    assert all(r["claim"] == "measured by the report" for r in rows if r["measured"])


def test_published_fits_load_too():
    fits = {r["engine"]: r for r in eff.published_fits()}
    assert fits["sglang"]["vmax_tok_s"] == 8351.4 and fits["lmdeploy"]["k_users"] == 494.5
    assert fits["sglang"]["points"] == 3 and fits["sglang"]["source"] == "published"


def test_the_package_ships_the_reference_tables_unchanged():
    for name in ("published_runs.csv", "published_fits.csv"):
        assert filecmp.cmp(eff._package_file(f"data/{name}"), TESTS_DATA / name, shallow=False), name


def test_published_loader_refuses_other_tables(tmp_path):
    runs = (TESTS_DATA / "published_runs.csv").read_text().splitlines()
    bad_flag = tmp_path / "flag.csv"
    bad_flag.write_text("\n".join([runs[0], runs[1].rsplit(",", 1)[0] + ",maybe"]) + "\n")
    with pytest.raises(ValueError, match="measured must be true or false"):
        eff.published_runs(bad_flag)
    with pytest.raises(ValueError, match="missing columns"):
        eff.published_runs(TESTS_DATA / "published_fits.csv")
    good = tmp_path / "one.csv"
    good.write_text("\n".join(runs[:2]) + "\n")
    assert len(eff.published_runs(good)) == 1
