"""tokenbench.load.progress: the progress line from fake counters on a fake clock, the terminal bar,
and real load tests (tokenbench run's and the pipeline's) writing their lines into a log file."""
import io
import re
import sys

import pytest

from tokenbench.load.generator import PhaseStart
from tokenbench.load.phases import ClosedPhase, IdlePhase, PoissonPhase
from tokenbench.load.progress import PROGRESS_ENV, PhasePlan, Progress, interval_from_env


class FakeTest:
    """The counters a LoadTest exposes, set by hand."""

    def __init__(self):
        self.phase_start = None
        self.current = None
        self.requests_sent = self.n_done = self.n_ok = self.n_chunks = 0

    def start(self, phase, t_s):
        self.current = phase
        self.phase_start = PhaseStart(phase, int(t_s * 1e9), self.requests_sent, self.n_done, self.n_ok, self.n_chunks)

    def finish(self, n, ok=None, chunks_each=10, sent_ahead=0):
        self.n_done += n
        self.n_ok += n if ok is None else ok
        self.n_chunks += n * chunks_each
        self.requests_sent = self.n_done + sent_ahead


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def reporter(test, phases, every_s=5.0, clock=None):
    out = io.StringIO()
    return Progress(test, "eng / m / users-8 / r2", phases, lines_to=out, every_s=every_s, clock=clock or Clock()), out


def test_closed_loop_line_shows_cell_phase_counts_rates_and_time_left():
    warm, steady = ClosedPhase(name="ramp", users=8, duration_s=2, warmup=True), ClosedPhase(name="steady", users=8, duration_s=10)
    test, clock = FakeTest(), Clock(100.0)
    test.finish(8)  # the warm-up phase's requests: not this phase's
    p, out = reporter(test, [warm, steady], clock=clock)
    test.start(steady, 100.0)
    assert p.tick().startswith("[eng / m / users-8 / r2] phase steady 2/2 (8 users): 0.0 s of 10 s, 10 s left")
    clock.t = 106.0
    test.finish(40, ok=39, chunks_each=32, sent_ahead=8)
    line = p.tick()
    assert "6.0 s of 10 s, 4.0 s left" in line
    assert "40 requests done (39 ok, 1 error), 8 in flight" in line  # no "/expected": a time-bound closed loop
    assert "213.3 tok/s, 6.67 req/s" in line  # 40 x 32 chunks over the 6 s since the phase's first reading
    clock.t = 111.0
    assert "sending done, draining" in p.tick()
    assert out.getvalue().count("\n") == 3


def test_open_loop_expects_rate_times_duration_and_a_budget_is_exact():
    assert PhasePlan.of(PoissonPhase(name="w", rate_rps=2, duration_s=8)).expected == 16
    assert PhasePlan.of(PoissonPhase(name="w", rate_rps=2, duration_s=8)).approx
    plan = PhasePlan.of(ClosedPhase(name="c", users=3, requests=30))
    assert (plan.expected, plan.approx, plan.duration_s) == (30, False, None)
    assert PhasePlan.of(IdlePhase(name="i", duration_s=4)).expected == 0

    test, clock = FakeTest(), Clock(0.0)
    budget = ClosedPhase(name="c", users=3, requests=30)
    p, _ = reporter(test, [budget], clock=clock)
    test.start(budget, 0.0)
    p.tick()
    clock.t = 5.0
    test.finish(10, sent_ahead=3)
    line = p.tick()
    assert "10/30 requests done" in line and "5.0 s, ~10 s left" in line  # 20 left at 2 req/s

    test2, clock2 = FakeTest(), Clock(0.0)
    poisson = PoissonPhase(name="w", rate_rps=2, duration_s=8)
    p2, _ = reporter(test2, [poisson], clock=clock2)
    test2.start(poisson, 0.0)
    assert "0/~16 requests done" in p2.tick()


def test_idle_phase_line_has_no_request_figures():
    test, clock = FakeTest(), Clock(50.0)
    idle = IdlePhase(name="cooldown", duration_s=4)
    p, _ = reporter(test, [idle], clock=clock)
    test.start(idle, 49.0)
    assert p.tick() == "[eng / m / users-8 / r2] phase cooldown 1/1 (idle 4 s): 1.0 s of 4.0 s, 3.0 s left"


def test_lines_come_every_interval_and_when_a_phase_starts_reading_counters_only():
    a, b = ClosedPhase(name="a", users=1, duration_s=30), ClosedPhase(name="b", users=1, duration_s=30)
    test, clock = FakeTest(), Clock(0.0)
    p, out = reporter(test, [a, b], every_s=5.0, clock=clock)
    assert p.tick() is None  # no phase yet: nothing to say
    test.start(a, 0.0)
    written = []
    for i in range(25):  # 12 s of half-second ticks
        clock.t = i * 0.5
        test.finish(1)
        written.append(p.tick() is not None)
        if i == 20:
            test.start(b, clock.t)  # a new phase: a line at once
    assert [i for i, w in enumerate(written) if w] == [0, 10, 20, 21]  # 21: b has started
    assert "phase b 2/2" in out.getvalue().splitlines()[-1]
    assert out.getvalue().splitlines()[-2] == "[eng / m / users-8 / r2] phase a ended: 21 requests done (21 ok, 0 errors)"
    assert "(load ended)" in p.tick(final=True)


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert interval_from_env() == 5.0
    monkeypatch.setenv(PROGRESS_ENV, "0.5")
    assert interval_from_env() == 0.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(PROGRESS_ENV, bad)
        with pytest.raises(ValueError, match=rf"{PROGRESS_ENV}='{bad}'.*number >= 0"):
            interval_from_env()


def test_zero_interval_writes_no_lines():
    test = FakeTest()
    phase = ClosedPhase(name="a", users=1, duration_s=3)
    p, out = reporter(test, [phase], every_s=0)
    test.start(phase, 100.0)
    assert p.tick(final=True) is None and out.getvalue() == ""


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_bar_and_a_pipe_gets_lines():
    test = FakeTest()
    phase = PoissonPhase(name="w", rate_rps=2, duration_s=8)
    tty = FakeTTY()
    bar = Progress.for_stream(test, "cell", [phase], tty, every_s=5)
    assert bar.bar_to is tty and bar.lines_to is None
    test.start(phase, 100.0)
    test.finish(4)
    bar.clock = Clock(102.0)
    bar.tick()
    bar.close()
    shown = tty.getvalue()
    assert "cell phase w 1/1 (Poisson 2 req/s)" in shown and "4/16 req, 4 ok, 0 errors, 0 in flight" in shown
    assert "6.0 s left" in shown
    pipe = Progress.for_stream(test, "cell", [phase], io.StringIO())
    assert pipe.bar_to is None and pipe.lines_to is not None
    assert Progress.for_stream(test, "cell", [phase], None) is None


def test_a_stop_before_the_end_is_said_once_at_once_on_lines_and_on_a_terminal():
    phase = ClosedPhase(name="steady", users=2, duration_s=20)
    for tty in (False, True):
        test, out = FakeTest(), (FakeTTY() if tty else io.StringIO())
        test.stopped_reason = None
        p = Progress.for_stream(test, "cell", [phase], out, every_s=5)
        p.clock = Clock(100.0)
        test.start(phase, 100.0)
        p.tick()
        assert "stopped early" not in out.getvalue()
        test.stopped_reason = "server unreachable: 5 requests in a row failed to connect over 1.0 s (refused)"
        p.clock.t = 101.0  # no regular line is due yet (every 5 s): the stop is said all the same
        p.tick()
        p.tick(final=True)
        p.close()
        said = out.getvalue()
        assert said.count("[cell] stopped early: server unreachable: 5 requests in a row") == 1, (tty, said)


LINE = re.compile(r"^\[(?P<label>[^\]]+)\] phase (?P<phase>\S+) \d/\d .*?(?P<done>\d+)(/~?\d+)? requests done "
                  r"\((?P<ok>\d+) ok, (?P<err>\d+) errors?\)")


def test_tokenbench_run_writes_progress_lines_to_a_log(fake_server, tmp_path):
    from tokenbench.config import RequestSpec
    from tokenbench.load.endpoint import parse_profile, run_endpoint

    srv = fake_server(tokens=4, itl_ms=20)
    log = tmp_path / "run.log"
    with open(log, "w") as fh:  # a file: not a terminal, so plain lines
        m = run_endpoint(srv.url, "fake", [parse_profile("closed:users=2,duration_s=1.2", 0)], RequestSpec(max_tokens=4),
                         str(tmp_path / "out"), route_prefix="/v1", capabilities={"chat", "stream_usage"},
                         progress=fh, progress_every_s=0.2)
    lines = log.read_text().splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert len(lines) >= 4 and all(parsed), lines
    assert {p["label"] for p in parsed} == {"endpoint fake"} and {p["phase"] for p in parsed} == {"closed0"}
    assert lines[-1].endswith("(load ended)") and int(parsed[-1]["done"]) == m["phases"][0]["requests_sent"]
    first = re.search(r": (\d\.\d) s of 1\.2 s, (\d\.\d) s left \|.* \| (\d+\.\d) tok/s, (\d+\.\d\d) req/s$", lines[0])
    assert first and float(first[1]) + float(first[2]) == pytest.approx(1.2, abs=0.11), lines[0]


@pytest.mark.parametrize("processes", [1, 2])
def test_pipeline_load_test_writes_progress_lines_into_its_job_log(fake_server, tmp_path, monkeypatch, processes):
    from tests.unit.load.test_run import cell
    from tokenbench.load.run import run_load_test

    srv = fake_server(tokens=4, itl_ms=20)
    eng = {"kind": "external", "url": srv.url, "capabilities": ["chat", "stream_usage", "ignore_eos"], "metrics_paths": []}
    phases = [{"name": "warm", "mode": "closed", "users": 2, "duration_s": 1.0, "warmup": True},
              {"name": "rest", "mode": "idle", "duration_s": 1.0},
              {"name": "steady", "mode": "closed", "users": 2, "requests": 8}]
    settings, man, probe, paths = cell(tmp_path, eng, phases, processes=processes)
    monkeypatch.setenv(PROGRESS_ENV, "30")  # longer than the run: each phase still gets its lines
    log = tmp_path / "job.log"
    with open(log, "w", buffering=1) as fh:
        monkeypatch.setattr(sys, "stderr", fh)  # as joblog.to_log does in the job
        doc = run_load_test(settings, man, probe, **paths)
    text = log.read_text()
    assert doc["complete"]
    label = "[e / m / l / r1]"
    assert f"{label} phase warm 1/3 (2 users)" in text
    assert f"{label} phase rest 2/3 (idle 1 s)" in text
    ended = re.search(rf"{re.escape(label)} phase warm ended: (\d+) requests done \((\d+) ok, 0 errors\)", text)
    assert ended and ended[1] == ended[2] and int(ended[1]) == doc["client"]["requests_sent"] - 8
    steady = [line for line in text.splitlines() if f"{label} phase steady 3/3" in line]
    assert steady and "/8 requests done" in steady[0]
    assert steady[-1].endswith("(load ended)") and "8/8 requests done (8 ok, 0 errors), 0 in flight" in steady[-1]
