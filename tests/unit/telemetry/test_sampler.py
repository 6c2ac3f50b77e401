import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tokenbench.telemetry import sampler as telemetry
from tokenbench.telemetry.energy import sampling

from .fake_nvml import DT, FakeHost, FakeNvml, a40, a100, h100, p100, v100  # FakeNvml: test_hardware imports it from here

GPU_COLUMNS = {"t_ns", "device", "gpu_util_pct", "gpu_mem_util_pct", "gpu_mem_used_bytes", "power_usage_w",
               "power_instant_w", "energy_j", "temp_c", "sm_clock_mhz", "clock_event_reasons", "throttled",
               "foreign_processes"}


def test_nvml_sampler_rows_units():
    host = FakeHost([a40(), a40(seed=1)]).at(5.0)  # saturated
    rows = telemetry.NvmlSampler(host.module()).sample(123)
    assert [r["device"] for r in rows] == ["gpu0", "gpu1"]
    r, rec = rows[0], host.gpus[0].trace[int(5.0 / DT)]
    assert set(r) == GPU_COLUMNS  # no raw power_w: merge derives the power it reports
    assert r["power_usage_w"] == pytest.approx(rec["power_usage_mw"] / 1000)
    assert r["power_instant_w"] == pytest.approx(rec["power_instant_mw"] / 1000)
    assert r["energy_j"] == rec["energy_mj"] / 1000 and r["gpu_util_pct"] == 100 and r["sm_clock_mhz"] == 1755
    assert r["gpu_mem_used_bytes"] == rec["mem_used"] and r["clock_event_reasons"] == 4 and r["throttled"] is False


def test_power_usage_lags_a_step_where_the_instant_field_does_not():
    """H100: nvmlDeviceGetPowerUsage is a 1 s average. 0.2 s into saturation it still reads well
    under the draw, and 0.5 s after the load stops it still reads far above idle; the
    NVML_FI_DEV_POWER_INSTANT field follows the draw, and the energy counter integrates it."""
    host = FakeHost([h100()])
    s = telemetry.NvmlSampler(host.module())
    rows = {t: s.sample(int(t * 1e9))[0] for t in np.arange(0, 10, 0.05).round(2) if host.at(t)}
    into_load, after_load = rows[3.2], rows[7.5]
    assert into_load["power_instant_w"] > 600 and into_load["power_usage_w"] < 0.8 * into_load["power_instant_w"]
    assert after_load["power_instant_w"] < 80 and after_load["power_usage_w"] > 300
    assert s.meta()[0]["power_usage_semantics"] == "1 s average" and s.meta()[0]["power_instant_field"]
    # energy from the counter agrees with the integral of the instantaneous power within 1 %
    t = np.array(sorted(rows))
    inst = np.array([rows[k]["power_instant_w"] for k in t])
    counter = rows[t[-1]]["energy_j"] - rows[t[0]]["energy_j"]
    assert counter == pytest.approx(np.trapezoid(inst, t), rel=0.01)


@pytest.mark.parametrize("gpu, semantics", [(h100, "1 s average"), (a40, "1 s average"),
                                            (a100, "instantaneous"), (v100, "instantaneous")])
def test_power_usage_semantics_per_architecture(gpu, semantics):
    meta = telemetry.NvmlSampler(FakeHost([gpu()]).module()).meta()[0]
    assert meta["power_usage_semantics"] == semantics
    assert meta["architecture"] == gpu().arch and meta["pci_device_id"] == f"0x{gpu().pci_device_id:08x}"


def test_ga100_family_by_pci_id_not_by_a_neighbours_name():
    assert telemetry.is_ga100(0x20B710DE, "NVIDIA A30")  # A30 is GA100 too
    assert telemetry.is_ga100(0x20F110DE, "NVIDIA A100-PCIE-40GB")
    assert not telemetry.is_ga100(0x223510DE, "NVIDIA A40") and not telemetry.is_ga100(0x233010DE, None)
    assert telemetry.power_usage_semantics(None, 0x233010DE, "NVIDIA H100") == "unknown"


@pytest.mark.parametrize("value_type", [1, 3])  # uiVal, ullVal: read the union member valueType names
def test_instant_field_is_read_through_its_value_type(value_type):
    host = FakeHost([h100(instant_value_type=value_type)]).at(5.0)
    row = telemetry.NvmlSampler(host.module()).sample(0)[0]
    assert row["power_instant_w"] == pytest.approx(host.gpus[0].trace[int(5.0 / DT)]["power_instant_mw"] / 1000)


def test_a_field_the_driver_lacks_is_decided_once_not_retried():
    host = FakeHost([v100()])  # the call succeeds, the field's own nvmlReturn is NOT_SUPPORTED
    s = telemetry.NvmlSampler(host.module())
    rows = [s.sample(k)[0] for k in range(50)]
    assert all(r["power_instant_w"] is None for r in rows) and rows[-1]["power_usage_w"] > 0
    assert host.calls["nvmlDeviceGetFieldValues"] == 1
    assert s.meta()[0]["power_instant_field"] is False and "nvmlReturn 3" in s.meta()[0]["unsupported"]["power_instant"]


def test_old_pynvml_without_the_instant_field_still_samples():
    s = telemetry.NvmlSampler(FakeHost([h100()]).at(5.0).module(old_pynvml=True))
    row, meta = s.sample(0)[0], s.meta()[0]
    assert row["power_instant_w"] is None and row["power_usage_w"] > 600 and row["clock_event_reasons"] is None
    assert meta["power_instant_field"] is False and meta["architecture"] is None
    assert meta["power_usage_semantics"] == "unknown"


def test_gpu_without_energy_counter_and_mig_gpu_give_none_not_a_crash(tmp_path):
    host = FakeHost([p100(), h100(mig=True)], clock="monotonic")
    out = tmp_path / "telemetry.raw.parquet"
    telemetry.run_sampler(str(out), 0.02, nvml=host.module(), max_duration_s=0.2)
    df = pd.read_parquet(out)
    p, mig = df[df.device == "gpu0"], df[df.device == "gpu1"]
    assert p.energy_j.isna().all() and p.power_instant_w.isna().all() and p.power_usage_w.notna().all()
    assert mig.gpu_util_pct.isna().all() and mig.gpu_mem_util_pct.isna().all() and mig.energy_j.notna().all()
    # each GPU's first try at start, then only the one that answered: the MIG GPU's utilisation and
    # the P100's energy counter were tried once
    assert host.calls["nvmlDeviceGetUtilizationRates"] == 2 + len(p)
    assert host.calls["nvmlDeviceGetTotalEnergyConsumption"] == 2 + len(mig)
    side = json.loads(out.with_suffix(".json").read_text())
    g0, g1 = side["gpus"]
    assert g0["energy_counter"] is False and g0["mig_mode"] is None and g0["power_instant_field"] is False
    assert g1["mig_mode"] is True and g1["utilization"] is False and g1["energy_counter"] is True


def test_energy_counter_recorded_exactly_across_a_driver_reset():
    """Raw means raw: a counter reset (driver reload) is recorded as read; merge drops the step."""
    host = FakeHost([h100(reset_at_s=5.0)])
    s = telemetry.NvmlSampler(host.module())
    e = [s.sample(0)[0]["energy_j"] for t in (4.9, 5.1) if host.at(t)]
    assert e == [host.gpus[0].trace[int(t / DT)]["energy_mj"] / 1000 for t in (4.9, 5.1)] and e[1] < e[0]


def test_no_driver_means_no_gpu():
    class Broken(FakeNvml):
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    assert telemetry.nvml_devices(Broken()) == []
    assert telemetry.nvml_devices(FakeNvml())[0]["name"] == "NVIDIA A40"


def test_the_older_constant_fake_still_samples():
    """A pynvml without field values, architecture or MIG calls (the older fake other tests use)."""
    s = telemetry.NvmlSampler(FakeNvml(fail_energy=True))
    r = s.sample(1)[0]
    assert r["energy_j"] is None and r["power_usage_w"] == pytest.approx(298.9) and r["power_instant_w"] is None
    assert s.meta()[0]["power_usage_semantics"] == "unknown" and s.meta()[0]["energy_counter"] is False


def test_devices_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match="NVML index 4 does not exist.*2 GPUs"):
        telemetry.NvmlSampler(FakeNvml(n=2), devices=[0, 4])
    assert telemetry.parse_devices("0,2") == [0, 2] and telemetry.parse_devices(None) is None


# ----------------------------------------------------------------------------- RAPL
def powercap(root, zones):
    """A sysfs powercap tree: {dir name: (name, energy_uj, max_energy_range_uj)}."""
    for d, (name, e, mx) in zones.items():
        z = root / d
        z.mkdir()
        (z / "name").write_text(name + "\n")
        (z / "energy_uj").write_text(f"{e}\n")
        if mx is not None:
            (z / "max_energy_range_uj").write_text(f"{mx}\n")
    return str(root / "intel-rapl:[0-9]*")


def set_uj(root, d, v):
    (root / d / "energy_uj").write_text(f"{v}\n")


MAX = 262143328850  # a real package zone's max_energy_range_uj


def test_rapl_sums_packages_never_their_subzones_or_psys(tmp_path):
    pattern = powercap(tmp_path, {
        "intel-rapl:0": ("package-0", 100_000_000, MAX), "intel-rapl:0:0": ("core", 60_000_000, MAX),
        "intel-rapl:0:1": ("dram", 10_000_000, MAX), "intel-rapl:1": ("package-1", 50_000_000, MAX),
        "intel-rapl:1:0": ("core", 30_000_000, MAX), "intel-rapl:2": ("psys", 400_000_000, MAX)})
    (tmp_path / "intel-rapl-mmio:0").mkdir()
    s = telemetry.CpuSampler(None, pattern)
    assert s.zones == [str(tmp_path / "intel-rapl:0"), str(tmp_path / "intel-rapl:1")]
    assert s.sample(0)[0]["energy_j"] == pytest.approx(150.0)
    meta = s.meta()["rapl"]
    assert meta["zones"] == ["package-0", "package-1"] and meta["excluded"] == ["psys"] and meta["readable"]


def test_rapl_wrap_is_unwrapped_at_the_source(tmp_path):
    pattern = powercap(tmp_path, {"intel-rapl:0": ("package-0", MAX - 2_000_000, MAX),
                                  "intel-rapl:0:0": ("core", 5, MAX)})
    s = telemetry.CpuSampler(None, pattern)
    e = [s.sample(0)[0]["energy_j"]]
    set_uj(tmp_path, "intel-rapl:0", MAX - 1_000_000)
    e.append(s.sample(1)[0]["energy_j"])
    set_uj(tmp_path, "intel-rapl:0", 3_000_000)  # wrapped: 1 J to the top, 3 J after it
    e.append(s.sample(2)[0]["energy_j"])
    set_uj(tmp_path, "intel-rapl:0", 4_000_000)
    e.append(s.sample(3)[0]["energy_j"])
    assert np.diff(e) == pytest.approx([1.0, 4.0, 1.0])
    assert s.meta()["rapl"]["wraps"] == 1


def test_rapl_unreadable_is_none_and_said(tmp_path):
    z = tmp_path / "intel-rapl:0"
    z.mkdir()
    (z / "name").write_text("package-0\n")  # no energy_uj readable: root-only since Linux 5.10
    s = telemetry.CpuSampler(None, str(tmp_path / "intel-rapl:[0-9]*"))
    assert s.sample(0)[0]["energy_j"] is None
    assert s.meta()["rapl"] | {} == {"readable": False, "zones": [], "paths": [], "max_energy_range_uj": [],
                                     "excluded": [], "unreadable": ["package-0"], "wraps": 0}


# ----------------------------------------------------------------------------- CPU
def test_cpu_busy_counts_only_the_cpus_we_may_run_on(monkeypatch):
    """Pinned to CPUs 2 and 3 of 8 while the other six are saturated: busy time grows by what
    CPUs 2 and 3 did, so busy ÷ 2 CPUs stays within 100 %."""
    import psutil

    state = {"t": 0.0}

    def cpu_times(percpu=False):
        t = state["t"]
        per = [SimpleNamespace(user=t if i not in (2, 3) else 0.25 * t, nice=0.0, system=0.0, idle=0.0,
                               irq=0.0, softirq=0.0, steal=0.0) for i in range(8)]
        if percpu:
            return per
        return SimpleNamespace(**{k: sum(getattr(c, k) for c in per) for k in vars(per[0])})

    monkeypatch.setattr(psutil, "cpu_times", cpu_times)
    monkeypatch.setattr(telemetry.os, "sched_getaffinity", lambda _: {2, 3})
    monkeypatch.setattr(telemetry, "_online_cpus", lambda: list(range(8)))
    s = telemetry.CpuSampler(None, "/nonexistent/*")
    a = s.sample(0)[0]["cpu_busy_s"]
    state["t"] = 10.0
    b = s.sample(1)[0]["cpu_busy_s"]
    assert (b - a) / 10.0 / s.cores == pytest.approx(0.25)
    assert s.meta()["cpu_count"] == 2 and s.meta()["cpus"] == [2, 3]


def test_cpu_positions_skip_offline_cpus(monkeypatch):
    monkeypatch.setattr(telemetry, "_online_cpus", lambda: [0, 1, 4, 5])  # 2 and 3 offline
    s = telemetry.CpuSampler(None, "/nonexistent/*", cpus=[4, 5])
    assert s.positions == [2, 3]


def test_cpu_sampler_tracks_a_busy_process_tree():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        s = telemetry.CpuSampler(busy.pid, "/nonexistent/*")
        a = s.sample(0)[0]
        time.sleep(0.5)
        b = s.sample(1)[0]
        assert b["server_cpu_s"] - a["server_cpu_s"] > 0.2  # ~0.5 s of one core
        assert b["server_rss_bytes"] > 0 and b["energy_j"] is None
        assert a["server_pss_bytes"] > 0 and b["server_pss_bytes"] is None  # PSS every PSS_EVERY samples
    finally:
        busy.kill()


SHARED = textwrap.dedent("""
    import mmap, os, sys, time
    m = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    for i in range(0, len(m), 4096):
        m[i] = 1  # touched by the parent
    if os.fork() == 0:
        s = 0
        for i in range(0, len(m), 4096):
            s += m[i]  # and mapped in by the child
        print("child", flush=True)
        time.sleep(60)
        os._exit(0)
    time.sleep(60)
""")


def test_server_pss_counts_a_shared_mapping_once():
    """Parent and child both map one 64 MiB shared region: RSS summed over the tree says ~128 MiB,
    PSS ~64 MiB (each process is charged half)."""
    p = subprocess.Popen([sys.executable, "-c", SHARED], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "child"
        row = telemetry.CpuSampler(p.pid, "/nonexistent/*").sample(0)[0]
        mib = 1 << 20
        base = row["server_rss_bytes"] - 128 * mib  # two interpreters' own pages
        assert 128 * mib < row["server_rss_bytes"] < 128 * mib + 60 * mib
        assert 64 * mib < row["server_pss_bytes"] < 64 * mib + max(base, 0) + 8 * mib
        assert row["server_rss_bytes"] - row["server_pss_bytes"] > 60 * mib
    finally:
        for c in __import__("psutil").Process(p.pid).children():
            c.kill()
        p.kill()
        p.wait()


def test_pss_reads_space_out_where_one_costs_more_than_the_budget(monkeypatch):
    """smaps_rollup costs CPU in proportion to the tree's memory (~14 ms a GiB): an engine holding
    tens of GiB is read less often instead of taking a core. Here the budget is set so small that
    the first read's cost puts the next one far beyond the run."""
    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        monkeypatch.setattr(telemetry, "PSS_BUDGET", 1e-6)
        s = telemetry.CpuSampler(busy.pid, "/nonexistent/*")
        rows = [s.sample(k)[0] for k in range(2 * telemetry.PSS_EVERY + 1)]
        assert rows[0]["server_pss_bytes"] > 0
        assert [r["server_pss_bytes"] for r in rows[1:]] == [None] * (2 * telemetry.PSS_EVERY)
        assert all(r["server_rss_bytes"] > 0 for r in rows)  # RSS is cheap: every sample
        assert s.pss_after - time.monotonic() > 10 and s.meta()["pss_budget"] == 1e-6
    finally:
        busy.kill()


# ----------------------------------------------------------------------------- loop and sidecar
def test_interval_stats():
    t = np.cumsum([0, 50, 50, 50, 50, 120, 50]) * 1_000_000
    st = sampling(np.repeat(t, 3))  # several devices per sample share one t_ns
    assert st["samples"] == 7 and st["interval_p50_ms"] == 50 and st["max_gap_ms"] == 120
    assert sampling([5])["interval_p50_ms"] is None


def test_sampler_subprocess_rate_and_sigterm(tmp_path):
    out = tmp_path / "tel.parquet"
    p = subprocess.Popen([sys.executable, "-m", "tokenbench.telemetry.sampler", "--out", str(out), "--interval", "0.05"],
                         stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
    df = pd.read_parquet(out)
    cpu = df[df.device == "cpu"]
    assert 15 <= len(cpu) <= 25  # 20 Hz for ~1 s
    gaps = cpu.t_ns.diff().dropna() / 1e6
    assert gaps.median() == pytest.approx(50, abs=5)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["samples"] == len(cpu) and side["interval_s"] == 0.05
    assert side["interval_p50_ms"] == pytest.approx(gaps.median()) and side["max_gap_ms"] == pytest.approx(gaps.max())
    assert side["cpu"]["cpu_count"] == len(os.sched_getaffinity(0))


def test_a_second_sigterm_while_writing_does_not_cut_the_file_short(tmp_path):
    # a job killed as a whole (scancel, a cgroup, a terminal's Ctrl-C to the process group) signals the
    # sampler, and then its load test's stop() signals it again, as it writes: the file must still end whole
    out = tmp_path / "tel.parquet"
    code = textwrap.dedent(f"""
        import os, signal
        import pandas as pd
        from tokenbench.telemetry.sampler import run_sampler
        write = pd.DataFrame.to_parquet
        def signalled_write(df, *a, **k):
            os.kill(os.getpid(), signal.SIGTERM)
            return write(df, *a, **k)
        pd.DataFrame.to_parquet = signalled_write
        run_sampler({str(out)!r}, 0.02, max_duration_s=0.2)
    """)
    p = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert len(pd.read_parquet(out)) > 0 and json.loads(out.with_suffix(".json").read_text())["samples"] > 0


def test_run_sampler_with_fake_nvml_writes_the_sidecar(tmp_path):
    out = tmp_path / "telemetry.raw.parquet"
    n = telemetry.run_sampler(str(out), 0.02, nvml=FakeHost([h100(), a100()], clock="monotonic").module(),
                              max_duration_s=0.2)
    df = pd.read_parquet(out)
    assert set(df.device) == {"cpu", "gpu0", "gpu1"} and n >= 5
    assert set(df.source) == {"cpu", "nvml"} and "power_w" not in df
    side = json.loads((tmp_path / "telemetry.raw.json").read_text())
    assert side["interval_s"] == 0.02 and side["samples"] == n and side["nvml"] is True
    assert [g["device"] for g in side["gpus"]] == ["gpu0", "gpu1"]
    assert {k: side["gpus"][0][k] for k in ("name", "pci_device_id", "architecture", "mig_mode",
                                            "power_usage_semantics", "power_instant_field", "energy_counter")} == {
        "name": "NVIDIA H100 80GB HBM3", "pci_device_id": "0x233010de", "architecture": "hopper", "mig_mode": False,
        "power_usage_semantics": "1 s average", "power_instant_field": True, "energy_counter": True}
    assert side["gpus"][1]["power_usage_semantics"] == "instantaneous"
    assert side["gpus"][0]["uuid"].startswith("GPU-")
    assert {"cpu_count", "cpus", "rapl", "pss_every"} <= set(side["cpu"])


def test_a_sampler_without_a_death_signal_still_stops_when_its_parent_dies(tmp_path):
    """The fallback to PR_SET_PDEATHSIG: a sampler started plainly (no preexec_fn, as off Linux or by
    hand) notices at its next sample that it was re-parented, reaps the server group it followed
    (here a sleeping process in its own session, started by the same parent) and exits without writing."""
    import psutil

    out = tmp_path / "tel.parquet"
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        p = subprocess.Popen([sys.executable, "-m", "tokenbench.telemetry.sampler", "--out", {str(out)!r},
                              "--interval", "0.05", "--pid", str(server.pid), "--orphan-grace", "1"],
                             stdout=subprocess.PIPE, text=True)
        p.stdout.readline()
        print(p.pid, server.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    pids = [int(x) for x in parent.stdout.readline().split()]
    parent.kill()
    parent.wait()

    def alive():
        return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

    t0 = time.monotonic()
    while time.monotonic() - t0 < 5 and alive():
        time.sleep(0.05)
    assert not alive()  # the sampler, and the server it followed
    assert not out.exists() and not out.with_suffix(".json").exists()


SHORT_LIVED = textwrap.dedent("""
    import subprocess, sys, time
    print("ready", flush=True)
    sys.stdin.readline()
    # a helper that burns ~0.6 s of CPU and ends (a JIT's compiler run): reaped by this process
    subprocess.run([sys.executable, "-c", "import time\\nt=time.process_time()\\nwhile time.process_time()-t<0.6: pass"])
    print("done", flush=True)
    time.sleep(60)
""")


def test_server_cpu_keeps_the_time_of_children_that_ended():
    p = subprocess.Popen([sys.executable, "-c", SHORT_LIVED], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        s = telemetry.CpuSampler(p.pid, "/nonexistent/*")
        before = s.sample(0)[0]["server_cpu_s"]
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "done"
        after = s.sample(1)[0]["server_cpu_s"]
        # the helper is gone: its 0.6 s are in the server's counter all the same (not another job's)
        assert after - before >= 0.55, (before, after)
    finally:
        p.kill()


LATE_CHILD = textwrap.dedent("""
    import subprocess, sys, time
    print("ready", flush=True)
    sys.stdin.readline()
    # a worker started after the sampler read the tree: burns ~0.6 s of CPU, then stays alive
    code = "import time\\nt=time.process_time()\\nwhile time.process_time()-t<0.6: pass\\nprint(1, flush=True)\\ntime.sleep(60)"
    w = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    w.stdout.readline()
    print("done", flush=True)
    time.sleep(60)
""")


def test_a_child_born_between_tree_reads_is_counted_in_full_at_the_next(monkeypatch):
    """The tree's members are re-read every TREE_EVERY samples, not each one (psutil's children()
    reads every process on the host); a worker started in between loses none of its CPU."""
    p = subprocess.Popen([sys.executable, "-c", LATE_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        s = telemetry.CpuSampler(p.pid, "/nonexistent/*")
        s.walk_after = float("inf")  # no host walk (it reads the tree's members on its own)
        reads = []
        children = s.proc.children
        monkeypatch.setattr(s.proc, "children", lambda **kw: reads.append(1) or children(**kw))
        first = s.sample(0)[0]["server_cpu_s"]
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "done"
        between = [s.sample(k)[0]["server_cpu_s"] for k in range(1, telemetry.TREE_EVERY)]
        assert len(reads) == 1 and max(between) - first < 0.3  # the known processes alone: the worker not yet
        after = s.sample(telemetry.TREE_EVERY)[0]["server_cpu_s"]
        assert len(reads) == 2 and after - first >= 0.55, (first, between, after)
    finally:
        os.killpg(p.pid, signal.SIGKILL)


def test_the_process_walk_names_a_foreign_hog_and_not_the_server_or_a_client_worker(monkeypatch):
    """Every FOREIGN_EVERY samples the sampler walks every process: a busy process outside the
    benchmark is named with its CPU seconds since the last walk; the server's tree and a shard
    worker added with ``client PID`` are the benchmark's own, and the worker's CPU is the client's."""
    # the walks' budget would space them 0.3-0.6 s apart here (a first walk costs 6-12 ms of CPU): the
    # second must come at the FOREIGN_EVERY-th sample, 0.6 s on
    monkeypatch.setattr(telemetry, "FOREIGN_BUDGET", 1.0)
    spin = [sys.executable, "-c", "while True: pass"]
    server, worker, hog = (subprocess.Popen(spin) for _ in range(3))
    try:
        s = telemetry.CpuSampler(server.pid, "/nonexistent/*")
        telemetry.follow_pids(s, [f"client {worker.pid}"])
        rows = [s.sample(0)[0]]
        assert json.loads(rows[0]["foreign_top"]) == []  # the first walk takes the baseline
        for k in range(1, telemetry.FOREIGN_EVERY + 1):
            time.sleep(0.6 / telemetry.FOREIGN_EVERY)
            rows.append(s.sample(k)[0])
        assert all(r["foreign_top"] is None for r in rows[1:-1])  # between walks
        top = json.loads(rows[-1]["foreign_top"])
        pids = [pid for _, pid, _ in top]
        assert hog.pid in pids and server.pid not in pids and worker.pid not in pids, top
        name, _, cpu_s = top[pids.index(hog.pid)]
        assert name.startswith("python") and 0.1 < cpu_s < 1.5, top
        # the worker spun for ~0.6 s: in the client's counter (with this process's and the sampler's)
        assert rows[-1]["client_cpu_s"] - rows[0]["client_cpu_s"] > 0.1
        assert rows[-1]["cpu_steal_s"] >= rows[0]["cpu_steal_s"] >= 0
        worker.kill()
        worker.wait()
        after = s.sample(99)[0]["client_cpu_s"]
        assert after >= rows[-1]["client_cpu_s"]  # an ended worker keeps its reading: the counter never drops
    finally:
        for p in (server, worker, hog):
            p.kill()


def test_a_helper_born_and_gone_between_walks_shows_under_its_parent():
    """A foreign process runs a short-lived CPU-bound child and reaps it between two walks: the
    child is never seen, its CPU is named under the parent (as a solver under its workflow manager)."""
    parent = subprocess.Popen([sys.executable, "-c", SHORT_LIVED], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        s = telemetry.CpuSampler(None, "/nonexistent/*")
        s._foreign_top(set())  # the baseline walk
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "done"
        named = {pid: cpu_s for _, pid, cpu_s in json.loads(s._foreign_top(set()))}
        assert named.get(parent.pid, 0) >= 0.5, named  # the helper spun ~0.6 s
    finally:
        parent.kill()
