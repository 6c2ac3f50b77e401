"""What a running load test is doing, shown while it runs: which cell and replicate, which phase,
requests done / expected, live token and request rates, errors, and time left in the phase.

One reporter for ``tokenbench run`` and the pipeline's load tests. It reads the load test's running
counters (``LoadTest`` and ``ShardedLoadTest`` both have them: ``phase_start``, ``current``,
``requests_sent``, ``n_done``, ``n_ok``, ``n_chunks``) and never touches a request: each tick is the
same few attribute reads and one formatted line, whatever the load, so it cannot slow the load
generator. It shows

- on a terminal: a tqdm bar per phase (requests done of expected; where the phase's request count
  is not known, seconds of its duration), redrawn every ``POLL_S``;
- elsewhere (a Snakemake job log, a pipe): one plain line every ``every_s`` seconds (default 5 s;
  ``TOKENBENCH_PROGRESS_S`` sets it for the pipeline, ``tokenbench run --progress-every`` for a run;
  0 shows none), plus one when a phase starts, one when it has ended and a last one when the load
  ends;
- in both, one line as soon as the load test stops before its end (the breaker: the server is gone),
  with the reason.

Expected requests come from the phase: its ``requests`` budget; for an open loop bounded by time,
rate × duration (an estimate: the arrivals are random, shown with ``~``); for a trace, its rows;
unknown for a closed loop bounded by time (then the time left says how far it is). ``tok/s`` counts
the streamed chunks of the requests that finished in the last few seconds (one token per chunk on
the engines here); the measured figures are in metrics.json.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, TextIO

PROGRESS_ENV = "TOKENBENCH_PROGRESS_S"
DEFAULT_EVERY_S = 5.0
POLL_S = 0.5  # how often the counters are read (and a terminal display redrawn)
RATE_WINDOW_S = 5.0  # live rates are over about this long


def interval_from_env(default: float = DEFAULT_EVERY_S) -> float:
    """Seconds between plain progress lines: ``$TOKENBENCH_PROGRESS_S`` if set (0: none), else ``default``."""
    raw = os.environ.get(PROGRESS_ENV)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{PROGRESS_ENV}={raw!r}: give seconds between progress lines, a number >= 0 (0: none)")
    return value


@dataclass(frozen=True)
class PhasePlan:
    """What is known of a phase before it runs: how long it sends and how many requests it should send."""
    name: str
    label: str
    mode: str
    duration_s: float | None  # how long it sends (None: until its request budget is spent)
    expected: int | None  # requests it should send (None: unknown)
    approx: bool  # expected is an estimate (open-loop arrivals at a mean rate)

    @classmethod
    def of(cls, phase: Any) -> PhasePlan:
        """Read once per phase, never per tick (a trace's rows are read here)."""
        bounds = getattr(phase, "bounds", None)
        duration, budget = bounds() if bounds else (None, None)
        expected, approx = budget, False
        mode = getattr(phase, "mode", "?")
        if mode == "idle":
            expected = 0
        elif expected is None and getattr(phase, "open_loop", False):
            rate = getattr(phase, "rate_rps", None)
            rows = getattr(phase, "rows", None) if mode == "trace" else None
            if rate and duration:
                expected, approx = max(round(rate * duration), 1), True
            elif rows:
                expected, duration = len(rows), rows[-1][0] / 1e9
        try:
            label = phase.label
        except Exception:  # noqa: BLE001 - a label is only shown
            label = mode
        return cls(phase.name, label, mode, duration, expected, approx)


def _fmt_s(s: float) -> str:
    s = max(s, 0.0)
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


@dataclass
class State:
    """One tick's reading of the counters, relative to the running phase."""
    plan: PhasePlan
    index: int | None  # 1-based place among the load's phases (None: a step of a sweep)
    count: int
    elapsed_s: float
    sent: int
    done: int
    ok: int
    tok_s: float | None
    req_s: float | None

    @property
    def errors(self) -> int:
        return self.done - self.ok

    @property
    def in_flight(self) -> int:
        return self.sent - self.done

    def time_left_s(self) -> float | None:
        """Left to send: the phase's duration less the time gone; for a request budget, what is left
        of it at the current request rate; None where neither is known."""
        p = self.plan
        if p.duration_s is not None:
            return p.duration_s - self.elapsed_s
        if p.expected is not None and self.req_s:
            return max(p.expected - self.done, 0) / self.req_s
        return None

    def where(self) -> str:
        place = f" {self.index}/{self.count}" if self.index else ""
        return f"phase {self.plan.name}{place} ({self.plan.label})"

    def requests(self) -> str:
        p = self.plan
        of = f"/{'~' if p.approx else ''}{p.expected}" if p.expected else ""
        return (f"{self.done}{of} requests done ({self.ok} ok, {self.errors} error{'s' if self.errors != 1 else ''}),"
                f" {self.in_flight} in flight")

    def timing(self) -> str:
        p, left = self.plan, self.time_left_s()
        if p.duration_s is not None and left is not None and left <= 0:
            return f"{_fmt_s(self.elapsed_s)}, sending done" + (", draining" if self.in_flight else "")
        if p.duration_s is not None:
            return f"{_fmt_s(self.elapsed_s)} of {_fmt_s(p.duration_s)}, {_fmt_s(left)} left"
        return f"{_fmt_s(self.elapsed_s)}" + (f", ~{_fmt_s(left)} left" if left is not None else "")

    def rates(self) -> str:
        if self.tok_s is None:
            return "rates: -"
        return f"{self.tok_s:.1f} tok/s, {self.req_s:.2f} req/s"

    def line(self, label: str) -> str:
        if self.plan.mode == "idle":
            return f"[{label}] {self.where()}: {self.timing()}"
        return f"[{label}] {self.where()}: {self.timing()} | {self.requests()} | {self.rates()}"


class Progress:
    """Progress of one load test ``test``: plain lines to ``lines_to`` every ``every_s`` seconds, a
    tqdm display on ``bar_to`` (a terminal), or both. ``label``: the cell and replicate, as shown.
    ``phases``: the load's phases (for "phase 2/3"). ``clock``: monotonic seconds (tests give a fake)."""

    def __init__(self, test: Any, label: str, phases: list[Any], *, lines_to: TextIO | None = None,
                 bar_to: TextIO | None = None, every_s: float = DEFAULT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.test, self.label, self.clock = test, label, clock
        self.names = [getattr(p, "name", None) for p in phases]
        self.lines_to = lines_to if every_s > 0 else None
        self.bar_to = bar_to
        self.every_s = every_s
        # read the counters every POLL_S (a phase shorter than the line interval still gets its line);
        # a line is written when one is due
        self.poll_s = min(POLL_S, every_s) if every_s > 0 else POLL_S
        self._start = None  # the PhaseStart shown
        self._plan: PhasePlan | None = None
        self._seen: deque[tuple[float, int, int]] = deque(maxlen=max(2, math.ceil(RATE_WINDOW_S / max(self.poll_s, 1e-3)) + 1))
        self._last_line = -math.inf
        self._bar = None
        self._stop_said = False

    @classmethod
    def for_stream(cls, test: Any, label: str, phases: list[Any], stream: TextIO | None,
                   every_s: float = DEFAULT_EVERY_S) -> Progress | None:
        """A tqdm display if ``stream`` is a terminal, plain lines if it is not; None for no stream."""
        if stream is None:
            return None
        tty = bool(getattr(stream, "isatty", lambda: False)())
        return cls(test, label, phases, lines_to=None if tty else stream, bar_to=stream if tty else None,
                   every_s=every_s)

    def state(self) -> State | None:
        """The counters now, relative to the running phase (None before the first phase starts)."""
        start = getattr(self.test, "phase_start", None)
        if start is None:
            return None
        now = self.clock()
        sent, done, ok, chunks = (self.test.requests_sent, self.test.n_done, self.test.n_ok, self.test.n_chunks)
        if start is not self._start:
            self._start, self._plan = start, PhasePlan.of(start.phase)
            self._seen.clear()
            self._seen.append((start.start_ns / 1e9, start.done, start.chunks))  # rates since the start, at first
        self._seen.append((now, done, chunks))
        t0, done0, chunks0 = self._seen[0]
        dt = now - t0
        tok_s, req_s = ((chunks - chunks0) / dt, (done - done0) / dt) if dt > 0 else (None, None)
        elapsed = max(now - start.start_ns / 1e9, 0.0)  # start_ns: CLOCK_MONOTONIC, as the clock
        name = self._plan.name
        index = self.names.index(name) + 1 if name in self.names else None
        return State(self._plan, index, len(self.names), elapsed, sent - start.sent, done - start.done,
                     ok - start.ok, tok_s, req_s)

    def tick(self, final: bool = False) -> str | None:
        """Read the counters once; write a line when one is due (or ``final``), redraw the bar.
        Returns the line written, if one was."""
        self._say_stop()
        before, plan_before = self._start, self._plan
        st = self.state()
        if st is None:
            return None
        new_phase = self._start is not before
        if self.bar_to is not None:
            self._draw(st, new_phase)
        now = self.clock()
        if self.lines_to is None or not (final or new_phase or now - self._last_line >= self.every_s - 1e-9):
            return None
        self._last_line = now
        line = st.line(self.label) + (" (load ended)" if final else "")
        if new_phase and before is not None and plan_before.mode != "idle":  # the phase before, as it ended
            done, ok = self._start.done - before.done, self._start.ok - before.ok
            self.lines_to.write(f"[{self.label}] phase {plan_before.name} ended: {done} requests done "
                                f"({ok} ok, {done - ok} error{'s' if done - ok != 1 else ''})\n")
        self.lines_to.write(line + "\n")
        self.lines_to.flush()
        return line

    def _say_stop(self) -> None:
        """One line, at once, when the load test stopped before its end (the breaker: a dead server)."""
        reason = getattr(self.test, "stopped_reason", None)
        if not reason or self._stop_said:
            return
        self._stop_said = True
        line = f"[{self.label}] stopped early: {reason}"
        if self._bar is not None:  # above the bar, which redraws below it
            self._bar.write(line, file=self.bar_to)
        elif self.bar_to is not None and self.bar_to is not self.lines_to:
            self.bar_to.write(line + "\n")
        if self.lines_to is not None:
            self.lines_to.write(line + "\n")
            self.lines_to.flush()

    def _draw(self, st: State, new_phase: bool) -> None:
        from tqdm import tqdm

        if new_phase or self._bar is None:
            if self._bar is not None:
                self._bar.close()
            by_count = bool(st.plan.expected)
            self._bar = tqdm(total=st.plan.expected if by_count else st.plan.duration_s,
                             desc=f"{self.label} {st.where()}", unit="req" if by_count else "s",
                             file=self.bar_to, leave=True, dynamic_ncols=True, mininterval=0,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit}{postfix}"
                             if (st.plan.expected or st.plan.duration_s) else "{desc}: {n_fmt} {unit}{postfix}")
            self._by_count = by_count
        bar = self._bar
        bar.n = st.done if self._by_count else round(min(st.elapsed_s, st.plan.duration_s or st.elapsed_s), 1)
        left = st.time_left_s()
        if left is None:
            when = f"{_fmt_s(st.elapsed_s)} gone"
        else:
            when = ("draining" if st.in_flight else "done") if left <= 0 else f"{_fmt_s(left)} left"
        what = "" if st.plan.mode == "idle" else (
            ("" if self._by_count else f"{st.done} done, ")
            + f"{st.ok} ok, {st.errors} error{'s' if st.errors != 1 else ''}, {st.in_flight} in flight | {st.rates()} | ")
        bar.set_postfix_str(what + when, refresh=False)
        bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    async def run(self) -> None:
        """Tick every ``poll_s`` until cancelled."""
        if self.lines_to is None and self.bar_to is None:
            return
        while True:
            await asyncio.sleep(self.poll_s)
            self.tick()


async def shown(coro, progress: Progress | None):
    """Await ``coro`` with ``progress`` ticking beside it; a last line when it ends (or is cancelled)."""
    if progress is None:
        return await coro
    ticker = asyncio.create_task(progress.run())
    try:
        return await coro
    finally:
        ticker.cancel()
        try:
            progress.tick(final=True)
        finally:
            progress.close()


def terminal() -> TextIO | None:
    """The process's own stderr if it is a terminal though ``sys.stderr`` was sent elsewhere (a
    Snakemake job whose stderr goes to its log: Snakemake's terminal), else None."""
    err = sys.__stderr__
    if err is None or err is sys.stderr:
        return None
    try:
        return err if err.isatty() else None
    except (ValueError, OSError):
        return None
