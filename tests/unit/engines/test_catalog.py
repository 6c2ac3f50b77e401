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
    with pytest.raises(ConfigError, match=r"request\.ignore_eos: engine 'mlc' \(mlc-llm\) cannot honour"):
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
            assert e.default_binary and e.version_command(e.default_binary)


def test_python_of_reads_a_console_script_shebang(tmp_path):
    script = tmp_path / "trtllm-serve"
    script.write_text(f"#!{sys.executable}\nprint('hi')\n")
    assert engines.python_of(str(script)) == sys.executable
    cmd = engine("trtllm").version_command(str(script))
    assert cmd[0] == sys.executable and "tensorrt_llm" in cmd[-1]


def test_probe_runs_the_version_command_of_a_python_engine(tmp_path):
    script = tmp_path / "mlc_llm"
    script.write_text(f"#!{sys.executable}\n")
    script.chmod(0o755)
    info = engines.probe("mlc-llm", str(script))
    # mlc_llm is not installed here: the probe still records what the version command said
    assert info["binary"] == str(script) and info["version_exit_code"] != 0 and "mlc" in info["version_output"].lower()
    assert engines.probe("external", None)["binary"] is None
