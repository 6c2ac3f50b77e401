import errno
import io
import os
import signal

import pytest

from tokenbench.joblog import LogStream


class FullDisk(io.StringIO):
    name = "logs/job.log"

    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_log_write_the_disk_refuses_goes_to_the_terminal_with_why():
    """A full disk under the job log must not lose the job's error (Python's 'lost sys.stderr', exit 120)."""
    term = io.StringIO()
    s = LogStream(FullDisk(), term)
    s.write("Traceback: the real error\n")
    s.write("more\n")
    s.flush()
    out = term.getvalue()
    assert out.startswith("tokenbench: cannot write the job log logs/job.log ([Errno 28] No space left on device)")
    assert out.endswith("Traceback: the real error\nmore\n")


def test_writes_go_to_the_log_while_it_takes_them():
    log, term = io.StringIO(), io.StringIO()
    s = LogStream(log, term)
    s.write("line\n")
    assert log.getvalue() == "line\n" and term.getvalue() == "" and s.isatty() is False


SNAKEMAKE_STANDIN = """
import signal, subprocess, sys, time
sys.path.insert(0, {scripts!r})
from tokenbench.joblog import forward_stop_signals

signal.signal(signal.SIGTERM, lambda *_: print("snakemake: will exit after running jobs", flush=True))
job = subprocess.Popen([sys.executable, "-c", {job!r}, "run_load_test.py"], start_new_session=False)
other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "summarize.py"])
forward_stop_signals("run_load_test")
print(job.pid, other.pid, flush=True)
try:
    print("job exit", job.wait(), flush=True)
except KeyboardInterrupt:
    print("snakemake: KeyboardInterrupt; job exit", job.wait(), flush=True)
other.kill()
"""
JOB = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (print("job: SIGTERM, tearing down", flush=True), sys.exit(3)))
time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_snakemake_alone_stops_the_load_test_job_promptly(sig):
    """Snakemake 9 forwards nothing to a local script job; the Snakefile's onstart hook passes a
    SIGTERM or SIGINT sent to Snakemake alone on to the load-test job (SIGTERM), and to no other job,
    then lets Snakemake handle it as before."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    scripts = str(Path(__file__).resolve().parents[2] / "workflow" / "scripts")
    p = subprocess.Popen([sys.executable, "-c", SNAKEMAKE_STANDIN.format(scripts=scripts, job=JOB)],
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    job, other = map(int, p.stdout.readline().split())
    time.sleep(0.3)
    t0 = time.monotonic()
    os.kill(p.pid, sig)  # to Snakemake alone, not its process group
    out, _ = p.communicate(timeout=10)
    assert time.monotonic() - t0 < 5
    assert "job: SIGTERM, tearing down" in out and "job exit 3" in out
    if sig == signal.SIGINT:
        assert "KeyboardInterrupt" in out
    else:
        assert "snakemake: will exit after running jobs" in out  # Snakemake's own handler still runs
