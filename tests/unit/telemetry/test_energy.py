"""Energy over exact windows (telemetry/energy.py) and through compute_metrics, on recorded-shape
GPU traces: idle -> ramp -> saturated -> idle, a counter that resets, a GPU without a counter, a MIG
device without utilisation, a 1 s-averaged power trace against the counter, a baseline and a start-up."""

import numpy as np
import pandas as pd
import pytest

from tokenbench.analysis.metrics import compute_metrics
from tokenbench.config import HardwareSpec
from tokenbench.telemetry.energy import EnergyMeter, cumulative, sampling, update_interval_ms
from tokenbench.telemetry.merge import merge_telemetry

from ..analysis.test_metrics import frame, req

S = 1_000_000_000
DT = S // 20  # 20 Hz


def watts_profile(t):
    """A load test's GPU draw: 60 W before launch, 150 W loading the model, 90 W ready and idle,
    300 W under load (phase [10 s, 20 s)), 400 W in the drain that follows, 90 W after."""
    t = np.asarray(t)
    return np.select([t < 2 * S, t < 6 * S, t < 10 * S, t < 20 * S, t < 22 * S], [60.0, 150.0, 90.0, 300.0, 400.0], 90.0)


def gpu_trace(device="gpu0", t_end=26 * S, counter=True, instant=True, usage=True, util=True, counter_step_ns=None,
              reset_at=None, watts=watts_profile):
    t = np.arange(0, t_end + 1, DT, dtype=np.int64)
    fine = np.arange(0, t_end + 1, S // 1000, dtype=np.int64)  # the truth at 1 ms
    energy_fine = np.concatenate([[0.0], np.cumsum(watts(fine[1:]) * np.diff(fine) / 1e9)])
    df = pd.DataFrame({"t_ns": t, "device": device})
    if counter:
        # the counter updates every counter_step_ns (NVML: 20-100 ms) and is read at the sample times
        upd = t if counter_step_ns is None else (t // counter_step_ns) * counter_step_ns
        e = 1_000_000.0 + np.interp(upd, fine, energy_fine)
        if reset_at is not None:
            e = np.where(t >= reset_at, e - np.interp(reset_at, t, e), e)
        df["energy_j"] = e
    if instant:
        df["power_instant_w"] = watts(t)
    if usage:  # nvmlDeviceGetPowerUsage on Ampere and newer: the mean of the last second
        avg = np.array([(np.interp(x, fine, energy_fine) - np.interp(max(0, x - S), fine, energy_fine))
                        / (min(x, S) / 1e9) if x > 0 else watts(np.array([0]))[0] for x in t])
        df["power_usage_w"] = avg
    df["gpu_util_pct"] = np.where((t >= 10 * S) & (t < 22 * S), 99.0, 0.0) if util else None
    df["gpu_mem_used_bytes"], df["temp_c"], df["sm_clock_mhz"] = 2.0**34, 60.0, 1980.0
    return df


MARK = {"name": "stress", "label": "closed loop, 2 users", "open_loop": False, "mode": "closed", "warmup": False,
        "start_ns": 10 * S, "end_ns": 20 * S, "drained_ns": 22 * S, "target": {"users": 2, "duration_s": 10}}
RUN = {"phases": [MARK], "provenance": {"host": {"cpu_cores": 2}}, "cell": {"engine": "e", "model": "m", "load": "l"},
       "complete": True, "baseline": {"start_ns": 0, "end_ns": 2 * S}, "server_launch_ns": 2 * S,
       "server_ready_ns": 6 * S,
       "hardware": {"accelerator": "H100", "peak_flops": 989.4e12, "peak_note": "datasheet", "cpu": {}, "gpu_count": 1}}


def run_metrics(telemetry, run=RUN):
    # 2 users, each request 10 tokens: 100 tokens arrive inside [10 s, 20 s), 20 more in the drain
    df = frame([req(i, "stress", 10 * S + i * S, 0, 10, 100) for i in range(10)]
               + [req(10 + i, "stress", 20 * S - S // 2, 0, 10, 100) for i in range(2)])
    tl = merge_telemetry(df, telemetry, run)
    doc, _ = compute_metrics(df, tl, run, {"name": "m", "figures": {"parameters": 1e9}}, HardwareSpec())
    return doc


def test_energy_and_tokens_come_from_the_same_window():
    """The drain draws 400 W; the phase's energy is its issuing window's, 300 W x 10 s, not the drain's too."""
    doc = run_metrics(gpu_trace())
    ph = doc["phases"][0]
    assert ph["energy_j"] == pytest.approx(3000.0, rel=1e-3)
    assert ph["power_w"] == pytest.approx(300.0, rel=1e-3)
    assert ph["power_source"] == "NVML energy counter"
    assert ph["tok_per_j"] == pytest.approx(ph["output_tokens_in_window"] / 3000.0, rel=1e-3)
    assert ph["j_per_output_token"] == pytest.approx(3000.0 / ph["output_tokens_in_window"], rel=1e-3)


def test_baseline_net_energy_and_startup_are_separate_figures():
    doc = run_metrics(gpu_trace())
    ph, cell = doc["phases"][0], doc["cell_figures"]
    assert cell["baseline_power_w"] == pytest.approx(60.0, rel=1e-3)
    assert ph["net_energy_j"] == pytest.approx(3000.0 - 600.0, rel=1e-3)
    assert ph["net_power_w"] == pytest.approx(240.0, rel=1e-3)
    assert ph["net_j_per_output_token"] == pytest.approx(2400.0 / ph["output_tokens_in_window"], rel=1e-3)
    assert cell["startup_s"] == pytest.approx(4.0)
    assert cell["startup_energy_j"] == pytest.approx(600.0, rel=1e-3)  # 150 W x 4 s
    assert cell["startup_net_energy_j"] == pytest.approx(600.0 - 240.0, rel=1e-3)
    assert cell["overall_net_j_per_output_token"] == pytest.approx(ph["net_j_per_output_token"])
    # the idle power between ready and the first phase is the loaded server's, not the baseline
    assert cell["idle_power_w"] == pytest.approx(90.0, rel=1e-3)
    assert doc["labels"]["net_energy_j"] == "measured"


def test_a_counter_that_resets_mid_phase_does_not_go_negative_or_huge():
    doc = run_metrics(gpu_trace(reset_at=15 * S + DT // 2))
    ph = doc["phases"][0]
    # the sample interval straddling the reset is lost (counted from 0), nothing more
    assert 3000.0 * 0.97 < ph["energy_j"] <= 3000.0 + 1e-6


def test_a_gpu_without_an_energy_counter_falls_back_to_its_power_integral():
    doc = run_metrics(gpu_trace(counter=False))
    ph = doc["phases"][0]
    assert ph["energy_j"] == pytest.approx(3000.0, rel=0.01)
    assert ph["power_source"] == "NVML instantaneous power (field value) integral"
    assert ph["energy_counter_vs_power_pct"] is None


def test_two_gpus_one_without_a_counter_sum_and_each_is_reported():
    tel = pd.concat([gpu_trace("gpu0"), gpu_trace("gpu1", counter=False, instant=False)])
    ph = run_metrics(tel)["phases"][0]
    # gpu1's 1 s-averaged power lags the jump to 300 W by ~0.5 s: its integral is ~105 J short
    assert ph["energy_j"] == pytest.approx(6000.0 - 105.0, rel=0.005)
    assert ph["per_device_energy"][0]["energy_j"] == pytest.approx(3000.0, rel=1e-3)
    assert [d["device"] for d in ph["per_device_energy"]] == ["gpu0", "gpu1"]
    assert ph["per_device_energy"][1]["source"].startswith("NVML power usage")


def test_a_gpu_with_no_power_signal_at_all_makes_the_total_unknown_not_a_partial_sum():
    tel = pd.concat([gpu_trace("gpu0"), gpu_trace("gpu1", counter=False, instant=False, usage=False)])
    ph = run_metrics(tel)["phases"][0]
    assert ph["energy_j"] is None and ph["power_w"] is None and ph["tok_per_j"] is None


def test_a_mig_device_without_utilisation_does_not_crash():
    doc = run_metrics(gpu_trace(util=False))
    ph = doc["phases"][0]
    assert ph["gpu_util_pct"] is None and ph["energy_j"] == pytest.approx(3000.0, rel=1e-3)


def test_counter_against_a_one_second_average_agrees_on_a_long_window_and_is_flagged_on_a_step():
    """A 1 s-averaged power trace lags the counter by ~0.5 s: over a steady 10 s window the two agree;
    over a 1 s window straddling the jump from 90 W to 300 W they cannot."""
    meter = EnergyMeter(gpu_trace(instant=False))
    steady = meter.window(11 * S, 19 * S)
    assert abs(steady["counter_vs_power_pct"]) < 1 and steady["energy_check_flagged"] is False
    step = meter.window(9 * S + S // 2, 10 * S + S // 2)
    assert abs(step["counter_vs_power_pct"]) > 5 and step["energy_check_flagged"] is True


def test_the_counter_resolution_and_sampling_interval_are_measured():
    tr = gpu_trace(counter_step_ns=100 * S // 1000)  # a counter updating every 100 ms, read at 20 Hz
    assert update_interval_ms(tr["t_ns"].to_numpy(), tr["energy_j"].to_numpy()) == pytest.approx(100.0)
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.normal(50e6, 2e6, 2000)).astype(np.int64)
    t = np.insert(t, 1000, t[999] + 400_000_000)  # one 400 ms stall
    t[1001:] += 400_000_000
    q = sampling(t)
    assert q["interval_p50_ms"] == pytest.approx(50, abs=0.5) and q["max_gap_ms"] >= 400
    doc = run_metrics(tr)
    cell = doc["cell_figures"]
    assert cell["telemetry_interval_p50_ms"] == pytest.approx(50.0)
    assert cell["telemetry_devices"]["gpu0"]["energy_counter_update_ms"] == pytest.approx(100.0)


def test_cumulative_counts_a_drop_as_a_restart_from_zero():
    assert list(cumulative(np.array([10.0, 20.0, 5.0, 7.0]))) == [0.0, 10.0, 15.0, 17.0]


def test_rapl_without_gpus_is_the_energy_source():
    t = np.arange(0, 26 * S + 1, DT, dtype=np.int64)
    cpu = pd.DataFrame({"t_ns": t, "device": "cpu", "cpu_busy_s": t / S, "server_cpu_s": t / S / 2,
                        "server_rss_bytes": 2**28, "mem_used_bytes": 2**30,
                        "energy_j": np.cumsum(np.full(t.size, 40.0 * DT / 1e9))})  # 40 W
    ph = run_metrics(cpu)["phases"][0]
    assert ph["power_source"] == "RAPL package energy" and ph["power_w"] == pytest.approx(40.0, rel=1e-3)
