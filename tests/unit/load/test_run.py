"""run_load_test against a fake engine executable (process boundary) and a fake external endpoint:
engine metrics scraped into Parquet, no orphan server after SIGTERM/SIGINT, API keys never stored."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tokenbench import records
from tokenbench.load.journal import batches, frame, read_records
from tokenbench.config import CellSettings, ConfigError, ValiditySpec, cell_settings, validate
from tokenbench.engines.server import group_alive

ROOT = Path(__file__).resolve().parents[3]
FAKE = ROOT / "tests" / "fakes" / "fake_engine.py"


def wrapper(tmp_path, *fake_args):
    """An executable that stands where llama-server would: the fake engine behind a shell script."""
    w = tmp_path / "llama-server"
    w.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} {' '.join(fake_args)} \"$@\"\n")
    w.chmod(0o755)
    return w


def cell(tmp_path, engine, phases, request=None, processes=1):
    raw = {"study": {"title": "t"}, "telemetry": {"interval_s": 0.1, "baseline_s": 0.3},
           "request": {"max_tokens": 4, "ignore_eos": True, **(request or {})},
           "models": {"m": {"source": "local", "path": str(tmp_path)}},
           "engines": {"e": engine}, "loads": {"l": {"phases": phases, "processes": processes}}}
    settings = cell_settings(validate(raw), "e", "m", "l")
    man = tmp_path / "manifest.json"
    records.write_json({"name": "m", "served_name": "m", "path": str(tmp_path / "model.gguf"), "sha256": "0" * 64,
                        "source": "local"}, man, "model_manifest", None)
    probe = tmp_path / "probe.json"
    binary = engine.get("binary")
    records.write_json({"kind": engine["kind"], "binary": binary, "version": "fake", "version_commit": None,
                        "binary_sha256": None}, probe, "engine_probe", None)
    out = tmp_path / "out"
    paths = dict(out_requests=str(out / "requests.parquet"), out_telemetry=str(out / "telemetry.parquet"),
                 out_run=str(out / "run.json"), out_engine_metrics=str(out / "engine_metrics.parquet"),
                 server_log=str(tmp_path / "logs" / "server.log"), journal=str(tmp_path / "logs" / "journal.arrows"))
    return settings, str(man), str(probe), paths


def test_fake_engine_cell_scrapes_engine_metrics(tmp_path):
    from tokenbench.load.run import run_load_test

    eng = {"kind": "llama.cpp", "binary": str(wrapper(tmp_path, "--itl-ms", "20")), "max_batch": 4,
           "max_context": 256, "metrics_interval_s": 0.2}
    settings, man, probe, paths = cell(tmp_path, eng, [{"name": "s", "mode": "closed", "users": 2, "duration_s": 1.5}])
    doc = run_load_test(settings, man, probe, **paths)
    assert doc["complete"] and doc["server_stop"]["stopped"] == "SIGTERM" and doc["server_stop"]["group_gone"]
    assert CellSettings.model_validate(doc["settings"]) == settings  # run.json keeps the settings' JSON dump
    assert [(p["name"], p["mode"], p["label"], p["open_loop"]) for p in doc["phases"]] == [("s", "closed", "2 users", False)]
    assert doc["server_command"][1:5] == ["--model", str(tmp_path / "model.gguf"), "--alias", "m"]
    assert "--metrics" in doc["server_command"]
    lines = doc["engine_log_lines"]  # the catalog's llama.cpp patterns picked the slot lines out of the log
    assert lines and all("slot 0 released" in l for l in lines)
    assert len(lines) <= len(pd.read_parquet(paths["out_requests"]))  # one per finished request
    em = records.read_table(paths["out_engine_metrics"])
    meta = records.read_meta(paths["out_engine_metrics"])
    assert meta["kind"] == "engine_metrics" and meta["scrape"]["scrapes_ok"] >= 3
    assert set(em["metric"]) == {"llamacpp:requests_processing", "llamacpp:tokens_predicted_total",
                                 "llamacpp:kv_cache_usage_ratio"}  # the histogram is not kept
    assert em["t_ns"].between(doc["server_ready_ns"], time.monotonic_ns()).all()
    busy = em[em.metric == "llamacpp:requests_processing"]["value"]
    assert busy.max() >= 1  # the scraper saw requests in flight during the closed-loop phase
    tokens = em[em.metric == "llamacpp:tokens_predicted_total"]["value"]
    req = pd.read_parquet(paths["out_requests"])
    assert tokens.iloc[-1] <= req["output_tokens"].sum() and tokens.iloc[-1] > 0


def test_the_sampler_records_a_baseline_and_the_start_up_before_the_load(tmp_path):
    """The sampler starts before the server: a baseline window with no engine, then launch -> ready,
    then the phases; it follows the server's process tree from its launch on, and its sidecar (the
    achieved interval, the devices sampled) lands in run.json."""
    from tokenbench.load.run import run_load_test

    eng = {"kind": "llama.cpp", "binary": str(wrapper(tmp_path, "--itl-ms", "20")), "max_batch": 2, "max_context": 256}
    settings, man, probe, paths = cell(tmp_path, eng, [{"name": "s", "mode": "closed", "users": 1, "duration_s": 1}])
    doc = run_load_test(settings, man, probe, **paths)
    base = doc["baseline"]
    assert base["seconds"] == 0.3 and base["end_ns"] - base["start_ns"] >= 0.3e9
    assert base["end_ns"] <= doc["server_launch_ns"] < doc["server_ready_ns"] <= doc["phases"][0]["start_ns"]
    tel = records.read_table(paths["out_telemetry"])
    cpu = tel[tel.device == "cpu"].sort_values("t_ns")
    assert cpu["t_ns"].min() <= base["start_ns"]  # sampled from before the baseline
    before = cpu[cpu.t_ns < doc["server_launch_ns"]]
    during = cpu[cpu.t_ns >= doc["phases"][0]["start_ns"]]
    assert before["server_cpu_s"].isna().all()  # no server yet
    assert during["server_cpu_s"].notna().any() and during["server_rss_bytes"].max() > 0  # followed once launched
    side = doc["telemetry"]
    assert side["interval_s"] == 0.1 and side["samples"] >= 10 and side["interval_p50_ms"] > 0
    assert side["cpu"]["cpu_count"] >= 1 and side["gpus"] == []
    assert not (Path(paths["out_telemetry"]).parent / "telemetry.raw.json").exists()  # the sidecar is not left behind


RUNNER = """
import json, sys
sys.path.insert(0, {scripts!r})
from tokenbench.config import CellSettings
from tokenbench.load.run import run_load_test
a = json.load(open({args!r}))
run_load_test(CellSettings.model_validate(a["settings"]), a["man"], a["probe"], **a["paths"])
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_load_test_leaves_no_orphan_server(tmp_path, sig):
    eng = {"kind": "llama.cpp", "binary": str(wrapper(tmp_path, "--spawn-child", "--itl-ms", "50")),
           "max_batch": 2, "max_context": 256, "stop_grace_s": 3}
    settings, man, probe, paths = cell(tmp_path, eng, [{"name": "s", "mode": "closed", "users": 2, "duration_s": 120}])
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"settings": settings.model_dump(mode="json"), "man": man, "probe": probe,
                                "paths": paths}))
    script = RUNNER.format(scripts=str(ROOT / "workflow" / "scripts"), args=str(args))
    runner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = Path(paths["server_log"])
    journal = Path(paths["journal"])
    deadline = time.monotonic() + 30
    pgid = None
    while time.monotonic() < deadline and pgid is None:
        text = log.read_text() if log.exists() else ""
        for line in text.splitlines():
            if "fake engine starting" in line:
                pgid = int(line.split("pgid ")[1].split()[0])
        time.sleep(0.1)
    assert pgid, log.read_text() if log.exists() else "no server log"
    while time.monotonic() < deadline and not (journal.exists() and next(batches(journal), None)):
        time.sleep(0.1)  # requests are flowing (a batch of them journalled): interrupt mid-load
    assert group_alive(pgid)
    runner.send_signal(sig)
    _, err = runner.communicate(timeout=60)
    assert runner.returncode != 0
    assert not group_alive(pgid), "engine process group survived the interrupted load test"
    assert not Path(paths["out_run"]).exists()  # Snakemake would delete it: the records go beside the journal
    doc = json.loads((journal.with_name("journal.interrupted") / "run.json").read_text())
    assert doc["complete"] is False and doc["interrupted"] == sig.name
    assert doc["server_stop"]["group_gone"] and doc["server_stop"]["port_released"]


def test_external_endpoint_with_api_key_from_env(tmp_path, fake_server, monkeypatch):
    from tokenbench.load.run import run_load_test

    secret = "sk-tokenbench-test-0123456789"
    srv = fake_server(tokens=4, api_key=secret)
    monkeypatch.setenv("TB_TEST_KEY", secret)
    eng = {"kind": "external", "url": srv.url, "api_key_env": "TB_TEST_KEY", "metrics_paths": ["/metrics"],
           "metrics_interval_s": 0.2, "capabilities": ["chat", "stream_usage", "ignore_eos"]}
    settings, man, probe, paths = cell(tmp_path, eng, [{"name": "s", "mode": "closed", "users": 2, "duration_s": 1}])
    assert "TB_TEST_KEY" in settings.model_dump_json() and secret not in settings.model_dump_json()
    doc = run_load_test(settings, man, probe, **paths)
    assert doc["complete"] and "server_stop" not in doc
    req = pd.read_parquet(paths["out_requests"])
    assert len(req) > 0 and (req["status"] == "ok").all() and srv.requests == len(req)
    from tests.fakes.fake_server import STATE

    assert srv.app[STATE]["auth_failures"] == 0
    assert doc["endpoint"]["api_key_env"] == "TB_TEST_KEY" and doc["endpoint"]["external"]
    assert len(records.read_table(paths["out_engine_metrics"])) > 0
    for f in list((tmp_path / "out").iterdir()) + list((tmp_path / "logs").iterdir()):
        assert secret.encode() not in f.read_bytes(), f"API key leaked into {f}"


def test_external_endpoint_without_its_key_in_the_environment(tmp_path, fake_server, monkeypatch):
    from tokenbench.load.run import run_load_test

    srv = fake_server(api_key="x" * 12)
    monkeypatch.delenv("TB_MISSING_KEY", raising=False)
    eng = {"kind": "external", "url": srv.url, "api_key_env": "TB_MISSING_KEY", "capabilities": ["chat", "ignore_eos"]}
    settings, man, probe, paths = cell(tmp_path, eng, [{"name": "s", "mode": "closed", "users": 1, "duration_s": 1}])
    with pytest.raises(ConfigError, match="engines.e.api_key_env names TB_MISSING_KEY, which is not set"):
        run_load_test(settings, man, probe, **paths)
    assert srv.requests == 0


def test_external_endpoint_on_a_closed_port_fails_fast_saying_so(tmp_path):
    from tokenbench.engines.server import ServerError, free_port
    from tokenbench.load.run import run_load_test

    eng = {"kind": "external", "url": f"http://127.0.0.1:{free_port()}", "ready_timeout_s": 120,
           "capabilities": ["chat", "ignore_eos"]}
    settings, man, probe, paths = cell(tmp_path, eng, [{"name": "s", "mode": "closed", "users": 1, "duration_s": 1}])
    t0 = time.monotonic()
    with pytest.raises(ServerError, match=r"engines\.e: external endpoint not ready: nothing is listening at "
                                          r"http://127\.0\.0\.1:\d+/v1/models \(connection refused\)"):
        run_load_test(settings, man, probe, **paths)
    assert time.monotonic() - t0 < 10  # not the 120 s ready_timeout_s


def test_external_endpoint_answering_an_error_says_what_came_back(tmp_path, fake_server):
    from tokenbench.engines.server import ServerError
    from tokenbench.load.run import run_load_test

    srv = fake_server(models_status=500)
    eng = {"kind": "external", "url": srv.url, "ready_timeout_s": 1, "capabilities": ["chat", "ignore_eos"]}
    settings, man, probe, paths = cell(tmp_path, eng, [{"name": "s", "mode": "closed", "users": 1, "duration_s": 1}])
    with pytest.raises(ServerError, match=r"no 2xx answer within 1 s \(engines\.<name>\.ready_timeout_s\); "
                                          r"last: HTTP 500"):
        run_load_test(settings, man, probe, **paths)
    assert srv.requests == 0


def test_remote_external_endpoint_is_refused_even_with_handmade_settings(tmp_path, fake_server):
    from tokenbench.load.run import run_load_test

    srv = fake_server()
    eng = {"kind": "external", "url": srv.url, "capabilities": ["chat", "ignore_eos"]}
    settings, man, probe, paths = cell(tmp_path, eng, [{"name": "s", "mode": "closed", "users": 1, "duration_s": 1}])
    settings.engine.url = "http://192.0.2.7:8000"  # bypassing config validation (no validate_assignment)
    with pytest.raises(RuntimeError, match="loopback"):
        run_load_test(settings, man, probe, **paths)


def test_server_crash_mid_run_stops_the_load_keeps_every_request_and_fails_the_job(tmp_path):
    """The engine dies 6 requests into a 30 s phase: the breaker (its process gone, its port refused)
    stops the load within about a second instead of sending into the dead port until the phase
    ends; the records are written beside the journal (Snakemake removes a failed job's outputs) and
    the job fails, saying why."""
    from tokenbench.load.run import LoadStopped, run_load_test
    from tokenbench.analysis.metrics import compute_metrics
    from tokenbench.telemetry.merge import merge_telemetry

    eng = {"kind": "llama.cpp", "binary": str(wrapper(tmp_path, "--crash-after-requests", "6", "--itl-ms", "20",
                                                     "--tokens", "8")),
           "max_batch": 2, "max_context": 256, "stop_grace_s": 3}
    settings, man, probe, paths = cell(tmp_path, eng, [{"name": "s", "mode": "closed", "users": 2, "duration_s": 30},
                                                       {"name": "t", "mode": "poisson", "rate_rps": 50,
                                                        "duration_s": 30}],
                                       request={"max_tokens": 8})
    t0 = time.monotonic()
    with pytest.raises(LoadStopped, match="stopped early: .*(exited|unreachable)"):
        run_load_test(settings, man, probe, **paths)
    assert time.monotonic() - t0 < 20  # not the phases' 60 s
    out = Path(paths["journal"]).with_name("journal.stopped")
    assert not Path(paths["out_requests"]).exists()
    req = records.read_table(out / "requests.parquet")
    journal = frame(paths["journal"])
    assert sorted(journal["request_id"]) == sorted(req["request_id"]) and req["request_id"].is_unique
    assert (req["status"] == "ok").sum() >= 4 and (req["status"] == "disconnect").sum() >= 1
    assert set(req["status"]) <= {"ok", "disconnect"} and len(req) < 200  # no hot loop
    assert set(req["phase"]) == {"s"}  # the later phase is not run against a dead server
    run = records.read_json(out / "run.json")
    assert run["complete"] is False and run["server_exited_during_run"] and run["stopped_reason"]
    assert [p["name"] for p in run["phases"]] == ["s"] and run["phases"][0]["stopped_reason"] == run["stopped_reason"]
    tl = merge_telemetry(req, records.read_table(out / "telemetry.parquet"), run)
    m, _ = compute_metrics(req, tl, run, {"name": "m", "figures": {}}, None, None, ValiditySpec(max_error_rate=0.01))
    assert m["valid"] is False and m["server_exited_during_run"] and m["stopped_reason"] == run["stopped_reason"]
    assert any(f.startswith("stopped early: ") for f in m["phases"][0]["validity"]["failed_checks"])


def test_the_engine_process_liveness_callback(tmp_path):
    from tokenbench.load.shards import ProcessAlive

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    alive = ProcessAlive(proc.pid)
    assert alive() is None
    proc.kill()
    time.sleep(0.2)  # a zombie until reaped: gone all the same
    assert "has exited" in alive()
    proc.wait()
    assert "has exited" in alive()


def test_sampler_dies_with_a_sigkilled_load_test(tmp_path):
    """A SIGKILLed load test (the job killed hard) must not leave its telemetry sampler running
    under init, writing into the data folder."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[3] / 'workflow' / 'scripts')!r})\n"
            "from pathlib import Path\n"
            "from tokenbench.load.run import Telemetry\n"
            f"t = Telemetry(Path({str(tmp_path / 'tel.parquet')!r}), 0.05, None)\n"
            "print(t.proc.pid, flush=True)\n"
            "import time; time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    sampler = int(parent.stdout.readline())
    assert psutil.pid_exists(sampler)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and psutil.pid_exists(sampler) and \
            psutil.Process(sampler).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.05)
    assert not psutil.pid_exists(sampler) or psutil.Process(sampler).status() == psutil.STATUS_ZOMBIE
    assert not (tmp_path / "tel.parquet").exists()  # killed, not left to write after its job died


def test_a_cell_on_two_client_processes_writes_one_requests_table(tmp_path, monkeypatch):
    from tokenbench.load.run import Telemetry, run_load_test

    workers = []
    add_client = Telemetry.add_client

    def told(self, pid):
        workers.append(pid)
        add_client(self, pid)

    monkeypatch.setattr(Telemetry, "add_client", told)

    eng = {"kind": "llama.cpp", "binary": str(wrapper(tmp_path, "--itl-ms", "5")), "max_batch": 4, "max_context": 256}
    settings, man, probe, paths = cell(tmp_path, eng, [{"name": "s", "mode": "closed", "users": 3, "duration_s": 1}],
                                       processes=2)
    doc = run_load_test(settings, man, probe, **paths)
    req = records.read_table(paths["out_requests"])
    assert doc["complete"] and doc["client"]["processes"] == 2
    assert len(req) == doc["client"]["requests_sent"] > 3 and set(req["user"]) == {0, 1, 2}
    assert set(req["request_id"] % 2) == {0, 1} and req["request_id"].is_unique
    assert (req["status"] == "ok").all() and req["client_output_tokens"].notna().all()  # counted from both journals
    assert [p["warm_connections"] for p in doc["phases"]] == [3]
    # the sampler was told the workers' pids: their CPU is the client's, never named as foreign
    assert len(workers) == 2
    tel = records.read_table(paths["out_telemetry"])
    named = {pid for js in tel["foreign_top"].dropna() for _, pid, _ in json.loads(js)}
    assert not named & set(workers), (named, workers)


def _alive(pids) -> list:
    import psutil

    out = []
    for p in pids:
        try:
            if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.parametrize("engine_flags, processes", [((), 2), (("--ignore-sigterm",), 1)],
                         ids=["two-client-processes", "engine-ignores-sigterm"])
def test_a_sigkilled_load_test_leaves_no_process_behind(tmp_path, engine_flags, processes):
    """SIGKILL of the load-test job mid-load: its sampler, the engine, the engine's own child and
    the client worker processes all go within seconds (their parent-death signal; the sampler reaps
    the engine's process group, with SIGKILL after the engine's grace when it ignores SIGTERM), and
    the sampler writes nothing into the run's folder."""
    import psutil

    eng = {"kind": "llama.cpp", "binary": str(wrapper(tmp_path, "--spawn-child", "--itl-ms", "50", *engine_flags)),
           "max_batch": 2, "max_context": 256, "stop_grace_s": 1}
    settings, man, probe, paths = cell(tmp_path, eng, [{"name": "s", "mode": "closed", "users": 2, "duration_s": 120}],
                                       processes=processes)
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"settings": settings.model_dump(mode="json"), "man": man, "probe": probe,
                                "paths": paths}))
    runner = subprocess.Popen([sys.executable, "-c", RUNNER.format(scripts=str(ROOT / "workflow" / "scripts"),
                                                                   args=str(args))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, journal = Path(paths["server_log"]), Path(paths["journal"])
    journals = [journal] if processes == 1 else [journal.with_name(f"journal.shard{k}.arrows") for k in range(2)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not ("child pid" in (log.read_text() if log.exists() else "")
                                               and all(j.exists() and next(batches(j), None) for j in journals)):
        time.sleep(0.1)  # the engine has its child and requests are flowing: kill mid-load
    assert runner.poll() is None, "the load test ended before it could be killed"
    tree = psutil.Process(runner.pid).children(recursive=True)
    engine_child = int(log.read_text().split("child pid ")[1].split()[0])

    def cmdline(p) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:
            return ""

    sampler = [p.pid for p in tree if "tokenbench.telemetry.sampler" in cmdline(p)]
    workers = [p.pid for p in tree if "multiprocessing" in cmdline(p)]
    assert sampler and engine_child and len(workers) >= (processes if processes > 1 else 0)
    pids = {p.pid for p in tree} | {engine_child}
    runner.kill()
    runner.wait()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 15 and _alive(pids):  # the engine's grace (1 s), then SIGKILL
        time.sleep(0.05)
    left = _alive(pids)
    assert not left, [cmdline(psutil.Process(p)) for p in left]
    assert not list(Path(paths["out_telemetry"]).parent.glob("telemetry.raw*"))


class _FailingWriter:
    """Stands for the journal's IPC writer: the first ``ok`` batches are written, then the disk is full."""

    def __init__(self, real, ok: int):
        self.real, self.ok = real, ok

    def write_batch(self, batch):
        import errno

        if self.ok <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.ok -= 1
        self.real.write_batch(batch)

    def close(self):
        self.real.close()


@pytest.mark.parametrize("how", ["injected", "tmpfs"])
def test_a_full_disk_under_the_journal_stops_the_load_test_at_once(tmp_path, monkeypatch, how):
    """ENOSPC while the journal is written: the load test stops its 60 s phase within seconds and
    fails with the journal's path and the free space; the server is torn down; the records written
    go beside the journal, saying complete: false and why they stop; the journal holds whole batches."""
    import subprocess

    from tokenbench.load import journal as jmod
    from tokenbench.load.run import run_load_test

    eng = {"kind": "llama.cpp", "binary": str(wrapper(tmp_path, "--itl-ms", "1")), "max_batch": 4,
           "max_context": 256, "stop_grace_s": 2}
    settings, man, probe, paths = cell(tmp_path, eng, [{"name": "s", "mode": "closed", "users": 4, "duration_s": 60}])
    mnt = None
    if how == "tmpfs":
        mnt = tmp_path / "tiny"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
        paths["journal"] = str(mnt / "journal.arrows")
        monkeypatch.setenv("TOKENBENCH_DISK_CHECK", "0")  # the disk is full from the start: let the run find it
    else:
        real_init = jmod.Journal.__init__

        def init(self, *a, **k):
            real_init(self, *a, **k)
            self._writer = _FailingWriter(self._writer, ok=3)

        monkeypatch.setattr(jmod.Journal, "__init__", init)
    try:
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:  # JournalWriteError; on the full tmpfs, the records' write failure after it
            run_load_test(settings, man, probe, **paths)
        took = time.monotonic() - t0
        err = str(info.value)
        assert took < 20, f"the run went on for {took:.0f} s after the disk filled"
        assert f"request journal {paths['journal']}: write failed" in err and "No space left on device" in err
        assert re.search(r"\(\d+(\.\d)? (B|KiB|MiB|GiB) free on /", err)
        written, lost = map(int, re.search(r"stops after its first (\d+) records, (\d+) finished", err).groups())
        assert written > 0 and lost > 0 and len(read_records(paths["journal"])) == written
        failed = Path(paths["journal"]).with_name("journal.failed")
        doc = json.loads((failed / "run.json").read_text()) if how == "injected" else None
        if doc is None:  # on the full tmpfs the records could not be written either: the error says so, and where
            assert f"could not write the load test's records to {failed}" in err and "0 B free on" in err
        else:
            assert doc["complete"] is False and doc["stopped_reason"].startswith("JournalWriteError: request journal")
            assert doc["server_stop"]["group_gone"]
            meta = records.read_meta(failed / "requests.parquet")
            assert meta["complete"] is False and "No space left" in meta["stopped_reason"]
            assert len(records.read_table(failed / "requests.parquet")) == written
        assert not Path(paths["out_run"]).exists()
    finally:
        if mnt is not None:
            subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: a file a failed write left open


def test_a_load_whose_records_cannot_fit_is_refused_before_anything_starts(tmp_path, monkeypatch):
    from collections import namedtuple

    from tokenbench.load import run as run_mod
    from tokenbench.load.run import expected_requests, run_load_test

    eng = {"kind": "llama.cpp", "binary": str(wrapper(tmp_path)), "max_batch": 4, "max_context": 256}
    phases = [{"name": "warm", "mode": "poisson", "rate_rps": 2, "duration_s": 10, "warmup": True},
              {"name": "pause", "mode": "idle", "duration_s": 5},
              {"name": "steady", "mode": "closed", "users": 8, "duration_s": 100},
              {"name": "fixed", "mode": "closed", "users": 2, "requests": 50}]
    settings, man, probe, paths = cell(tmp_path, eng, phases, request={"max_tokens": 100})
    # 2 x 10 + 8 users x 100 s at one request per 0.1 s (100 tokens at 1000 tok/s) + 50
    assert expected_requests(settings.load.phases, 100) == 20 + 8000 + 50 + 1
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(run_mod.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 5 << 20, 5 << 20))
    with pytest.raises(ConfigError, match=r"not enough disk space for loads\.l: 5\.0 MiB free on /.*need up to "
                                          r"\d+\.\d MiB \(about 8071 requests"):
        run_load_test(settings, man, probe, **paths)
    assert not Path(paths["server_log"]).exists() and not Path(paths["out_run"]).exists()  # nothing started
    monkeypatch.setenv("TOKENBENCH_DISK_CHECK", "0")
    assert run_mod.check_disk_space(settings, Path(paths["journal"]), tmp_path)["checked"] is False


def test_a_full_disk_under_a_client_processs_journal_stops_every_client_process(tmp_path, monkeypatch):
    """On two client processes: the worker whose journal write fails stops at once, and the load
    test stops the other one without waiting out its 60 s phase, then fails with the worker's error."""
    import subprocess

    from tokenbench.load.run import run_load_test

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    monkeypatch.setenv("TOKENBENCH_DISK_CHECK", "0")
    try:
        eng = {"kind": "llama.cpp", "binary": str(wrapper(tmp_path, "--itl-ms", "1")), "max_batch": 4,
               "max_context": 256, "stop_grace_s": 2}
        settings, man, probe, paths = cell(tmp_path, eng, [{"name": "s", "mode": "closed", "users": 4, "duration_s": 60}],
                                           processes=2)
        paths["journal"] = str(mnt / "journal.arrows")
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:  # the records could not be written either: that error, the run's after it
            run_load_test(settings, man, probe, **paths)
        took = time.monotonic() - t0
        err = str(info.value)
        assert took < 30, f"the run went on for {took:.0f} s after the disk filled"
        assert "client process failed: client process" in err and "JournalWriteError: request journal" in err
        assert "No space left on device" in err and " free on " in err
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
