import os
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from tokenbench.engines.server import Server, ServerError, free_port, port_is_free

FAKE = str(Path(__file__).resolve().parents[2] / "fakes" / "fake_engine.py")


def launch(tmp_path, *args, port=None):
    port = port or free_port()
    return Server([sys.executable, FAKE, "--port", str(port), *args], tmp_path / "server.log", "127.0.0.1", port)


def test_ready_then_sigterm_releases_port(tmp_path):
    s = launch(tmp_path, "--ready-after", "0.5").start()
    ready = s.wait_ready(20)
    assert ready >= 0.5  # the probe waited for 200, not for the port to open
    assert os.getpgid(s.proc.pid) == s.proc.pid  # its own process group
    out = s.stop(grace_s=5)
    assert out["stopped"] == "SIGTERM" and out["port_released"]
    assert "fake engine starting" in (tmp_path / "server.log").read_text()


def test_dies_before_ready_fails_fast_with_log_tail(tmp_path):
    s = launch(tmp_path, "--die-after", "0.2").start()
    t0 = time.monotonic()
    with pytest.raises(ServerError) as exc:
        s.wait_ready(60)
    assert time.monotonic() - t0 < 15  # did not wait for the full timeout
    assert "exited with code 3" in str(exc.value) and "out of memory (simulated)" in str(exc.value)
    s.stop()


def test_never_ready_times_out_with_log_tail(tmp_path):
    s = launch(tmp_path, "--ready-after", "999").start()
    with pytest.raises(ServerError, match="not ready after 1 s") as exc:
        s.wait_ready(1)
    assert "fake engine starting" in str(exc.value)
    s.stop(grace_s=5)


def test_ignores_sigterm_gets_sigkill_and_no_orphans(tmp_path):
    s = launch(tmp_path, "--ignore-sigterm", "--spawn-child").start()
    s.wait_ready(20)
    children = psutil.Process(s.proc.pid).children(recursive=True)
    assert children
    out = s.stop(grace_s=1)
    assert out["stopped"] == "SIGKILL after grace" and out["port_released"]
    time.sleep(0.2)
    for c in children:
        assert not c.is_running() or c.status() == psutil.STATUS_ZOMBIE


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
        with pytest.raises(ServerError, match=f"port 127.0.0.1:{port} is already in use"):
            launch(tmp_path, port=port).start()


# ----------------------------------------------------------------------------- preflight (NVML faked at the boundary)
from types import SimpleNamespace  # noqa: E402

from tests.unit.telemetry.test_sampler import FakeNvml  # noqa: E402
from tokenbench.engines.server import gpu_idle_check, gpu_memory_used, pick_port, wait_gpu_memory_returned  # noqa: E402


class BusyNvml(FakeNvml):
    """Per-device utilisation, memory used and running processes, settable by the test."""

    def __init__(self, util=(0, 0), used_mib=(500, 500), procs=((), ())):
        super().__init__(n=len(util))
        self.util, self.used_mib, self.procs = list(util), list(used_mib), [list(p) for p in procs]

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self.util[h], memory=0)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=48 * 2**30, used=self.used_mib[h] * 2**20)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=pid, usedGpuMemory=mib * 2**20) for pid, mib in self.procs[h]]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return []


def test_gpu_idle_passes_on_idle_gpus():
    out = gpu_idle_check(BusyNvml(util=(0, 1), procs=((), ((os.getpid(), 4000),))), interval_s=0)
    assert out["checked"] and [d["index"] for d in out["devices"]] == [0, 1]  # our own pid is not foreign


def test_gpu_held_by_a_foreign_process_is_refused_with_its_pid():
    nv = BusyNvml(procs=(((4242, 20_000),), ()))
    with pytest.raises(ServerError, match=r"GPU 0: held by other processes: pid 4242 \(20000 MiB\)"):
        gpu_idle_check(nv, interval_s=0)
    gpu_idle_check(nv, max_foreign_mib=30_000, interval_s=0)  # within the configured allowance


def test_busy_gpu_is_refused():
    with pytest.raises(ServerError, match=r"GPU 1: utilisation 97% \(> 5%\) before launch"):
        gpu_idle_check(BusyNvml(util=(0, 97)), interval_s=0)


def test_no_gpu_means_nothing_to_check():
    class NoDriver(FakeNvml):
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    assert gpu_idle_check(NoDriver()) == {"checked": False, "reason": "no NVIDIA GPU / NVML driver"}
    assert gpu_memory_used(NoDriver()) is None


def test_gpu_memory_returned_or_not():
    nv = BusyNvml(used_mib=(500, 500))
    base = gpu_memory_used(nv)
    nv.used_mib = [600, 500]  # within the 256 MiB tolerance
    assert wait_gpu_memory_returned(base, nv, timeout_s=0)["returned"]
    nv.used_mib = [20_500, 500]  # a leaked engine still holds 20 GiB
    out = wait_gpu_memory_returned(base, nv, timeout_s=0.2, poll_s=0.05)
    assert out == {"checked": True, "returned": False, "excess_bytes": [20_000 * 2**20, 0]}


def test_server_teardown_reports_gpu_memory_returned(tmp_path):
    nv = BusyNvml(used_mib=(500, 500))
    port = free_port()
    s = Server([sys.executable, FAKE, "--port", str(port)], tmp_path / "s.log", "127.0.0.1", port, nvml=nv,
               gpu_return_timeout_s=0.3).start()
    s.wait_ready(20)
    nv.used_mib = [8000, 500]  # the engine allocates while it runs...
    out = s.stop(grace_s=5)  # ...and the fake driver still reports it after exit: teardown says so
    assert out["gpu_memory"]["returned"] is False and out["group_gone"] and out["port_released"]


def test_pick_port():
    p = pick_port("127.0.0.1", 0)
    assert port_is_free("127.0.0.1", p) and pick_port("127.0.0.1", p) == p
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ServerError, match="already in use"):
            pick_port("127.0.0.1", busy.getsockname()[1])
