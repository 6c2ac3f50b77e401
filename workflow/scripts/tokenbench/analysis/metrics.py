"""Metrics of one cell, per phase, from the raw per-request records and telemetry.

What each figure means (unit, formula, measured or estimated) is declared once, in
``registry.py``; this module computes them. A change to a computation here is a change to the
formula text there: the site quotes that text as the definition of the number it shows.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tokenbench.analysis import registry
from tokenbench.analysis.intervals import itl_by_request, phase_intervals
from tokenbench.analysis.registry import PERCENTILES, WINDOW_S
from tokenbench.analysis.validity import contention, stability, validity
from tokenbench.chunks import BLOCK, Chunks, Tokens
from tokenbench.config import HardwareSpec, SloSpec, ValiditySpec
from tokenbench.joblog import threads
from tokenbench.models import decode_weight_bytes
from tokenbench.models import flops_per_token as model_flops
from tokenbench.telemetry.energy import EnergyMeter
from tokenbench.telemetry.merge import baseline_window

# what compute_metrics reads of requests.parquet, other tools' definitions (analysis/definitions.py)
# included (the wrapper reads only these: add a column here before using it)
REQUEST_COLUMNS_USED = ["phase", "status", "scheduled_ns", "sent_ns", "written_ns", "first_byte_ns", "first_event_ns",
                        "first_token_ns",
                        "first_output_token_ns", "end_ns", "output_tokens", "reasoning_tokens", "reasoning_chunks",
                        "prompt_tokens", "output_tokens_source", "client_output_tokens", "max_tokens", "chunk_ns"]


def dist(values, overwrite_input: bool = False) -> dict[str, Any]:
    """Summary of a sample: n, mean, std and percentiles (linear interpolation), or Nones.
    Missing and non-finite values are left out (and so not counted in n).

    ``values``: a pandas Series, a NumPy array or any sequence of numbers and Nones;
    ``overwrite_input``: an array that may be reordered in place (no copy of a large sample)."""
    if isinstance(values, pd.Series):
        v = values.to_numpy(dtype=float, na_value=np.nan)
    elif isinstance(values, np.ndarray):
        v = values.astype(float, copy=False)
    else:
        v, overwrite_input = np.array(list(values), dtype=float), True
    finite = np.isfinite(v)
    if not finite.all():
        v, overwrite_input = v[finite], True
    out: dict[str, Any] = {"n": int(v.size)}
    if v.size == 0:
        out.update(mean=None, std=None, min=None, max=None, **{f"p{p}": None for p in PERCENTILES})
        return out
    mean = float(v.mean())
    out.update(mean=mean, std=_std(v, mean) if v.size > 1 else None, min=float(v.min()), max=float(v.max()),
               **{f"p{p}": float(x) for p, x in zip(PERCENTILES, _percentiles(v, PERCENTILES, overwrite_input))})
    return out


def _percentiles(v: np.ndarray, qs, overwrite_input: bool = False) -> np.ndarray:
    """``np.percentile(v, qs)`` (its "linear" method, step by step) for finite ``v``: partitioned at
    the ranks it needs only (np.percentile also finds the min and max, to look for NaN)."""
    virtual = (v.size - 1) * np.true_divide(qs, 100)
    below = np.floor(virtual).astype(np.intp)
    above = np.minimum(below + 1, v.size - 1)
    x = v if overwrite_input else v.copy()
    x.partition(np.unique(np.concatenate([below, above])))
    return _lerp(x[below], x[above], virtual - below)


def _lerp(a: np.ndarray, b: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """numpy's linear interpolation between neighbouring order statistics, to the last bit."""
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def _std(v: np.ndarray, mean: float) -> float:
    """Sample standard deviation (ddof 1); a large sample block by block, without a copy of it."""
    if v.size <= BLOCK:
        return float(v.std(ddof=1))
    ss = 0.0
    for i in range(0, v.size, BLOCK):
        x = v[i:i + BLOCK] - mean
        ss += float(np.dot(x, x))
    return math.sqrt(ss / (v.size - 1))


def request_latencies(req: pd.DataFrame) -> pd.DataFrame:
    """Per ok request: latencies from the moment the request was written (its last byte handed to
    the kernel: the server can see it from then on), so that opening a connection, or waiting for
    the event loop to write it, is not server latency; ``connect_ms`` reports that part apart."""
    ok = req[req["status"] == "ok"].copy()
    f = lambda c: _column(ok, c)  # noqa: E731
    written = f("written_ns").fillna(f("sent_ns"))  # a request never written has no response: fallback only
    since = lambda c: (f(c) - written) / 1e6  # noqa: E731
    ok["ttft_ms"] = since("first_token_ns")
    ok["ttfot_ms"] = since("first_output_token_ns")
    ok["ttft_sched_ms"] = (f("first_token_ns") - f("scheduled_ns")) / 1e6
    ok["first_byte_ms"] = since("first_byte_ns")
    ok["e2e_ms"] = since("end_ns")
    ok["connect_ms"] = (written - f("sent_ns")) / 1e6
    ok["send_lag_ms"] = (f("sent_ns") - f("scheduled_ns")) / 1e6
    ok["tpot_ms"] = ((ok["e2e_ms"] - ok["ttft_ms"]) / (visible_tokens(ok) - 1)).where(visible_tokens(ok) > 1)
    return ok


def _column(df: pd.DataFrame, c: str) -> pd.Series:
    """A numeric column as Float64; all NA where the records predate it (a frame built before a
    column was added: tokenbench.analysis.definitions reads such frames too)."""
    return df[c].astype("Float64") if c in df else pd.Series(pd.NA, index=df.index, dtype="Float64")


def visible_tokens(ok: pd.DataFrame) -> pd.Series:
    """Output tokens streamed from the first token on: the server's count, less reasoning tokens it
    reported but never streamed (a model that thinks in hidden tokens spends them before its first
    visible token, inside TTFT; counting them in TPOT's denominator would make decoding look faster)."""
    n = ok["output_tokens"].astype("Float64")
    hidden = _column(ok, "reasoning_tokens").where(_column(ok, "reasoning_chunks") == 0)
    return (n - hidden.fillna(0)).clip(lower=0)


def itl_ms(ok: pd.DataFrame, tokens: Tokens | None = None) -> np.ndarray:
    """Gaps between consecutive content chunks of each ok request, in ms, pooled; ``tokens``: the
    same requests' chunks already flattened (else they are taken from ``ok["chunk_ns"]``)."""
    return (tokens if tokens is not None else Tokens.of_requests(ok)).gaps_ms()


def itl_dist(ok: pd.DataFrame, tokens: Tokens | None = None) -> dict[str, Any]:
    """``dist`` of ``itl_ms``: the heaviest figure of a phase (one value per chunk), so
    ``phase_tokens`` queues it for a worker thread; this takes the worker's result, or computes it
    here if the worker has not started on it yet."""
    if isinstance(tokens, PhaseTokens) and tokens.itl is not None and not tokens.itl.cancel():
        return tokens.itl.result()
    return dist(itl_ms(ok, tokens), overwrite_input=True)


@dataclass(eq=False)
class PhaseTokens(Tokens):
    """A phase's ok requests' chunks (``Tokens``) and, computing meanwhile, the dist of their ITL."""
    itl: Future | None = None


_WORKERS: ThreadPoolExecutor | None = None


def phase_tokens(req: pd.DataFrame, marks: list[dict[str, Any]]) -> dict[str, PhaseTokens]:
    """Each request phase's chunk timestamps, flat, from ``req["chunk_ns"]`` read once (a phase's
    rows, recorded in sending order, are one run of the column: its arrays are a view), with its
    ITL dist queued for a worker thread, largest phase first (NumPy's partition releases the GIL:
    the phases' other metrics go on meanwhile, on the other core)."""
    global _WORKERS
    chunks = Chunks.of(req["chunk_ns"])
    phase = req["phase"]
    out = {mk["name"]: PhaseTokens.of_requests(req, chunks, np.flatnonzero((phase == mk["name"]).to_numpy(
               dtype=bool, na_value=False))) for mk in marks if mk["mode"] != "idle"}
    if threads() < 2:
        return out
    if _WORKERS is None:
        _WORKERS = ThreadPoolExecutor(1, thread_name_prefix="itl")
    for tk in sorted(out.values(), key=lambda tk: -len(tk.chunks.values)):
        tk.itl = _WORKERS.submit(lambda tk=tk: dist(tk.gaps_ms(), overwrite_input=True))
    return out


def windows(req: pd.DataFrame, mark: dict[str, Any], slo: SloSpec, window_s: float = WINDOW_S,
            tokens: Tokens | None = None, ok: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per fixed window of the phase's issuing interval: output tokens/s (by arrival), finished
    requests/s, goodput and latency percentiles of the requests that finished in the window.
    ``tokens``: the phase's chunks already flattened (else they are taken from ``req["chunk_ns"]``);
    ``ok``: ``request_latencies(req)`` where the caller has it already."""
    start, end = mark["start_ns"], mark["end_ns"]
    w = int(window_s * 1e9)
    n = max(1, int((end - start) // w))
    edges = start + np.arange(n + 1) * w
    tokens = tokens if tokens is not None else Tokens.of_requests(req)
    tok = tokens.per_window(start, w, n, last_closed=True)
    out = pd.DataFrame({"phase": mark["name"], "window": np.arange(n), "start_s": (edges[:-1] - start) / 1e9,
                        "output_tok_s": tok / window_s})
    ok = request_latencies(req)
    ends = ok["end_ns"].to_numpy(dtype=np.int64, na_value=start - 1)
    idx = (ends - start) // w
    sel = ok["end_ns"].notna().to_numpy() & (idx >= 0) & (idx < n)
    k = idx[sel]
    out["requests_per_s"] = np.bincount(k, minlength=n) / window_s
    out["goodput_rps"] = np.bincount(k, weights=slo_mask(ok, slo).to_numpy(dtype=float)[sel], minlength=n) / window_s
    for col in ("ttft_ms", "e2e_ms"):
        vals = ok[col].to_numpy(dtype=float, na_value=np.nan)[sel]
        for q, v in zip((50, 99), _percentiles_by_group(k, vals, n, (50, 99))):
            out[f"{col.removesuffix('_ms')}_p{q}_ms"] = v
    return out


def _percentiles_by_group(group: np.ndarray, values: np.ndarray, n: int, qs) -> list[np.ndarray]:
    """For each q, ``np.percentile(values[group == g], q)`` for every g < n at once: NaN where a
    group is empty or holds a NaN (as np.percentile gives), the same linear interpolation otherwise."""
    order = np.argsort(values)  # by value (NaN last), then stably by group (a radix sort for < 65536 groups)
    key = group[order].astype(np.uint16 if n <= np.iinfo(np.uint16).max else np.int64)
    v = values[order[np.argsort(key, kind="stable")]]
    count = np.bincount(group, minlength=n)
    first = np.cumsum(count) - count
    has_nan = np.bincount(group, weights=np.isnan(values), minlength=n) > 0
    g = np.flatnonzero((count > 0) & ~has_nan)
    res = []
    for q in qs:
        out = np.full(n, np.nan)
        virtual = (count[g] - 1) * np.true_divide(q, 100)  # numpy's "linear" method, step by step
        below = np.floor(virtual).astype(np.int64)
        above = np.minimum(below + 1, count[g] - 1)
        out[g] = _lerp(v[first[g] + below], v[first[g] + above], virtual - below)
        res.append(out)
    return res


def telemetry_summary(tl: pd.DataFrame, phase: str) -> dict[str, Any]:
    t = tl[tl["phase"] == phase]
    out: dict[str, Any] = {}

    def mean(col, dev=None):
        s = t[col] if dev is None else t.loc[t["device"] == dev, col]
        s = s.dropna() if col in t else pd.Series(dtype=float)
        return float(s.mean()) if len(s) else None

    def peak(col):
        s = t[col].dropna() if col in t else pd.Series(dtype=float)
        return float(s.max()) if len(s) else None

    for col in ("cpu_util_pct", "server_cpu_util_pct"):
        if col in t:
            out[col] = mean(col, "cpu")
    if "server_rss_bytes" in t:
        v = peak("server_rss_bytes")
        out["server_rss_peak_mb"] = v / 2**20 if v is not None else None
    if "server_pss_bytes" in t:
        v = peak("server_pss_bytes")
        out["server_pss_peak_mb"] = v / 2**20 if v is not None else None
    gpu = t[t["device"].astype(str).str.startswith("gpu")] if len(t) else t
    if len(gpu):
        def of(col, how):  # a field a GPU does not report (MIG: no utilisation) is None, not NaN or a crash
            v = pd.to_numeric(gpu[col], errors="coerce").dropna() if col in gpu else pd.Series(dtype=float)
            return float(getattr(v, how)()) if len(v) else None

        out["gpu_util_pct"] = of("gpu_util_pct", "mean")
        mem = of("gpu_mem_used_bytes", "max")
        out["gpu_mem_used_peak_mb"] = mem / 2**20 if mem is not None else None
        out["temp_max_c"] = of("temp_c", "max")
        out["sm_clock_mean_mhz"] = of("sm_clock_mhz", "mean")
    out["telemetry_samples"] = int(len(t))
    return out


def phase_energy(meter: EnergyMeter, mark: dict[str, Any], baseline: dict[str, Any], output_tokens: float | None,
                 input_tokens: float | None, hardware: HardwareSpec, gpus: int | None) -> dict[str, Any]:
    """Energy figures of one phase over its issuing window, the window its tokens are counted in
    (registry.py: energy_j, power_w, net_energy_j, j_per_output_token, ...). ``baseline``: the
    meter's window over the cell's baseline (before the server's launch); ``gpus``: the engine's
    GPU count (None on CPU)."""
    dur = (mark["end_ns"] - mark["start_ns"]) / 1e9
    w = meter.window(mark["start_ns"], mark["end_ns"])
    joules, base_w = w["energy_j"], baseline.get("power_w")
    net = joules - base_w * dur if (joules is not None and base_w is not None) else None
    base_by_device = {d["device"]: d.get("power_w") for d in baseline.get("per_device") or []}
    per_device = []
    for d in w["per_device"]:
        bw = base_by_device.get(d["device"])
        per_device.append({"device": d["device"], "energy_j": d["energy_j"], "power_w": d["power_w"],
                           "baseline_power_w": bw, "source": d["source"],
                           "net_energy_j": d["energy_j"] - bw * dur if (d["energy_j"] is not None and bw is not None)
                           else None,
                           "counter_vs_power_pct": d.get("counter_vs_power_pct")})
    out: dict[str, Any] = {"energy_j": joules, "power_w": w["power_w"], "power_source": w["power_source"],
                           "net_energy_j": net, "net_power_w": net / dur if (net is not None and dur > 0) else None,
                           "energy_counter_vs_power_pct": w["counter_vs_power_pct"],
                           "energy_check_flagged": w["energy_check_flagged"], "per_device_energy": per_device,
                           "power_w_per_gpu": w["power_w"] / gpus if (gpus and w["power_w"] is not None) else None}

    def per(j, n):
        return j / n if (j is not None and n) else None

    total = (output_tokens or 0) + (input_tokens or 0) if output_tokens is not None else None
    out["j_per_output_token"] = per(joules, output_tokens)
    out["net_j_per_output_token"] = per(net, output_tokens)
    out["j_per_total_token"] = per(joules, total)
    out["tok_per_j"] = per(output_tokens, joules) if output_tokens else None
    kwh_per_mtok = out["j_per_output_token"] * 1e6 / 3.6e6 if out["j_per_output_token"] is not None else None
    out["energy_kwh_per_mtok"] = kwh_per_mtok
    price = hardware.electricity_usd_per_kwh
    out["energy_usd_per_mtok"] = kwh_per_mtok * price if (kwh_per_mtok is not None and price is not None) else None
    return out


def roofline(m: dict[str, Any], figures: dict[str, Any], peak: dict[str, Any]) -> dict[str, Any]:
    """Where a phase sits against the hardware's two bounds (registry.py: mbu_pct, prefill_compute_pct):
    decode's bytes read per second against the memory bandwidth, prefill's FLOPs against the peak."""
    out = {"decode_concurrency": None, "decode_bytes_per_s": None, "mbu_pct": None, "prefill_compute_pct": None}
    tok_s, e2e = m.get("output_tok_s"), (m.get("e2e_ms") or {}).get("mean")
    kv = figures.get("kv_bytes_per_token")
    bandwidth = peak.get("mem_bandwidth_gb_s")
    if tok_s and e2e and m.get("request_rps"):
        batch = max(1.0, m["request_rps"] * e2e / 1000)  # Little's law: requests in flight
        out["decode_concurrency"] = batch
        weights = decode_weight_bytes(figures, batch)  # a mixture of experts reads more experts at larger batches
        n_out = m["output_tokens_total"] / ((m.get("status_counts") or {}).get("ok") or 1)  # per ok request
        context = (m.get("prompt_tokens_mean") or 0) + n_out / 2  # mean KV length over a request's decode
        if weights and kv:
            out["decode_bytes_per_s"] = tok_s / batch * weights + tok_s * kv * context
            if bandwidth:
                out["mbu_pct"] = out["decode_bytes_per_s"] / (bandwidth * 1e9) * 100
    flops = flops_per_token(figures)
    if m.get("input_tok_s") and flops and peak.get("peak_flops"):
        out["prefill_compute_pct"] = m["input_tok_s"] * flops / peak["peak_flops"] * 100
    return out


def flops_per_token(figures: dict[str, Any]) -> float | None:
    """FLOPs a token costs in the weight matmuls (models.flops_per_token: 2 × the active non-embedding
    parameters, + a tied lm_head; 2 × all parameters for a model without the architecture split)."""
    return model_flops(figures)[0]


def mfu_pct(tok_s: float | None, flops: float | None, peak_flops: float | None) -> float | None:
    """tok/s × FLOPs per token ÷ peak FLOP/s × 100 (decode weight FLOPs only; registry.py: mfu_pct)."""
    if tok_s is None or not math.isfinite(tok_s) or not (flops and peak_flops):
        return None
    return tok_s * flops / peak_flops * 100


def resolve_peak(detected: dict[str, Any], hardware_name: str) -> dict[str, Any]:
    """The peaks MFU and MBU divide by: the detected hardware's (the engine's GPUs, else the CPU's
    estimate), or those of the configured hardware.name × the engine's GPU count."""
    from tokenbench.telemetry.hardware import named_peak

    keys = ("peak_flops", "peak_note", "accelerator", "gpu_count", "mem_bandwidth_gb_s", "peak_flops_per_gpu",
            "mem_bandwidth_gb_s_per_gpu", "peak_precision")
    if hardware_name in ("auto", "cpu"):
        return {k: detected.get(k) for k in keys}
    named = named_peak(hardware_name, detected.get("gpu_count") or 1)
    return {k: named.get(k) for k in keys}


def token_count_check(ok: pd.DataFrame) -> dict[str, Any]:
    """Server usage count vs the client's re-tokenization of the streamed text, where available."""
    if "client_output_tokens" not in ok or not ok["client_output_tokens"].notna().any():
        return {"token_count_checked": 0, "token_count_mismatch_rate": None, "token_count_mean_diff": None}
    both = ok[ok["client_output_tokens"].notna() & ok["output_tokens"].notna()]
    diff = both["client_output_tokens"].astype(float) - both["output_tokens"].astype(float)
    return {"token_count_checked": int(len(both)),
            "token_count_mismatch_rate": float((diff != 0).mean()) if len(both) else None,
            "token_count_mean_diff": float(diff.mean()) if len(both) else None}


def slo_bounds(slo: SloSpec) -> dict[str, float]:
    """The configured bounds only, keyed by the latency column they bound (ttft_ms, tpot_ms, e2e_ms)."""
    return {key: bound for key, bound in slo.model_dump().items() if bound is not None}


def slo_mask(ok: pd.DataFrame, slo: SloSpec) -> pd.Series:
    """True for requests meeting every configured SLO bound (1-token requests have no TPOT)."""
    meets = pd.Series(True, index=ok.index)
    for key, bound in slo_bounds(slo).items():
        meets &= (ok[key] <= bound).fillna(key == "tpot_ms").astype(bool)
    return meets


def goodput(ok: pd.DataFrame, mark: dict[str, Any], slo: SloSpec, sent: int | None = None) -> dict[str, Any]:
    """Goodput and SLO attainment; None for both when no SLO bound is configured. Every request
    the phase sent is in the attainment's denominator: one that failed, timed out or was cancelled
    missed its SLO."""
    bounds = slo_bounds(slo)
    if not bounds:
        return {"slo": {}, "goodput_rps": None, "goodput_tok_s": None, "slo_attainment": None}
    dur = (mark["end_ns"] - mark["start_ns"]) / 1e9
    in_win = (ok["end_ns"] >= mark["start_ns"]) & (ok["end_ns"] < mark["end_ns"])
    meets_all = slo_mask(ok, slo)
    meets = in_win & meets_all
    n_meet = int(meets.sum())
    sent = len(ok) if sent is None else sent
    return {
        "slo": bounds,
        "goodput_rps": n_meet / dur if dur > 0 else None,
        "goodput_tok_s": float(ok.loc[meets, "output_tokens"].sum()) / dur if dur > 0 else None,
        "slo_attainment": int(meets_all.sum()) / sent if sent else None,
    }


def max_tokens_check(ok: pd.DataFrame) -> dict[str, Any]:
    """Ok requests that returned more output tokens than they asked for (max_tokens): a server that
    ignores the cap makes every length-bound figure (throughput, E2E, goodput) incomparable."""
    if "max_tokens" not in ok or not len(ok):
        return {"over_max_tokens": None}
    out_tok = ok["output_tokens"].astype("Float64")
    asked = ok["max_tokens"].astype("Float64")
    over = (out_tok > asked).fillna(False)
    if not over.any():
        return {"over_max_tokens": None}
    return {"over_max_tokens": {"requests": int(over.sum()), "max_returned": int(out_tok[over].max()),
                                "asked": int(asked[over].max())}}


def input_throughput(ok: pd.DataFrame, mark: dict[str, Any], output_tok_s: float | None) -> dict[str, Any]:
    """input_tok_s and total_tok_s (registry.py): prompt tokens of the ok requests whose first token
    arrived inside the issuing window, per second, and that plus output_tok_s."""
    dur = (mark["end_ns"] - mark["start_ns"]) / 1e9
    prompt = ok["prompt_tokens"].astype("Float64")
    if dur <= 0 or not prompt.notna().any():
        return {"input_tok_s": None, "total_tok_s": None}
    first = ok["first_token_ns"].astype("Float64")
    inside = ((first >= mark["start_ns"]) & (first < mark["end_ns"])).fillna(False)
    tok_s = float(prompt[inside].sum()) / dur
    return {"input_tok_s": tok_s, "total_tok_s": tok_s + output_tok_s if output_tok_s is not None else None}


def phase_metrics(req: pd.DataFrame, tl: pd.DataFrame, mark: dict[str, Any], figures: dict[str, Any] | None,
                  peak: dict[str, Any], hardware: HardwareSpec, slo: SloSpec, bounds: ValiditySpec,
                  loop_lag: dict[str, Any] | None = None, tokens: Tokens | None = None, level: float = 0.95,
                  resamples: int = 1000, window_tables: dict[str, pd.DataFrame] | None = None,
                  meter: EnergyMeter | None = None, baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every registered metric of one phase (registry.py says what each is). ``figures``: the model
    manifest's figures (parameters, weight bytes, ...); ``tokens``: the phase's ok requests' chunk
    timestamps, flat (``phase_tokens``), else they are taken from ``req["chunk_ns"]``; ``meter``: the
    cell's EnergyMeter (else one is made from ``tl``); ``baseline``: its window before the launch."""
    figures = figures or {}
    meter = meter if meter is not None else EnergyMeter(tl)
    baseline = baseline or {}
    name = mark["name"]
    pr = req[req["phase"] == name]
    dur = (mark["end_ns"] - mark["start_ns"]) / 1e9
    m: dict[str, Any] = {"phase": name, "label": mark["label"], "mode": mark["mode"], "warmup": mark["warmup"],
                         "target": mark["target"], "duration_s": dur,
                         "start_ns": int(mark["start_ns"]), "end_ns": int(mark["end_ns"]),
                         "drain_s": (mark["drained_ns"] - mark["end_ns"]) / 1e9}
    m.update(telemetry_summary(tl, name))
    m.update(contention(tl, name))
    m["open_loop"] = bool(mark["open_loop"])
    m["stopped_reason"] = mark.get("stopped_reason")  # the phase stopped early: the breaker, an interrupt
    m["timeout_s"] = mark.get("timeout_s")  # the per-request timeout it ran with (auto: its last request's)
    m["timeout_auto"] = bool(mark.get("timeout_auto"))
    gpus = peak.get("gpu_count")
    if mark["mode"] == "idle":
        m["requests_sent"] = int(len(pr))
        m.update(phase_energy(meter, mark, baseline, None, None, hardware, gpus))
        return m
    ok = request_latencies(pr)
    counts = pr["status"].value_counts().to_dict()
    m["requests_sent"] = int(len(pr))
    m["status_counts"] = {k: int(v) for k, v in counts.items()}
    m["success_rate"] = len(ok) / len(pr) if len(pr) else None
    m["failure_rate"] = 1 - m["success_rate"] if m["success_rate"] is not None else None
    tokens = tokens if tokens is not None else Tokens.of_requests(pr)  # the ok requests' chunks, flat
    m["output_tokens_in_window"] = tokens.between(mark["start_ns"], mark["end_ns"])
    m["output_tok_s"] = m["output_tokens_in_window"] / dur if dur > 0 else None
    m.update(input_throughput(ok, mark, m["output_tok_s"]))
    ends = ok["end_ns"].to_numpy(dtype=np.int64)
    m["request_rps"] = float(((ends >= mark["start_ns"]) & (ends < mark["end_ns"])).sum() / dur)
    m["achieved_send_rps"] = float(len(pr) / dur)
    m["output_tokens_total"] = int(ok["output_tokens"].sum()) if len(ok) else 0
    m["output_tokens_source"] = sorted(ok["output_tokens_source"].dropna().unique().tolist())
    m.update(token_count_check(ok))
    m.update(max_tokens_check(ok))
    m["prompt_tokens_mean"] = float(ok["prompt_tokens"].astype("Float64").mean()) if ok["prompt_tokens"].notna().any() else None
    for col in ("ttft_ms", "first_byte_ms", "e2e_ms", "tpot_ms", "connect_ms"):
        m[col] = dist(ok[col])
    reasoned = (ok["reasoning_chunks"].astype("Float64") > 0) | (ok["reasoning_tokens"].astype("Float64") > 0)
    if reasoned.any():  # a reasoning model: time to its first answer token, and its thinking
        m["ttfot_ms"] = dist(ok["ttfot_ms"])
        m["reasoning_tokens_mean"] = float(ok["reasoning_tokens"].astype("Float64").mean()) \
            if ok["reasoning_tokens"].notna().any() else None
        m["reasoning_chunks_mean"] = float(ok["reasoning_chunks"].astype("Float64").mean())
    if mark["open_loop"]:
        # Poisson/gamma schedules deviate from the target rate by chance (sd ~ sqrt(rate x T));
        # whether the client kept up is delivered_ratio: scheduled arrivals sent inside the window
        sched = pr["scheduled_ns"].to_numpy(dtype=np.int64)
        sent = pr["sent_ns"].to_numpy(dtype=np.int64)
        in_sched = (sched >= mark["start_ns"]) & (sched < mark["end_ns"])
        # arrivals of the schedule the breaker kept back (the server was gone) count as not delivered
        m["not_sent_breaker_open"] = int(mark.get("not_sent_breaker_open") or 0)
        n_sched = int(in_sched.sum()) + m["not_sent_breaker_open"]
        m["schedule_rps"] = n_sched / dur if dur > 0 else None
        m["delivered_ratio"] = float((in_sched & (sent < mark["end_ns"])).sum() / n_sched) if n_sched else None
        if mark["target"].get("rate_rps"):
            m["rate_ratio"] = m["achieved_send_rps"] / mark["target"]["rate_rps"]
        m["ttft_sched_ms"] = dist(ok["ttft_sched_ms"])
        m["send_lag_ms"] = dist((pr["sent_ns"] - pr["scheduled_ns"]) / 1e6)
    m["itl_ms"] = itl_dist(ok, tokens)
    # per-request decode rate (seed 002's "per-request tok/s"): 1000 / TPOT
    # (TPOT is 0 when all of a request's chunks came in one socket read: no rate to report)
    m["decode_tok_s_per_request"] = dist(1000.0 / ok["tpot_ms"].where(ok["tpot_ms"] > 0))
    rate = m["decode_tok_s_per_request"]
    m["decode_rate_cv"] = rate["std"] / rate["mean"] if rate["std"] is not None and rate["mean"] else None
    m["decode_rate_range"] = rate["max"] - rate["min"] if rate["n"] else None
    ttft = m["ttft_ms"]
    m["ttft_jitter_ms"] = ttft["p99"] - ttft["mean"] if ttft["n"] else None
    w = windows(pr, mark, slo, tokens=tokens, ok=ok)
    if window_tables is not None:  # compute_metrics writes the same table: computed once
        window_tables[name] = w
    m["window_output_tok_s"] = dist(w["output_tok_s"].tolist())
    m.update(goodput(ok, mark, slo, sent=len(pr)))
    m["stability"] = stability(tokens, ok, mark)
    m["validity"] = validity(m, bounds, loop_lag)
    met = ok.loc[slo_mask(ok, slo), "end_ns"].to_numpy(dtype=np.int64) if slo_bounds(slo) else None
    m["intervals"] = phase_intervals(ok, itl_by_request(tokens, pr), tokens, met, mark, level, resamples)

    # ---- efficiency: measured where the inputs are measured, estimated where they are not
    tps = m["output_tok_s"]
    m["mfu_pct"] = mfu_pct(tps, flops_per_token(figures), peak.get("peak_flops"))
    m.update(roofline(m, figures, peak))
    inputs = m["input_tok_s"] * dur if m.get("input_tok_s") is not None else None
    m.update(phase_energy(meter, mark, baseline, m["output_tokens_in_window"], inputs, hardware, gpus))
    m["output_tok_s_per_gpu"] = tps / gpus if (gpus and tps is not None) else None
    hourly = hardware.price_usd_per_hour
    m["usd_per_mtok"] = hourly / (tps * 3600) * 1e6 if (hourly is not None and tps) else None
    return m


def compute_metrics(req: pd.DataFrame, tl: pd.DataFrame, run: dict[str, Any], manifest: dict[str, Any],
                    hardware: HardwareSpec | None = None, slo: SloSpec | None = None,
                    bounds: ValiditySpec | None = None, level: float = 0.95,
                    resamples: int = 1000, engine_metrics: pd.DataFrame | None = None
                    ) -> tuple[dict[str, Any], pd.DataFrame]:
    """metrics.json of one cell and its per-window table. A spec left out takes the config model's defaults."""
    hardware, slo, bounds = hardware or HardwareSpec(), slo or SloSpec(), bounds or ValiditySpec()
    figures = manifest["figures"]
    params = figures.get("parameters")
    peak = resolve_peak(run["hardware"], hardware.name)
    meter = EnergyMeter(tl)
    baseline = meter.window(*(baseline_window(run) or (None, None)))
    lag = (run.get("client") or {}).get("event_loop_lag_by_phase") or {}
    tokens = phase_tokens(req, run["phases"])  # the per-chunk data, flat, once per phase
    per_req = req.drop(columns=["chunk_ns"])  # the rest: one row per request, cheap to filter
    tables: dict[str, pd.DataFrame] = {}
    phases = [phase_metrics(per_req, tl, mk, figures, peak, hardware, slo, bounds, lag.get(mk["name"]),
                            tokens.get(mk["name"]), level, resamples, tables, meter, baseline) for mk in run["phases"]]
    steady = [p for p in phases if not p["warmup"] and p["mode"] != "idle"]
    win = [tables[mk["name"]] for mk in run["phases"] if mk["mode"] != "idle"]
    evidence = registry.RunEvidence(power_measured=any(p.get("power_source") for p in phases),
                                    peak_measured=bool(run["hardware"].get("peak_measured")), hardware=hardware)
    doc = {
        "cell": run["cell"],
        "complete": run["complete"],
        "hardware": {**peak, "detected": run["hardware"].get("accelerator"), "cpu": run["hardware"]["cpu"]},
        "model": {"name": manifest["name"], "parameters": params, "quantization": figures.get("quantization"),
                  "active_parameters": figures.get("active_parameters"), "flops_per_token": flops_per_token(figures),
                  "parameters_source": figures.get("parameters_source")},
        "baseline": run.get("baseline"),
        "telemetry": {k: v for k, v in (run.get("telemetry") or {}).items() if k != "samples"},
        "labels": registry.labels(evidence),
        "definitions": registry.definitions(),
        "server_ready_s": run.get("server_ready_s"),
        "valid": all(p["validity"]["valid"] for p in steady) and run["complete"]
                 and not run.get("server_exited_during_run") and not run.get("stopped_reason"),
        "stopped_reason": run.get("stopped_reason"),
        "validity_bounds": bounds.model_dump(mode="json"),
        "server_exited_during_run": bool(run.get("server_exited_during_run")),
        "client": run.get("client"),
        "phases": phases,
    }
    from tokenbench.analysis.definitions import side_by_side
    from tokenbench.analysis.efficiency import cell_figures

    # the phases' TTFT, TPOT, ITL and output tokens as other tools define them, beside these
    peers = side_by_side(req, run["phases"], {p["phase"]: p for p in phases})
    for p in phases:
        if p["phase"] in peers:
            p["peer_figures"] = peers[p["phase"]]

    doc["cell_figures"] = cell_figures(phases, tl, engine_metrics if engine_metrics is not None else pd.DataFrame(),
                                       run, manifest, hardware, peak, meter)
    return doc, (pd.concat(win, ignore_index=True) if win else pd.DataFrame())


def summarize_metrics(docs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (engine, model, load, phase) with the headline figures, for charts and pages;
    the figure columns are the registry's summary columns."""
    rows = []
    for d in docs:
        for ph in d["phases"]:
            c = d["cell"]
            row = {"engine": c["engine"], "model": c["model"], "load": c["load"], "rep": c.get("rep", "r1"),
                   "phase": ph["phase"], "mode": ph["mode"], "warmup": ph["warmup"],
                   "users": ph["target"].get("users"), "rate_rps": ph["target"].get("rate_rps"),
                   "duration_s": ph["duration_s"], "complete": d["complete"],
                   "valid": (ph.get("validity") or {}).get("valid")}
            for col, (key, stat) in registry.SUMMARY_COLUMNS.items():
                v = ph.get(key)
                row[col] = v.get(stat) if (stat and isinstance(v, dict)) else (None if stat else v)
            rows.append(row)
    df = pd.DataFrame(rows)
    for col in registry.SUMMARY_COLUMNS:
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df
