"""The smoke study through workflow/profiles/slurm on a real single-node SLURM cluster
(tests/cluster/slurm-up.sh: slurmctld, slurmd, slurmdbd, one fake `gpu:a100` gres), with
snakemake-executor-plugin-slurm: load tests run as SLURM jobs on partition gpu, one at a time, the
results have the files and columns of the local run (conftest's `run_dir`), the site builds, and a
load test scancel'ed mid-phase leaves its records and no engine or sampler behind.

Needs root and Debian's packages (slurm-up.sh installs them with apt-get): skipped elsewhere, with
the reason. `make test-cluster` runs this module alone; the cluster it brought up is stopped
afterwards (one that was already up is left up). The study took 20 minutes (70 SLURM jobs) on a busy
2-core machine, plus the local run when this module runs alone, plus about 3 minutes for the scancel."""
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.snakemake_util import ROOT, SNAKEMAKE, env
from tokenbench.load.journal import frame
from tokenbench.records import read_json, read_table

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]
SMOKE = ROOT / "config" / "smoke.yaml"
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
UP = ROOT / "tests" / "cluster" / "slurm-up.sh"
DOWN = ROOT / "tests" / "cluster" / "slurm-down.sh"
# The plugin's first status check comes 40 s after a submission, and each check that finds nothing
# finished waits 10 s longer (up to 180 s): fine on a cluster, minutes of idling for a study of
# 70 short jobs. 5 s here; the shipped profile keeps the plugin's default.
FAST_CHECKS = ["--slurm-init-seconds-before-status-checks", "5"]


def _cluster_answers() -> bool:
    return shutil.which("sinfo") is not None and subprocess.run(
        ["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0


def _processes_holding(path: Path) -> list[str]:
    """'pid (command)' of every process with an open file descriptor on path."""
    target, found = str(path.resolve()), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == target for fd in (proc / "fd").iterdir()):
                found.append(f"{proc.name} ({(proc / 'comm').read_text().strip()})")
        except OSError:  # gone, or not ours to read
            continue
    return found


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A single-node SLURM cluster on this machine (brought up by slurm-up.sh), or a skip saying why not."""
    if sys.platform != "linux":
        pytest.skip("the SLURM test needs Linux (Debian's slurm-wlm)")
    if os.geteuid() != 0:
        pytest.skip("the SLURM test brings up slurmctld/slurmd/slurmdbd and needs root (run `make test-cluster` as root)")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')")
    if not (shutil.which("llama-server") or (Path(sys.executable).parent / "llama-server").exists()):
        pytest.skip("llama-server is not built: run `make setup`")
    was_up = _cluster_answers()
    # The script's output goes to a file, not a pipe: a daemon that kept a pipe open would make
    # subprocess.run wait for EOF until its timeout (CI lost 20 minutes so once). That no process is
    # left holding the script's output is asserted below instead.
    out_path = tmp_path_factory.mktemp("slurm-up") / "slurm-up.out"
    with open(out_path, "w") as out:
        up = subprocess.run(["bash", str(UP)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            timeout=1200)
    text = out_path.read_text()
    if up.returncode == 3:
        pytest.skip(text.strip().splitlines()[-1])
    assert up.returncode == 0, text[-6000:]
    holders = _processes_holding(out_path)
    if holders and not was_up:
        subprocess.run(["bash", str(DOWN)], capture_output=True, timeout=300)
    assert not holders, (f"slurm-up.sh left processes holding its stdout/stderr {holders}: a caller piping its "
                         "output (| tee, subprocess capture) would wait for EOF forever")
    yield
    if not was_up:
        subprocess.run(["bash", str(DOWN)], capture_output=True, timeout=300)


def slurm_snakemake(workdir, *args, configfile=SMOKE, timeout=2400, popen=False):
    cmd = SNAKEMAKE + ["-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--workflow-profile", str(PROFILE),
                       "--configfile", str(configfile), *FAST_CHECKS, *args]
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=workdir)
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=timeout, cwd=workdir)


def sacct(workdir) -> list[dict]:
    """The SLURM jobs (allocations, not steps) that ran in workdir, from the accounting database."""
    fields = ["JobID", "JobName", "Partition", "State", "AllocTRES", "Start", "End", "WorkDir", "Comment", "ExitCode"]
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-a", "-S", "now-1days", "-o", ",".join(fields)],
                         capture_output=True, text=True, check=True).stdout
    jobs = [dict(zip(fields, line.split("|", len(fields) - 1))) for line in out.splitlines() if line]
    return [j for j in jobs if Path(j["WorkDir"]) == Path(workdir)]


def squeue(workdir) -> list[dict]:
    """The queued and running SLURM jobs of workdir (sacct has a job's comment only once it ended)."""
    fields = ["JobID", "State", "WorkDir", "Comment"]
    out = subprocess.run(["squeue", "-h", "-a", "-o", "%i|%T|%Z|%k"], capture_output=True, text=True, check=True).stdout
    jobs = [dict(zip(fields, line.split("|", len(fields) - 1))) for line in out.splitlines() if line]
    return [j for j in jobs if Path(j["WorkDir"]) == Path(workdir)]


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory):
    """A working directory where the smoke study ran through the SLURM profile, and snakemake's output."""
    wd = tmp_path_factory.mktemp("slurm")
    t0 = time.monotonic()
    out = slurm_snakemake(wd)
    took = time.monotonic() - t0
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-8000:]
    jobs = sacct(wd)
    print(f"smoke study through the SLURM profile: {took:.0f} s, {len(jobs)} SLURM jobs")
    (wd / "sacct.tsv").write_text("".join("\t".join(j.values()) + "\n" for j in jobs))  # for a failing test's reader
    return wd, text


def test_every_stage_ran_as_a_slurm_job(slurm_run):
    wd, text = slurm_run
    assert f"tokenbench report: {wd / 'site' / 'public' / 'index.html'}" in text
    jobs = sacct(wd)
    assert jobs and all(j["State"] == "COMPLETED" for j in jobs), [(j["JobID"], j["Comment"], j["State"]) for j in jobs]
    loads = [j for j in jobs if j["Comment"].startswith("rule_run_load_test")]
    others = [j for j in jobs if j not in loads]
    # 2 engines x 3 loads x 2 replicates, each its own job on the gpu partition holding the gres
    assert len(loads) == 12
    for j in loads:
        assert j["Partition"] == "gpu" and "gres/gpu=1" in j["AllocTRES"], j
    probes = [j for j in others if j["Comment"].startswith("rule_probe_engine")]
    assert len(probes) == 2 and all(j["Partition"] == "gpu" and "gres/gpu=1" in j["AllocTRES"] for j in probes)
    cpu_jobs = [j for j in others if j not in probes]
    assert all(j["Partition"] == "cpu" and "gres/gpu" not in j["AllocTRES"] for j in cpu_jobs), cpu_jobs
    # a run's merge, metrics and timeline are one group job
    assert not any(j["Comment"].startswith(("rule_merge_telemetry", "rule_compute_metrics")) for j in jobs)
    assert sum(j["Comment"] == "rule_run_compute_metrics_merge_telemetry_plot_timeline" for j in jobs) == 12


def test_one_load_test_at_a_time_on_the_gpu_node(slurm_run):
    wd, _ = slurm_run
    jobs = sacct(wd)
    spans = sorted((datetime.fromisoformat(j["Start"]), datetime.fromisoformat(j["End"]), j["Comment"]) for j in jobs
                   if j["Comment"].startswith("rule_run_load_test"))
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        assert end <= start, f"{a} and {b} overlapped"
    # --exclusive: nothing else ran on the node while a load test measured
    for s, e, name in spans:
        for j in jobs:
            if not j["Comment"].startswith("rule_run_load_test"):
                js, je = datetime.fromisoformat(j["Start"]), datetime.fromisoformat(j["End"])
                assert je <= s or js >= e, f"{j['Comment']} ran during {name}"


def _tree(root: Path) -> dict[str, Path]:
    """Relative path -> file, the results archive's per-run name (data/history/<run id>.json) made constant."""
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel.startswith("data/history/") and rel.endswith(".json"):
                rel = "data/history/<run id>.json"
            files[rel] = p
    return files


def test_results_have_the_files_and_columns_of_a_local_run(slurm_run, run_dir):
    wd, _ = slurm_run
    local = {k: v for k, v in _tree(run_dir).items() if k.startswith(("data/", "site/public/"))}
    remote = {k: v for k, v in _tree(wd).items() if k.startswith(("data/", "site/public/"))}
    assert sorted(set(local) ^ set(remote)) == []
    for rel, path in local.items():
        if rel.endswith(".parquet"):
            assert list(read_table(remote[rel]).columns) == list(read_table(path).columns), rel
        elif rel.endswith(".csv"):
            assert remote[rel].read_text().splitlines()[:1] == path.read_text().splitlines()[:1], rel
    # the same study: same cells, the same requests per phase shape, every request answered
    for rel in local:
        if rel.startswith("data/runs/") and rel.endswith("requests.parquet"):
            req = read_table(remote[rel])
            assert len(req) > 0 and (req["status"] == "ok").all(), rel
    assert (wd / "site" / "public" / "index.html").stat().st_size > 0


def _long_config(tmp_path) -> Path:
    """The smoke study cut to one engine and one load: a closed loop of 2 users for 120 s."""
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["engines"] = {"llamacpp": cfg["engines"]["llamacpp"]}
    cfg["loads"] = {"long": {"phases": [{"name": "steady", "mode": "closed", "users": 2, "duration_s": 120}]}}
    cfg["replicates"] = 1
    for key in ("sweep", "hypotheses", "comparison"):
        cfg.pop(key, None)
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _processes_of_job(job_id: str) -> list[str]:
    """Live processes started inside SLURM job job_id (SLURM_JOB_ID in their environment)."""
    left = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            environ = (d / "environ").read_bytes().split(b"\0")
            if f"SLURM_JOB_ID={job_id}".encode() in environ:
                stat = (d / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    left.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return left


def test_scancel_mid_load_keeps_the_records_and_leaves_no_engine(slurm_cluster, tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    target = "data/runs/llamacpp/smollm2-135m/long/r1/requests.parquet"
    proc = slurm_snakemake(wd, target, configfile=_long_config(tmp_path), popen=True)
    try:
        journal = wd / "logs/run_load_test/llamacpp/smollm2-135m/long/r1.requests.arrows"
        deadline = time.monotonic() + 600
        job = None
        while time.monotonic() < deadline and proc.poll() is None:
            if job is None:
                job = next((j for j in squeue(wd) if j["Comment"].startswith("rule_run_load_test")
                            and j["State"] == "RUNNING"), None)
            if job and journal.exists() and len(frame(journal)) >= 6:
                break
            time.sleep(1)
        assert job and journal.exists() and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else "timeout"
        sent_before = len(frame(journal))
        subprocess.run(["scancel", job["JobID"]], check=True)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-3000:]
    state = next(j["State"] for j in sacct(wd) if j["JobID"] == job["JobID"])
    assert state.startswith("CANCELLED"), state
    # no process of the job outlives it: the engine, the telemetry sampler, the load generator
    deadline = time.monotonic() + 60
    while (left := _processes_of_job(job["JobID"])) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == [], left
    assert not (wd / target).exists()
    # The requests sent are recorded. With proctrack/cgroup (most clusters, and this one) scancel's
    # SIGTERM reaches only the step's task, the Snakemake running the job, which waits for its job;
    # the load test keeps measuring until KillWait, then the whole cgroup gets SIGKILL. What stays is
    # the request journal: every request that finished, with its status. Where the load test itself
    # gets the SIGTERM (proctrack/linuxproc, pgid) it also writes its .interrupted records.
    recorded = frame(journal)
    assert len(recorded) >= sent_before and recorded["request_id"].is_unique
    assert set(recorded["status"]) <= {"ok", "cancelled"}, recorded["status"].value_counts()
    partial = journal.with_name("r1.interrupted")
    if (partial / "run.json").exists():
        req = read_table(partial / "requests.parquet")
        run = read_json(partial / "run.json")
        assert run["complete"] is False and run["interrupted"] and run["server_stop"]["port_released"]
        assert set(recorded["request_id"]) <= set(req["request_id"])
    print(f"scancel: job {job['JobID']} {state}; {sent_before} requests in the journal at the scancel, "
          f"{len(recorded)} after; .interrupted records: {(partial / 'run.json').exists()}")
