"""Server lifecycle: preflight, launch in its own process group, probe readiness, tear down with
no orphans.

Preflight checks that the port is free (or picks one) and that the GPUs are idle: no foreign
process holds memory and utilisation is near zero, read through NVML. Teardown sends SIGTERM to
the whole group, waits a grace period, then SIGKILLs it; it verifies the port is released and,
on a GPU, that device memory went back to what it was before the launch.
"""

from __future__ import annotations

import functools
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


# ----------------------------------------------------------------------------- preflight
def pick_port(host: str, port: int) -> int:
    """``port`` if free, a free one if 0; a clear error if the requested port is taken."""
    if port == 0:
        return free_port(host)
    if not port_is_free(host, port):
        raise ServerError(f"port {host}:{port} is already in use; stop what holds it, or set "
                          f"engines.<name>.port to another port or to 0 (pick a free one)")
    return port


def _nvml(nvml=None):
    from tokenbench.telemetry.sampler import load_nvml

    nv = load_nvml(nvml)
    if nv is None:
        return None
    try:
        return nv if nv.nvmlDeviceGetCount() > 0 else None
    except Exception:
        return None


def _gpu_processes(nv, h) -> list[tuple[int, int | None]]:
    procs = []
    for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        try:
            for p in getattr(nv, fn)(h):
                procs.append((int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory)))
        except Exception:
            continue
    return procs


def gpu_memory_used(nvml=None) -> list[int] | None:
    """Used bytes per GPU, or None without a GPU."""
    nv = _nvml(nvml)
    if nv is None:
        return None
    return [int(nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(i)).used)
            for i in range(nv.nvmlDeviceGetCount())]


def gpu_idle_check(nvml=None, max_util_pct: float = 5.0, max_foreign_mib: float = 256.0,
                   samples: int = 3, interval_s: float = 0.2, ignore_pids: set[int] | None = None) -> dict:
    """Raise ServerError unless every GPU is idle; return what was measured.

    Idle: no process other than ours (``ignore_pids``) holds more than ``max_foreign_mib`` of
    device memory, and utilisation stays at or below ``max_util_pct`` over ``samples`` readings.
    Without a GPU (no NVML driver) there is nothing to check.
    """
    nv = _nvml(nvml)
    if nv is None:
        return {"checked": False, "reason": "no NVIDIA GPU / NVML driver"}
    ignore = set(ignore_pids or ()) | {os.getpid()}
    problems, devices = [], []
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        utils = []
        for k in range(samples):
            try:
                utils.append(float(nv.nvmlDeviceGetUtilizationRates(h).gpu))
            except Exception:
                break
            if k + 1 < samples:
                time.sleep(interval_s)
        foreign = [(pid, mem) for pid, mem in _gpu_processes(nv, h) if pid not in ignore]
        heavy = [(pid, mem) for pid, mem in foreign if mem is None or mem > max_foreign_mib * 2**20]
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        devices.append({"index": i, "util_pct": utils, "memory_used_bytes": int(mem.used),
                        "foreign_processes": [{"pid": p, "used_bytes": m} for p, m in foreign]})
        if heavy:
            desc = ", ".join(f"pid {p} ({'?' if m is None else f'{m / 2**20:.0f} MiB'})" for p, m in heavy)
            problems.append(f"GPU {i}: held by other processes: {desc}")
        if utils and min(utils) > max_util_pct:
            problems.append(f"GPU {i}: utilisation {min(utils):.0f}% (> {max_util_pct:.0f}%) before launch")
    if problems:
        raise ServerError("GPU not idle, refusing to benchmark on a shared device (its numbers would "
                          "measure the other work too):\n  " + "\n  ".join(problems)
                          + "\nStop those processes, pick another GPU (CUDA_VISIBLE_DEVICES), or relax "
                          "preflight.max_gpu_util_pct / preflight.max_foreign_gpu_mib.")
    return {"checked": True, "devices": devices}


def wait_gpu_memory_returned(baseline: list[int] | None, nvml=None, tolerance_mib: float = 256.0,
                             timeout_s: float = 30.0, poll_s: float = 0.5) -> dict:
    """Wait until each GPU's used memory is back within tolerance of ``baseline``."""
    if baseline is None:
        return {"checked": False}
    deadline = time.monotonic() + timeout_s
    while True:
        now = gpu_memory_used(nvml) or []
        excess = [max(0, n - b) for n, b in zip(now, baseline)]
        if all(e <= tolerance_mib * 2**20 for e in excess):
            return {"checked": True, "returned": True, "excess_bytes": excess}
        if time.monotonic() >= deadline:
            return {"checked": True, "returned": False, "excess_bytes": excess}
        time.sleep(poll_s)


def die_with_parent(parent: int | None = None, sig: int = signal.SIGTERM) -> None:
    """Make this process get ``sig`` when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``), so a
    SIGKILLed load test leaves no engine, sampler or client worker behind. Called in the child: as
    ``preexec_fn=functools.partial(die_with_parent, os.getpid())`` (``parent``: the pid of the
    process that forks, read before the fork) or first thing in a worker process. A parent already
    gone by then (this process was re-parented to init or a subreaper) ends this one at once.

    SIGTERM rather than SIGKILL: an engine tears its own workers down on SIGTERM (they are its
    children, whom this signal does not reach), and the sampler, on SIGTERM with its parent gone,
    reaps the engine's whole process group (SIGKILL after a grace). Best effort off Linux; the
    orderly teardown is the main path."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(sig))
    except (OSError, AttributeError):
        return
    if os.getppid() == 1 if parent is None else parent_gone(parent):
        os._exit(1)


def parent_gone(parent: int | None) -> bool:
    """Whether the process that started this one (its pid ``parent``) has died: it was re-parented."""
    return parent is not None and os.getppid() != parent


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


def grep_log(path: str | Path, patterns, limit: int = 200) -> list[str]:
    """The last ``limit`` log lines matching any of the engine's patterns (its own throughput and
    KV-cache lines, errors), kept with the run."""
    import re

    pats = [re.compile(p) for p in patterns]
    if not pats:
        return []
    try:
        with open(path, errors="replace") as fh:
            hits = deque((line.rstrip("\n") for line in fh if any(p.search(line) for p in pats)), maxlen=limit)
    except OSError:
        return []
    return list(hits)


def tail(path: str | Path, n: int = 20) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(deque(fh, maxlen=n))
    except OSError:
        return ""


def health_ok(url: str, timeout: float, headers: dict[str, str] | None = None) -> bool:
    """The readiness probe: HTTP 200, and a JSON body's ``status``, if any, is ok/healthy/ready."""
    try:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            if r.status != 200:
                return False
            body = r.read()
            try:
                status = json.loads(body).get("status", "ok")
            except (ValueError, AttributeError):
                status = "ok"
            return status in ("ok", "healthy", "ready")
    except (urllib.error.URLError, ConnectionError, OSError, TimeoutError, ValueError):
        return False


class NotReady(Exception):
    """An endpoint did not answer its readiness probe: nothing was sent."""


# what to check when an external endpoint of the pipeline is not ready, in the config's words
CONFIG_HINTS = {"auth": "check engines.<name>.api_key_env", "path": "check engines.<name>.url, route_prefix "
                "and health_path", "timeout": "engines.<name>.ready_timeout_s"}


def probe_ready(url: str, timeout_s: float, headers: dict[str, str] | None = None, poll_s: float = 0.25,
                refused_grace_s: float = 1.0, hints: dict[str, str] | None = None) -> float:
    """GET ``url`` until it answers 2xx; returns the seconds it took. Raises NotReady, saying why:
    nothing listening (connection refused for ``refused_grace_s``: fails fast, a closed port does not
    open by waiting), an answer that cannot improve (401, 403, 404: its status and the start of its
    body), or no 2xx within ``timeout_s`` (the last status and body: a 503 while the model loads).
    ``hints``: what to check, in the caller's words (keys auth, path, timeout)."""
    from tokenbench.provenance import scrub, scrub_shapes

    hints = {**CONFIG_HINTS, **(hints or {})}

    secrets = tuple(v.split(" ", 1)[-1] for k, v in (headers or {}).items() if k.lower() == "authorization")

    def shown(body: bytes) -> str:
        text = body[:200].decode("utf-8", "replace").strip()
        return scrub(scrub_shapes(text, secrets)) or "(empty body)"

    t0 = time.monotonic()
    refused_since = None
    last = "no answer"
    while True:
        left = timeout_s - (time.monotonic() - t0)
        req = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=max(min(5.0, left), 0.1)) as resp:
                if 200 <= resp.status < 300:
                    return time.monotonic() - t0
                last = f"HTTP {resp.status}: {shown(resp.read(200))}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {shown(exc.read(200) if exc.fp else b'')}"
            if exc.code in (401, 403, 404, 405):  # waiting will not change these
                raise NotReady(f"readiness probe GET {url} answered {last}"
                               + "; " + (hints["auth"] if exc.code in (401, 403) else hints["path"])) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ConnectionRefusedError):
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since >= min(refused_grace_s, timeout_s):
                    raise NotReady(f"nothing is listening at {url} (connection refused); is the server "
                                   "running, and on that port?") from None
                last = "connection refused"
            else:
                last = f"{type(reason).__name__}: {reason}"
        elapsed = time.monotonic() - t0
        if elapsed >= timeout_s:
            raise NotReady(f"readiness probe GET {url}: no 2xx answer within {timeout_s:g} s ({hints['timeout']}); "
                           f"last: {last}")
        time.sleep(min(poll_s, timeout_s - elapsed))


class Server:
    """A launched engine process. Use as a context manager: the group is always torn down."""

    def __init__(self, command: list[str], log_path: str | Path, host: str, port: int,
                 health_path: str = "/health", env: dict[str, str] | None = None,
                 nvml=None, gpu_tolerance_mib: float = 256.0, gpu_return_timeout_s: float = 30.0):
        self.command = command
        self.log_path = Path(log_path)
        self.host, self.port = host, port
        self.health_path = health_path
        self.env = env
        self.nvml = nvml
        self.gpu_tolerance_mib = gpu_tolerance_mib
        self.gpu_return_timeout_s = gpu_return_timeout_s
        self.gpu_baseline: list[int] | None = None
        self.proc: subprocess.Popen | None = None
        self.ready_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "Server":
        if not port_is_free(self.host, self.port):
            raise ServerError(f"port {self.host}:{self.port} is already in use; pick another engines.<name>.port or 0")
        self.gpu_baseline = gpu_memory_used(self.nvml)  # to check teardown gives it all back
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log.write(f"# tokenbench: launching: {' '.join(self.command)}\n".encode())
        self._log.flush()
        self.t_launch = time.monotonic()
        # start_new_session: the server and all its children form one process group we can kill
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=self.env,
                                     preexec_fn=functools.partial(die_with_parent, os.getpid()))
        return self

    def _health(self, timeout: float) -> bool:
        return health_ok(self.base_url + self.health_path, timeout)

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
        group_gone = _wait_group_gone(self.proc.pid, 5.0)
        released = _wait_port_released(self.host, self.port, 5.0)
        gpu = wait_gpu_memory_returned(self.gpu_baseline, self.nvml, self.gpu_tolerance_mib,
                                       self.gpu_return_timeout_s)
        self._log.write(f"# tokenbench: server stopped ({how}), exit code {self.proc.returncode}, "
                        f"port released: {released}, GPU memory: {gpu}\n".encode())
        self._log.close()
        return {"stopped": how, "exit_code": self.proc.returncode, "port_released": released,
                "group_gone": group_gone, "gpu_memory": gpu}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Whether any process is left in the process group (zombies of our own child excepted)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.05)
    return not group_alive(pgid)


def _wait_port_released(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_is_free(host, port):
            return True
        time.sleep(0.05)
    return False
