import numpy as np
import pandas as pd
import pytest

from tokenbench.config import HardwareSpec, SloSpec, ValiditySpec
from tokenbench.load.journal import PANDAS_DTYPES as REQUEST_COLUMNS
from tokenbench.chunks import Tokens
from tokenbench.telemetry.merge import inflight_at, merge_telemetry, phase_of, rate_from_counter
from tokenbench.analysis.metrics import compute_metrics, dist, phase_metrics, summarize_metrics, windows

S = 1_000_000_000
MS = 1_000_000


def req(i, phase, sent, ttft_ms, n, itl_ms, status="ok", usage=True, scheduled=None):
    first = sent + int(ttft_ms * MS)
    chunks = [first + int(k * itl_ms * MS) for k in range(n)] if status == "ok" else []
    return {"request_id": i, "phase": phase, "user": 0, "prompt_id": "p", "scheduled_ns": scheduled or sent,
            "sent_ns": sent, "headers_ns": sent + MS, "first_byte_ns": sent + MS,
            "first_token_ns": first if chunks else None, "end_ns": (chunks[-1] if chunks else sent) + MS,
            "chunk_ns": chunks, "prompt_tokens": 10, "output_tokens": (n if usage else None) if status == "ok" else None,
            "output_tokens_source": "usage" if status == "ok" else None, "output_chars": n * 3,
            "finish_reason": "length", "status": status, "http_status": 200 if status == "ok" else 500, "error": None,
            "attempts": 1, "max_tokens": None, "output_text": "x" * n, "client_output_tokens": None,
            "reasoning_chunks": 0, "reasoning_chars": 0, "written_ns": sent, "first_event_ns": sent + MS,
            "first_output_token_ns": first if chunks else None}


def frame(rows):
    return pd.DataFrame(rows, columns=list(REQUEST_COLUMNS)).astype(REQUEST_COLUMNS)


MARK = {"name": "steady", "label": "closed loop, 2 users", "open_loop": False, "mode": "closed", "warmup": False,
        "start_ns": 0, "end_ns": 10 * S, "drained_ns": 11 * S, "target": {"users": 2, "duration_s": 10}}
NO_TELEMETRY = pd.DataFrame({"t_ns": [], "device": [], "phase": []})


def test_latency_definitions_on_known_timestamps():
    # 10 requests: TTFT 100 ms, 11 tokens 20 ms apart -> E2E = 100 + 200 + 1 ms, TPOT = 20.1 ms
    df = frame([req(i, "steady", i * S, 100, 11, 20) for i in range(10)])
    m = phase_metrics(df, NO_TELEMETRY, MARK, figures={"parameters": 1_000_000}, peak={"peak_flops": 1e12},
                      hardware=HardwareSpec(price_usd_per_hour=3.6), slo=SloSpec(), bounds=ValiditySpec())
    assert m["ttft_ms"]["p50"] == pytest.approx(100) and m["ttft_ms"]["n"] == 10
    assert m["e2e_ms"]["mean"] == pytest.approx(301)
    assert m["tpot_ms"]["p50"] == pytest.approx(20.1)
    assert m["itl_ms"]["p99"] == pytest.approx(20) and m["itl_ms"]["n"] == 100
    assert m["output_tok_s"] == pytest.approx(11.0)  # 110 tokens inside the 10 s window
    assert m["success_rate"] == 1.0 and m["request_rps"] == pytest.approx(1.0)
    # MFU = 11 tok/s * 2 * 1e6 / 1e12 ; cost = 3.6 $/h / (11 tok/s * 3600) * 1e6
    assert m["mfu_pct"] == pytest.approx(11 * 2e6 / 1e12 * 100)
    assert m["usd_per_mtok"] == pytest.approx(3.6 / (11 * 3600) * 1e6)
    assert m["tok_per_j"] is None  # no power was measured: no energy figure


def test_mfu_matches_seed_000_arithmetic():
    # seed 000: 1515.6 tok/s x 2 x 8.03e9 / 149.7e12 = 16.26 %
    n = 15156  # tokens in a 10 s window
    df = frame([req(0, "steady", 0, 0, n, 10_000 / n)])
    m = phase_metrics(df, NO_TELEMETRY, MARK, {"parameters": 8.03e9}, {"peak_flops": 149.7e12}, HardwareSpec(), SloSpec(), ValiditySpec())
    assert m["output_tok_s"] == pytest.approx(1515.6)
    assert m["mfu_pct"] == pytest.approx(16.26, abs=0.01)


def test_failed_requests_count_in_success_rate_not_in_latency():
    rows = [req(0, "steady", 0, 100, 5, 10), req(1, "steady", S, 0, 0, 0, status="http_error"),
            req(2, "steady", 2 * S, 0, 0, 0, status="disconnect")]
    m = _phase(rows)
    assert m["success_rate"] == pytest.approx(1 / 3)
    assert m["ttft_ms"]["n"] == 1 and m["status_counts"] == {"ok": 1, "http_error": 1, "disconnect": 1}
    assert m["mfu_pct"] is None and m["usd_per_mtok"] is None


def test_tokens_after_window_end_do_not_count():
    # one request whose 10 tokens straddle the end of the window (9.5 s .. 10.4 s)
    rows = [req(0, "steady", int(9.4 * S), 100, 10, 100)]
    tok_t, tok_w = Tokens.of_requests(frame(rows)).times()
    assert tok_w.sum() == 10
    m = _phase(rows)
    assert m["output_tokens_in_window"] == 5 and m["output_tok_s"] == pytest.approx(0.5)


def test_input_and_total_throughput_count_prompts_whose_first_token_arrived_in_the_window():
    # prompts of 10 tokens; the request sent at 9.95 s gets its first token at 10.05 s: outside
    rows = [req(i, "steady", i * S, 50, 5, 10) for i in range(10)] + [req(10, "steady", int(9.95 * S), 100, 5, 10)]
    rows[3]["prompt_tokens"] = 30
    rows.append(req(11, "steady", 5 * S, 0, 0, 0, status="http_error"))  # failed: its prompt does not count
    m = _phase(rows)
    assert m["input_tok_s"] == pytest.approx((9 * 10 + 30) / 10)
    assert m["total_tok_s"] == pytest.approx(m["input_tok_s"] + m["output_tok_s"])
    assert m["output_tok_s"] == pytest.approx(5.0)  # 50 tokens of the first ten requests
    no_counts = [{**r, "prompt_tokens": None} for r in rows]
    m = _phase(no_counts)
    assert m["input_tok_s"] is None and m["total_tok_s"] is None  # not reported: absent, not zero


def test_usage_count_is_spread_over_chunks():
    r = req(0, "steady", 0, 0, 4, 10)
    r["output_tokens"] = 8  # an engine that sends 2 tokens per chunk
    t, w = Tokens.of_requests(frame([r])).times()
    assert list(w) == [2, 2, 2, 2]


def test_windows_and_summary():
    # TTFT 100 ms in the first 5 s, 900 ms in the next 5 s
    df = frame([req(i, "steady", i * S, 100 if i < 5 else 900, 10, 10) for i in range(10)])
    w = windows(df, MARK, SloSpec(ttft_ms=500), 5.0)
    assert list(w.output_tok_s) == [10.0, 10.0] and list(w.requests_per_s) == [1.0, 1.0]
    assert list(w.goodput_rps) == [1.0, 0.0]
    assert list(w.ttft_p50_ms) == pytest.approx([100, 900])
    assert w.loc[1, "e2e_p99_ms"] == pytest.approx(900 + 90 + 1)


def test_phase_of_and_inflight():
    marks = [{"name": "a", "start_ns": 0, "end_ns": 5, "drained_ns": 6},
             {"name": "b", "start_ns": 6, "end_ns": 10, "drained_ns": 12}]
    t = np.array([-1, 0, 5, 6, 11, 12])
    # a phase's samples are those of its issuing window [start, end): its drain is no phase's
    assert list(phase_of(t, marks)) == ["startup", "a", "drain", "b", "drain", "teardown"]
    df = frame([req(0, "a", 0, 0, 1, 0), req(1, "a", 2, 0, 1, 0)])  # end = sent + 1 ms
    assert list(inflight_at(np.array([1, 3, 2 * MS]), df)) == [1, 2, 0]


def test_counter_rates_drop_wraps():
    df = pd.DataFrame({"t_ns": [0, S, 2 * S, 3 * S], "energy_j": [0.0, 100.0, 5.0, 105.0]})
    r = rate_from_counter(df, "energy_j")
    assert r.iloc[1] == 100 and np.isnan(r.iloc[2]) and r.iloc[3] == 100


def test_merge_and_compute_with_gpu_energy():
    marks = [MARK]
    tel = pd.DataFrame({"t_ns": np.arange(0, 10 * S + 1, S // 2), "device": "gpu0"})
    tel["energy_j"] = tel["t_ns"] / S * 250.0  # 250 W
    tel["power_w"] = 250.0
    tel["gpu_util_pct"], tel["gpu_mem_used_bytes"], tel["temp_c"], tel["sm_clock_mhz"] = 90.0, 2**30, 60.0, 1400.0
    cpu = pd.DataFrame({"t_ns": np.arange(0, 10 * S + 1, S // 2), "device": "cpu"})
    cpu["cpu_busy_s"] = cpu["t_ns"] / S * 1.0  # one of 2 cores busy -> 50 %
    cpu["server_cpu_s"], cpu["server_rss_bytes"], cpu["mem_used_bytes"], cpu["energy_j"] = cpu["cpu_busy_s"], 2**28, 2**30, None
    df = frame([req(i, "steady", i * S, 0, 10, 10) for i in range(10)])
    run = {"phases": marks, "provenance": {"host": {"cpu_cores": 2}}, "cell": {"engine": "e", "model": "m", "load": "l"},
           "complete": True, "hardware": {"accelerator": "A40", "peak_flops": 149.7e12, "peak_note": "datasheet", "cpu": {}}}
    tl = merge_telemetry(df, pd.concat([tel, cpu]), run)
    assert tl.loc[tl.device == "cpu", "cpu_util_pct"].dropna().mean() == pytest.approx(50)
    doc, win = compute_metrics(df, tl, run, {"name": "m", "figures": {"parameters": 1e9}}, HardwareSpec())
    ph = doc["phases"][0]
    assert ph["power_w"] == pytest.approx(250) and ph["power_source"] == "NVML energy counter"
    assert ph["tok_per_j"] == pytest.approx(10 / 250)
    assert doc["labels"]["power_w"] == "measured" and doc["labels"]["mfu_pct"] == "estimated"
    s = summarize_metrics([doc])
    assert s.loc[0, "output_tok_s"] == pytest.approx(10) and s.loc[0, "users"] == 2


def test_dist_handles_empty_and_nan():
    assert dist([])["p50"] is None
    d = dist([1.0, float("nan"), 3.0])
    assert d["n"] == 2 and d["mean"] == 2.0


def _phase(rows, mark=MARK, slo=None, bounds=None, lag=None):
    """A phase's metrics from request rows, without telemetry, parameters or a peak."""
    return phase_metrics(frame(rows), NO_TELEMETRY, mark, None, {}, HardwareSpec(), slo or SloSpec(),
                         bounds or ValiditySpec(), lag)


def test_goodput_counts_requests_meeting_every_slo():
    # TTFT 100 ms for even ids, 900 ms for odd ids; TPOT 20 ms for all
    rows = [req(i, "steady", i * S // 2, 100 if i % 2 == 0 else 900, 5, 20) for i in range(18)]
    m = _phase(rows, slo=SloSpec(ttft_ms=500, tpot_ms=50, e2e_ms=None))
    assert m["slo_attainment"] == pytest.approx(0.5)
    assert m["goodput_rps"] == pytest.approx(9 / 10)
    assert m["goodput_tok_s"] == pytest.approx(9 * 5 / 10)
    tight = _phase(rows, slo=SloSpec(ttft_ms=500, tpot_ms=10))
    assert tight["goodput_rps"] == 0
    none = _phase(rows, slo=SloSpec())  # no SLO: no goodput and no "SLO met" (not a vacuous 100 %)
    assert none["slo_attainment"] is None and none["goodput_rps"] is None and none["slo"] == {}


def test_failed_requests_count_against_slo_attainment_and_show_as_failure_rate():
    # 10 fast ok requests and 10 that failed: attainment is 10 of the 20 sent, not 10 of 10
    rows = [req(i, "steady", i * S // 2, 100, 5, 20) for i in range(10)]
    rows += [req(10 + i, "steady", i * S // 2, 100, 5, 20, status="error") for i in range(10)]
    m = _phase(rows, slo=SloSpec(ttft_ms=500))
    assert m["slo_attainment"] == pytest.approx(0.5) and m["failure_rate"] == pytest.approx(0.5)
    assert m["ttft_ms"]["n"] == 10  # the percentiles cover ok requests; the failure share stands beside them


def test_fairness_figures_from_per_request_decode_rates():
    # TPOT 20 ms and 40 ms alternating: decode rates 50 and 25 tok/s
    rows = [req(i, "steady", i * S // 2, 100, 11, 20 if i % 2 else 40) for i in range(18)]
    m = _phase(rows)
    rates = np.array([1000 / (20 + 0.1) if i % 2 else 1000 / (40 + 0.1) for i in range(18)])
    assert m["decode_rate_cv"] == pytest.approx(rates.std(ddof=1) / rates.mean(), rel=1e-3)
    assert m["decode_rate_range"] == pytest.approx(rates.max() - rates.min(), rel=1e-3)
    assert m["ttft_jitter_ms"] == pytest.approx(m["ttft_ms"]["p99"] - m["ttft_ms"]["mean"])


def test_validity_names_each_failed_check():
    rules = {"min_duration_s": 20, "min_requests": 50, "max_error_rate": 0.01, "max_send_lag_p99_ms": 5,
             "max_loop_lag_p99_ms": 10, "min_rate_ratio": 0.98}
    rows = [req(i, "steady", i * S, 10, 3, 5) for i in range(9)] + [req(9, "steady", 9 * S, 0, 0, 0, status="timeout")]
    m = _phase(rows, bounds=ValiditySpec(**rules), lag={"p99_ms": 30.0, "max_ms": 40.0})
    fails = " | ".join(m["validity"]["failed_checks"])
    assert not m["validity"]["valid"]
    for text in ("min_duration_s 20", "min_requests 50", "error rate 10.0%", "event-loop lag p99 30.00 ms"):
        assert text in fails
    ok = _phase(rows[:9], bounds=ValiditySpec(**{**rules, "min_duration_s": 5, "min_requests": 5}), lag={"p99_ms": 1.0})
    assert ok["validity"] == {"valid": True, "failed_checks": [], "event_loop_lag_p99_ms": 1.0}


def test_open_loop_delivery_and_send_lag_checks():
    mark = {**MARK, "mode": "constant", "label": "constant, 2 req/s", "open_loop": True,
            "target": {"rate_rps": 2.0, "duration_s": 10}}
    # 10 arrivals scheduled 1 s apart, each sent 12 ms late: delivered on time, but lagging
    rows = [req(i, "steady", i * S + 12 * MS, 10, 3, 5, scheduled=i * S) for i in range(10)]
    m = _phase(rows, mark, bounds=ValiditySpec(min_rate_ratio=0.98, max_send_lag_p99_ms=5))
    assert m["send_lag_ms"]["p99"] == pytest.approx(12)
    assert m["ttft_sched_ms"]["p50"] == pytest.approx(22)
    assert m["schedule_rps"] == 1.0 and m["rate_ratio"] == pytest.approx(0.5) and m["delivered_ratio"] == 1.0
    fails = " | ".join(m["validity"]["failed_checks"])
    assert "send lag p99 12.00 ms" in fails and "fell behind" not in fails
    # the last 3 arrivals were sent after the window closed: the client fell behind its schedule
    late = rows[:7] + [req(i, "steady", 10 * S + i * MS, 10, 3, 5, scheduled=i * S) for i in range(7, 10)]
    m2 = _phase(late, mark, bounds=ValiditySpec(min_rate_ratio=0.98))
    assert m2["delivered_ratio"] == pytest.approx(0.7)
    assert "sent 70.0% of its scheduled arrivals" in " ".join(m2["validity"]["failed_checks"])


def test_cpu_rate_from_tick_quantised_counter_stays_physical():
    # a fully busy core whose CPU-time counter advances in 10 ms ticks, sampled every 50 ms with jitter
    t = np.cumsum(np.r_[0, np.random.default_rng(0).uniform(0.045, 0.055, 400)])
    busy = np.floor(t * 100) / 100  # seconds of CPU, quantised to ticks
    df = pd.DataFrame({"t_ns": (t * S).astype(np.int64), "busy": busy})
    r = rate_from_counter(df, "busy", 100.0).dropna()
    assert r.between(95, 105).all(), (r.min(), r.max())
