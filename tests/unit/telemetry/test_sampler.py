import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pandas as pd
import pytest

from tokenbench.telemetry import sampler as telemetry


class FakeNvml:
    """pynvml's API surface, answering like a 2-GPU A40 box. Boundary fake: the sampler is real."""
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    def __init__(self, n=2, fail_energy=False):
        self.n, self.calls, self.fail_energy = n, 0, fail_energy

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA A40"

    def nvmlSystemGetDriverVersion(self):
        return "550.54"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=48 * 2**30, used=(20 + h) * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=99, memory=60)

    def nvmlDeviceGetPowerUsage(self, h):
        return 298_900  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if self.fail_energy:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        self.calls += 1
        return 1_000_000 + 300 * self.calls  # mJ

    def nvmlDeviceGetTemperature(self, h, kind):
        return 72

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 1410


def test_nvml_sampler_rows_units():
    s = telemetry.NvmlSampler(FakeNvml())
    rows = s.sample(123)
    assert [r["device"] for r in rows] == ["gpu0", "gpu1"]
    r = rows[0]
    assert r["power_w"] == pytest.approx(298.9) and r["gpu_util_pct"] == 99 and r["sm_clock_mhz"] == 1410
    assert r["energy_j"] == pytest.approx(1000.3) and r["gpu_mem_used_bytes"] == 20 * 2**30


def test_nvml_unsupported_field_is_missing_not_fatal():
    rows = telemetry.NvmlSampler(FakeNvml(fail_energy=True)).sample(1)
    assert rows[0]["energy_j"] is None and rows[0]["power_w"] == pytest.approx(298.9)


def test_no_driver_means_no_gpu():
    class Broken(FakeNvml):
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    assert telemetry.nvml_devices(Broken()) == []
    assert telemetry.nvml_devices(FakeNvml())[0]["name"] == "NVIDIA A40"


def test_rapl_zones_from_sysfs(tmp_path):
    z = tmp_path / "intel-rapl:0"
    z.mkdir()
    (z / "energy_uj").write_text("123456\n")
    unreadable = tmp_path / "intel-rapl:1"
    unreadable.mkdir()
    assert telemetry.rapl_zones(str(tmp_path / "intel-rapl:[0-9]*")) == [str(z)]
    s = telemetry.CpuSampler(None, str(tmp_path / "intel-rapl:[0-9]*"))
    assert s.sample(1)[0]["energy_j"] == pytest.approx(0.123456)


def test_cpu_sampler_tracks_a_busy_process_tree():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        s = telemetry.CpuSampler(busy.pid, "/nonexistent/*")
        a = s.sample(0)[0]
        time.sleep(0.5)
        b = s.sample(1)[0]
        assert b["server_cpu_s"] - a["server_cpu_s"] > 0.2  # ~0.5 s of one core
        assert b["server_rss_bytes"] > 0 and b["energy_j"] is None
    finally:
        busy.kill()


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


def test_run_sampler_with_fake_nvml(tmp_path):
    out = tmp_path / "t.parquet"
    n = telemetry.run_sampler(str(out), 0.02, nvml=FakeNvml(n=1), max_duration_s=0.2)
    df = pd.read_parquet(out)
    assert set(df.device) == {"cpu", "gpu0"} and n >= 5
    assert set(df.source) == {"cpu", "nvml"}
