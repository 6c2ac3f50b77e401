"""The metric registry: every figure a phase reports, declared once.

``metrics.py`` computes the figures; this table says what each one is: its key in metrics.json,
unit, formula (the text the Methodology page quotes), what it rests on (measured, or estimated
from a datasheet peak or a configured price), how it aggregates, how it is displayed and which
summary.parquet columns carry it. metrics.json's ``labels`` and ``definitions``, the summary
table, the site's tables and the CLI's summary are generated from it, so that a metric's facts
cannot drift apart between the places that show it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from tokenbench.config import HardwareSpec

PERCENTILES = (50, 90, 95, 99)
WINDOW_S = 5.0  # per-window aggregates, as BentoML's study reports every 5 s

MEASURED, ESTIMATED, NOT_AVAILABLE = "measured", "estimated", "not available"


class Basis(Enum):
    """What a figure rests on; with what a run had (a power sensor, a price) it decides the label."""
    MEASURED = "measured"
    SENSOR = "measured where a power sensor exists"
    PEAK = "estimated: peak FLOP/s from a datasheet or the CPU's ISA (measured where the peak was)"
    PRICE = "estimated from a configured price"
    SENSOR_PRICE = "estimated from measured energy and a configured price"
    BANDWIDTH = "estimated: bytes per step from the model's config over a datasheet memory bandwidth"


class Aggregation(Enum):
    PER_REQUEST = "per request"
    PER_WINDOW = "per window"
    PER_PHASE = "per phase"
    PER_CELL = "per cell"


class Replicates(Enum):
    """How a figure is to combine across replicate runs of one cell (declared ahead of replicates)."""
    POOL = "pool the samples, recompute the distribution"
    MEAN = "mean, with its spread"
    SUM = "sum"
    MAX = "maximum"


CONVENTIONS = (
    ("**Clock.** Every timestamp is on one monotonic clock (ns). Each streamed event carries the kernel's "
     "receive time of the socket read that delivered it, so chunks that arrive in one read share a timestamp."),
    ("**Issuing window.** From the phase's start until it stopped issuing requests (`duration_s`). Throughput "
     "and goodput count inside it; the drain that follows (`drain_s`: in-flight requests finishing) is excluded."),
    ("**Telemetry window.** A phase's telemetry is its issuing window too, the window its tokens are counted in: "
     "energy is each cumulative counter (NVML's per-GPU energy counter, RAPL package energy) interpolated at the "
     "window's two ends; utilisation, memory and clocks are the samples inside it. Samples of the drain that "
     "follows belong to no phase. Power and energy are the engine's GPUs' (those it was given), summed; on a "
     "host without GPUs, the CPU packages' (RAPL)."),
    ("**Energy units.** tok/J is output tokens per joule; the seed reports' \"tok/W\" (tok/s ÷ W) is the same "
     "unit. *Gross* energy is what the sensors read; *net* subtracts the baseline: the host's mean power in a "
     "window before the server was launched (`telemetry.baseline_s`), times the window's length."),
    ("**Output tokens.** The server's usage count (`stream_options.include_usage`), or the chunk count where the "
     "server sends none (`output_tokens_source` says which). To place tokens in time, a request's count is "
     "spread evenly over its content chunks."),
    ("**Requests.** Latency distributions cover the phase's requests that finished ok; a formula says so where "
     "failed requests count too (\"any status\")."),
    (f"**Aggregation.** *per request*: one value per request (ITL: per gap between chunks), reported as n, mean, "
     f"std, min, max and percentiles {', '.join(f'p{p}' for p in PERCENTILES)} (linear interpolation); "
     f"*per window*: one value per whole {WINDOW_S:g} s window of the issuing window, reported the same way; "
     f"*per phase*: one value."),
)


@dataclass(frozen=True)
class Metric:
    key: str  # the key in a phase of metrics.json
    label: str  # display label; the unit is appended in headers
    unit: str
    formula: str  # as the code computes it, quoted on the Methodology page
    basis: Basis = Basis.MEASURED
    aggregation: Aggregation = Aggregation.PER_PHASE
    replicates: Replicates = Replicates.MEAN
    digits: int = 1
    percent: bool = False  # a fraction, shown as a percentage
    price: str | None = None  # the HardwareSpec field a PRICE or SENSOR_PRICE figure needs
    summary: Mapping[str, str | None] = field(default_factory=dict)  # summary column -> statistic (None: the value)

    def label_in(self, run: RunEvidence) -> str:
        """measured / estimated / not available, for this metric in a run with this evidence."""
        priced = self.price is not None and getattr(run.hardware, self.price) is not None
        match self.basis:
            case Basis.MEASURED:
                return MEASURED
            case Basis.SENSOR:
                return MEASURED if run.power_measured else NOT_AVAILABLE
            case Basis.PEAK:
                return MEASURED if run.peak_measured else ESTIMATED
            case Basis.PRICE:
                return ESTIMATED if priced else NOT_AVAILABLE
            case Basis.SENSOR_PRICE:
                return ESTIMATED if priced and run.power_measured else NOT_AVAILABLE
            case Basis.BANDWIDTH:
                return ESTIMATED

    def header(self, stats: tuple[str, ...] = ()) -> str:
        name = " ".join([self.label, " / ".join(stats)]) if stats else self.label
        return name if self.percent else f"{name} ({self.unit})"

    def format(self, value: Any) -> str:
        return fmt(value, self.digits, self.percent)

    def definition(self) -> dict[str, str]:
        return {"label": self.label, "unit": self.unit, "formula": self.formula, "basis": self.basis.value,
                "aggregation": self.aggregation.value, "replicates": self.replicates.value}


@dataclass(frozen=True)
class RunEvidence:
    """What a run had to go on beyond request records: a power sensor, a measured peak, prices."""
    power_measured: bool
    peak_measured: bool
    hardware: HardwareSpec


def fmt(value: Any, digits: int = 1, pct: bool = False) -> str:
    """A figure as text: n/a for a missing or non-finite value, thousands grouped, fractions as %."""
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return "n/a"
    if pct:
        return f"{100 * value:.{digits}f} %"
    if isinstance(value, int) or (isinstance(value, float) and abs(value) >= 1000):
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


_PER_REQUEST = {"aggregation": Aggregation.PER_REQUEST, "replicates": Replicates.POOL}
_OPEN_LOOP_ONLY = "Open-loop phases only. "

_DECLARED = [
    # ---- throughput and requests (the order of summary columns follows this list)
    Metric("output_tok_s", "output throughput", "tok/s",
           "output_tokens_in_window ÷ duration_s: output tokens that arrived inside the issuing window per "
           "second (the drain is excluded).",
           summary={"output_tok_s": None}),
    Metric("request_rps", "finished", "req/s",
           "Ok requests of the phase whose response ended inside the issuing window ÷ duration_s.",
           digits=2, summary={"request_rps": None}),
    Metric("success_rate", "success", "fraction",
           "Ok requests ÷ requests the phase sent.", percent=True, summary={"success_rate": None}),
    Metric("requests_sent", "sent", "requests", "Requests the phase sent, any status.",
           replicates=Replicates.SUM, digits=0, summary={"requests_sent": None}),
    # ---- latency
    Metric("ttft_ms", "TTFT", "ms", "First token's receive time (content or reasoning; an empty role chunk is not a "
           "token) − the time the request was written (its last byte handed to the kernel), per ok request. "
           "Opening the connection is not in it: see connect time.",
           summary={"ttft_p50_ms": "p50", "ttft_p95_ms": "p95", "ttft_p99_ms": "p99", "ttft_mean_ms": "mean"},
           **_PER_REQUEST),
    Metric("e2e_ms", "E2E", "ms", "End of the response − the time the request was written, per ok request.",
           summary={"e2e_p50_ms": "p50", "e2e_p99_ms": "p99", "e2e_mean_ms": "mean"}, **_PER_REQUEST),
    Metric("tpot_ms", "TPOT", "ms",
           "(E2E − TTFT) ÷ (output_tokens − 1), per ok request with at least 2 output tokens; reasoning tokens "
           "the server counted but never streamed are left out of output_tokens here (they were spent before "
           "the first visible token).",
           digits=2, summary={"tpot_p50_ms": "p50", "tpot_p99_ms": "p99"}, **_PER_REQUEST),
    Metric("itl_ms", "ITL", "ms",
           "Gaps between the receive times of consecutive content chunks of an ok request, pooled over the "
           "phase's requests (chunks delivered by one socket read: gap 0).",
           digits=2, summary={"itl_p50_ms": "p50", "itl_p99_ms": "p99"}, **_PER_REQUEST),
    Metric("window_output_tok_s", "output throughput per window", "tok/s",
           f"Output tokens that arrived in each whole {WINDOW_S:g} s window of the issuing window ÷ {WINDOW_S:g} s "
           f"(a remainder shorter than {WINDOW_S:g} s is dropped; a shorter phase has one window, still divided "
           f"by {WINDOW_S:g} s).",
           aggregation=Aggregation.PER_WINDOW, replicates=Replicates.POOL,
           summary={"window_tok_s_std": "std", "windows": "n"}),
    # ---- efficiency and cost
    Metric("mfu_pct", "MFU", "%",
           "output_tok_s × FLOPs per token ÷ peak FLOP/s × 100. FLOPs per token: 2 × the parameters a token "
           "touches in the weight matmuls (the model figures' flops_per_token: active parameters for a mixture of "
           "experts, quantized checkpoints counted unpacked), decode only (prefill and attention excluded). Peak: "
           "the dense FP16 datasheet figure of each GPU the engine was given × their count (so MFU is per GPU "
           "too), else an estimated CPU peak. n/a without a parameter count or a peak.",
           basis=Basis.PEAK, digits=3, summary={"mfu_pct": None}),
    Metric("power_w", "power", "W",
           "energy_j ÷ duration_s: mean power over the issuing window, the engine's GPUs summed (else the CPU "
           "packages). `power_source` says which sensor.",
           basis=Basis.SENSOR, summary={"power_w": None}),
    Metric("tok_per_j", "energy efficiency", "tok/J",
           "output_tokens_in_window ÷ energy_j: tokens and energy over the same issuing window (the seeds' "
           "\"tok/W\" is the same unit).",
           basis=Basis.SENSOR, digits=2, summary={"tok_per_j": None}),
    Metric("usd_per_mtok", "cost", "$/M tok",
           "hardware.price_usd_per_hour ÷ (output_tok_s × 3600) × 10^6: the configured hourly price over the "
           "output tokens an hour at this throughput produces.",
           basis=Basis.PRICE, price="price_usd_per_hour", digits=2, summary={"usd_per_mtok": None}),
    # ---- utilisation
    Metric("cpu_util_pct", "host CPU busy", "%",
           "Mean over the phase's telemetry window of the host's CPU busy time per second, as % of the logical CPUs "
           "this process may use (busy time summed over those CPUs only) "
           "(rates over spans of at least 250 ms of the tick-quantised counter).",
           summary={"cpu_util_pct": None}),
    Metric("server_cpu_util_pct", "server CPU", "% of all cores",
           "Mean over the phase's telemetry window of the server process tree's CPU time per second, as % of "
           "all cores: the logical CPUs this process may use, as for cpu_util_pct (rates over spans of at least "
           "250 ms).",
           summary={"server_cpu_util_pct": None}),
    Metric("gpu_util_pct", "GPU utilisation", "%",
           "Mean of NVML's GPU utilisation over the phase's telemetry samples, all GPUs pooled.",
           summary={"gpu_util_pct": None}),
    # ---- goodput
    Metric("goodput_rps", "goodput", "req/s",
           "Ok requests ending inside the issuing window that met every configured SLO bound (TTFT, TPOT, E2E; "
           "a 1-token request has no TPOT and passes that bound) ÷ duration_s. n/a when no SLO is configured.",
           digits=2, summary={"goodput_rps": None}),
    Metric("slo_attainment", "SLO met", "fraction",
           "Requests of the phase that finished ok and met every configured SLO bound ÷ every request the phase "
           "sent, any status (a failed, timed-out or cancelled request missed its SLO). n/a when no SLO is "
           "configured.",
           percent=True, digits=0, summary={"slo_attainment": None}),
    Metric("failure_rate", "failed", "fraction",
           "Requests the phase sent that did not finish ok (error, timeout, cancelled) ÷ requests it sent. Shown "
           "beside latency percentiles, which cover ok requests only: an engine that drops requests must not "
           "look faster.", percent=True, summary={"failure_rate": None}),
    # ---- fairness and stability (seed 002 §5)
    Metric("decode_rate_cv", "decode rate CV", "fraction",
           "std ÷ mean of the per-request decode rate (decode_tok_s_per_request): how evenly the server shares "
           "its decode capacity between requests.", percent=True, summary={"decode_rate_cv": None}),
    Metric("decode_rate_range", "decode rate range", "tok/s",
           "max − min of the per-request decode rate.", summary={"decode_rate_range": None}),
    Metric("ttft_jitter_ms", "TTFT jitter", "ms", "TTFT p99 − TTFT mean, per phase (seed 002's jitter).",
           summary={"ttft_jitter_ms": None}),
    # ---- contention (validity)
    Metric("foreign_cpu_pct", "foreign CPU", "% of all cores",
           "Mean over the phase's telemetry window of host CPU busy − the server process tree's CPU − the client's "
           "(load generator and telemetry sampler), clipped at 0: CPU time other processes took.",
           summary={"foreign_cpu_pct": None}),
    # ---- input and total throughput (after the contention figures: summary columns are only appended)
    Metric("input_tok_s", "input throughput", "tok/s",
           "Σ prompt_tokens (the server's usage count) of the phase's ok requests whose first content token arrived "
           "inside the issuing window (their prefill finished in it) ÷ duration_s. n/a when the server reports no "
           "prompt token counts.",
           summary={"input_tok_s": None}),
    Metric("total_tok_s", "total throughput", "tok/s",
           "input_tok_s + output_tok_s: prompt tokens prefilled and output tokens delivered inside the issuing "
           "window, per second.",
           summary={"total_tok_s": None}),
    Metric("gpu_contended_share", "GPU contended", "fraction",
           "Share of the phase's GPU samples in which a process that is not the server's held a GPU (checked about "
           "once a second) or NVML reported thermal, hardware-slowdown or power-brake clock events.",
           percent=True),
    # ---- energy per token, per GPU and the roofline (appended: summary columns keep their order)
    Metric("j_per_output_token", "energy per output token", "J/tok",
           "energy_j ÷ output_tokens_in_window: gross energy over the issuing window per output token in it.",
           basis=Basis.SENSOR, digits=3, summary={"j_per_output_token": None}),
    Metric("net_j_per_output_token", "net energy per output token", "J/tok",
           "net_energy_j ÷ output_tokens_in_window: the energy above the baseline per output token.",
           basis=Basis.SENSOR, digits=3, summary={"net_j_per_output_token": None}),
    Metric("mbu_pct", "MBU", "%",
           "decode_bytes_per_s ÷ memory bandwidth × 100: bytes a decode step reads (the weights once per step, "
           "each sequence's KV cache) per second, against the datasheet bandwidth of the engine's GPUs × their "
           "count. Decode steps per second = output_tok_s ÷ decode_concurrency. n/a without the model's weight "
           "and KV-cache sizes or a bandwidth.",
           basis=Basis.BANDWIDTH, digits=2, summary={"mbu_pct": None}),
    Metric("prefill_compute_pct", "prefill compute use", "%",
           "input_tok_s × FLOPs per token ÷ peak FLOP/s × 100: prefill's weight FLOPs against the peak (the "
           "compute roof, as mfu_pct is for decode).",
           basis=Basis.PEAK, digits=3, summary={"prefill_compute_pct": None}),
    Metric("output_tok_s_per_gpu", "output throughput per GPU", "tok/s/GPU",
           "output_tok_s ÷ the number of GPUs the engine was given (as InferenceX reports). n/a on CPU.",
           summary={"output_tok_s_per_gpu": None}),
    # ---- not in the summary table
    Metric("duration_s", "duration", "s", "Issuing window length: from the phase's start until it stopped "
           "issuing requests."),
    Metric("drain_s", "drain", "s", "From the phase stopping issuing to its last request finishing or being "
           "cancelled."),
    Metric("ttft_sched_ms", "TTFT from schedule", "ms",
           _OPEN_LOOP_ONLY + "First content chunk's receive time − scheduled send time, per ok request (queueing in the "
           "client included).", **_PER_REQUEST),
    Metric("first_byte_ms", "first byte", "ms",
           "First response body byte's receive time − the time the request was written, per ok request (how "
           "far TTFT is from the first byte).", **_PER_REQUEST),
    Metric("connect_ms", "connect", "ms",
           "Request written − attempt started, per ok request: taking a kept-alive connection or opening a new "
           "one, then writing the request (outside TTFT and E2E).", digits=3, **_PER_REQUEST),
    Metric("ttfot_ms", "time to first output token", "ms",
           "First content token's receive time − the time the request was written, per ok request, for a "
           "reasoning model (TTFT counts its first reasoning token).", **_PER_REQUEST),
    Metric("reasoning_tokens_mean", "reasoning tokens", "tok",
           "Mean of the server's usage.completion_tokens_details.reasoning_tokens over ok requests (part of "
           "output_tokens).", digits=1),
    Metric("reasoning_chunks_mean", "reasoning chunks", "chunks",
           "Mean number of streamed chunks carrying reasoning_content / reasoning, per ok request.", digits=1),
    Metric("send_lag_ms", "send lag", "ms",
           _OPEN_LOOP_ONLY + "Actual − scheduled send time, per request sent (any status). With the client's event-loop "
           "lag it bounds the timing error the client itself adds.", digits=2, **_PER_REQUEST),
    Metric("decode_tok_s_per_request", "decode rate per request", "tok/s",
           "1000 ÷ TPOT (ms), per ok request with TPOT > 0 (TPOT 0: every chunk came in one socket read, no "
           "rate to report).", **_PER_REQUEST),
    Metric("achieved_send_rps", "send rate", "req/s", "Requests the phase sent (any status) ÷ duration_s.",
           digits=2),
    Metric("schedule_rps", "scheduled rate", "req/s",
           _OPEN_LOOP_ONLY + "Arrivals scheduled inside the issuing window ÷ duration_s (a Poisson or gamma schedule "
           "deviates from its target rate by chance).", digits=2),
    Metric("delivered_ratio", "delivered on schedule", "fraction",
           _OPEN_LOOP_ONLY + "Arrivals scheduled inside the issuing window that were sent before it closed ÷ arrivals "
           "scheduled inside it: whether the client kept up with its schedule.", percent=True),
    Metric("rate_ratio", "achieved / target rate", "fraction",
           _OPEN_LOOP_ONLY + "achieved_send_rps ÷ the phase's target rate_rps, where it has one.", percent=True),
    Metric("output_tokens_in_window", "output tokens in window", "tokens",
           "Output tokens of the phase's ok requests whose chunks arrived inside the issuing window.",
           replicates=Replicates.SUM, digits=0),
    Metric("output_tokens_total", "output tokens", "tokens",
           "Sum of output_tokens over the phase's ok requests, wherever they arrived (drain included).",
           replicates=Replicates.SUM, digits=0),
    Metric("token_count_checked", "token counts checked", "requests",
           "Ok requests with both the server's usage count and the client's re-tokenization of the streamed "
           "text by the model's own tokenizer (where the engine can tokenize).",
           replicates=Replicates.SUM, digits=0),
    Metric("token_count_mismatch_rate", "token count mismatch", "fraction",
           "Checked requests whose client count differs from the server's ÷ checked requests "
           "(detokenize → re-tokenize is not always one-to-one).", percent=True),
    Metric("token_count_mean_diff", "token count difference", "tokens",
           "Mean of (client count − server count) over checked requests.", digits=2),
    Metric("prompt_tokens_mean", "prompt length", "tokens",
           "Mean of the server's prompt_tokens over ok requests that report it."),
    Metric("goodput_tok_s", "goodput", "tok/s",
           "output_tokens of the requests counted in goodput_rps (all their tokens, wherever they "
           "arrived) ÷ duration_s."),
    Metric("energy_j", "energy", "J",
           "Gross energy over the issuing window [start, end): per GPU the NVML energy counter interpolated at "
           "the two ends (a drop counts as a reset), summed over the engine's GPUs; a GPU without a counter: the "
           "trapezoid integral of its power samples (instantaneous field value, else NVML's power usage); on a host "
           "without GPUs the RAPL package counters. n/a if any of the engine's GPUs has no power signal.",
           basis=Basis.SENSOR, replicates=Replicates.SUM, digits=0),
    Metric("net_energy_j", "net energy", "J",
           "energy_j − baseline power × duration_s: the energy above the host's draw before the server's launch "
           "(the cell's baseline_power_w).",
           basis=Basis.SENSOR, replicates=Replicates.SUM, digits=0),
    Metric("net_power_w", "net power", "W", "net_energy_j ÷ duration_s.", basis=Basis.SENSOR),
    Metric("j_per_total_token", "energy per token (input + output)", "J/tok",
           "energy_j ÷ (output_tokens_in_window + input_tok_s × duration_s): per token prefilled or decoded in "
           "the issuing window.", basis=Basis.SENSOR, digits=4),
    Metric("energy_counter_vs_power_pct", "counter vs power integral", "%",
           "(power integral − counter energy) ÷ counter energy × 100 over the issuing window, the GPU that "
           "disagrees most: a cross-check of NVML's energy counter against its power samples. Over ±5 % is "
           "flagged (`energy_check_flagged`): the power trace (a 1 s average on Ampere and newer) cannot resolve "
           "the window, or a sensor is off.", basis=Basis.SENSOR, digits=1),
    Metric("power_w_per_gpu", "power per GPU", "W/GPU",
           "power_w ÷ the number of GPUs the engine was given.", basis=Basis.SENSOR),
    Metric("decode_concurrency", "decode batch", "requests",
           "request_rps × mean E2E (Little's law, at least 1): the mean number of requests decoding together.",
           digits=1),
    Metric("decode_bytes_per_s", "decode bytes read", "B/s",
           "output_tok_s ÷ decode_concurrency × weight bytes + output_tok_s × KV bytes per token × (mean prompt "
           "length + mean output length ÷ 2): the weights read once per decode step and each token's KV cache "
           "read at the mean context length. Dense models read all weights each step; a mixture of experts "
           "counts the model figures' weight_bytes (an upper bound at small batches).",
           basis=Basis.BANDWIDTH, digits=0),
    Metric("energy_kwh_per_mtok", "energy per M tokens", "kWh/M tok",
           "j_per_output_token × 10^6 ÷ 3.6 × 10^6: energy and tokens over the same issuing window.",
           basis=Basis.SENSOR, digits=3),
    Metric("energy_usd_per_mtok", "electricity cost", "$/M tok",
           "energy_kwh_per_mtok × hardware.electricity_usd_per_kwh (configured).",
           basis=Basis.SENSOR_PRICE, price="electricity_usd_per_kwh", digits=3),
    Metric("server_rss_peak_mb", "server RSS peak", "MiB",
           "Largest resident memory summed over the server process tree over the phase's samples ÷ 2^20 (shared "
           "pages counted once per process that maps them: an upper bound; see server_pss_peak_mb).",
           replicates=Replicates.MAX, digits=0),
    Metric("server_pss_peak_mb", "server PSS peak", "MiB",
           "Largest proportional set size of the server process tree over the phase's samples ÷ 2^20: pages "
           "shared between its processes counted once, divided among them (server_rss_peak_mb counts them "
           "once per process, an upper bound). Sampled about twice a second, less often for a large tree: a read "
           "costs ~14 ms of CPU per GiB resident and the reads keep to 2 % of the sampler's time (every ~4 s at "
           "6 GiB).",
           replicates=Replicates.MAX, digits=0),
    Metric("gpu_mem_used_peak_mb", "GPU memory peak", "MiB",
           "Largest NVML memory used of any GPU over the phase's telemetry window ÷ 2^20.",
           replicates=Replicates.MAX, digits=0),
    Metric("temp_max_c", "GPU temperature peak", "°C",
           "Highest NVML temperature of any GPU over the phase's telemetry window.",
           replicates=Replicates.MAX, digits=0),
    Metric("sm_clock_mean_mhz", "SM clock", "MHz",
           "Mean NVML SM clock over the phase's telemetry samples, all GPUs pooled.", digits=0),
    Metric("telemetry_samples", "telemetry samples", "samples",
           "Telemetry samples (all devices) in the phase's telemetry window.", replicates=Replicates.SUM, digits=0),
    Metric("steal_cpu_pct", "hypervisor steal", "% of all cores",
           "Mean over the phase's telemetry window of the steal time of the CPUs sampled (/proc/stat: time the "
           "hypervisor ran another guest on this one's virtual CPUs) ÷ (time × CPUs). Part of foreign_cpu_pct.",
           summary={"steal_cpu_pct": None}),
]

METRICS: dict[str, Metric] = {m.key: m for m in _DECLARED}

# phase fields that describe the phase or explain a figure rather than measure it
PHASE_FIELDS = {
    "phase": "the phase's name in the load",
    "label": "the phase's load in words, as the load generator ran it",
    "mode": "closed, poisson, gamma, constant, trace or idle",
    "warmup": "warm-up phases are left out of steady-state figures",
    "target": "the offered load: users, or rate_rps, and the phase's bound",
    "status_counts": "requests sent, by final status",
    "output_tokens_source": "where output token counts came from: usage (the server) or chunks (a fallback)",
    "power_source": "the sensor behind power_w and energy_j",
    "energy_check_flagged": "true when a GPU's energy counter and its power integral disagree by more than 5 %",
    "per_device_energy": "energy_j, power_w, baseline power and net energy per device (each of the engine's GPUs)",
    "slo": "the SLO bounds goodput counted against",
    "validity": "MLPerf-LoadGen-style checks: the phase ran long enough, sent enough requests, kept errors under "
                "the bound, the client kept up (send lag, event-loop lag) and, open loop, delivered its "
                "schedule; nothing else took the hardware (contention) and the window's halves agree "
                "(stability); each failed check is named with its numbers",
    "start_ns": "the issuing window's start (monotonic clock, ns)",
    "end_ns": "the issuing window's end: when the phase stopped issuing requests (monotonic clock, ns)",
    "open_loop": "whether the phase's arrivals follow a schedule (poisson, gamma, constant, trace)",
    "stability": "the issuing window's halves: output tok/s and median TPOT of the requests ending in each",
    "intervals": "within-run confidence intervals: a block bootstrap over time blocks of the issuing window "
                 "(block length, block count and rule given); per latency metric its mean, p50, p95 and p99",
    "peer_figures": "TTFT, TPOT, ITL and output tokens of the phase's ok requests as vLLM bench serve, GuideLLM, "
                    "AIPerf and inference-perf define them, each aggregated as its tool does, beside tokenbench's "
                    "own, with the difference and a note wherever the records lack what a definition needs "
                    "(analysis/definitions.py; Methodology, \"Other tools' definitions\")",
    "foreign_cpu_top": "who took the foreign CPU: the processes outside the benchmark (kernel threads included) "
                       "with the largest mean share of all cores over the phase's window, from a walk of every "
                       "process about once a second, heaviest first, those of at least 1 %",
    "stopped_reason": "why the phase stopped before its end: the breaker (requests kept failing to connect, or "
                      "the engine's process was gone) or an interrupt; null: it ran its course",
    "not_sent_breaker_open": "open loop: arrivals of the schedule inside the window not sent because the breaker "
                             "had stopped the phase (they count as not delivered)",
    "timeout_s": "the per-request timeout the phase ran with (auto: the one its last request got)",
    "timeout_auto": "true when the phase set no timeout_s: 10 x the p99 E2E of the run's ok requests so far, "
                    "10-120 s",
    "over_max_tokens": "ok requests that returned more output tokens than their max_tokens asked for (how many, "
                       "the most returned, the cap), or null: none did",
}

# summary.parquet column -> (metric key, statistic or None for the value)
SUMMARY_COLUMNS: dict[str, tuple[str, str | None]] = {
    col: (m.key, stat) for m in _DECLARED for col, stat in m.summary.items()}


# ============================================================================ cell-level figures
# Figures of a whole cell (one server launch and load test), computed by analysis/efficiency.py
# and written under metrics.json's "cell". Kept in this separate block so that edits to the
# per-phase list above merge cleanly. The engine_* figures are per phase (rows of the cell's
# phase_table) but come from the engine's own /metrics samples, so they are declared here too.

# The engine's Prometheus metric names each engine_* figure reads, per metric-name family (the
# names the catalog scrapes; engines/catalog.py). The first name present wins (vLLM renamed its
# KV-cache gauge). KV-cache usage is a fraction (1 = full) in every family listed.
ENGINE_STAT_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "llama.cpp": {"prompt_tokens": ("llamacpp:prompt_tokens_total",),
                  "generation_tokens": ("llamacpp:tokens_predicted_total",),
                  "kv_cache_usage": ("llamacpp:kv_cache_usage_ratio",),  # gone from recent llama-server builds
                  "requests_running": ("llamacpp:requests_processing",),
                  "requests_waiting": ("llamacpp:requests_deferred",)},
    "vllm": {"prompt_tokens": ("vllm:prompt_tokens_total",),
             "generation_tokens": ("vllm:generation_tokens_total",),
             "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
             "requests_running": ("vllm:num_requests_running",),
             "requests_waiting": ("vllm:num_requests_waiting",)},
    "sglang": {"prompt_tokens": ("sglang:prompt_tokens_total",),
               "generation_tokens": ("sglang:generation_tokens_total",),
               "kv_cache_usage": ("sglang:token_usage",),
               "requests_running": ("sglang:num_running_reqs",),
               "requests_waiting": ("sglang:num_queue_reqs",)},
    "lmdeploy": {"prompt_tokens": ("lmdeploy:prompt_tokens_total",),
                 "generation_tokens": ("lmdeploy:generation_tokens_total",),
                 "kv_cache_usage": ("lmdeploy:gpu_cache_usage_perc",),
                 "requests_running": ("lmdeploy:num_requests_running",),
                 "requests_waiting": ("lmdeploy:num_requests_waiting",)},
    "tgi": {"prompt_tokens": ("tgi_request_input_length_sum",),  # histogram sums: grow as requests end
            "generation_tokens": ("tgi_request_generated_tokens_sum",),
            "kv_cache_usage": (),
            "requests_running": ("tgi_batch_current_size",),
            "requests_waiting": ("tgi_queue_size",)},
}


def _engine_names(stat: str) -> str:
    return "; ".join(f"{fam}: {', '.join(n[stat]) or 'none'}" for fam, n in ENGINE_STAT_NAMES.items())


@dataclass(frozen=True)
class CellMetric(Metric):
    """A cell-level figure. ``needs``: HardwareSpec fields it needs besides its price (a planned
    daily volume); without them it is not available, with them it is a projection, so estimated."""
    needs: tuple[str, ...] = ()

    def label_in(self, run: RunEvidence) -> str:
        if any(getattr(run.hardware, f) is None for f in self.needs):
            return NOT_AVAILABLE
        label = super().label_in(run)
        return ESTIMATED if self.needs and label == MEASURED else label

    def definition(self) -> dict[str, str]:
        out = super().definition()
        if self.needs:
            out["basis"] += "; projected to the configured " + ", ".join(f"hardware.{f}" for f in self.needs)
        return out


_CELL = {"aggregation": Aggregation.PER_CELL}
_NON_IDLE = "the cell's non-idle phases (warm-up included)"
_ENGINE = {"aggregation": Aggregation.PER_PHASE}
_ENGINE_WINDOW = ("over the phase's telemetry window (its issuing window), from the engine's "
                  "own /metrics scrapes; n/a for an engine whose metric names are not listed, or with no scrape")

CELL_CONVENTIONS = (
    ("**Cell figures.** Pooled over a cell's phases, not averaged over them: sums of the phases' tokens, "
     "seconds and joules, then one division. *per cell*: one value for the cell."),
    ("**Engine figures.** The engine's own Prometheus counters and gauges, scraped about once a second on the "
     "same clock as the telemetry, per phase over its telemetry window. They are the engine's view (its own "
     "token counts, its own queue), beside the client's."),
)

_CELL_DECLARED = [
    # ---- MFU and throughput over the cell
    CellMetric("overall_output_tok_s", "overall output throughput", "tok/s",
               f"Σ output_tokens_in_window ÷ Σ duration_s over {_NON_IDLE}: their issuing windows pooled.",
               **_CELL),
    CellMetric("overall_mfu_pct", "overall MFU", "%",
               "overall_output_tok_s × FLOPs per token ÷ peak FLOP/s × 100 (the non-idle phases' mfu_pct weighted "
               "by their issuing seconds): decode weight FLOPs only, FLOPs and peak as for mfu_pct.",
               basis=Basis.PEAK, digits=3, **_CELL),
    # ---- energy over the cell
    CellMetric("overall_tok_per_j", "overall energy efficiency", "tok/J",
               f"Σ output_tokens_in_window ÷ Σ energy_j over {_NON_IDLE}: both over the phases' issuing windows. "
               "n/a unless every one of those phases has energy_j.",
               basis=Basis.SENSOR, digits=2, **_CELL),
    CellMetric("overall_j_per_output_token", "overall energy per output token", "J/tok",
               "Σ energy_j ÷ Σ output_tokens_in_window over the phases of overall_tok_per_j.",
               basis=Basis.SENSOR, digits=3, **_CELL),
    CellMetric("overall_net_j_per_output_token", "overall net energy per output token", "J/tok",
               "Σ net_energy_j ÷ Σ output_tokens_in_window over the same phases: above the baseline.",
               basis=Basis.SENSOR, digits=3, **_CELL),
    CellMetric("overall_energy_kwh_per_mtok", "overall energy per M tokens", "kWh/M tok",
               "(Σ energy_j ÷ 3.6 × 10^6) ÷ (Σ output_tokens_in_window ÷ 10^6) over the phases of overall_tok_per_j.",
               basis=Basis.SENSOR, digits=4, **_CELL),
    CellMetric("overall_energy_usd_per_mtok", "overall electricity cost", "$/M tok",
               "overall_energy_kwh_per_mtok × hardware.electricity_usd_per_kwh (configured).",
               basis=Basis.SENSOR_PRICE, price="electricity_usd_per_kwh", digits=4, **_CELL),
    # ---- idle and active power: seed 000's "cooldown valley"
    CellMetric("idle_power_w", "idle power", "W",
               "Mean power over the idle phases: Σ energy_j ÷ Σ (energy_j ÷ power_w), each idle phase's power_w "
               "weighted by its length (a plain mean of power_w where a phase has no energy_j). With no idle "
               "phase: energy_j's rule over the window from the server being ready to the first phase "
               "(`idle_power_from` says which). The server is loaded: compare baseline_power_w, before its launch.",
               basis=Basis.SENSOR, **_CELL),
    CellMetric("active_power_w", "active power", "W",
               "Mean power over the non-idle, non-warm-up phases, weighted as idle_power_w.",
               basis=Basis.SENSOR, **_CELL),
    CellMetric("active_idle_delta_w", "power of the work", "W",
               "active_power_w − idle_power_w: what serving adds to the idle draw.",
               basis=Basis.SENSOR, **_CELL),
    # ---- the baseline and the server's start-up, outside every phase
    CellMetric("baseline_power_w", "baseline power", "W",
               "energy_j's rule over the baseline window: telemetry.baseline_s seconds before the server's launch, "
               "the engine's GPUs (else the CPU packages) with no engine on them. Net figures subtract it.",
               basis=Basis.SENSOR, **_CELL),
    CellMetric("startup_s", "time to ready", "s",
               "From the server's launch to its health endpoint answering ready (model load, compilation, "
               "warm-up the engine does itself).", digits=2, **_CELL),
    CellMetric("startup_energy_j", "start-up energy", "J",
               "energy_j's rule over [launch, ready]: what starting the engine cost, outside every phase.",
               basis=Basis.SENSOR, digits=0, **_CELL),
    CellMetric("startup_net_energy_j", "start-up net energy", "J",
               "startup_energy_j − baseline_power_w × startup_s.", basis=Basis.SENSOR, digits=0, **_CELL),
    # ---- how well the telemetry resolved the run
    CellMetric("telemetry_interval_p50_ms", "sampling interval p50", "ms",
               "Median time between consecutive telemetry samples of a device (the worst device).", digits=1, **_CELL),
    CellMetric("telemetry_interval_p99_ms", "sampling interval p99", "ms",
               "99th percentile of the time between consecutive samples of a device (the worst device).",
               digits=1, **_CELL),
    CellMetric("telemetry_max_gap_ms", "largest sampling gap", "ms",
               "Longest time between consecutive samples of a device (the worst device).", digits=0, **_CELL),
    # ---- power against utilisation: seed 000 §6.2
    CellMetric("power_util_slope_w_per_pct", "power per utilisation point", "W/%",
               "Least-squares slope (scipy.stats.linregress) of power against utilisation over the telemetry "
               "samples inside the phases (idle included): per GPU sample time, NVML power summed over the GPUs "
               "against their mean GPU utilisation; without GPU power, the RAPL power against host CPU busy % "
               "(`power_util_x` says which). n/a with fewer than 3 samples or one utilisation value only.",
               basis=Basis.SENSOR, digits=2, **_CELL),
    CellMetric("power_util_intercept_w", "power at 0 % utilisation", "W",
               "The intercept of the power_util_slope_w_per_pct fit.", basis=Basis.SENSOR, **_CELL),
    CellMetric("power_util_r2", "power/utilisation fit r²", "r²",
               "Squared correlation of the power_util_slope_w_per_pct fit.", basis=Basis.SENSOR, digits=3, **_CELL),
    CellMetric("power_util_n", "power/utilisation fit samples", "samples",
               "Sample times the power_util_slope_w_per_pct fit used.",
               basis=Basis.SENSOR, replicates=Replicates.SUM, digits=0, **_CELL),
    # ---- yearly cost at a planned daily volume
    CellMetric("serving_hours_per_day", "serving hours a day", "h/day",
               "hardware.daily_output_tokens ÷ (overall_output_tok_s × 3600): machine-hours a day to serve the "
               "planned volume at the measured throughput (over 24: more than one machine).",
               needs=("daily_output_tokens",), digits=2, **_CELL),
    CellMetric("yearly_hardware_usd", "yearly hardware cost", "$/year",
               "hardware.price_usd_per_hour × serving_hours_per_day × 365.",
               basis=Basis.PRICE, price="price_usd_per_hour", needs=("daily_output_tokens",), digits=0, **_CELL),
    CellMetric("yearly_electricity_usd", "yearly electricity cost", "$/year",
               "overall_energy_kwh_per_mtok × hardware.daily_output_tokens ÷ 10^6 × 365 × "
               "hardware.electricity_usd_per_kwh: energy while serving only (idle hours are not counted).",
               basis=Basis.SENSOR_PRICE, price="electricity_usd_per_kwh", needs=("daily_output_tokens",),
               digits=0, **_CELL),
    # ---- hardware state over the cell (seed 000 §3.2)
    CellMetric("overall_gpu_mem_used_peak_mb", "GPU memory peak", "MiB",
               "Largest NVML memory used of any GPU over the telemetry samples inside the phases ÷ 2^20.",
               replicates=Replicates.MAX, digits=0, **_CELL),
    CellMetric("overall_server_rss_peak_mb", "server RSS peak", "MiB",
               "Largest resident memory of the server process tree over the telemetry samples inside the "
               "phases ÷ 2^20.", replicates=Replicates.MAX, digits=0, **_CELL),
    CellMetric("overall_temp_max_c", "GPU temperature peak", "°C",
               "Highest NVML temperature of any GPU over the telemetry samples inside the phases.",
               replicates=Replicates.MAX, digits=0, **_CELL),
    CellMetric("overall_sm_clock_mean_mhz", "SM clock under load", "MHz",
               f"Mean NVML SM clock over the GPU samples of {_NON_IDLE}, all GPUs pooled.", digits=0, **_CELL),
    # ---- the engine's own figures, per phase (rows of phase_table)
    CellMetric("engine_prompt_tok_s", "engine prompt throughput", "tok/s",
               "The engine's prompt-token counter: its increase between the first and last scrape ÷ the time "
               "between them (a drop counts as a restart from 0), summed over label sets, "
               f"{_ENGINE_WINDOW}. Counters: {_engine_names('prompt_tokens')}.", **_ENGINE),
    CellMetric("engine_generation_tok_s", "engine generation throughput", "tok/s",
               f"As engine_prompt_tok_s, for the generated-token counter: {_engine_names('generation_tokens')}. "
               "Some engines count a request's tokens only when it ends.", **_ENGINE),
    CellMetric("engine_kv_cache_usage_mean", "KV-cache usage", "fraction",
               "Mean over scrapes of the engine's KV-cache usage gauge (the fraction in use, averaged over label "
               f"sets), {_ENGINE_WINDOW}. Gauges: {_engine_names('kv_cache_usage')}.",
               percent=True, **_ENGINE),
    CellMetric("engine_kv_cache_usage_max", "KV-cache usage peak", "fraction",
               "Largest scrape of the gauge engine_kv_cache_usage_mean averages.",
               percent=True, replicates=Replicates.MAX, **_ENGINE),
    CellMetric("engine_requests_running_mean", "engine running requests", "requests",
               "Mean over scrapes of the engine's running-requests gauge (summed over label sets), "
               f"{_ENGINE_WINDOW}. Gauges: {_engine_names('requests_running')}.", **_ENGINE),
    CellMetric("engine_requests_running_max", "engine running requests peak", "requests",
               "Largest scrape of the gauge engine_requests_running_mean averages.",
               replicates=Replicates.MAX, digits=0, **_ENGINE),
    CellMetric("engine_requests_waiting_mean", "engine queued requests", "requests",
               "Mean over scrapes of the engine's waiting-requests gauge (summed over label sets), "
               f"{_ENGINE_WINDOW}. Gauges: {_engine_names('requests_waiting')}.", **_ENGINE),
    CellMetric("engine_requests_waiting_max", "engine queued requests peak", "requests",
               "Largest scrape of the gauge engine_requests_waiting_mean averages.",
               replicates=Replicates.MAX, digits=0, **_ENGINE),
    CellMetric("engine_scrapes", "engine scrapes", "scrapes",
               "Scrapes of the engine's /metrics in the phase's telemetry window (the path with the most).",
               replicates=Replicates.SUM, digits=0, **_ENGINE),
]

CELL_METRICS: dict[str, CellMetric] = {m.key: m for m in _CELL_DECLARED}

# metrics.json "cell" fields that describe or hold figures rather than being one
CELL_FIELDS = {
    "phases_pooled": "the non-idle phases the overall_* figures pool",
    "active_phases": "the non-idle, non-warm-up phases active_power_w averages",
    "idle_power_from": "what idle_power_w came from: idle phases, or the window before the first phase",
    "baseline_s": "the baseline window's length (s): telemetry.baseline_s as run",
    "telemetry_devices": "per sampled device: samples, interval p50/p99, largest gap (ms) and each signal's effective "
                         "resolution: the median time between changes of the energy counter and power readings (ms)",
    "energy_check_flagged_phases": "phases whose energy counter and power integral disagree by more than 5 %",
    "power_util_x": "the utilisation the power fit used: gpu_util_pct or cpu_util_pct",
    "engine_family": "the metric-name family the engine_* figures were read from (None: not one listed)",
    "phase_table": "one row per phase (idle included): utilisation, memory, clock, temperature, power and MFU "
                   "from the phase's figures, and the engine_* figures",
    "labels": "measured / estimated / not available, per cell figure",
}


def cell_labels(run: RunEvidence) -> dict[str, str]:
    """The cell's ``labels``: measured / estimated / not available, per cell figure."""
    return {key: m.label_in(run) for key, m in CELL_METRICS.items()}


def cell_definitions() -> dict[str, Any]:
    """The cell figures' part of metrics.json's ``definitions``."""
    return {"cell_conventions": list(CELL_CONVENTIONS),
            "cell_metrics": {key: m.definition() for key, m in CELL_METRICS.items()},
            "cell_fields": dict(CELL_FIELDS)}
# ============================================================================ end of cell-level figures


def labels(run: RunEvidence) -> dict[str, str]:
    """metrics.json's ``labels``: measured / estimated / not available, per metric."""
    return {key: m.label_in(run) for key, m in METRICS.items()}


def definitions() -> dict[str, Any]:
    """metrics.json's ``definitions``: the conventions and every metric's declaration."""
    return {"conventions": list(CONVENTIONS), "metrics": {key: m.definition() for key, m in METRICS.items()},
            "phase_fields": dict(PHASE_FIELDS), **cell_definitions()}


@dataclass(frozen=True)
class Column:
    """A table column showing one metric of a phase: its value, or some statistics of its distribution."""
    key: str
    stats: tuple[str, ...] = ()

    @property
    def metric(self) -> Metric:
        return METRICS[self.key]

    def header(self) -> str:
        return self.metric.header(self.stats)

    def value(self, phase: Mapping[str, Any]) -> Any:
        """The raw figure of a one-statistic (or plain) column, None where the phase lacks it."""
        value = phase.get(self.key)
        if self.stats:
            (stat,) = self.stats
            return value.get(stat) if isinstance(value, Mapping) else None
        return value

    def cell(self, phase: Mapping[str, Any]) -> str:
        value = phase.get(self.key)
        if not self.stats:
            return self.metric.format(value)
        return " / ".join(self.metric.format((value or {}).get(s)) for s in self.stats)
