"""One real pipeline run for the whole session: test_pipeline.py checks its data, test_site_browser.py
opens the site it built. Each test module asking for it shares the same run (about 4 minutes)."""
import shutil
import sys
from pathlib import Path

import pytest

from tests.snakemake_util import ROOT, snakemake

SMOKE = ROOT / "config" / "smoke.yaml"


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A working directory where the real Snakefile ran on config/smoke.yaml."""
    if not (shutil.which("llama-server") or (Path(sys.executable).parent / "llama-server").exists()):
        pytest.skip("llama-server is not built: run `make setup`")
    wd = tmp_path_factory.mktemp("e2e")
    out = snakemake(wd, configfile=SMOKE)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert f"tokenbench report: {wd / 'site' / 'public' / 'index.html'}" in out.stdout + out.stderr
    return wd


@pytest.fixture(scope="session")
def built_site(run_dir):
    """The report site that run built (site/public)."""
    return run_dir / "site" / "public"
