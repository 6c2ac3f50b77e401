import errno
import io

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
