"""Send a job's stdout/stderr and logging to its Snakemake log file; the threads it may use."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


class LogStream:
    """The job's log file as its stdout/stderr. A write the file refuses (a full disk) goes to the
    stream it replaced (Snakemake's terminal) instead, after one line saying why, so that an error
    is never lost with the log (Python's "lost sys.stderr", exit 120, and an empty log)."""

    def __init__(self, fh, fallback):
        self.fh, self.fallback, self.failed = fh, fallback, None

    def write(self, text: str) -> int:
        if self.failed is None:
            try:
                return self.fh.write(text)
            except OSError as exc:
                self.failed = exc
                self._fallback(f"tokenbench: cannot write the job log {self.fh.name} ({exc}); "
                               f"what follows would have gone there\n")
        return self._fallback(text)

    def _fallback(self, text: str) -> int:
        try:
            return self.fallback.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        for stream in (self.fh, self.fallback):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass

    def isatty(self) -> bool:
        return self.fh.isatty()

    def fileno(self) -> int:
        return self.fh.fileno()

    def __getattr__(self, name):
        return getattr(self.fh, name)


def to_log(path: str) -> logging.Logger:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stream = LogStream(open(path, "a", buffering=1), sys.__stderr__)
    sys.stdout = sys.stderr = stream
    logging.basicConfig(stream=stream, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    return logging.getLogger("tokenbench")


def threads() -> int:
    """CPUs this job may use: those it may run on, capped by OMP_NUM_THREADS where set (Snakemake
    sets it to a rule's ``threads`` for the rule's script jobs)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        n = min(n, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        pass
    return max(1, n)


def forward_stop_signals(script: str = "run_load_test", sig: int | None = None) -> None:
    """In Snakemake's own process (the Snakefile's ``onstart``): SIGTERM or SIGINT sent to Snakemake
    alone is passed on, as SIGTERM, to its running jobs of ``script`` (the Python processes whose
    command line names it), then handled as Snakemake would.

    Snakemake 9 runs a local ``script:`` job as a child process in its own process group and
    forwards nothing: on SIGTERM it waits for running jobs to finish ("graceful"), on SIGINT
    (KeyboardInterrupt) it stops scheduling and also waits for them, so a load test ran its phases
    to the end. Ctrl-C in the terminal reaches the job anyway (the whole foreground group gets it),
    and a second, SIGTERM, is ignored during its teardown (tokenbench.load.run)."""
    import signal

    forwarded = sig or signal.SIGTERM

    def forward() -> None:
        try:
            import psutil

            children = psutil.Process().children(recursive=True)
        except Exception:  # noqa: BLE001 - a signal handler must not fail
            return
        for child in children:
            try:
                argv = child.cmdline()
                if argv and "python" in os.path.basename(argv[0]) and any(script in a for a in argv[1:]):
                    child.send_signal(forwarded)
            except Exception:  # noqa: BLE001 - gone meanwhile
                continue

    def chain(previous):
        def handler(signum, frame):
            forward()
            if callable(previous):
                previous(signum, frame)
            elif signum == signal.SIGINT and previous != signal.SIG_IGN:
                raise KeyboardInterrupt
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
        return handler

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, chain(signal.getsignal(s)))
