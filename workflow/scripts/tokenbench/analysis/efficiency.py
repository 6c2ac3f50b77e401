"""Cell-level efficiency figures: what seed reports 000 and 002 show for a whole run, from raw data.

One cell is one server launch and one load test. ``phase_metrics`` (metrics.py) gives each phase's
figures; here they are pooled over the cell (overall MFU, energy per token, yearly cost at a planned
daily volume), set against the idle draw (seed 000's "cooldown valley"), fitted against utilisation
(seed 000 §6.2), and put beside the engine's own view of each phase from its Prometheus /metrics.

What each figure is (formula, unit, measured or estimated) is declared once, in registry.py's cell
block; this module computes them. Published figures from the seed reports load separately
(``published_runs``) and are never mixed into measured records.
"""

from __future__ import annotations

import csv
import math
import numbers
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tokenbench.analysis import registry
from tokenbench.analysis.metrics import flops_per_token, mfu_pct, telemetry_summary
from tokenbench.config import HardwareSpec
from tokenbench.telemetry.energy import EnergyMeter
from tokenbench.telemetry.merge import baseline_window, phase_of

# the per-phase figures phase_table gathers (declared in registry.METRICS)
PHASE_TABLE_KEYS = ("cpu_util_pct", "server_cpu_util_pct", "gpu_util_pct", "gpu_mem_used_peak_mb",
                    "server_rss_peak_mb", "sm_clock_mean_mhz", "temp_max_c", "power_w", "output_tok_s", "mfu_pct")
ENGINE_KEYS = tuple(k for k in registry.CELL_METRICS if k.startswith("engine_"))

PUBLISHED_RUNS = "data/published_runs.csv"
PUBLISHED_FITS = "data/published_fits.csv"


def _finite(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _value(x: Any) -> float | None:
    return float(x) if _finite(x) else None


def non_idle(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in phases if p.get("mode") != "idle"]


def active(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in phases if p.get("mode") != "idle" and not p.get("warmup")]


# ----------------------------------------------------------------------------- MFU and throughput
def overall_throughput(phases: list[dict[str, Any]]) -> float | None:
    """Σ output_tokens_in_window ÷ Σ duration_s over the non-idle phases (issuing windows pooled)."""
    used = [p for p in non_idle(phases) if _finite(p.get("output_tokens_in_window")) and _finite(p.get("duration_s"))]
    seconds = sum(p["duration_s"] for p in used)
    return sum(p["output_tokens_in_window"] for p in used) / seconds if seconds > 0 else None


# ----------------------------------------------------------------------------- energy and power
def pooled_power(phases: list[dict[str, Any]]) -> float | None:
    """Mean power over phases, each weighted by its telemetry span: Σ energy_j ÷ Σ (energy_j ÷ power_w);
    a plain mean of power_w where some phase has power but no energy."""
    powered = [p for p in phases if _finite(p.get("power_w")) and p["power_w"] > 0]
    if not powered:
        return None
    if all(_finite(p.get("energy_j")) for p in powered):
        span = sum(p["energy_j"] / p["power_w"] for p in powered)
        if span > 0:
            return sum(p["energy_j"] for p in powered) / span
    return float(np.mean([p["power_w"] for p in powered]))


def power_before_first_phase(meter: EnergyMeter, run: dict[str, Any]) -> float | None:
    """Mean power from the server being ready to the first phase's start (the model loaded, no load)."""
    marks = run.get("phases") or []
    ready = run.get("server_ready_ns")
    if ready is None or not marks:
        return None
    return meter.window(int(ready), int(marks[0]["start_ns"]))["power_w"]


def idle_and_active_power(phases: list[dict[str, Any]], meter: EnergyMeter,
                          run: dict[str, Any]) -> dict[str, Any]:
    idle = [p for p in phases if p.get("mode") == "idle"]
    if idle:
        idle_w = pooled_power(idle)
        source = "idle phases" if idle_w is not None else None
    else:
        idle_w = power_before_first_phase(meter, run)
        source = "before the first phase" if idle_w is not None else None
    active_w = pooled_power(active(phases))
    return {"idle_power_w": idle_w, "idle_power_from": source, "active_power_w": active_w,
            "active_idle_delta_w": active_w - idle_w if (active_w is not None and idle_w is not None) else None}


def baseline_and_startup(meter: EnergyMeter, run: dict[str, Any]) -> dict[str, Any]:
    """The host's draw before the server's launch (the baseline window), and the server's start-up:
    time from launch to ready and the energy it took, gross and net of the baseline. Outside every
    measured phase."""
    window = baseline_window(run)
    base_w = meter.window(*(window or (None, None)))["power_w"]
    launch, ready = run.get("server_launch_ns"), run.get("server_ready_ns")
    started = launch is not None and ready is not None
    startup_s = (ready - launch) / 1e9 if started else run.get("server_ready_s")
    joules = meter.window(launch, ready)["energy_j"] if started else None
    return {"baseline_power_w": base_w, "baseline_s": (window[1] - window[0]) / 1e9 if window else None,
            "startup_s": startup_s, "startup_energy_j": joules,
            "startup_net_energy_j": joules - base_w * startup_s if (joules is not None and base_w is not None
                                                                    and startup_s is not None) else None}


def energy_per_token(phases: list[dict[str, Any]], electricity_usd_per_kwh: float | None) -> dict[str, Any]:
    """Energy over the non-idle phases' issuing windows ÷ the output tokens that arrived in them."""
    out = {"overall_tok_per_j": None, "overall_j_per_output_token": None, "overall_net_j_per_output_token": None,
           "overall_energy_kwh_per_mtok": None, "overall_energy_usd_per_mtok": None}
    ps = non_idle(phases)
    if not ps or not all(_finite(p.get("energy_j")) and _finite(p.get("output_tokens_in_window")) for p in ps):
        return out
    joules = sum(p["energy_j"] for p in ps)
    tokens = sum(p["output_tokens_in_window"] for p in ps)
    if joules <= 0 or tokens <= 0:
        return out
    kwh_per_mtok = (joules / 3.6e6) / (tokens / 1e6)
    out.update(overall_tok_per_j=tokens / joules, overall_j_per_output_token=joules / tokens,
               overall_energy_kwh_per_mtok=kwh_per_mtok,
               overall_energy_usd_per_mtok=(kwh_per_mtok * electricity_usd_per_kwh
                                            if electricity_usd_per_kwh is not None else None))
    if all(_finite(p.get("net_energy_j")) for p in ps):
        out["overall_net_j_per_output_token"] = sum(p["net_energy_j"] for p in ps) / tokens
    return out


def telemetry_quality(meter: EnergyMeter, timeline: pd.DataFrame, phases: list[dict[str, Any]]) -> dict[str, Any]:
    """How well the telemetry resolved the run: the achieved sampling interval (worst device), each
    signal's effective resolution per device, and the phases whose energy counter and power integral
    disagree by more than the tolerance."""
    per = meter.quality(timeline) if timeline is not None and len(timeline) and "device" in timeline else {}

    def worst(key):
        vals = [d[key] for d in per.values() if d.get(key) is not None]
        return max(vals) if vals else None

    return {"telemetry_interval_p50_ms": worst("interval_p50_ms"),
            "telemetry_interval_p99_ms": worst("interval_p99_ms"),
            "telemetry_max_gap_ms": worst("max_gap_ms"),
            "telemetry_devices": per,
            "energy_check_flagged_phases": [p["phase"] for p in phases if p.get("energy_check_flagged")]}


def yearly_cost(tok_s: float | None, kwh_per_mtok: float | None, hardware: HardwareSpec) -> dict[str, Any]:
    """Machine-hours a day for the planned volume at this throughput, and a year of them priced."""
    daily = hardware.daily_output_tokens
    hours = daily / (tok_s * 3600) if (daily is not None and _finite(tok_s) and tok_s > 0) else None
    price, kwh_price = hardware.price_usd_per_hour, hardware.electricity_usd_per_kwh
    return {"serving_hours_per_day": hours,
            "yearly_hardware_usd": price * hours * 365 if (price is not None and hours is not None) else None,
            "yearly_electricity_usd": (kwh_per_mtok * daily / 1e6 * 365 * kwh_price
                                       if (daily is not None and kwh_per_mtok is not None and kwh_price is not None)
                                       else None)}


def power_vs_utilisation(timeline: pd.DataFrame, phase_names: list[str]) -> dict[str, Any]:
    """Least-squares power against utilisation over the samples inside the phases (seed 000 §6.2):
    GPU power (summed over GPUs per sample time) against mean GPU utilisation where the GPUs report
    power, else RAPL power against host CPU busy %."""
    none = {"power_util_x": None, "power_util_slope_w_per_pct": None, "power_util_intercept_w": None,
            "power_util_r2": None, "power_util_n": None}
    if timeline is None or not len(timeline) or "power_w" not in timeline or "phase" not in timeline:
        return none
    t = timeline[timeline["phase"].isin(phase_names)]
    x_col, points = None, pd.DataFrame()
    gpu = t[t["device"].astype(str).str.startswith("gpu")]
    if "gpu_util_pct" in t and len(gpu):
        g = gpu[gpu["power_w"].notna() & gpu["gpu_util_pct"].notna()]
        if len(g):
            n_gpus = gpu["device"].nunique()
            agg = g.groupby("t_ns").agg(y=("power_w", "sum"), x=("gpu_util_pct", "mean"), k=("device", "nunique"))
            points, x_col = agg[agg["k"] == n_gpus], "gpu_util_pct"
    if x_col is None and "cpu_util_pct" in t:
        c = t[(t["device"] == "cpu") & t["power_w"].notna() & t["cpu_util_pct"].notna()]
        points, x_col = pd.DataFrame({"x": c["cpu_util_pct"], "y": c["power_w"]}), "cpu_util_pct"
    if x_col is None or len(points) < 3:
        return none
    x, y = points["x"].to_numpy(dtype=float), points["y"].to_numpy(dtype=float)
    if np.ptp(x) == 0:
        return {**none, "power_util_x": x_col, "power_util_n": int(len(x))}
    # ordinary least squares (numpy's: scipy.stats.linregress gives the same line and R², at 0.6 s of import)
    slope, intercept = np.polyfit(x, y, 1)
    r = np.corrcoef(x, y)[0, 1] if np.ptp(y) > 0 else 0.0
    return {"power_util_x": x_col, "power_util_slope_w_per_pct": float(slope),
            "power_util_intercept_w": float(intercept), "power_util_r2": float(r ** 2),
            "power_util_n": int(len(x))}


def hardware_state(timeline: pd.DataFrame, phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Peaks over the samples inside the phases; the SM clock over the non-idle phases' samples."""
    out = {"overall_gpu_mem_used_peak_mb": None, "overall_server_rss_peak_mb": None, "overall_temp_max_c": None,
           "overall_sm_clock_mean_mhz": None}
    if timeline is None or not len(timeline) or "phase" not in timeline:
        return out
    inside = timeline[timeline["phase"].isin([p["phase"] for p in phases])]
    if len(inside):
        s = telemetry_summary(inside.assign(phase="cell"), "cell")
        out["overall_gpu_mem_used_peak_mb"] = _value(s.get("gpu_mem_used_peak_mb"))
        out["overall_server_rss_peak_mb"] = _value(s.get("server_rss_peak_mb"))
        out["overall_temp_max_c"] = _value(s.get("temp_max_c"))
    loaded = timeline[timeline["phase"].isin([p["phase"] for p in non_idle(phases)])]
    if len(loaded):
        out["overall_sm_clock_mean_mhz"] = _value(
            telemetry_summary(loaded.assign(phase="cell"), "cell").get("sm_clock_mean_mhz"))
    return out


# ----------------------------------------------------------------------------- the engine's own figures
def engine_family(engine_metrics: pd.DataFrame) -> str | None:
    """The family of metric names (registry.ENGINE_STAT_NAMES) the samples carry most of, or None."""
    if engine_metrics is None or not len(engine_metrics):
        return None
    counts = engine_metrics["metric"].value_counts()
    best, best_n = None, 0
    for family, names in registry.ENGINE_STAT_NAMES.items():
        n = int(sum(counts.get(name, 0) for group in names.values() for name in group))
        if n > best_n:
            best, best_n = family, n
    return best


def _series(em: pd.DataFrame, names: tuple[str, ...]) -> pd.DataFrame:
    """The samples of the first listed name present, from the path that has most of them."""
    for name in names:
        s = em[em["metric"] == name]
        if len(s):
            path = s["path"].value_counts().idxmax()
            s = s[s["path"] == path]
            return s[np.isfinite(s["value"].to_numpy(dtype=float))]
    return em.iloc[0:0]


def counter_increase(values: np.ndarray) -> float:
    """Increase of a cumulative counter over consecutive samples; a drop is a restart from 0 (Prometheus)."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return 0.0
    d = np.diff(v)
    return float(np.where(d >= 0, d, v[1:]).sum())


def counter_rate(s: pd.DataFrame) -> float | None:
    """Σ over label sets of the counter's increase ÷ (last − first scrape time)."""
    if not len(s):
        return None
    times = np.unique(s["t_ns"].to_numpy(dtype=np.int64))
    if times.size < 2:
        return None
    inc = sum(counter_increase(g.sort_values("t_ns")["value"].to_numpy()) for _, g in s.groupby("labels"))
    return float(inc / ((times[-1] - times[0]) / 1e9))


def gauge_stats(s: pd.DataFrame, combine: str) -> tuple[float | None, float | None]:
    """Mean and max over scrapes of a gauge combined over label sets per scrape (sum or mean)."""
    if not len(s):
        return None, None
    per_scrape = s.groupby("t_ns")["value"].agg(combine)
    return float(per_scrape.mean()), float(per_scrape.max())


def engine_stats(engine_metrics: pd.DataFrame, marks: list[dict[str, Any]]) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """Per phase (by name), the engine_* figures over the phase's telemetry window."""
    family = engine_family(engine_metrics)
    empty = {k: None for k in ENGINE_KEYS}
    if family is None or not marks:
        return family, {m["name"]: {**empty, "engine_scrapes": 0} for m in marks}
    names = registry.ENGINE_STAT_NAMES[family]
    em = engine_metrics.assign(phase=phase_of(engine_metrics["t_ns"].to_numpy(dtype=np.int64), marks))
    out = {}
    for mark in marks:
        w = em[em["phase"] == mark["name"]]
        row = dict(empty)
        row["engine_prompt_tok_s"] = counter_rate(_series(w, names["prompt_tokens"]))
        row["engine_generation_tok_s"] = counter_rate(_series(w, names["generation_tokens"]))
        row["engine_kv_cache_usage_mean"], row["engine_kv_cache_usage_max"] = gauge_stats(
            _series(w, names["kv_cache_usage"]), "mean")
        row["engine_requests_running_mean"], row["engine_requests_running_max"] = gauge_stats(
            _series(w, names["requests_running"]), "sum")
        row["engine_requests_waiting_mean"], row["engine_requests_waiting_max"] = gauge_stats(
            _series(w, names["requests_waiting"]), "sum")
        row["engine_scrapes"] = int(w.groupby("path")["t_ns"].nunique().max()) if len(w) else 0
        out[mark["name"]] = row
    return family, out


# ----------------------------------------------------------------------------- the entry point
def cell_figures(phases: list[dict[str, Any]], timeline: pd.DataFrame, engine_metrics: pd.DataFrame,
                 run: dict[str, Any], manifest: dict[str, Any], hardware: HardwareSpec,
                 peak: dict[str, Any], meter: EnergyMeter | None = None) -> dict[str, Any]:
    """metrics.json's "cell": every cell-level figure (registry.CELL_METRICS) and its fields
    (registry.CELL_FIELDS). ``phases``: phase_metrics' dicts, in run order; ``peak``: resolve_peak's."""
    meter = meter if meter is not None else EnergyMeter(timeline)
    tok_s = overall_throughput(phases)
    doc: dict[str, Any] = {
        "phases_pooled": [p["phase"] for p in non_idle(phases)],
        "active_phases": [p["phase"] for p in active(phases)],
        "overall_output_tok_s": tok_s,
        "overall_mfu_pct": mfu_pct(tok_s, flops_per_token(manifest.get("figures") or {}), peak.get("peak_flops")),
    }
    doc.update(energy_per_token(phases, hardware.electricity_usd_per_kwh))
    doc.update(idle_and_active_power(phases, meter, run))
    doc.update(baseline_and_startup(meter, run))
    doc.update(telemetry_quality(meter, timeline, phases))
    doc.update(power_vs_utilisation(timeline, [p["phase"] for p in phases]))
    doc.update(yearly_cost(tok_s, doc["overall_energy_kwh_per_mtok"], hardware))
    doc.update(hardware_state(timeline, phases))
    family, per_phase = engine_stats(engine_metrics, run.get("phases") or [])
    doc["engine_family"] = family
    doc["phase_table"] = [{"phase": p["phase"], "mode": p.get("mode"), "warmup": p.get("warmup"),
                           **{k: p.get(k) for k in PHASE_TABLE_KEYS},
                           **per_phase.get(p["phase"], {k: None for k in ENGINE_KEYS})} for p in phases]
    power_measured = any(p.get("power_source") for p in phases) or doc["idle_power_w"] is not None
    evidence = registry.RunEvidence(power_measured=power_measured,
                                    peak_measured=bool((run.get("hardware") or {}).get("peak_measured")),
                                    hardware=hardware)
    doc["labels"] = registry.cell_labels(evidence)
    return doc


# ----------------------------------------------------------------------------- published figures
RUN_COLUMNS = ("source", "engine", "gpu", "model", "load_mode", "users", "phase", "output_tok_s",
               "per_request_tok_s", "mfu_pct", "ttft_avg_ms", "ttft_p95_ms", "ttft_p99_ms", "latency_avg_ms",
               "latency_p99_ms", "power_avg_w", "tok_per_w", "success_pct", "measured")
FIT_COLUMNS = ("source", "engine", "x", "y", "model", "vmax_tok_s", "k_users", "r2_claimed", "points")
_TEXT = {"source", "engine", "gpu", "model", "load_mode", "phase", "x", "y"}
_INT = {"users", "points"}


def _package_file(name: str) -> Path:
    return Path(str(resources.files("tokenbench").joinpath(name)))


def _read(path: str | Path, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a published table, missing columns {missing}")
        rows = list(reader)
    out = []
    for n, row in enumerate(rows, 2):
        rec: dict[str, Any] = {}
        for col in columns:
            raw = (row[col] or "").strip()
            if col == "measured":
                if raw.lower() not in ("true", "false"):
                    raise ValueError(f"{path} line {n}: measured must be true or false, not {raw!r}")
                rec[col] = raw.lower() == "true"
            elif col in _TEXT:
                rec[col] = raw or None
            elif raw == "":
                rec[col] = None
            else:
                rec[col] = int(raw) if col in _INT else float(raw)
        out.append(rec)
    return out


def _published(rec: dict[str, Any]) -> dict[str, Any]:
    """A published row as its own kind of record: source "published", the report it came from, and
    whether the report itself measured the figures (false: the report's own estimate)."""
    out = {"source": "published", "report": rec.pop("source"), **rec}
    if "measured" in out:
        out["claim"] = "measured by the report" if out["measured"] else "estimated by the report"
    return out


def published_runs(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows of a published_runs.csv-shaped file (default: the package's copy of the seeds' figures)
    as records with ``source: "published"`` and ``report``: claims to compare with, not measurements."""
    return [_published(r) for r in _read(path or _package_file(PUBLISHED_RUNS), RUN_COLUMNS)]


def published_fits(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Rows of a published_fits.csv-shaped file (default: the package's copy), as ``published_runs``."""
    return [_published(r) for r in _read(path or _package_file(PUBLISHED_FITS), FIT_COLUMNS)]


def is_published(record: dict[str, Any]) -> bool:
    return record.get("source") == "published"

