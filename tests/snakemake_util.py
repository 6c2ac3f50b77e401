"""Run the real Snakefile in a scratch directory and read what Snakemake says it would do."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def env():
    bindir = str(Path(sys.executable).parent)  # llama-server is installed next to python in the venv
    # Script jobs must import *this checkout's* tokenbench, even when the venv has another
    # checkout installed in editable mode (a shared venv across git worktrees): Snakemake only
    # appends workflow/scripts to a script's sys.path, so an installed copy would win.
    pythonpath = os.pathsep.join(filter(None, [str(ROOT / "workflow" / "scripts"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "PYTHONPATH": pythonpath}


def snakemake(workdir, *args, configfile=None, timeout=1800):
    cmd = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", "1"]
    if configfile:
        cmd += ["--configfile", str(configfile)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env(), timeout=timeout)


def planned_jobs(output: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of each job in a dry-run's output."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if not m:
            continue
        wc = re.search(r"^\s+wildcards: (.+)$", block, re.M)
        wildcards = dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {}
        jobs.append((m.group(1), wildcards))
    return jobs


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[-1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
