import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.snakemake_util import ROOT, SNAKEMAKE, env, job_counts, snakemake


def test_snakemake_lint_is_clean():
    out = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "Lints for" not in text and "Congratulations" in text


def test_snakefmt_check_is_clean():
    files = [str(ROOT / "Snakefile")] + sorted(str(p) for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    out = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"All {len(files)} file(s) would be left unchanged" in out.stdout + out.stderr


RULE_FILES = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
# the directive order every rule keeps (issue 12); threads count as a resource
DIRECTIVE_ORDER = ["input", "output", "log", "params", "threads", "resources", "conda", "container", "script"]


def rule_blocks():
    """(file, rule, {directive: its text}) of every rule, directives in file order."""
    import re

    for path in RULE_FILES:
        for m in re.finditer(r"^rule (\w+):\n((?:    .*\n|\n)+)", path.read_text(), re.M):
            directives, current = {}, None
            for line in m.group(2).splitlines():
                d = re.match(r"^    (\w+):", line)
                if d:
                    current = d.group(1)
                    directives[current] = line
                elif current:
                    directives[current] += "\n" + line
            yield path.name, m.group(1), directives


def test_rules_keep_the_directive_order_a_log_and_get_input_functions():
    import re

    rules = list(rule_blocks())
    assert len(rules) >= 20  # every rule file was read
    for path, rule, directives in rules:
        where = f"{path}: rule {rule}"
        known = [d for d in directives if d in DIRECTIVE_ORDER]
        assert known == sorted(known, key=DIRECTIVE_ORDER.index), f"{where}: directives {known}"
        assert "log" in directives or rule == "all", f"{where} has no log:"
        inputs = directives.get("input", "")
        assert "lambda" not in inputs, f"{where}: an input function is a lambda; name it get_* in common.smk"
        for fn in re.findall(r"(?:=|unpack\()\s*([a-z_][a-z0-9_]*)\s*[,)]", inputs):
            if fn not in ("rules",):
                assert fn.startswith("get_"), f"{where}: input function {fn} is not named get_*"


def test_snakefile_requires_the_snakemake_it_is_written_for():
    text = (ROOT / "Snakefile").read_text()
    assert 'min_version("9.0")' in text and '"snakemake>=9,<10"' in (ROOT / "pyproject.toml").read_text()


def test_dry_run_default_config(tmp_path):
    out = snakemake(tmp_path, "-n", configfile=ROOT / "config" / "config.yaml")
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    # 2 configurations x 5 loads x 2 replicates; one combined result per cell, one fit per configuration
    assert counts["run_load_test"] == 20 and counts["merge_telemetry"] == 20 and counts["plot_timeline"] == 20
    assert counts["combine_replicates"] == 10 and counts["fit_saturation"] == 2
    assert counts["compare_configurations"] == counts["evaluate_hypotheses"] == 1
    assert counts["build_site"] == 1 and counts["resolve_model"] == 1 and counts["probe_engine"] == 2


def test_dry_run_smoke_config_replaces_the_default(tmp_path):
    # from the repo root, where config/config.yaml exists: --configfile must replace it, not merge
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "config/smoke.yaml"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout)["run_load_test"] == 12  # 2 configurations x 3 loads x 2 replicates


def test_dry_run_without_sweep(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    del cfg["sweep"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, "-n", configfile=tmp_path / "c.yaml")
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    assert "fit_saturation" not in counts and "plot_throughput" not in counts and counts["build_site"] == 1


def test_bad_config_fails_before_running_with_the_key_named(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    cfg["loads"]["users-4"]["phases"][0]["users"] = -1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, "-n", configfile=tmp_path / "bad.yaml")
    assert out.returncode != 0
    assert "loads.users-4.phases[ramp].users: Input should be greater than or equal to 1; given -1" in out.stdout + out.stderr


def test_request_record_schema_matches_the_parquet_columns():
    from tokenbench.load.journal import PANDAS_DTYPES, SCHEMA, RequestRecord

    assert [f.name for f in dataclasses.fields(RequestRecord)] == list(PANDAS_DTYPES) == SCHEMA.names
    ts = [c for c in PANDAS_DTYPES if c.endswith("_ns")]
    assert all(PANDAS_DTYPES[c] in ("int64", "Int64", "object") for c in ts)


def seed_dry_run(tmp_path, name, **env):
    import os

    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(ROOT / "config" / name),
           "-d", str(tmp_path)]
    # no token anywhere: no variable, and an HF home without a stored login
    e = {k: v for k, v in os.environ.items()
         if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_TOKEN_PATH")}
    e["HF_HOME"] = str(tmp_path / "hf-home")
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**e, **env})


def test_seed_a40_config_validates_and_dry_runs(tmp_path):
    from tokenbench.config import load_config

    cfg = load_config(ROOT / "config" / "seed-a40-llama3-8b.yaml")
    assert {e.kind for e in cfg.engines.values()} == {"lmdeploy", "sglang", "vllm", "bentoml-vllm"}
    assert cfg.engines["lmdeploy-pytorch"].backend == "pytorch"
    stress = cfg.loads["three_phase"].phases
    assert [(p.mode, getattr(p, "rate_rps", None) or getattr(p, "users", None), p.duration_s) for p in stress] == [
        ("poisson", 8, 20), ("idle", None, 10), ("closed", 50, 220)]
    out = seed_dry_run(tmp_path, "seed-a40-llama3-8b.yaml")  # no HF_TOKEN, no stored login: plans need no secret
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    assert counts["run_load_test"] == 4 * 4 and counts["fit_saturation"] == 4 and counts["probe_engine"] == 4


def test_seed_a100_config_validates_and_dry_runs(tmp_path):
    from tokenbench.config import cells, load_config

    cfg = load_config(ROOT / "config" / "seed-a100-llama3.yaml")
    assert {e.kind for e in cfg.engines.values()} == {"vllm", "lmdeploy", "mlc-llm", "trtllm", "tgi"}
    assert all(len(l.phases) == 2 and l.phases[1].duration_s == 300 and l.phases[0].duration_s == 20
               for l in cfg.loads.values())
    out = seed_dry_run(tmp_path, "seed-a100-llama3.yaml")  # no HF_TOKEN, not offline: plans need no secret
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    assert counts["run_load_test"] == len(cells(cfg)) == 5 * 2 * 3 and counts["fit_saturation"] == 10


def test_hub_config_dry_runs_without_any_token(tmp_path):
    # the seed configs name gated hub models; a plan must not ask for HF_TOKEN (nor read a login)
    out = seed_dry_run(tmp_path, "seed-a40-llama3-8b.yaml")
    assert out.returncode == 0, out.stderr
    assert "HF_TOKEN" not in out.stdout + out.stderr and job_counts(out.stdout)["resolve_model"] == 1


@pytest.mark.parametrize("profile", [[], ["--workflow-profile", str(ROOT / "workflow" / "profiles" / "local")]],
                         ids=["default", "local"])
def test_snakemake_replans_once_a_minute_not_every_second(tmp_path, monkeypatch, profile):
    """A plain `snakemake` run (profiles/default, found beside the Snakefile from any working
    directory) and the local profile: Snakemake's own passes over the ready jobs must not take CPU
    from the load test beside it (a pass a second grew to a quarter of a core in the CPU study)."""
    from snakemake.cli import parse_args

    monkeypatch.chdir(tmp_path)
    _, args = parse_args(["--cores", "1", "-s", str(ROOT / "Snakefile"), "-n", *profile])
    assert args.max_jobs_per_timespan.timespan >= 60 and args.max_jobs_per_timespan.max_jobs >= 1000
    assert args.scheduler == "greedy"


def test_local_profile_dry_runs_with_one_load_test_at_a_time(tmp_path):
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--workflow-profile", "workflow/profiles/local",
                          "--configfile", "config/smoke.yaml", "-d", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    prof = yaml.safe_load((ROOT / "workflow" / "profiles" / "local" / "config.yaml").read_text())
    assert prof["resources"] == ["load_test=1"]
    for name, plugin_key in (("slurm", "gpu_model"), ("kubernetes", "gpu_manufacturer")):
        p = yaml.safe_load((ROOT / "workflow" / "profiles" / name / "config.yaml").read_text())
        assert p["executor"] == name and p["set-resources"]["run_load_test"]["gpu"] == 1
        assert plugin_key in p["set-resources"]["run_load_test"]


def test_dry_run_checks_the_files_and_variables_the_config_refers_to(tmp_path):
    """A missing local model, prompt file or trace, and an unset api_key_env, stop `snakemake -n`
    (not a job an hour later), each named with its key."""
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    cfg["models"]["gone"] = {"source": "local", "path": "models/gone.gguf"}
    cfg["request"]["prompts"] = {"file": "prompts/missing.jsonl"}
    cfg["engines"]["remote"] = {"kind": "external", "url": "http://127.0.0.1:9", "api_key_env": "TB_UNSET_KEY_XYZ",
                                "capabilities": ["chat", "ignore_eos", "stream_usage"], "models": ["gone"]}
    cfg["loads"]["replay"] = {"phases": [{"name": "replay", "mode": "trace", "path": "traces/none.jsonl"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, "-n", configfile=tmp_path / "c.yaml")
    text = out.stdout + out.stderr
    assert out.returncode != 0
    for line in ("models.gone.path: 'models/gone.gguf' does not exist",
                 "engines.remote.api_key_env: the environment variable TB_UNSET_KEY_XYZ is not set",
                 "request.prompts.file: 'prompts/missing.jsonl' is not a file",
                 "loads.replay.phases[replay].path: trace 'traces/none.jsonl' is not a file"):
        assert line in text, text[-3000:]


def test_dry_run_of_the_default_config_names_a_yaml_error_with_its_line(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("study:\n  title: x\nloads: [1, 2\nmodels: {}\n")
    out = subprocess.run(SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "-n", "--cores", "1"], cwd=tmp_path,
                         capture_output=True, text=True, env=env())
    assert out.returncode != 0
    assert ("config/config.yaml:4:7: not valid YAML: while parsing a flow sequence (opened at line 3, column 8); "
            "expected ',' or ']', but got ':'") in out.stdout + out.stderr, out.stdout[-2000:]


MINI_SNAKEFILE = """
import sys
sys.path.insert(0, {scripts!r})
from tokenbench.joblog import forward_stop_signals


onstart:
    forward_stop_signals("run_load_test")


rule all:
    output:
        "done.txt",
    script:
        "run_load_test.py"
"""
MINI_JOB = """
import signal, sys, time
from pathlib import Path

def stop(*_):
    Path("stopped.txt").write_text("SIGTERM")
    sys.exit(3)

signal.signal(signal.SIGTERM, stop)
Path("started.txt").write_text("")
time.sleep(120)
Path("done.txt").write_text("")
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_snakemake_alone_reaches_the_running_load_test(tmp_path, sig):
    """Real Snakemake 9: a script job named run_load_test gets SIGTERM, through the Snakefile's
    onstart hook, when Snakemake alone is sent SIGTERM or SIGINT, and Snakemake exits within
    seconds instead of waiting out the job (120 s here)."""
    (tmp_path / "Snakefile").write_text(MINI_SNAKEFILE.format(scripts=str(ROOT / "workflow" / "scripts")))
    (tmp_path / "run_load_test.py").write_text(MINI_JOB)
    p = subprocess.Popen(SNAKEMAKE + ["--cores", "1"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env(), start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "started.txt").exists():
        time.sleep(0.1)
    assert (tmp_path / "started.txt").exists()
    t0 = time.monotonic()
    os.kill(p.pid, sig)  # Snakemake alone, not its process group
    try:
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert time.monotonic() - t0 < 30
    assert (tmp_path / "stopped.txt").read_text() == "SIGTERM", out[-2000:]
    assert p.returncode != 0 and not (tmp_path / "done.txt").exists()
