import dataclasses
import subprocess
import sys

import yaml

from tests.snakemake_util import ROOT, job_counts, snakemake


def test_snakemake_lint_is_clean():
    out = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "Lints for" not in text and "Congratulations" in text


def test_dry_run_default_config(tmp_path):
    out = snakemake(tmp_path, "-n", configfile=ROOT / "config" / "config.yaml")
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    assert counts["run_load_test"] == 4 and counts["merge_telemetry"] == 4 and counts["plot_timeline"] == 4
    assert counts["fit_saturation"] == 1 and counts["build_site"] == 1 and counts["resolve_model"] == 1


def test_dry_run_smoke_config_replaces_the_default(tmp_path):
    # from the repo root, where config/config.yaml exists: --configfile must replace it, not merge
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "config/smoke.yaml"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout)["run_load_test"] == 3


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
    assert "loads.users-4.phases.0.closed.users" in out.stdout + out.stderr


def test_request_record_schema_matches_the_parquet_columns():
    from tokenbench.loadgen import RequestRecord
    from tokenbench.loadtest import REQUEST_COLUMNS

    assert [f.name for f in dataclasses.fields(RequestRecord)] == list(REQUEST_COLUMNS)
    ts = [c for c in REQUEST_COLUMNS if c.endswith("_ns")]
    assert all(REQUEST_COLUMNS[c] in ("int64", "Int64", "object") for c in ts)
