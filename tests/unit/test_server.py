import os
import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from tokenbench.server import Server, ServerError, free_port, port_is_free

FAKE = str(Path(__file__).resolve().parents[1] / "fakes" / "fake_engine.py")


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
