"""Config schema, validation and per-cell resolution.

A *cell* is one (engine, model, load) combination: one server launch and one load test. The
Snakefile expands cells from the validated config; each rule gets only the slice of config it
needs through ``params`` so that a change reruns exactly its downstream cells.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
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
EngineKind = Literal["llama.cpp", "vllm", "sglang", "lmdeploy", "tgi", "trtllm", "mlc-llm", "bentoml-vllm", "external"]
ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
RENAMED = {"parallel": "max_batch", "ctx_per_slot": "max_context"}


class EngineSpec(Strict):
    """One engine to benchmark: its kind (a catalog entry) and normalised settings.

    The normalised settings map onto each engine's own flags (tokenbench.engines.catalog); a setting the
    engine cannot express is an error naming this key. ``None`` means the engine's default.
    """
    kind: EngineKind
    binary: str | None = None  # default: the catalog's (llama-server, vllm, lmdeploy, python3 for sglang, ...)
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)  # 0: pick a free port at launch
    # normalised settings
    dtype: Literal["auto", "float16", "bfloat16", "float32"] | None = None
    max_context: int | None = Field(None, ge=16)  # tokens per sequence (prompt + output)
    max_batch: int | None = Field(None, ge=1)  # sequences run at once (server-side concurrency)
    kv_cache_fraction: float | None = Field(None, gt=0, le=1)
    tensor_parallel: int | None = Field(None, ge=1)
    quantization: str | None = None
    backend: str | None = None  # lmdeploy: turbomind | pytorch; trtllm: pytorch | tensorrt
    threads: int | None = Field(None, ge=1)  # llama.cpp only
    extra_args: list[str] = []
    env: dict[str, str] = {}  # extra environment for the engine process (no secrets: they are recorded)
    models: list[Name] | None = None  # the models this engine serves; default: all
    # watching it
    metrics_paths: list[str] | None = None  # override the catalog's Prometheus paths ([] disables)
    metrics_interval_s: float = Field(1.0, gt=0, le=60)
    ready_timeout_s: float = Field(120, gt=0)
    stop_grace_s: float = Field(10, gt=0)
    container: str | None = None  # image for `--sdm apptainer`; conda env: workflow/envs/<kind>.yaml
    # external endpoints (kind: external): someone else's server
    url: str | None = None
    api_key_env: str | None = Field(None, pattern=ENV_NAME_RE)  # the NAME of an env var holding the key
    allow_remote: bool = False  # load tests send traffic to loopback only unless this is true
    route_prefix: str | None = None
    health_path: str | None = None
    capabilities: list[Literal["chat", "completions", "stream_usage", "ignore_eos"]] | None = None

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
    file: str  # .jsonl or .csv
    column: str = "prompt"
    output_column: str | None = None  # per-request max_tokens from this column
    limit: int | None = Field(None, ge=1)


class DatasetPrompts(Strict):
    dataset: Literal["dolly", "sharegpt"]  # databricks-dolly-15k, ShareGPT (Vicuna, cleaned split)
    revision: str = "main"  # the resolved commit sha is recorded in provenance
    limit: int | None = Field(1000, ge=1)


class SyntheticSpec(Strict):
    input_tokens: int = Field(ge=1)  # exact prompt length in the model's tokenizer
    count: int = Field(64, ge=1)  # distinct prompts (no shared prefix beyond chance)


class SyntheticPrompts(Strict):
    synthetic: SyntheticSpec


PromptSource = Union[Literal["builtin"], FilePrompts, DatasetPrompts, SyntheticPrompts]


class RequestSpec(Strict):
    endpoint: Literal["chat", "completions"] = "chat"
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.7, ge=0)
    ignore_eos: bool = True
    prompts: PromptSource = "builtin"
    client_token_count: bool = True  # re-tokenize outputs where the engine can tokenize; report mismatches
    system_prompt: str | None = None
    seed: int = 0


class LoadSpec(Strict):
    description: str = ""
    phases: list[Phase] = Field(min_length=1)
    request: RequestSpec | None = None  # overrides the top-level `request` block
    # client processes, each one event loop on its own core, sharing out users and arrivals
    # (tokenbench.load.shards): one core streams ~1,000 requests/s; raise it beyond that
    processes: int = Field(1, ge=1, le=256)

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
    x: Literal["users"] = "users"
    loads: list[Name] = Field(min_length=2)
    phase: Name | None = None  # the phase to read in each load; default: its last non-warmup phase


class HardwareSpec(Strict):
    name: str = "auto"  # a key of hardware.yaml, or "auto" (detect GPU via NVML, else the CPU)
    price_usd_per_hour: float | None = Field(None, ge=0)
    electricity_usd_per_kwh: float | None = Field(None, ge=0)
    # the output tokens a day you plan to serve: yearly hardware and electricity cost at the measured
    # throughput and energy per token (analysis/efficiency.py); None: no yearly figures
    daily_output_tokens: float | None = Field(None, gt=0)


class SloSpec(Strict):
    """Goodput counts the requests that meet every bound given (DistServe's definition)."""
    ttft_ms: float | None = Field(None, gt=0)
    tpot_ms: float | None = Field(None, gt=0)
    e2e_ms: float | None = Field(None, gt=0)


class ValiditySpec(Strict):
    """When a phase's figures can be trusted (MLPerf LoadGen style); a failed check is reported.

    The contention and stability bounds and why they are where they are: see
    tokenbench.analysis.metrics.validity, which the Methodology page quotes."""
    min_duration_s: float = Field(10, ge=0)
    min_requests: int = Field(20, ge=0)
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_send_lag_p99_ms: float = Field(10, gt=0)  # open loop: actual minus scheduled send
    max_loop_lag_p99_ms: float = Field(20, gt=0)  # the client's event loop must keep up
    min_rate_ratio: float = Field(0.98, gt=0, le=1)  # open loop: achieved / target send rate
    # contention: CPU time nobody in the benchmark used (host busy - server - client), % of all cores
    max_foreign_cpu_pct: float = Field(10.0, ge=0, le=100)
    # contention on GPUs: share of samples with a process not of the server on the device, or with
    # thermal / hardware-slowdown clock throttling
    max_gpu_contended_share: float = Field(0.05, ge=0, le=1)
    # stability: |second half - first half| / first half of the issuing window, for throughput
    # (closed loop) and median TPOT
    max_halves_change: float = Field(0.25, gt=0)


class TelemetrySpec(Strict):
    interval_s: float = Field(0.05, gt=0, le=10)  # 20 Hz, as in the seed reports
    # seconds the sampler records before the server's launch: the host's baseline draw, which net
    # energy subtracts (a 1 s-averaged GPU power sensor needs a few seconds to settle); 0: none
    baseline_s: float = Field(5.0, ge=0, le=600)


class PreflightSpec(Strict):
    gpu_idle: bool = True  # refuse to launch on a GPU that another process is using
    max_gpu_util_pct: float = Field(5.0, ge=0, le=100)
    max_foreign_gpu_mib: float = Field(256.0, ge=0)  # memory other processes may hold
    gpu_memory_tolerance_mib: float = Field(256.0, ge=0)  # teardown: memory back within this


class StudySpec(Strict):
    title: str
    description: str = ""


class ComparisonSpec(Strict):
    """Between configurations (engines entries serving the same model) at each load level."""
    baseline: Name | None = None  # compared against every other configuration; default: all pairs
    level: float = Field(0.95, gt=0.5, lt=1)  # confidence level of intervals
    alpha: float = Field(0.05, gt=0, lt=0.5)  # family-wise error rate (Holm) for naming a winner
    resolve_difference: float = Field(0.05, gt=0)  # relative difference "replicates needed" is quoted for
    bootstrap_resamples: int = Field(1000, ge=200)


# the figures compared between configurations (and so the ones a hypothesis may name); which way is
# better and how each is resampled is in tokenbench.analysis.compare
COMPARED_FIGURES = ("output_tok_s", "goodput_rps", "ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "e2e_p50_ms",
                    "e2e_p99_ms")


class HypothesisSpec(Strict):
    """A claim to test from the data, e.g. seed 000 §7: "A >= 1.5 x B output tok/s at 16 users".

    Confirmed when the whole interval of a/b lies at or above ``factor`` (``at_least``), rejected when
    it lies below, otherwise not resolvable at this sample size."""
    name: Name
    statement: str = ""
    metric: str  # one of COMPARED_FIGURES
    a: Name  # engines entries
    b: Name
    load: Name
    phase: Name | None = None  # default: the load's last non-warmup phase that sends requests
    relation: Literal["at_least", "at_most"] = "at_least"  # a/b >= factor, or a/b <= factor
    factor: float = Field(1.0, gt=0)


class Config(Strict):
    study: StudySpec
    hardware: HardwareSpec = HardwareSpec()
    telemetry: TelemetrySpec = TelemetrySpec()
    slo: SloSpec = SloSpec()
    validity: ValiditySpec = ValiditySpec()
    preflight: PreflightSpec = PreflightSpec()
    request: RequestSpec = RequestSpec()
    models: dict[Name, ModelSpec] = Field(min_length=1)
    engines: dict[Name, EngineSpec] = Field(min_length=1)
    loads: dict[Name, LoadSpec] = Field(min_length=1)
    sweep: SweepSpec | None = None
    replicates: int = Field(1, ge=1, le=100)  # each cell runs this many times, each on a fresh server launch
    comparison: ComparisonSpec = ComparisonSpec()
    hypotheses: list[HypothesisSpec] = []

    @model_validator(mode="after")
    def _check_refs(self):
        from tokenbench.engines.catalog import EngineError, check_settings, engine as catalog_engine

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
                if req.ignore_eos and "ignore_eos" not in caps:
                    raise ValueError(f"{where}.ignore_eos: engine '{name}' ({e.kind}) cannot honour ignore_eos, so its "
                                     f"outputs would not have fixed lengths; set ignore_eos: false for this study")
                if req.endpoint not in caps:
                    raise ValueError(f"{where}.endpoint: engine '{name}' ({e.kind}) does not serve '{req.endpoint}'")
        if not cells(self):
            raise ValueError("no (engine, model, load) cell to run: check engines.<name>.models")
        if self.sweep:
            unknown = [l for l in self.sweep.loads if l not in self.loads]
            if unknown:
                raise ValueError(f"sweep.loads names unknown loads {unknown}; known: {sorted(self.loads)}")
            for lname in self.sweep.loads:
                phases = self.loads[lname].phases
                if self.sweep.phase:
                    match = [p for p in phases if p.name == self.sweep.phase]
                    if not match:
                        raise ValueError(f"sweep.phase '{self.sweep.phase}' is not a phase of load '{lname}'")
                    ph = match[0]
                else:
                    ph = sweep_phase(self.loads[lname])
                if not isinstance(ph, ClosedPhase):
                    raise ValueError(
                        f"load '{lname}' in the users sweep needs a closed-loop steady phase to read"
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
        for i, h in enumerate(self.hypotheses):
            where = f"hypotheses.{i}"
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


def _fmt_loc(loc) -> str:
    return ".".join(str(x) for x in loc)


def validate(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a raw config dict; raise ConfigError naming each key to fix."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: empty or not a mapping")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = _fmt_loc(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if not loc and re.match(r"^[\w.-]+: ", msg):  # a cross-key check that names its own key
                lines.append(f"  - {msg}")
            else:
                lines.append(f"  - {loc or '(top level)'}: {msg}")
        raise ConfigError(f"{source} is invalid; fix these keys:\n" + "\n".join(lines)) from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return validate(raw, str(path))


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


def engine_env_file(kind: str) -> str:
    """The conda env file (relative to the repo root) a job that runs engine ``kind`` uses under
    ``--sdm conda``: tokenbench's dependencies plus the engine. llama.cpp is built by `make setup`
    and an external endpoint runs elsewhere, so both use tokenbench's own env."""
    name = {"llama.cpp": "tokenbench", "external": "tokenbench"}.get(kind, kind)
    return f"workflow/envs/{name}.yaml"
