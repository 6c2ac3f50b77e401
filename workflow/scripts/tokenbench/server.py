"""Server lifecycle: launch in its own process group, probe readiness, tear down with no orphans."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path


class ServerError(RuntimeError):
    pass


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tail(path: str | Path, n: int = 20) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(deque(fh, maxlen=n))
    except OSError:
        return ""


class Server:
    """A launched engine process. Use as a context manager: the group is always torn down."""

    def __init__(self, command: list[str], log_path: str | Path, host: str, port: int,
                 health_path: str = "/health", env: dict[str, str] | None = None):
        self.command = command
        self.log_path = Path(log_path)
        self.host, self.port = host, port
        self.health_path = health_path
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.ready_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "Server":
        if not port_is_free(self.host, self.port):
            raise ServerError(f"port {self.host}:{self.port} is already in use; pick another engines.<name>.port or 0")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log.write(f"# tokenbench: launching: {' '.join(self.command)}\n".encode())
        self._log.flush()
        self.t_launch = time.monotonic()
        # start_new_session: the server and all its children form one process group we can kill
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=self.env)
        return self

    def _health(self, timeout: float) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + self.health_path, timeout=timeout) as r:
                if r.status != 200:
                    return False
                body = r.read()
                try:
                    status = json.loads(body).get("status", "ok")
                except (ValueError, AttributeError):
                    status = "ok"
                return status in ("ok", "healthy", "ready")
        except (urllib.error.URLError, ConnectionError, OSError, TimeoutError):
            return False

    def wait_ready(self, timeout_s: float, poll_s: float = 0.1) -> float:
        """Block until the health probe passes; fail fast with the log tail if the server dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise ServerError(
                    f"server exited with code {code} before it became ready; last log lines "
                    f"({self.log_path}):\n{tail(self.log_path)}"
                )
            if self._health(timeout=min(2.0, poll_s * 10)):
                self.ready_s = time.monotonic() - self.t_launch
                return self.ready_s
            time.sleep(poll_s)
        raise ServerError(
            f"server not ready after {timeout_s:.0f} s at {self.base_url}{self.health_path}; "
            f"last log lines ({self.log_path}):\n{tail(self.log_path)}"
        )

    def stop(self, grace_s: float = 10.0) -> dict:
        """SIGTERM the whole group, wait up to grace_s, then SIGKILL it. Returns what happened."""
        if self.proc is None:
            return {"stopped": "never started"}
        how = "exited before stop"
        if self.proc.poll() is None:
            pgid = self.proc.pid  # start_new_session: pgid == pid
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
                how = "SIGTERM"
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                self.proc.wait()
                how = "SIGKILL after grace"
        # reap any straggler left in the group (a child that ignored SIGTERM)
        _signal_group(self.proc.pid, signal.SIGKILL)
        released = _wait_port_released(self.host, self.port, 5.0)
        self._log.write(f"# tokenbench: server stopped ({how}), exit code {self.proc.returncode}\n".encode())
        self._log.close()
        return {"stopped": how, "exit_code": self.proc.returncode, "port_released": released}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_port_released(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_is_free(host, port):
            return True
        time.sleep(0.05)
    return False
